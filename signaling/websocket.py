"""Engine.IO's WebSocket transport, run for python-engineio's sockets with two plain loops.

python-engineio serves a WebSocket with a reader loop that wraps every frame it waits
for in a new task and an `asyncio.wait_for`, and a writer task that waits for every
frame to send with another `asyncio.wait_for` (on Python 3.11 a `wait_for` makes a task
and a timer of its own). On this project's 2-core machine a task costs ~22 µs and a
`wait_for` ~44 µs (measured beside a relayed signal's ~150 µs in all, bench/README.md).
`WebSocketTransport` takes the place of python-engineio's aiohttp driver class for the
WebSocket (`Engine` below) and runs the same protocol on the same socket object, with:

- a reader that awaits aiohttp's `receive()` directly and hands each message to the
  server's handler, and every other packet to the socket (`AsyncSocket.receive`: pongs,
  upgrades, close), as python-engineio does;
- a writer task that awaits the socket's queue directly and writes what is there;
- an `Outlet` beside it, which takes an emitted message at once, in the sender's own
  call, when nothing is ahead of it (the queue empty and the writer idle), and writes
  what it took at the end of the loop's pass, without waking the writer (see `Outlet`
  for when, for what that saves, and for permessage-deflate).

The timeouts those `wait_for`s carried are kept another way: a client that stops
answering pings is closed by python-engineio's service task (`check_ping_timeout`),
which queues a CLOSE packet; the writer closes the WebSocket after sending it
(aiohttp's close handshake has its own timeout), which ends the reader.

The upgrade of a long-polling session (Socket.IO clients' default: polling first, then
WebSocket; this project's pages try WebSocket first) follows python-engineio's
handshake: `2probe` answered `3probe`, a NOOP to end the pending poll, then `5`
(upgrade).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import engineio
from aiohttp import WSMsgType, web
from aiohttp.http import WebSocketWriter
from engineio import async_socket, exceptions
from engineio import packet as eio_packet

log = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[None]]


# RFC 6455 §5.2 headers of a final, unmasked frame (a server's), by payload length
_LEN2 = struct.Struct("!BBH").pack  # 126 to 65,535 bytes
_LEN3 = struct.Struct("!BBQ").pack  # 65,536 bytes and more
_FIN_TEXT = 0x81  # FIN + opcode 1
_FIN_BINARY = 0x82  # FIN + opcode 2

# the longest message an outlet compresses in the sender's call; aiohttp compresses longer
# ones in its executor (its WEBSOCKET_MAX_SYNC_CHUNK_SIZE, 16 KiB in 3.14): they queue
DEFLATE_AT_ONCE_MAX = 16 * 1024


def frame(message: str | bytes) -> bytes:
    """`message` as one WebSocket frame from a server: final, unmasked, uncompressed, text
    for a str and binary for bytes; the bytes aiohttp's `send_str` / `send_bytes` write
    without permessage-deflate (tests/signaling/test_websocket.py compares them)."""
    if isinstance(message, str):
        payload, first = message.encode("utf-8"), _FIN_TEXT
    else:
        payload, first = bytes(message), _FIN_BINARY
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return _LEN2(first, 126, size) + payload
    return _LEN3(first, 127, size) + payload


class Outlet:
    """A WebSocket's way out for messages emitted while its writer has nothing to do:
    `write` takes the frame at once, and the frames taken during one pass of the event
    loop are written together (`flush`, one callback per pass and WebSocket) instead of
    going on the socket's queue for the writer task to take.

    Measured with bench/signaling.py (py-spy on the server), the writer task was ~30% of
    the server's time: half aiohttp's `send_str` down to `transport.write` (what the bare
    relay does too), half waking the task for every batch (the queue's getter future,
    the loop's handle, the task's step) and the coroutine layers of `send_str` for every
    frame. A flush keeps one plain callback and one `transport.write` (one `send`) for
    all the frames a pass left for a WebSocket. Writing each frame in the emitter's call
    instead was measured too: it saved the server as much, but sent every frame in a
    segment of its own, spread out in time (aiohttp sets TCP_NODELAY), and the peers
    spent ~15% more CPU per message reading them; on this 2-core machine, shared with
    the benchmark's clients, relayed signals/s rose ~5% that way against ~25% this way
    (bench/README.md, `bench/signaling.py`).

    `write` declines (False: the caller queues the frame, as before) whenever taking it
    now could reorder, block or corrupt anything:

    - anything on the queue, or the writer holding packets it took and has not sent yet
      (`busy`, which it sets from taking a batch until that batch is written, and for
      good once it ends); the writer flushes what the outlet holds before it writes
      anything else, so a frame never overtakes one sent before it to the same socket;
    - the transport closing, or the WebSocket closed (a close frame written or on its
      way: no data frame may follow it);
    - the transport's write buffer and what the outlet holds above the transport's
      high-water mark (the peer reads slower than it is sent to): the frame waits on the
      queue and the writer awaits the drain in aiohttp's `send_frame`, as before, so a
      slow reader never holds up its senders;
    - anything but an Engine.IO MESSAGE: PING, NOOP and CLOSE keep the queue (the writer
      closes the WebSocket after a CLOSE);
    - on a WebSocket that compresses, a message longer than `DEFLATE_AT_ONCE_MAX`, or
      aiohttp's compressor lock held (see below).

    aiohttp's own writer only looks at flow control once it has written its `limit`
    (64 KiB) since the last look, so once the buffer passes the mark it may add up to
    that much more before it waits, as it always could.

    permessage-deflate: browsers offer it and aiohttp accepts it by default, so the pages'
    WebSockets compress (the benchmark's clients, like aiohttp's and python-engineio's,
    offer none). Every compressed frame of a WebSocket goes through one compressor whose
    state (the LZ77 window the peer's decompressor mirrors) aiohttp's writer keeps: a
    flush compresses with that compressor, frame by frame in order, through the same
    method aiohttp's `send_frame` calls for a message up to 16 KiB
    (`_send_compressed_frame_sync`: compress, flush, write, with no await). The writer
    flushes the outlet before its own sends and holds aiohttp's lock on the compressor
    only while busy, when `write` takes nothing, so the frames and the compressor's
    state are exactly those of `send_str`. Those are aiohttp's internals:
    `check_library` fails at start-up if they change."""

    __slots__ = (
        "busy",
        "deflating",
        "high",
        "loop",
        "pending",
        "pending_size",
        "queue",
        "transport",
        "ws",
    )

    def __init__(
        self,
        queue: asyncio.Queue[eio_packet.Packet | None],
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
    ) -> None:
        self.queue = queue
        self.ws = ws
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.high = transport.get_write_buffer_limits()[1]
        self.busy = False  # the writer holds packets taken from the queue, or has ended
        # aiohttp's writer, whose compressor frames go through, if the WebSocket compresses
        self.deflating: WebSocketWriter | None = ws._writer if ws.compress else None
        # the messages taken since the last flush, encoded (as `str` or `bytes`), in order
        self.pending: list[str | bytes] = []
        self.pending_size = 0  # their length, in characters or bytes

    def write(self, packet: eio_packet.Packet) -> bool:
        """Take `packet` for the next flush if nothing is ahead of it and the connection
        takes it (see the class); False leaves it to the queue."""
        if self.busy or packet.packet_type != eio_packet.MESSAGE or not self.queue.empty():
            return False
        transport = self.transport
        encoded = packet.encode()
        size = self.pending_size + len(encoded)
        if (
            transport.is_closing()
            or self.ws.closed
            or transport.get_write_buffer_size() + size > self.high
        ):
            return False
        deflating = self.deflating
        if deflating is not None and (
            len(encoded) > DEFLATE_AT_ONCE_MAX or deflating._send_lock.locked()
        ):
            return False
        pending = self.pending
        if not pending:
            self.loop.call_soon(self.flush)
        pending.append(encoded)
        self.pending_size = size
        return True

    def flush(self) -> None:
        """Write the messages taken since the last flush, in order: at the end of the
        loop's pass that took the first of them, or earlier, by the writer, before it
        writes anything of its own."""
        pending = self.pending
        if not pending:
            return
        self.pending = []
        self.pending_size = 0
        transport = self.transport
        if transport.is_closing() or self.ws.closed:
            # the peer is gone, or a close frame went out meanwhile (aiohttp answers the
            # peer's close in `receive`): no data frame may follow it, and the writer's
            # send would have failed the same way
            return
        deflating = self.deflating
        if deflating is None:
            transport.write(b"".join([frame(encoded) for encoded in pending]))
            return
        for encoded in pending:
            if isinstance(encoded, str):
                deflating._send_compressed_frame_sync(encoded.encode("utf-8"), WSMsgType.TEXT, None)
            else:
                deflating._send_compressed_frame_sync(bytes(encoded), WSMsgType.BINARY, None)


# aiohttp's internals an `Outlet` compresses through: WebSocketWriter's method for a
# compressed frame written without an await, with the parameters it expects
_DEFLATE_SYNC = "_send_compressed_frame_sync"
_DEFLATE_SYNC_PARAMETERS = ["self", "message", "opcode", "compress"]


def check_library() -> None:
    """Fail at start-up, naming it, if aiohttp no longer has an internal `Outlet` writes
    compressed frames through, in the shape it expects: the WebSocket's writer
    (`WebSocketResponse._writer`), its synchronous compressed send and the lock aiohttp
    holds around its compressor (`_send_lock`)."""
    method = getattr(WebSocketWriter, _DEFLATE_SYNC, None)
    if method is None or list(inspect.signature(method).parameters) != _DEFLATE_SYNC_PARAMETERS:
        raise RuntimeError(
            f"aiohttp: WebSocketWriter.{_DEFLATE_SYNC}"
            f"({', '.join(_DEFLATE_SYNC_PARAMETERS[1:])}) is gone or changed; "
            "signaling/websocket.py's Outlet needs updating"
        )
    if not hasattr(web.WebSocketResponse, "_writer"):
        raise RuntimeError(
            "aiohttp: WebSocketResponse._writer is gone; signaling/websocket.py's Outlet "
            "needs updating"
        )
    writer = WebSocketWriter(None, None)  # type: ignore[arg-type]
    if not isinstance(getattr(writer, "_send_lock", None), asyncio.Lock):
        raise RuntimeError(
            "aiohttp: WebSocketWriter._send_lock is gone or no asyncio.Lock; "
            "signaling/websocket.py's Outlet needs updating"
        )


class WebSocketTransport:
    """python-engineio's aiohttp WebSocket driver, in its shape: made with the socket's
    `_websocket_handler` and the server, then called with the request's environ."""

    def __init__(self, handler: Handler, server: engineio.AsyncServer) -> None:
        self.handler = handler
        self.server = server
        self.ws: web.WebSocketResponse | None = None

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request: web.Request = environ["aiohttp.request"]
        self.ws = ws = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size)
        await ws.prepare(request)
        socket = getattr(self.handler, "__self__", None)
        if isinstance(socket, async_socket.AsyncSocket):
            await self._serve(socket, ws, request.transport)
        else:  # not a socket's handler: python-engineio's own loops
            await self.handler(self)
        return ws

    # python-engineio's driver interface, for its own handler (the branch above)
    async def close(self) -> None:
        assert self.ws is not None
        await self.ws.close()

    async def send(self, message: str | bytes) -> None:
        assert self.ws is not None
        if isinstance(message, bytes):
            await self.ws.send_bytes(message)
        else:
            await self.ws.send_str(message)

    async def wait(self) -> str | bytes:
        assert self.ws is not None
        message = await self.ws.receive()
        if not isinstance(message.data, str | bytes):
            raise OSError("the WebSocket closed")
        return message.data

    # the loops -----------------------------------------------------------------------------
    async def _serve(
        self,
        socket: async_socket.AsyncSocket,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
    ) -> None:
        if socket.connected:  # a long-polling session upgrading
            if not await self._upgraded(socket, ws):
                return
        else:
            socket.connected = True
            socket.upgraded = True
        outlet = self._outlet(socket, ws, transport)
        writer = asyncio.create_task(self._write(socket, ws, outlet))
        try:
            await self._read(socket, ws)
        except asyncio.CancelledError:
            # aiohttp cancels the handler of a lost connection (with handler_cancellation,
            # as its test server runs): the session ends as on a close; python-engineio's
            # reader takes it the same way
            pass
        finally:
            await self._end(socket, writer, outlet)

    def _outlet(
        self,
        socket: async_socket.AsyncSocket,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
    ) -> Outlet | None:
        """The socket's `Outlet`, registered with the server for its emits; None for a
        connection already gone, or a server that is not an `Engine`."""
        if transport is None or not isinstance(self.server, Engine):
            return None
        outlet = self.server.outlets[socket.sid] = Outlet(socket.queue, ws, transport)
        return outlet

    async def _end(
        self,
        socket: async_socket.AsyncSocket,
        writer: asyncio.Task[None],
        outlet: Outlet | None = None,
    ) -> None:
        """Let the writer finish what is queued (it closes the WebSocket), then close the
        Engine.IO socket: its disconnect handlers run even if this handler is cancelled
        meanwhile, and the writer is awaited either way."""
        if outlet is not None:  # from here on emits queue, behind the writer's end
            assert isinstance(self.server, Engine)
            if self.server.outlets.get(socket.sid) is outlet:
                del self.server.outlets[socket.sid]
        await socket.queue.put(None)  # the writer's end
        try:
            await asyncio.wait({writer}, timeout=self.server.ping_timeout)
        finally:
            await socket.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            writer.cancel()  # still writing after a ping's timeout: the peer is not reading
            await asyncio.wait({writer})
            if not writer.cancelled() and writer.exception() is not None:
                log.error(
                    "engine.io sid=%s: the writer failed", socket.sid, exc_info=writer.exception()
                )

    async def _upgraded(self, socket: async_socket.AsyncSocket, ws: web.WebSocketResponse) -> bool:
        socket.upgrading = True  # the socket holds its sends meanwhile
        probe = await self._next(ws)
        if probe is None or not _is(probe, eio_packet.PING, "probe"):
            socket.upgrading = False
            return False
        await ws.send_str(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
        await socket.queue.put(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
        upgrade = await self._next(ws)
        if upgrade is None or not _is(upgrade, eio_packet.UPGRADE):
            socket.upgraded = False
            socket.upgrading = False
            return False
        socket.upgraded = True
        socket.upgrading = False
        return True

    async def _next(self, ws: web.WebSocketResponse) -> str | bytes | None:
        """The next message's data; None once the WebSocket closes or fails."""
        message = await ws.receive()
        if message.type is WSMsgType.TEXT or message.type is WSMsgType.BINARY:
            data: str | bytes = message.data
            return data
        return None

    async def _read(self, socket: async_socket.AsyncSocket, ws: web.WebSocketResponse) -> None:
        largest = self.server.max_http_buffer_size
        # a message goes straight to the server's handler (python-socketio's), as
        # `AsyncSocket.receive` would pass it on, minus its log call and the wrapper it
        # makes for every message; pongs, upgrades and closes go through the socket
        on_message = self.server.handlers.get("message")
        if not inspect.iscoroutinefunction(on_message) or self.server.async_handlers:
            on_message = None
        while True:
            data = await self._next(ws)
            if data is None or len(data) > largest:
                return
            packet: eio_packet.Packet | None = None
            if on_message is None or type(data) is not str or not _is_message(data):
                try:
                    packet = eio_packet.Packet(encoded_packet=data)
                except (ValueError, TypeError, IndexError):  # not Engine.IO: a broken client
                    log.info("engine.io sid=%s: malformed packet, closing", socket.sid)
                    return
            try:
                if packet is None:  # a message's text, as Engine.IO's decoder would keep it
                    await on_message(socket.sid, data[1:])
                elif on_message is not None and packet.packet_type == eio_packet.MESSAGE:
                    await on_message(socket.sid, packet.data)
                else:
                    await socket.receive(packet)
            except exceptions.UnknownPacketError:
                continue
            except exceptions.SocketIsClosedError:
                return
            except Exception:  # as python-engineio: one bad event does not end the socket
                log.exception("engine.io sid=%s: receive error", socket.sid)

    async def _write(
        self,
        socket: async_socket.AsyncSocket,
        ws: web.WebSocketResponse,
        outlet: Outlet | None = None,
    ) -> None:
        """Write what the socket's queue holds, in order. While it holds packets it took
        from the queue (a batch: `send_str` may wait for the peer to read), the outlet is
        `busy`, so no emit writes past them; once it ends it stays busy."""
        queue = socket.queue
        try:
            while True:
                if outlet is not None:
                    outlet.busy = False
                packets = [await queue.get()]
                if outlet is not None:
                    outlet.busy = True
                    outlet.flush()  # what it took before anything was queued
                queue.task_done()
                while not queue.empty():
                    packets.append(queue.get_nowait())
                    queue.task_done()
                for packet in packets:
                    if packet is None:
                        return
                    encoded = packet.encode()
                    if isinstance(encoded, bytes):
                        await ws.send_bytes(encoded)
                    else:
                        await ws.send_str(encoded)
                    if packet.packet_type == eio_packet.CLOSE:
                        return  # the server ended the session
        except ConnectionError:  # the peer is gone; the reader sees it too
            return
        finally:
            if outlet is not None:
                outlet.busy = True  # for good: the close frame is next, nothing may follow it
                outlet.flush()  # what it took before the writer's end was queued
            await ws.close()


def _is_message(data: str) -> bool:
    """Whether `data` is an Engine.IO MESSAGE that its decoder keeps as text: a digit
    after the type (every Socket.IO packet starts with its type's digit); anything else
    after it (JSON, say) goes through the decoder."""
    return len(data) > 1 and data[0] == "4" and "0" <= data[1] <= "9"


def _is(data: str | bytes, kind: int, payload: str | None = None) -> bool:
    try:
        packet = eio_packet.Packet(encoded_packet=data)
    except (ValueError, TypeError, IndexError):
        return False
    return bool(packet.packet_type == kind and (payload is None or packet.data == payload))


class Engine(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server, serving WebSockets with `WebSocketTransport`."""

    _async: dict[str, Any]  # python-engineio's table of its async driver's parts

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the `Outlet` of each socket served by a `WebSocketTransport` that may write
        # directly, by Engine.IO sid (signaling/wire.py's emits look here)
        self.outlets: dict[str, Outlet] = {}
        if self.async_mode != "aiohttp":
            raise ValueError(f"signaling needs aiohttp, not {self.async_mode}")
        # the driver's table is python-engineio's module's: this server gets a copy
        self._async = {**self._async, "websocket": WebSocketTransport}
