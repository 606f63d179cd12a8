"""`signaling.websocket`: Engine.IO's WebSocket transport as this server runs it, over
real connections to the app on a loopback port. A page that connects by long-polling and
upgrades, one that connects by WebSocket at once, and a client that sends something that
is not Engine.IO at all."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from tests.conftest import People
from tests.signaling.conftest import Booked, Sockets
from tests.signaling.test_visit_rooms import candidate, in_call

Client = TestClient  # type: ignore[type-arg]
Book = Callable[..., Awaitable[Booked]]


@contextlib.asynccontextmanager
async def raw_socket(client: Client, booked: Booked) -> AsyncIterator[ClientWebSocketResponse]:
    """A WebSocket to Engine.IO with the patient's cookie, past Engine.IO's OPEN."""
    cookie = {"Cookie": f"telemed_visit={booked.cookie}"}
    ws = await client.ws_connect("/socket.io/?EIO=4&transport=websocket", headers=cookie)
    try:
        assert (await ws.receive_str()).startswith("0{")
        yield ws
    finally:
        await ws.close()


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
    # the call is untouched, and nothing of the above reached the doctor
    await patient.send("signal", {"candidate": candidate(4)})
    assert (await doctor.next("signal"))["candidate"] == candidate(4)
    assert doctor.queues["signal"].empty()


async def test_an_event_before_the_namespace_is_joined_is_dropped(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    async with raw_socket(client, booked) as ws:
        await ws.send_str('42/visit,["signal",{"candidate":null}]')  # not connected to /visit
        await ws.send_str("40/visit,")
        assert (await ws.receive_str()).startswith('40/visit,{"sid":')
    await patient.send("signal", {"candidate": candidate(5)})
    assert (await doctor.next("signal"))["candidate"] == candidate(5)
    assert doctor.queues["signal"].empty()
