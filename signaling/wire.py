"""How this process's Socket.IO events go on the wire: python-socketio's own classes, with
the per-event work they do that a relayed `signal` does not need taken out.

Measured with bench/signaling.py (py-spy on the server), a relayed `signal` went through
a task for the handler (gone with `async_handlers=False`, signaling/server.py), a task
per recipient of every emit plus an `asyncio.wait` on them, a new `json.JSONDecoder` for
every packet read and a new encoder for every packet written, and a recursive binary
check of every payload sent. What is here keeps python-socketio's behaviour and frames
exactly, without that work:

- `Packet`: the same encoding, with one decoder and one encoder made once
  (`serializer=Packet`: the class is this server's, python-socketio's stays as it is for
  any other server or client of the process).
- `LocalRooms` / `SharedRooms`: the client managers (rooms in this process, or shared
  through Redis), whose emit sends to each recipient in turn. A send only puts the frame
  on the socket's queue (Engine.IO's writer task writes it), or, when that WebSocket's
  writer is idle with nothing queued, hands it to the socket's `Outlet`
  (`signaling.websocket`), which writes it at the end of the loop's pass; so a task per
  recipient bought nothing but its own cost; order per recipient is what it was.
- `Server`: python-socketio's `AsyncServer`, which tells the event's handler whether the
  client asked for an acknowledgement (`acknowledging()`): a client that did not is told
  of a refusal another way (see signaling/visits.py). Its Engine.IO server serves
  WebSockets with `signaling.websocket`.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import NoneType
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from signaling import websocket
from signaling.websocket import Engine

# True while handling an event the client sent with an ack id, or outside of events
_ACKNOWLEDGING: ContextVar[bool] = ContextVar("socketio_acknowledging", default=True)

INT_DIGITS_MAX = 100  # python-engineio's guard against huge integers in JSON


def acknowledging() -> bool:
    """Whether the client event being handled asked for an acknowledgement."""
    return _ACKNOWLEDGING.get()


def _bounded_int(text: str) -> int:
    if len(text) > INT_DIGITS_MAX:
        raise ValueError("Integer is too large")
    return int(text)


# tuples, not `X | Y`: isinstance with a union is several times slower on Python 3.11
_BINARY = (bytes, bytearray)
_SCALARS = (str, int, float, NoneType)


class _Json:
    """`dumps` and `loads` as python-socketio calls them (`separators=(",", ":")`), each
    with its encoder or decoder made once instead of per call."""

    _encoder = json.JSONEncoder(separators=(",", ":"))
    _decoder = json.JSONDecoder(parse_int=_bounded_int)

    @classmethod
    def dumps(cls, obj: Any, **_: Any) -> str:
        return cls._encoder.encode(obj)

    @classmethod
    def loads(cls, text: str | bytes, **_: Any) -> Any:
        if isinstance(text, _BINARY):
            text = text.decode("utf-8")
        return cls._decoder.decode(text)


def _binary(data: Any) -> bool:
    """Whether `data` holds bytes anywhere (python-socketio's check, without a call per
    string and number)."""
    if isinstance(data, _BINARY):
        return True
    if isinstance(data, dict):
        data = data.values()
    elif not isinstance(data, list):
        return False
    for item in data:
        if isinstance(item, _SCALARS):
            continue
        if _binary(item):
            return True
    return False


class Packet(sio_packet.Packet):  # type: ignore[misc]
    """python-socketio's packet: the same frames, cheaper to make and to read."""

    json = _Json

    @classmethod
    def data_is_binary(cls, data: Any) -> bool:
        return _binary(data)


def _queued(eio: Any, eio_sid: str, frame: eio_packet.Packet) -> bool:
    """Send `frame` to an open socket where `AsyncSocket.send` would once its checks pass:
    taken by the socket's `Outlet` (`signaling.websocket`: written at the end of the
    loop's pass) if its WebSocket writer is idle with nothing queued, else put on its
    queue (its writer, `signaling.websocket`'s or a long poll, sends it); False leaves
    the frame to `send_packet` and its handling of a gone, closed or silent client."""
    socket = eio.sockets.get(eio_sid)
    if socket is None or socket.closed:
        return False
    last_ping = socket.last_ping
    if last_ping and time.time() - last_ping > eio.ping_timeout:
        return False
    outlet = eio.outlets.get(eio_sid)
    if outlet is None or not outlet.write(frame):
        socket.queue.put_nowait(frame)
    return True


class InlineEmits(socketio.AsyncManager):  # type: ignore[misc]
    """`AsyncManager.emit` without a task per recipient (see the module's docstring).
    Emits with a callback (none in this project) keep python-socketio's way."""

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        if callback is not None:
            await super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to
            )
            return
        room = to or room
        if namespace not in self.rooms:
            return
        if isinstance(data, tuple):
            args = list(data)
        elif data is not None:
            args = [data]
        else:
            args = []
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        encoded = self.server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[event, *args]
        ).encode()
        frames = [
            eio_packet.Packet(eio_packet.MESSAGE, part)
            for part in (encoded if isinstance(encoded, list) else [encoded])
        ]
        if isinstance(room, str):  # one room: its table, not a copy walked by generators
            members = self.rooms[namespace].get(room)
            participants: Any = list(members.items()) if members else ()
        else:
            participants = self.get_participants(namespace, room)
        eio = self.server.eio
        for sid, eio_sid in participants:
            if sid not in skip:
                for frame in frames:
                    if not _queued(eio, eio_sid, frame):
                        await eio.send_packet(eio_sid, frame)


class LocalRooms(InlineEmits):
    """Rooms in this process."""


class SharedRooms(socketio.AsyncRedisManager, InlineEmits):  # type: ignore[misc]
    """Rooms shared through Redis: emits are published as python-socketio does, and each
    process delivers to its own members with `InlineEmits.emit`."""


# a namespace's handler of events sent without an ack: (sid, event, arguments)
QuickHandler = Callable[[str, Any, list[Any]], Awaitable[None]]


class Server(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's `AsyncServer`, marking each client event with whether it asked
    for an acknowledgement (`acknowledging()`, read by the namespace's handlers), on the
    Engine.IO server of `signaling.websocket`; a namespace may take its events sent
    without an ack straight from the socket's reader (`quick_events`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the start of an EVENT packet without an ack id in a namespace: `2/visit,[`
        self._quick: dict[str, tuple[str, QuickHandler]] = {}

    def _engineio_server_class(self) -> type[Engine]:
        return Engine

    def quick_events(self, namespace: str, handler: QuickHandler) -> None:
        """Hand the events of `namespace` that ask for no acknowledgement to
        `handler(sid, event, arguments)`, from the reader of the client's socket.

        python-socketio reads such an event with a general packet decoder, then passes
        it through five calls (a log call, connection checks, the ack context, the
        event's handler look-up, the namespace's dispatch) to the namespace, which
        answers none of it. Measured with bench/signaling.py, that was about a sixth of
        a relayed signal's cost. The frame is the same to both ways: EVENT, the
        namespace, no ack id, then the JSON array (`2/visit,["signal",{...}]`), decoded
        with the same decoder and its integer guard. Whatever else, or whatever this
        way cannot take (not a JSON array with an event, a client not connected to the
        namespace), goes python-socketio's way unchanged, and so do binary events,
        acks and events with an ack id."""
        if not namespace.startswith("/") or namespace == "/" or "," in namespace:
            raise ValueError(f"quick events need a named namespace, not {namespace!r}")
        self._quick[f"{sio_packet.EVENT}{namespace},["] = (namespace, handler)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if self._quick and isinstance(data, str) and eio_sid not in self._binary_packet:
            for prefix, (namespace, handler) in self._quick.items():
                if data.startswith(prefix):
                    event = self._quick_event(eio_sid, data, len(prefix) - 1, namespace)
                    if event is not None:
                        await handler(*event)
                        return
                    break
        await super()._handle_eio_message(eio_sid, data)

    def _quick_event(
        self, eio_sid: str, data: str, start: int, namespace: str
    ) -> tuple[str, Any, list[Any]] | None:
        """(sid, event, arguments) of a quick event; None leaves it to python-socketio."""
        try:
            items = _Json.loads(data[start:])
        except ValueError:
            return None  # python-socketio's way refuses it as it does
        if type(items) is not list or not items:
            return None
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return None
        return sid, items[0], items[1:]

    async def _handle_event_internal(
        self, server: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: Any
    ) -> None:
        token = _ACKNOWLEDGING.set(id is not None)
        try:
            await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        finally:
            _ACKNOWLEDGING.reset(token)


# python-socketio's methods `Server` overrides, with the parameters it expects
_OVERRIDDEN = {
    "_handle_event_internal": ["self", "server", "sid", "eio_sid", "data", "namespace", "id"],
    "_handle_eio_message": ["self", "eio_sid", "data"],
}


def check_library() -> None:
    """Fail at start-up, naming it, if python-socketio no longer has a method `Server`
    builds on, in the shape it expects, or aiohttp an internal `signaling.websocket`
    writes compressed frames through."""
    websocket.check_library()
    for name, wanted in _OVERRIDDEN.items():
        method = getattr(socketio.AsyncServer, name, None)
        if method is None or list(inspect.signature(method).parameters) != wanted:
            raise RuntimeError(
                f"python-socketio: AsyncServer.{name}({', '.join(wanted[1:])}) is gone or "
                "changed; signaling/wire.py needs updating"
            )
