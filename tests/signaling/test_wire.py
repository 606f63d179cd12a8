"""`signaling.wire`'s packets against python-socketio's own: the same frames both ways,
binary payloads still noticed, huge integers still refused."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from signaling.wire import Packet, Server, _queued, acknowledging, check_library

PAYLOADS: list[Any] = [
    [
        "signal",
        {
            "visit_id": "v1",
            "from": "patient",
            "candidate": {
                "candidate": "c 1",
                "sdpMid": "0",
                "sdpMLineIndex": 0,
                "usernameFragment": None,
            },
        },
    ],
    ["chat", {"text": 'é ✓ \u2028 "quoted" </script>', "n": 1.5, "ok": True, "none": None}],
    ["queue", {"visits": [{"a": [1, 2, {"b": []}]}]}],
    [],
]


@pytest.mark.parametrize("data", PAYLOADS)
@pytest.mark.parametrize("kind", [sio_packet.EVENT, sio_packet.ACK])
def test_frames_are_python_socketios(data: list[Any], kind: int) -> None:
    ours = Packet(kind, namespace="/visit", data=data, id=7 if kind == sio_packet.ACK else None)
    theirs = sio_packet.Packet(
        kind, namespace="/visit", data=data, id=7 if kind == sio_packet.ACK else None
    )
    assert ours.encode() == theirs.encode()
    back = Packet(encoded_packet=theirs.encode())
    assert (back.packet_type, back.namespace, back.id, back.data) == (kind, "/visit", ours.id, data)


def test_a_payload_with_bytes_is_still_a_binary_packet() -> None:
    nested = ["media", {"frames": [{"chunk": b"\x00\x01"}]}]
    assert Packet(sio_packet.EVENT, data=nested).packet_type == sio_packet.BINARY_EVENT
    assert sio_packet.Packet(sio_packet.EVENT, data=nested).packet_type == sio_packet.BINARY_EVENT
    assert Packet(sio_packet.EVENT, data=["x", {"y": "z"}]).packet_type == sio_packet.EVENT


def test_a_huge_integer_is_refused_as_python_socketio_refuses_it() -> None:
    frame = '2/visit,["signal",{"n":' + "9" * 101 + "}]"
    with pytest.raises(ValueError, match="too large"):
        Packet(encoded_packet=frame)
    with pytest.raises(ValueError, match="too large"):
        sio_packet.Packet(encoded_packet=frame)
    assert Packet(encoded_packet='2/visit,["x",{"n":' + "9" * 100 + "}]").data[1]["n"] > 0


@pytest.mark.parametrize("method", ["_handle_event_internal", "_handle_eio_message"])
def test_start_up_fails_naming_the_method_if_python_socketio_changes_it(
    monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    check_library()  # the installed python-socketio is what `Server` builds on

    async def reshaped(self: Any, sid: str, data: Any, namespace: str) -> None: ...

    monkeypatch.setattr(socketio.AsyncServer, method, reshaped)
    with pytest.raises(RuntimeError, match=method):
        check_library()
    monkeypatch.delattr(socketio.AsyncServer, method)
    with pytest.raises(RuntimeError, match=method):
        check_library()


@pytest.mark.parametrize("namespace", ["/", "visit", "/a,b"])
def test_quick_events_need_a_named_namespace(namespace: str) -> None:
    async def handler(sid: str, event: Any, args: list[Any]) -> None: ...

    with pytest.raises(ValueError, match="named namespace"):
        Server(async_mode="aiohttp").quick_events(namespace, handler)


async def test_an_emit_queues_on_an_open_socket_and_leaves_the_rest_to_engine_io() -> None:
    """`_queued` puts a frame on the socket's queue only where python-engineio's own
    send would (open, and heard from within the ping timeout); otherwise the emit falls
    back to `send_packet`, which drops or closes as it always did."""
    frame = eio_packet.Packet(eio_packet.MESSAGE, '2/visit,["x",{}]')
    socket = SimpleNamespace(closed=False, last_ping=None, queue=asyncio.Queue())
    eio = SimpleNamespace(sockets={"e1": socket}, ping_timeout=20, outlets={})
    assert _queued(eio, "e1", frame)
    assert socket.queue.get_nowait() is frame
    socket.last_ping = time.time() - 5
    assert _queued(eio, "e1", frame)
    assert socket.queue.get_nowait() is frame
    socket.last_ping = time.time() - 30  # silent past the ping timeout
    assert not _queued(eio, "e1", frame)
    socket.last_ping, socket.closed = None, True
    assert not _queued(eio, "e1", frame)
    assert not _queued(eio, "gone", frame)
    assert socket.queue.empty()


def test_outside_an_event_nothing_is_taken_for_an_ack_less_one() -> None:
    assert acknowledging() is True


async def test_an_emit_goes_through_the_sockets_outlet_when_it_takes_it() -> None:
    """A socket whose WebSocket writer is idle has an outlet that writes at once; when
    it declines (see `signaling.websocket.Outlet`) the frame is queued as before, and a
    socket without one (long polling) is queued as before."""
    frame = eio_packet.Packet(eio_packet.MESSAGE, '2/visit,["x",{}]')
    written: list[eio_packet.Packet] = []
    taking = True

    def write(packet: eio_packet.Packet) -> bool:
        if taking:
            written.append(packet)
        return taking

    sockets = {
        "ws": SimpleNamespace(closed=False, last_ping=None, queue=asyncio.Queue()),
        "polling": SimpleNamespace(closed=False, last_ping=None, queue=asyncio.Queue()),
    }
    eio = SimpleNamespace(
        sockets=sockets, ping_timeout=20, outlets={"ws": SimpleNamespace(write=write)}
    )
    assert _queued(eio, "ws", frame)
    assert written == [frame]
    assert sockets["ws"].queue.empty()
    taking = False
    assert _queued(eio, "ws", frame)
    assert written == [frame]
    assert sockets["ws"].queue.get_nowait() is frame
    assert _queued(eio, "polling", frame)
    assert sockets["polling"].queue.get_nowait() is frame
    sockets["ws"].closed = True  # a closed socket is left to send_packet, outlet or not
    assert not _queued(eio, "ws", frame)
    assert written == [frame]
