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
- a writer task that awaits the socket's queue directly and writes what is there. (Writing
  a message at once from the sender when the queue is empty was tried: no difference
  measured, so the queue, which keeps a slow reader from holding up its senders, stays
  the only way out.)

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
from collections.abc import Awaitable, Callable
from typing import Any

import engineio
from aiohttp import WSMsgType, web
from engineio import async_socket, exceptions
from engineio import packet as eio_packet

log = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[None]]


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
            await self._serve(socket, ws)
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
    async def _serve(self, socket: async_socket.AsyncSocket, ws: web.WebSocketResponse) -> None:
        if socket.connected:  # a long-polling session upgrading
            if not await self._upgraded(socket, ws):
                return
        else:
            socket.connected = True
            socket.upgraded = True
        writer = asyncio.create_task(self._write(socket, ws))
        try:
            await self._read(socket, ws)
        except asyncio.CancelledError:
            # aiohttp cancels the handler of a lost connection (with handler_cancellation,
            # as its test server runs): the session ends as on a close; python-engineio's
            # reader takes it the same way
            pass
        finally:
            await self._end(socket, writer)

    async def _end(self, socket: async_socket.AsyncSocket, writer: asyncio.Task[None]) -> None:
        """Let the writer finish what is queued (it closes the WebSocket), then close the
        Engine.IO socket: its disconnect handlers run even if this handler is cancelled
        meanwhile, and the writer is awaited either way."""
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

    async def _write(self, socket: async_socket.AsyncSocket, ws: web.WebSocketResponse) -> None:
        queue = socket.queue
        try:
            while True:
                packets = [await queue.get()]
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
        if self.async_mode != "aiohttp":
            raise ValueError(f"signaling needs aiohttp, not {self.async_mode}")
        # the driver's table is python-engineio's module's: this server gets a copy
        self._async = {**self._async, "websocket": WebSocketTransport}
