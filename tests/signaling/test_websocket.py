"""`signaling.websocket`: Engine.IO's WebSocket transport as this server runs it, over
real connections to the app on a loopback port. A page that connects by long-polling and
upgrades, one that connects by WebSocket at once, and a client that sends something that
is not Engine.IO at all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from tests.conftest import People
from tests.signaling.conftest import Booked, Sockets
from tests.signaling.test_visit_rooms import candidate, in_call

Client = TestClient  # type: ignore[type-arg]
Book = Callable[..., Awaitable[Booked]]


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
    cookie = {"Cookie": f"telemed_visit={booked.cookie}"}
    ws = await client.ws_connect("/socket.io/?EIO=4&transport=websocket", headers=cookie)
    try:
        opened = await ws.receive_str()
        assert opened.startswith("0{")
        await ws.send_str("not an engine.io packet")
        closing = await ws.receive()
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    finally:
        await ws.close()
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
