"""`signaling.websocket`: Engine.IO's WebSocket transport as this server runs it, over
real connections to the app on a loopback port. A page that connects by long-polling and
upgrades, one that connects by WebSocket at once, and a client that sends something that
is not Engine.IO at all; emits taken at once while the socket's writer is idle
(`Outlet`) and written together at the end of the loop's pass, in order with what is
queued, and queued whenever they may not be taken."""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import socketio
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.http import WebSocketWriter
from aiohttp.test_utils import TestClient
from engineio import packet as eio_packet

from signaling.websocket import (
    DEFLATE_AT_ONCE_MAX,
    Engine,
    Outlet,
    WebSocketTransport,
    check_library,
    frame,
)
from signaling.wire import _queued
from telemed.web.keys import SIGNALING
from tests.conftest import People
from tests.signaling.conftest import WAIT, Booked, Sockets, VisitSocket
from tests.signaling.test_visit_rooms import candidate, in_call

Client = TestClient  # type: ignore[type-arg]
Book = Callable[..., Awaitable[Booked]]


@contextlib.asynccontextmanager
async def raw_socket(
    client: Client, booked: Booked, *, compress: int = 0
) -> AsyncIterator[ClientWebSocketResponse]:
    """A WebSocket to Engine.IO with the patient's cookie, past Engine.IO's OPEN (its sid
    in `ws.eio_sid`); `compress` offers permessage-deflate with that window, as browsers
    offer it."""
    cookie = {"Cookie": f"telemed_visit={booked.cookie}"}
    ws = await client.ws_connect(
        "/socket.io/?EIO=4&transport=websocket", headers=cookie, compress=compress
    )
    try:
        opened = await ws.receive_str()
        assert opened.startswith("0{")
        ws.eio_sid = json.loads(opened[1:])["sid"]  # type: ignore[attr-defined]
        yield ws
    finally:
        await ws.close()


async def the_call_goes_on(patient: VisitSocket, doctor: VisitSocket, n: int) -> None:
    """The patient's next signal reaches the doctor, and nothing sent before it did."""
    await patient.send("signal", {"candidate": candidate(n)})
    assert (await doctor.next("signal"))["candidate"] == candidate(n)
    assert doctor.queues["signal"].empty()


async def test_a_long_polling_session_upgrades_and_signals_flow_both_ways(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor = await sockets.clinician(people.doctor_a.email)
    patient = await sockets.patient(booked, transport=["polling", "websocket"])
    assert patient.sio.transport() == "websocket"  # python-engineio's client upgraded
    await patient.until("visit", lambda v: v["state"] == "waiting")
    assert (await doctor.call("admit", {"visit_id": booked.id}))["ok"]
    await patient.until("visit", lambda v: v["state"] == "in_call")
    assert (await patient.call("join_call", {}))["ok"]
    assert (await patient.call("signal", {"candidate": candidate(1)}))["ok"]
    assert (await doctor.next("signal"))["candidate"] == candidate(1)
    await doctor.send("signal", {"visit_id": booked.id, "candidate": candidate(2)})
    assert (await patient.next("signal"))["candidate"] == candidate(2)


async def test_a_client_that_does_not_speak_engine_io_is_closed_and_the_visit_goes_on(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    async with raw_socket(client, booked) as ws:
        await ws.send_str("not an engine.io packet")
        closing = await ws.receive()
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    # the call is untouched
    assert (await patient.call("signal", {"candidate": candidate(3)}))["ok"]
    assert (await doctor.next("signal"))["candidate"] == candidate(3)


async def test_a_page_that_leaves_is_disconnected_at_once(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    await patient.close()
    assert (await doctor.until("peer", lambda p: not p["present"]))["role"] == "patient"
    await doctor.until(
        "queue",
        lambda q: (
            [(v["visit_id"], v["patient_online"]) for v in q["visits"]] == [(booked.id, False)]
        ),
    )


async def test_frames_the_quick_way_cannot_take_are_refused_as_before_and_the_call_goes_on(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    """Events sent without an ack take a short way from the reader to the visit's
    handlers (`wire.Server.quick_events`); whatever that way cannot read goes through
    python-socketio as before, which logs and drops it, and the socket goes on."""
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    eio = patient.sio.eio  # python-engineio's client: Engine.IO messages as written here
    for broken in (
        '2/visit,["signal",{"candidate":',  # JSON cut short
        "2/visit,[]",  # no event
        '2/visit,{"signal":1}',  # not an array
    ):
        await eio.send(broken)
    await eio.send({"not": "socket.io"})  # an Engine.IO message holding JSON: `4{...}`
    # an event by a number or by a reserved name is refused like any unknown event
    await eio.send('2/visit,[7,{"candidate":null}]')
    assert await patient.next("refused") == {"event": "", "error": "unknown event"}
    await eio.send('2/visit,["connect",{}]')
    assert await patient.next("refused") == {"event": "", "error": "unknown event"}
    await the_call_goes_on(patient, doctor, 4)


async def test_an_ack_less_event_takes_the_short_way_and_an_acked_one_python_socketios(
    client: Client, people: People, book: Book, sockets: Sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    general: list[Any] = []
    through = socketio.AsyncServer._handle_event

    async def counted(self: Any, eio_sid: str, namespace: str, id: Any, data: Any) -> None:
        general.append(data[0])
        await through(self, eio_sid, namespace, id, data)

    monkeypatch.setattr(socketio.AsyncServer, "_handle_event", counted)
    await the_call_goes_on(patient, doctor, 6)
    assert general == []  # straight from the reader to the visit's handlers
    assert (await patient.call("signal", {"candidate": candidate(7)}))["ok"]
    assert (await doctor.next("signal"))["candidate"] == candidate(7)
    assert general == ["signal"]


async def test_an_event_before_the_namespace_is_joined_is_dropped(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    async with raw_socket(client, booked) as ws:
        await ws.send_str('42/visit,["signal",{"candidate":null}]')  # not connected to /visit
        await ws.send_str("40/visit,")
        assert (await ws.receive_str()).startswith('40/visit,{"sid":')
    await the_call_goes_on(patient, doctor, 5)


# emits taken at once (`Outlet`) -------------------------------------------------------------
def message(text: str) -> eio_packet.Packet:
    return eio_packet.Packet(eio_packet.MESSAGE, text)


def engine(client: Client) -> Engine:
    eio = client.app[SIGNALING].sio.eio
    assert isinstance(eio, Engine)
    return eio


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not check():  # noqa: ASYNC110 (the writer's state has no event to await)
            await asyncio.sleep(0.001)


async def idle(outlet: Outlet) -> None:
    """Until the socket's writer has sent all it took and waits for more."""
    await until(lambda: not outlet.busy and outlet.queue.empty() and not outlet.pending)


class Counted:
    """A transport that counts its writes (asyncio's transports have slots)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


@dataclass
class Opened:
    """A raw WebSocket to Engine.IO, and the server's side of it."""

    ws: ClientWebSocketResponse
    eio: Engine
    sid: str
    socket: Any  # python-engineio's AsyncSocket
    outlet: Outlet


@contextlib.asynccontextmanager
async def opened(client: Client, book: Book, *, compress: int = 0) -> AsyncIterator[Opened]:
    """`raw_socket` for a booked patient, once the socket's writer is idle."""
    booked = await book()
    eio = engine(client)
    async with raw_socket(client, booked, compress=compress) as ws:
        sid = ws.eio_sid  # type: ignore[attr-defined]
        outlet = eio.outlets[sid]
        await idle(outlet)
        yield Opened(ws, eio, sid, eio.sockets[sid], outlet)


async def test_emits_to_an_idle_writer_are_taken_at_once_and_written_together_in_order(
    client: Client, book: Book
) -> None:
    """Emits while the writer waits with nothing queued are taken in the emitter's call
    and written in one write at the end of the loop's pass; once anything is queued (a
    PING here, as python-engineio queues it), later emits queue behind it until the
    writer has sent it all."""
    async with opened(client, book) as o:
        ws, eio, sid, socket, outlet = o.ws, o.eio, o.sid, o.socket, o.outlet
        outlet.transport = counted = Counted(outlet.transport)  # type: ignore[assignment]
        for text in ("a", "b", "c" * 30_000):  # the last one's header has a 16-bit length
            assert _queued(eio, sid, message(text))
        assert socket.queue.empty()  # taken, not queued
        socket.queue.put_nowait(eio_packet.Packet(eio_packet.PING))
        assert _queued(eio, sid, message("d"))
        assert socket.queue.qsize() == 2  # behind the ping
        received = [await ws.receive_str() for _ in range(5)]
        assert received == ["4a", "4b", "4" + "c" * 30_000, "2", "4d"]
        assert counted.writes == 1  # a, b and c together (the ping and d: the writer's)
        await idle(outlet)
        assert _queued(eio, sid, message("e"))
        assert socket.queue.empty()
        assert await ws.receive_str() == "4e"
    await until(lambda: sid not in eio.outlets)  # the session's end takes its outlet away


async def test_a_queued_close_still_ends_the_websocket_and_nothing_follows_it(
    client: Client, book: Book
) -> None:
    async with opened(client, book) as o:
        ws, eio, sid, socket, outlet = o.ws, o.eio, o.sid, o.socket, o.outlet
        assert _queued(eio, sid, message("a"))
        socket.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
        _queued(eio, sid, message("after the close"))
        assert [await ws.receive_str() for _ in range(2)] == ["4a", "1"]
        assert (await ws.receive()).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert outlet.busy  # for good
    assert not outlet.write(message("late"))


async def test_a_peer_that_does_not_read_gets_the_rest_queued_and_the_sender_never_waits(
    client: Client, book: Book
) -> None:
    """Flow control: emits to a peer that stops reading are taken only while the
    connection's write buffer (and what the outlet holds) is under its high-water mark;
    the rest queue (the writer waits for aiohttp's drain, not the emitter), and all
    arrive in order once the peer reads."""
    async with opened(client, book) as o:
        ws, eio, sid, socket, outlet = o.ws, o.eio, o.sid, o.socket, o.outlet
        chunk = "y" * 4096
        sent = 0
        # the client does not read: once aiohttp's buffer and the kernel's (a few MB on
        # loopback) are full, the server's transport buffers what it is given
        while socket.queue.empty() and sent < 20_000:
            for _ in range(8):
                assert _queued(eio, sid, message(f"{sent} {chunk}"))
                sent += 1
            await asyncio.sleep(0)  # the outlet's flush
        assert not socket.queue.empty()
        assert outlet.transport.get_write_buffer_size() + outlet.pending_size > outlet.high
        for _ in range(10):  # and all after it queue too
            assert _queued(eio, sid, message(f"{sent} {chunk}"))
            sent += 1
        for n in range(sent):
            assert await ws.receive_str() == f"4{n} {chunk}"
        await idle(outlet)
        assert _queued(eio, sid, message("again"))  # read up: taken again
        assert socket.queue.empty()
        assert await ws.receive_str() == "4again"


async def test_a_websocket_that_compresses_gets_frames_from_one_compressor_in_order(
    client: Client, book: Book, monkeypatch: pytest.MonkeyPatch
) -> None:
    """permessage-deflate, as browsers offer it: the outlet compresses with the
    WebSocket's own compressor, so frames it writes and frames the writer sends make
    one stream the client inflates (with context takeover: each frame may refer to the
    ones before it); a message too long to compress in the loop is queued."""
    booked = await book()
    eio = engine(client)
    async with raw_socket(client, booked, compress=15) as ws:
        assert ws.compress  # negotiated
        sid = ws.eio_sid  # type: ignore[attr-defined]
        socket, outlet = eio.sockets[sid], eio.outlets[sid]
        assert outlet.deflating is not None
        compressed: list[bytes] = []  # every frame through the compressor, in order
        through = outlet.deflating._send_compressed_frame_sync

        def spy(message: bytes, opcode: int, compress: int | None) -> None:
            compressed.append(message)
            through(message, opcode, compress)

        monkeypatch.setattr(outlet.deflating, "_send_compressed_frame_sync", spy)
        texts = [f'2/visit,["signal",{{"candidate":"c {n}"}}]' * 3 for n in range(5)]
        longest = "x" * DEFLATE_AT_ONCE_MAX
        await idle(outlet)
        assert _queued(eio, sid, message(texts[0]))
        assert _queued(eio, sid, message(texts[1]))
        assert socket.queue.empty()
        socket.queue.put_nowait(eio_packet.Packet(eio_packet.PING))
        assert _queued(eio, sid, message(texts[2]))
        assert socket.queue.qsize() == 2  # behind the ping
        received = [await ws.receive_str() for _ in range(4)]
        await idle(outlet)
        assert _queued(eio, sid, message(texts[3]))
        assert socket.queue.empty()
        assert _queued(eio, sid, message(longest))  # "4" and 16 KiB: longer than the limit
        assert _queued(eio, sid, message(texts[4]))
        assert socket.queue.qsize() == 2
        received += [await ws.receive_str() for _ in range(3)]
        frames = [*texts[:2], "2", texts[2], texts[3], longest, texts[4]]
        assert received == [text if text == "2" else "4" + text for text in frames]
        # the long one went through aiohttp's executor, the rest through one compressor
        assert [data.decode() for data in compressed] == [
            text if text == "2" else "4" + text for text in frames if text != longest
        ]


class Wire:
    """A fake connection: what the writer's `send_str` and the outlet's transport
    write, in the order written; `gate` holds the writer inside a send (as a peer that
    does not read holds it in aiohttp's drain)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.writes = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed = False
        self.compress = 0
        self.closing = False
        self.buffered = 0

    # the WebSocketResponse's part
    async def send_str(self, data: str) -> None:
        self.sent.append(data)
        await self.gate.wait()

    async def close(self) -> None:
        self.closed = True

    # the transport's part
    def write(self, data: bytes) -> None:
        self.writes += 1
        while data:  # text frames under 64 KiB here
            assert data[0] == 0x81
            size, start = data[1], 2
            if size == 126:
                size, start = int.from_bytes(data[2:4]), 4
            self.sent.append(data[start : start + size].decode())
            data = data[start + size :]

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return 16_384, 65_536


def fake_outlet(wire: Wire) -> tuple[Outlet, Any]:
    socket = SimpleNamespace(queue=asyncio.Queue(), sid="s1")
    return Outlet(socket.queue, wire, wire), socket  # type: ignore[arg-type]


def send(outlet: Outlet, packet: eio_packet.Packet) -> None:
    """What `wire._queued` does with a frame for an open socket."""
    if not outlet.write(packet):
        outlet.queue.put_nowait(packet)


@contextlib.asynccontextmanager
async def writing(wire: Wire) -> AsyncIterator[tuple[Outlet, Any]]:
    """A fake connection's outlet and socket, its writer running and idle; on the way
    out the socket's end (None) is queued and the writer awaited."""
    outlet, socket = fake_outlet(wire)
    transport = WebSocketTransport(lambda _: asyncio.sleep(0), SimpleNamespace())  # type: ignore[arg-type]
    writer = asyncio.create_task(transport._write(socket, wire, outlet))  # type: ignore[arg-type]
    try:
        await idle(outlet)
        yield outlet, socket
    finally:
        socket.queue.put_nowait(None)
        await writer


async def test_while_the_writer_holds_a_batch_emits_queue_behind_it() -> None:
    wire = Wire()
    async with writing(wire) as (outlet, socket):
        send(outlet, message("1"))  # idle: taken
        send(outlet, message("2"))
        assert wire.sent == []
        await asyncio.sleep(0)  # the end of the loop's pass: one write
        assert wire.sent == ["41", "42"]
        assert wire.writes == 1
        wire.gate.clear()  # the peer stops reading
        socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
        await asyncio.sleep(0)  # the writer takes it and waits inside its send
        assert outlet.busy
        assert socket.queue.empty()
        send(outlet, message("3"))
        send(outlet, message("4"))
        assert wire.sent == ["41", "42", "6"]
        assert socket.queue.qsize() == 2
        wire.gate.set()  # the peer reads again
        await idle(outlet)
        send(outlet, message("5"))
        await idle(outlet)
        assert wire.sent == ["41", "42", "6", "43", "44", "45"]
    assert wire.closed  # the writer closed the WebSocket
    assert outlet.busy  # for good
    assert not outlet.write(message("6"))


async def test_the_writer_writes_what_the_outlet_took_before_its_own_frames() -> None:
    """Should the writer wake before the outlet's flush (a PING queued meanwhile), it
    flushes the outlet first: what was taken before anything was queued goes first."""
    wire = Wire()
    async with writing(wire) as (outlet, socket):
        outlet.loop = SimpleNamespace(call_soon=lambda callback: None)  # type: ignore[assignment]
        send(outlet, message("1"))  # taken; its flush never comes
        send(outlet, message("2"))
        socket.queue.put_nowait(eio_packet.Packet(eio_packet.PING))
        send(outlet, message("3"))  # behind the ping
        await idle(outlet)
        assert wire.sent == ["41", "42", "2", "43"]


@pytest.mark.parametrize(
    "why",
    ["queued", "busy", "closing", "closed", "above the high-water mark", "ping", "noop", "close"],
)
async def test_an_outlet_declines_whenever_taking_a_frame_now_is_not_safe(why: str) -> None:
    wire = Wire()
    outlet, _ = fake_outlet(wire)
    packet = message("x")
    if why == "queued":
        outlet.queue.put_nowait(message("before"))
    elif why == "busy":
        outlet.busy = True
    elif why == "closing":
        wire.closing = True
    elif why == "closed":
        wire.closed = True
    elif why == "above the high-water mark":
        wire.buffered = 65_535  # and "4x"
    else:
        packet = eio_packet.Packet(
            {"ping": eio_packet.PING, "noop": eio_packet.NOOP, "close": eio_packet.CLOSE}[why]
        )
    assert not outlet.write(packet)
    assert not outlet.pending
    await asyncio.sleep(0)
    assert wire.sent == []


async def test_an_outlet_takes_frames_up_to_the_high_water_mark_with_what_it_holds() -> None:
    wire = Wire()
    outlet, _ = fake_outlet(wire)
    wire.buffered = 60_000
    assert outlet.write(message("a" * 3000))
    assert outlet.write(message("b" * 2534))  # 60,000 + 3,001 + 2,535: at the mark
    assert not outlet.write(message("c"))  # above it, with what the outlet holds
    outlet.flush()
    assert [text[:2] for text in wire.sent] == ["4a", "4b"]
    assert outlet.pending_size == 0


async def test_a_flush_after_the_peer_left_writes_nothing() -> None:
    wire = Wire()
    outlet, _ = fake_outlet(wire)
    assert outlet.write(message("a"))
    wire.closing = True  # the connection is lost before the end of the pass
    await asyncio.sleep(0)
    assert wire.sent == []
    assert not outlet.pending


async def test_a_flush_after_a_close_frame_went_out_writes_nothing() -> None:
    """aiohttp answers a peer's close in `receive`, with no await between it and the
    end of the pass: no data frame may follow the close frame."""
    wire = Wire()
    outlet, _ = fake_outlet(wire)
    assert outlet.write(message("a"))
    await wire.close()  # the close frame is written before the end of the pass
    await asyncio.sleep(0)
    assert wire.sent == []
    assert not outlet.pending


@pytest.mark.parametrize(
    "data",
    ["", "4x", "é✓" * 20, "a" * 125, "a" * 126, "a" * 65_535, "a" * 65_536, "a" * 70_000]
    + [b"", b"\x00\xff" * 100, b"b" * 65_536],
)
async def test_frames_are_the_bytes_aiohttp_writes(data: str | bytes) -> None:
    """`frame` builds a server's frame itself (header, then the payload, as RFC 6455
    has it); these are the bytes aiohttp's own writer puts on the transport for the
    same message, uncompressed: should aiohttp frame differently, this fails."""
    written: list[bytes] = []
    transport = SimpleNamespace(write=written.append, is_closing=lambda: False)
    writer = WebSocketWriter(SimpleNamespace(_paused=False), transport)  # type: ignore[arg-type]
    if isinstance(data, str):
        await writer.send_frame(data.encode(), WSMsgType.TEXT)
    else:
        await writer.send_frame(data, WSMsgType.BINARY)
    assert frame(data) == b"".join(written)


async def test_a_compressing_outlet_writes_deflated_frames_and_waits_for_aiohttps_lock() -> None:
    """The frames an outlet compresses are permessage-deflate's (RSV1 set, the DEFLATE
    block without its 4-byte tail) and share the compressor aiohttp's `send_frame` uses;
    while aiohttp holds its lock on it (a long message compressing in its executor) the
    outlet declines."""
    written: list[bytes] = []
    transport = SimpleNamespace(
        write=written.append,
        is_closing=lambda: False,
        get_write_buffer_size=lambda: 0,
        get_write_buffer_limits=lambda: (16_384, 65_536),
    )
    writer = WebSocketWriter(SimpleNamespace(_paused=False), transport, compress=15)  # type: ignore[arg-type]
    ws = SimpleNamespace(compress=15, closed=False, _writer=writer)
    outlet = Outlet(asyncio.Queue(), ws, transport)  # type: ignore[arg-type]
    inflate = zlib.decompressobj(-15)

    def inflated(data: bytes) -> str:
        assert data[0] == 0xC1  # FIN, RSV1 (compressed), text
        assert data[1] < 126
        return (inflate.decompress(data[2:] + b"\x00\x00\xff\xff")).decode()

    assert outlet.write(message("a" * 50))
    outlet.flush()
    await writer.send_frame(b"4" + b"a" * 50, WSMsgType.TEXT)  # the writer's way, between
    assert outlet.write(message("a" * 50))
    await asyncio.sleep(0)  # the end of the loop's pass
    assert [inflated(data) for data in written] == ["4" + "a" * 50] * 3
    assert len(written[2]) < len(written[0])  # the third refers to the ones before it
    async with writer._send_lock:
        assert not outlet.write(message("b"))
    assert len(written) == 3


def test_start_up_fails_naming_the_aiohttp_internal_if_it_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check_library()  # the installed aiohttp has what `Outlet` compresses through

    def reshaped(self: Any, message: bytes, opcode: int) -> None: ...

    monkeypatch.setattr(WebSocketWriter, "_send_compressed_frame_sync", reshaped)
    with pytest.raises(RuntimeError, match="_send_compressed_frame_sync"):
        check_library()
    monkeypatch.delattr(WebSocketWriter, "_send_compressed_frame_sync")
    with pytest.raises(RuntimeError, match="_send_compressed_frame_sync"):
        check_library()
    monkeypatch.undo()
    monkeypatch.delattr(web.WebSocketResponse, "_writer")
    with pytest.raises(RuntimeError, match="_writer"):
        check_library()
    monkeypatch.undo()
    made = WebSocketWriter.__init__

    def without_lock(self: Any, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        del self._send_lock

    monkeypatch.setattr(WebSocketWriter, "__init__", without_lock)
    with pytest.raises(RuntimeError, match="_send_lock"):
        check_library()
    monkeypatch.undo()
    check_library()
