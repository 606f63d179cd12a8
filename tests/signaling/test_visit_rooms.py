"""The `/visit` namespace over real Socket.IO connections to the app on a loopback port:
the visit's states through the events, who may do what, refusals that change nothing,
rate limits, ordering, and coming back after a reconnect (docs/visit-protocol.md)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import socketio
from aiohttp.test_utils import TestClient

from telemed import sessions
from telemed.audit import Outcome
from telemed.clinic import OPERATOR
from telemed.monitoring import Observation
from telemed.visits import VisitState
from telemed.web.keys import RECEPTION, STORE, VISIT_ROOMS
from tests.conftest import FakeClock, People, login, page_csrf
from tests.signaling.conftest import SHARING, Booked, Sockets, VisitSocket

Client = TestClient  # type: ignore[type-arg]
Book = Callable[..., Awaitable[Booked]]

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\n"}
QUALITY = {"rtt_ms": 80, "loss_pct": 0.5, "kbps_in": 900, "kbps_out": 850.5, "audio_only": False}


def candidate(n: int) -> dict[str, Any]:
    return {
        "candidate": f"candidate:{n} 1 udp 2122260223 192.0.2.1 {50000 + n} typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
        "usernameFragment": "abcd",
    }


class Ticks:
    """The rate limiter's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def in_call(sockets: Sockets, booked: Booked, email: str) -> tuple[VisitSocket, VisitSocket]:
    """The doctor admits the patient, and the patient joins the call."""
    doctor = await sockets.clinician(email)
    patient = await sockets.patient(booked)
    await patient.until("visit", lambda v: v["state"] == "waiting")
    admitted = await doctor.call("admit", {"visit_id": booked.id})
    assert admitted["ok"], admitted
    await patient.until("visit", lambda v: v["state"] == "in_call")
    joined = await patient.call("join_call", {})
    assert joined["ok"], joined
    await doctor.until("peer", lambda p: p["present"] and p["sid"] == patient.sid)
    return doctor, patient


# the visit through the events -------------------------------------------------------------
@SHARING
async def test_a_visit_from_the_waiting_room_through_the_call_to_its_end(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor = await sockets.clinician(people.doctor_a.email)
    assert (await doctor.next("queue"))["visits"] == []  # booked, not arrived

    patient = await sockets.patient(booked)
    seen = await patient.next("visit")
    assert seen["visit_id"] == booked.id
    assert seen["state"] == "waiting"
    assert seen["place"] == 1
    assert seen["waiting_since"] is not None
    queue = await doctor.until("queue", lambda q: len(q["visits"]) == 1)
    entry = queue["visits"][0]
    assert entry["visit_id"] == booked.id
    assert entry["patient_id"] == people.patient_1.id
    assert entry["patient_name"] == people.patient_1.name
    assert entry["state"] == "waiting"
    assert entry["patient_online"] is True
    assert entry["precheck"] is None
    assert entry["news2"] is None
    assert entry["latest"] == []

    check = {
        "camera": True,
        "microphone": True,
        "rtt_ms": 42,
        "upload_kbps": 1200.5,
        "recommendation": "video",
    }
    assert await patient.call("precheck", check) == {"ok": True}
    queue = await doctor.until("queue", lambda q: q["visits"][0]["precheck"] is not None)
    assert queue["visits"][0]["precheck"]["recommendation"] == "video"
    assert queue["visits"][0]["precheck"]["rtt_ms"] == 42

    admitted = await doctor.call("admit", {"visit_id": booked.id})
    assert admitted["ok"] is True
    assert admitted["role"] == "clinician"
    assert admitted["polite"] is False
    assert admitted["peer"] is None
    assert admitted["media"]["low_bandwidth_kbps"] == 150
    assert (await doctor.next("call"))["visit_id"] == booked.id  # also sent as an event
    assert (await patient.until("visit", lambda v: v["state"] == "in_call"))["place"] == 0

    joined = await patient.call("join_call", {})
    assert joined["ok"] is True
    assert joined["role"] == "patient"
    assert joined["polite"] is True
    assert joined["participant"] == "patient"
    assert joined["name"] == people.patient_1.name
    assert joined["peer"] == {
        "role": "clinician",
        "participant": "clinician",
        "name": people.doctor_a.name,
        "sid": doctor.sid,
    }
    assert joined["participants"] == [joined["peer"]]
    arrived = await doctor.until("peer", lambda p: p["present"])
    assert arrived == {
        "visit_id": booked.id,
        "present": True,
        "role": "patient",
        "participant": "patient",
        "name": people.patient_1.name,
        "sid": patient.sid,
    }

    assert (await doctor.call("signal", {"visit_id": booked.id, "description": OFFER}))["ok"]
    assert await patient.next("signal") == {
        "visit_id": booked.id,
        "from": "clinician",
        "description": OFFER,
    }
    assert (await patient.call("signal", {"description": ANSWER}))["ok"]
    assert (await doctor.next("signal"))["description"] == ANSWER
    assert (await patient.call("signal", {"candidate": candidate(1)}))["ok"]
    assert (await doctor.next("signal"))["candidate"] == candidate(1)
    assert (await doctor.call("signal", {"visit_id": booked.id, "candidate": None}))["ok"]
    assert (await patient.next("signal"))["candidate"] is None

    said = await patient.call("chat", {"text": "I can hear you"})
    assert said["ok"]
    heard = await doctor.next("chat")
    assert heard == {
        "visit_id": booked.id,
        "from": "patient",
        "participant": "patient",
        "name": people.patient_1.name,
        "text": "I can hear you",
        "at": said["at"],
    }
    assert (await doctor.call("media", {"visit_id": booked.id, "audio_only": True}))["ok"]
    assert await patient.next("media") == {
        "visit_id": booked.id,
        "from": "clinician",
        "audio_only": True,
    }
    assert (await patient.call("quality", QUALITY))["stored"] is True
    assert (await doctor.next("quality")) == {"visit_id": booked.id, "from": "patient", **QUALITY}

    ended = await doctor.call("end", {"visit_id": booked.id})
    assert ended == {"ok": True, "visit_id": booked.id, "state": "ended"}
    assert await patient.next("call_over") == {"visit_id": booked.id, "reason": "ended"}
    assert await doctor.next("call_over") == {"visit_id": booked.id, "reason": "ended"}
    assert (await patient.until("visit", lambda v: v["state"] != "in_call"))["state"] == "ended"
    await patient.wait_gone()  # the server disconnected the patient
    assert (await doctor.until("queue", lambda q: q["visits"] == []))["visits"] == []

    stored = await client.app[STORE].get_visit(booked.id)
    assert stored is not None
    assert stored.state is VisitState.ENDED
    assert stored.precheck is not None
    assert stored.precheck.upload_kbps == 1200.5
    assert [(q.side, q.kbps_out) for q in stored.quality] == [("patient", 850.5)]

    again = VisitSocket()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await again.connect(sockets.url, f"telemed_visit={booked.cookie}")
    assert "ended" in (await again.refused.get())["message"]


async def test_send_back_keeps_the_place_and_the_doctor_can_admit_again(
    client: Client, people: People, book: Book, sockets: Sockets, clock: FakeClock
) -> None:
    first, second = await book(), await book()
    doctor = await sockets.clinician(people.doctor_a.email)
    one = await sockets.patient(first)
    assert (await one.next("visit"))["place"] == 1
    clock.advance(seconds=30)
    two = await sockets.patient(second)
    assert (await two.next("visit"))["place"] == 2

    assert (await doctor.call("admit", {"visit_id": first.id}))["ok"]
    assert (await two.until("visit", lambda v: v["place"] == 1))["state"] == "waiting"
    await one.until("visit", lambda v: v["state"] == "in_call")
    assert (await one.call("join_call", {}))["ok"]

    sent = await doctor.call("send_back", {"visit_id": first.id})
    assert sent == {"ok": True, "visit_id": first.id, "state": "waiting"}
    assert await one.next("call_over") == {"visit_id": first.id, "reason": "sent_back"}
    back = await one.until("visit", lambda v: v["state"] == "waiting")
    assert back["place"] == 1  # arrived first, still first
    assert (await two.until("visit", lambda v: v["place"] == 2))["state"] == "waiting"
    # out of the call room: nothing more reaches the doctor through it
    refused = await one.call("signal", {"candidate": candidate(1)})
    assert refused == {"ok": False, "error": "not in this visit's call"}
    assert (await one.call("join_call", {}))["ok"] is False

    again = await doctor.call("admit", {"visit_id": first.id})
    assert again["ok"]
    await one.until("visit", lambda v: v["state"] == "in_call")
    rejoined = await one.call("join_call", {})
    assert (rejoined["peer"]["role"], rejoined["peer"]["sid"]) == ("clinician", doctor.sid)
    assert (await one.call("signal", {"candidate": candidate(2)}))["ok"]
    assert (await doctor.next("signal"))["candidate"] == candidate(2)
    stored = await client.app[STORE].get_visit(first.id)
    assert stored is not None
    assert [t.state for t in stored.transitions] == [
        VisitState.SCHEDULED,
        VisitState.WAITING,
        VisitState.IN_CALL,
        VisitState.WAITING,
        VisitState.IN_CALL,
    ]


@SHARING
async def test_a_reconnect_keeps_the_place_and_brings_an_in_call_patient_back(
    client: Client, people: People, book: Book, sockets: Sockets, clock: FakeClock
) -> None:
    first, second = await book(), await book()
    doctor = await sockets.clinician(people.doctor_a.email)
    one = await sockets.patient(first)
    await one.next("visit")
    clock.advance(seconds=30)
    two = await sockets.patient(second)
    assert (await two.next("visit"))["place"] == 2

    await two.close()
    offline = await doctor.until(
        "queue", lambda q: any(not v["patient_online"] for v in q["visits"])
    )
    assert [v["visit_id"] for v in offline["visits"]] == [first.id, second.id]
    two = await sockets.patient(second)
    assert (await two.next("visit"))["place"] == 2  # not sent to the back: still second
    await doctor.until("queue", lambda q: all(v["patient_online"] for v in q["visits"]))

    doctor_socket, one = doctor, one
    assert (await doctor_socket.call("admit", {"visit_id": first.id}))["ok"]
    await one.until("visit", lambda v: v["state"] == "in_call")
    assert (await one.call("join_call", {}))["ok"]
    old_sid = one.sid
    await doctor.until("peer", lambda p: p["present"] and p["sid"] == old_sid)

    await one.close()  # the page reloads
    left = await doctor.until("peer", lambda p: not p["present"])
    assert left == {
        "visit_id": first.id,
        "present": False,
        "role": "patient",
        "participant": "patient",
        "name": people.patient_1.name,
        "sid": old_sid,
    }
    one = await sockets.patient(first)
    assert (await one.next("visit"))["state"] == "in_call"
    joined = await one.call("join_call", {})
    assert joined["ok"]
    assert (joined["peer"]["role"], joined["peer"]["sid"]) == ("clinician", doctor.sid)
    back = await doctor.until("peer", lambda p: p["present"])
    assert back["sid"] == one.sid != old_sid  # a new page: the doctor starts a new connection
    assert (await doctor.call("signal", {"visit_id": first.id, "description": OFFER}))["ok"]
    assert (await one.next("signal"))["description"] == OFFER

    # the doctor's dashboard reloads: `open` brings them back, and the patient is told
    await doctor.close()
    assert (await one.until("peer", lambda p: not p["present"]))["role"] == "clinician"
    doctor = await sockets.clinician(people.doctor_a.email)
    opened = await doctor.call("open", {"visit_id": first.id})
    assert opened["ok"]
    assert (opened["peer"]["role"], opened["peer"]["sid"]) == ("patient", one.sid)
    assert (await one.until("peer", lambda p: p["present"]))["sid"] == doctor.sid


# who may do what ------------------------------------------------------------------------
async def test_without_a_cookie_or_as_a_patient_account_the_connection_is_refused(
    client: Client, people: People, sockets: Sockets
) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sockets.anonymous()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sockets.clinician(people.patient_1.email)  # signed in, but not a clinician
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sockets.patient("nosuchvisit.nosuchpass")


async def test_long_polling_works_where_websocket_is_blocked(
    client: Client, book: Book, sockets: Sockets
) -> None:
    """Engine.IO's fallback POSTs carry no CSRF token: the connection itself is
    authenticated, and the events it carries are answered."""
    patient = await sockets.patient(await book(), transport="polling")
    assert (await patient.next("visit"))["state"] == "waiting"
    answer = await patient.call(
        "precheck",
        {
            "camera": True,
            "microphone": True,
            "rtt_ms": 90,
            "upload_kbps": 600,
            "recommendation": "video",
        },
    )
    assert answer["ok"] is True


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_another_sites_page_cannot_connect_even_with_the_cookie(
    client: Client, book: Book, sockets: Sockets, transport: str
) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sockets.patient(
            await book(), transport=transport, headers={"Origin": "https://evil.example"}
        )


@SHARING
async def test_a_participant_of_one_visit_cannot_join_or_signal_into_another(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    mine = await book()
    theirs = await book(patient_id=people.patient_2.id, clinician_id=people.doctor_b.id)
    alice, patient = await in_call(sockets, mine, people.doctor_a.email)
    bob, other = await in_call(sockets, theirs, people.doctor_b.email)

    wrong = {"visit_id": theirs.id, "candidate": candidate(9)}
    assert await patient.call("signal", wrong) == {"ok": False, "error": "visit_id: not your visit"}
    assert (await patient.call("join_call", {"visit_id": theirs.id}))["ok"] is False
    assert await alice.call("signal", wrong) == {"ok": False, "error": "not in this visit's call"}
    assert (await alice.call("chat", {"visit_id": theirs.id, "text": "hello"}))["ok"] is False

    # a clinician not on the care team: refused, audited, nothing changes
    for event in ("open", "admit", "send_back", "end"):
        refused = await alice.call(event, {"visit_id": theirs.id})
        assert refused == {"ok": False, "error": "this patient is not in your care"}, event
    records = [r async for r in client.app[STORE].audit_records(patient_id=people.patient_2.id)]
    denied = [r.event for r in records if r.event.outcome is Outcome.DENIED]
    assert {(e.actor_id, e.action) for e in denied} >= {
        (people.doctor_a.id, "visit.open"),
        (people.doctor_a.id, "visit.admit"),
        (people.doctor_a.id, "visit.end"),
    }
    stored = await client.app[STORE].get_visit(theirs.id)
    assert stored is not None
    assert stored.state is VisitState.IN_CALL

    # a patient may not act as the doctor
    assert await patient.call("admit", {"visit_id": mine.id}) == {
        "ok": False,
        "error": "admit: not for a patient",
    }
    # the other call went on untouched: its own signals still flow, and nothing leaked
    assert (await other.call("signal", {"candidate": candidate(3)}))["ok"]
    assert (await bob.next("signal"))["candidate"] == candidate(3)
    assert bob.queues["signal"].empty()
    assert other.queues["signal"].empty()


async def test_a_reissued_link_kills_the_old_pass(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    patient = await sockets.patient(booked)
    await patient.next("visit")
    await client.app[RECEPTION].reissue_link(OPERATOR, booked.id)
    refused = await patient.call("join_call", {})
    assert refused == {"ok": False, "error": "This visit link is no longer valid on this device."}
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sockets.patient(booked)


# refusals that change nothing -----------------------------------------------------------
MALFORMED: list[tuple[str, Any, str]] = [
    ("signal", {"description": {"type": "offer"}}, "description.sdp: missing"),
    ("signal", {"description": {"type": "bogus", "sdp": "x"}}, "description.type"),
    ("signal", {"description": OFFER, "candidate": None}, "either a description or"),
    ("signal", {"candidate": {"candidate": 7}}, "candidate: expected a string"),
    ("signal", {"candidate": {**candidate(1), "sdpMLineIndex": True}}, "sdpMLineIndex"),
    ("signal", {"candidate": {**candidate(1), "extra": 1}}, "extra: not expected"),
    ("signal", {"candidate": {"candidate": "x" * 2000}}, "longer than 1024"),
    ("signal", {"description": OFFER, "from": "clinician"}, "from: not expected"),
    ("signal", {"description": OFFER, "visit_id": 12}, "visit_id: expected a string"),
    ("chat", {"text": "x" * 2001}, "text: longer than 2000"),
    ("chat", {"text": "   "}, "text: empty"),
    ("chat", {}, "text: missing"),
    ("media", {"audio_only": "yes"}, "audio_only: expected true or false"),
    ("quality", {**QUALITY, "loss_pct": 101}, "loss_pct: expected between 0 and 100"),
    ("quality", {**QUALITY, "rtt_ms": "fast"}, "rtt_ms: expected a number"),
    ("precheck", {"camera": 1, "microphone": True}, "missing"),
    ("signal", ["not", "an", "object"], "exactly one object"),
    ("signal", (), "exactly one object"),
    ("signal", ({"candidate": None}, {"candidate": None}), "exactly one object"),
    ("no_such_event", {}, "unknown event"),
]


async def test_malformed_events_are_refused_and_change_nothing(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    for event, data, error in MALFORMED:
        args = data if isinstance(data, tuple) else (data,)
        answer = await patient.call(event, *args)
        assert answer["ok"] is False, (event, data)
        assert error in answer["error"], (event, data, answer)
    assert doctor.queues["signal"].empty()
    assert doctor.queues["chat"].empty()
    # the connection and the visit keep working
    assert (await patient.call("signal", {"candidate": candidate(5)}))["ok"]
    assert (await doctor.next("signal"))["candidate"] == candidate(5)
    stored = await client.app[STORE].get_visit(booked.id)
    assert stored is not None
    assert stored.state is VisitState.IN_CALL
    assert not stored.quality


async def test_an_oversized_event_is_refused_by_the_engine_and_the_visit_goes_on(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    limit = client.app[VISIT_ROOMS].limits.max_event_bytes
    huge = {"description": {"type": "offer", "sdp": "a" * (limit + 1)}}
    await patient.sio.emit("signal", huge, namespace="/visit")
    await patient.wait_gone()  # the engine closed that connection
    assert doctor.queues["signal"].empty()
    await doctor.until("peer", lambda p: not p["present"])
    patient = await sockets.patient(booked)
    assert (await patient.next("visit"))["state"] == "in_call"
    assert (await patient.call("join_call", {}))["ok"]
    assert (await patient.call("signal", {"candidate": candidate(6)}))["ok"]
    assert (await doctor.next("signal"))["candidate"] == candidate(6)


async def test_chat_is_relayed_and_never_logged(
    client: Client, people: People, book: Book, sockets: Sockets, caplog: pytest.LogCaptureFixture
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    secret = "my chest hurts since Tuesday"
    with caplog.at_level(logging.DEBUG):
        assert (await patient.call("chat", {"text": secret}))["ok"]
        assert (await doctor.next("chat"))["text"] == secret
        assert (await patient.call("signal", {"description": ANSWER}))["ok"]
        await doctor.next("signal")
    assert secret not in caplog.text
    assert "o=- 3 4" not in caplog.text


# rate limits, ordering, quality sampling ------------------------------------------------------
@pytest.mark.parametrize(
    "signaling_env",
    [{"TELEMED_SIGNALING_EVENTS_PER_SECOND": "1", "TELEMED_SIGNALING_EVENT_BURST": "5"}],
    indirect=True,
)
async def test_a_connection_past_its_rate_is_refused_then_disconnected(
    client: Client, people: People, book: Book, sockets: Sockets, signaling_env: dict[str, str]
) -> None:
    ticks = Ticks()
    client.app[VISIT_ROOMS].ticks = ticks
    booked = await book()
    patient = await sockets.patient(booked)
    await patient.next("visit")
    media = {"audio_only": True}  # refused (not in a call), but each one counts
    answers = [await patient.call("media", media) for _ in range(7)]
    assert [a["error"] for a in answers] == ["not in this visit's call"] * 5 + ["rate limited"] * 2

    ticks.now += 10  # ten seconds later: a full bucket again
    assert (await patient.call("media", media))["error"] == "not in this visit's call"
    assert patient.sio.connected

    futures = [await patient.fire("media", media) for _ in range(20)]  # keeps going
    await patient.wait_gone()
    for future in futures:
        future.cancel()
    # the visit is fine: the patient comes back
    again = await sockets.patient(booked)
    assert (await again.next("visit"))["state"] == "waiting"


@SHARING
async def test_a_burst_of_signals_arrives_in_order(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    count = 150  # within the default burst (200)
    answers = [await patient.fire("signal", {"candidate": candidate(n)}) for n in range(count)]
    got = [(await doctor.next("signal"))["candidate"]["candidate"] for _ in range(count)]
    assert got == [candidate(n)["candidate"] for n in range(count)]
    assert all(a["ok"] for a in [await f for f in answers])


@SHARING
async def test_signals_sent_without_an_ack_are_relayed_in_order_and_only_refusals_answer(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    count = 150  # within the default burst (200)
    for n in range(count):
        await patient.send("signal", {"candidate": candidate(n)})
    await patient.send("signal", {"candidate": {"candidate": 5}})
    await patient.send("no_such_event", {})
    got = [(await doctor.next("signal"))["candidate"]["candidate"] for _ in range(count)]
    assert got == [candidate(n)["candidate"] for n in range(count)]
    # the accepted signals came first and answered nothing: the first `refused` is the
    # malformed one's, and an unknown event's name is not echoed
    assert await patient.next("refused") == {
        "event": "signal",
        "error": "candidate.candidate: expected a string",
    }
    assert await patient.next("refused") == {"event": "", "error": "unknown event"}
    # an event sent with an ack is answered through it, not with `refused`
    wrong = {"visit_id": "another", "candidate": candidate(7)}
    assert await patient.call("signal", wrong) == {"ok": False, "error": "visit_id: not your visit"}
    assert (await doctor.call("signal", {"visit_id": booked.id, "candidate": candidate(8)}))["ok"]
    assert (await patient.next("signal"))["candidate"] == candidate(8)
    assert patient.queues["refused"].empty()
    assert doctor.queues["refused"].empty()
    assert doctor.queues["signal"].empty()  # nothing of the refused ones reached the doctor


@pytest.mark.parametrize(
    "signaling_env",
    [{"TELEMED_SIGNALING_EVENTS_PER_SECOND": "1", "TELEMED_SIGNALING_EVENT_BURST": "5"}],
    indirect=True,
)
async def test_events_without_an_ack_past_the_rate_are_refused_then_disconnected(
    client: Client, people: People, book: Book, sockets: Sockets, signaling_env: dict[str, str]
) -> None:
    ticks = Ticks()
    client.app[VISIT_ROOMS].ticks = ticks
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    for n in range(6):  # `join_call` took one of the 5
        await patient.send("signal", {"candidate": candidate(n)})
    assert [(await doctor.next("signal"))["candidate"] for _ in range(4)] == [
        candidate(n) for n in range(4)
    ]
    refused = [await patient.next("refused") for _ in range(2)]
    assert refused == [{"event": "signal", "error": "rate limited"}] * 2
    for n in range(20):  # keeps going
        await patient.send("signal", {"candidate": candidate(n)})
    await patient.wait_gone()
    assert doctor.queues["signal"].empty()


async def test_quality_is_relayed_every_time_and_stored_once_per_side_every_10_s(
    client: Client, people: People, book: Book, sockets: Sockets, clock: FakeClock
) -> None:
    ticks = Ticks()
    client.app[VISIT_ROOMS].ticks = ticks
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    assert (await patient.call("quality", QUALITY))["stored"] is True
    assert (await patient.call("quality", QUALITY))["stored"] is False
    doctor_sample = {"visit_id": booked.id, **QUALITY}
    assert (await doctor.call("quality", doctor_sample))["stored"] is True
    ticks.now += 10
    assert (await patient.call("quality", QUALITY))["stored"] is True
    for _ in range(3):
        assert (await doctor.next("quality"))["from"] == "patient"
    stored = await client.app[STORE].get_visit(booked.id)
    assert stored is not None
    assert [q.side for q in stored.quality] == ["patient", "clinician", "patient"]


# changes made through the clinic's HTTP API ------------------------------------------------
async def test_a_cancel_or_a_new_link_over_http_reaches_the_open_pages(
    client: Client, people: People, book: Book, sockets: Sockets, clock: FakeClock
) -> None:
    first, second = await book(), await book()
    doctor = await sockets.clinician(people.doctor_a.email)
    one = await sockets.patient(first)
    await one.until("visit", lambda v: v["place"] == 1)
    clock.advance(seconds=1)  # arrivals at one instant would be ordered by visit id
    two = await sockets.patient(second)
    await two.until("visit", lambda v: v["place"] == 2)
    csrf = {"X-CSRF-Token": await page_csrf(client)}  # the doctor's session (sockets signed in)

    cancelled = await client.post(f"/api/visits/{first.id}/cancel", headers=csrf)
    assert cancelled.status == 200
    assert (await one.until("visit", lambda v: v["state"] != "waiting"))["state"] == "cancelled"
    await one.wait_gone()  # its pass is dead: the page is disconnected
    assert (await two.until("visit", lambda v: v["place"] == 1))["state"] == "waiting"
    await doctor.until("queue", lambda q: [v["visit_id"] for v in q["visits"]] == [second.id])

    relinked = await client.post(f"/api/visits/{second.id}/link", headers=csrf)
    assert relinked.status == 200
    await two.wait_gone()  # the browser that held the old link's pass
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sockets.patient(second)


async def test_the_queue_shows_news2_for_a_monitored_patient(
    client: Client, people: People, book: Book, sockets: Sockets, clock: FakeClock
) -> None:
    monitored, unmonitored = (
        await book(),
        await book(patient_id=people.patient_2.id, clinician_id=people.doctor_b.id),
    )
    now = clock()
    await client.app[STORE].add_observations(
        [
            Observation(people.patient_1.id, "d1", code, value, unit, now, now)
            for code, value, unit in (
                ("8867-4", 135.0, "/min"),
                ("59408-5", 95.0, "%"),
                ("9279-1", 18.0, "/min"),
            )
        ]
    )
    alice = await sockets.clinician(people.doctor_a.email)
    await sockets.patient(monitored)
    entry = (await alice.until("queue", lambda q: len(q["visits"]) == 1))["visits"][0]
    assert entry["news2"]["score"] == 4  # heart rate 135: 3, SpO2 95 %: 1
    assert entry["news2"]["complete"] is False  # temperature, pressure, consciousness missing
    assert entry["news2"]["band"]
    assert {o["code"] for o in entry["latest"]} == {"8867-4", "59408-5", "9279-1"}

    bob = await sockets.clinician(people.doctor_b.email)
    await sockets.patient(unmonitored)
    other = (await bob.until("queue", lambda q: len(q["visits"]) == 1))["visits"][0]
    assert other["news2"] is None
    assert other["latest"] == []


async def test_connect_and_disconnect_sent_as_events_are_refused(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    """Reserved names are the server's own: a connected client sending them must neither
    reset its rate limit nor drop out of the roster while its socket stays."""
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    forged = {"HTTP_COOKIE": f"telemed_visit={booked.cookie}"}
    assert await patient.call("connect", forged) == {"ok": False, "error": "unknown event"}
    assert await patient.call("disconnect", {}) == {"ok": False, "error": "unknown event"}
    # still in the call, as before: a signal goes through, and the doctor saw no leave
    answer = await patient.call("signal", {"candidate": candidate(1)})
    assert answer["ok"] is True, answer
    assert (await doctor.next("signal"))["candidate"] == candidate(1)
    assert doctor.queues["peer"].empty()
    stored = await client.app[STORE].get_visit(booked.id)
    assert stored is not None
    assert stored.patient_online is True


async def test_a_clinician_who_opened_a_patient_link_stays_a_clinician(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    session = (await login(client, people.doctor_a.email)).cookies[sessions.COOKIE].value
    both = VisitSocket()
    sockets.opened.append(both)
    await both.connect(sockets.url, f"{sessions.COOKIE}={session}; telemed_visit={booked.cookie}")
    assert (await both.next("queue"))["visits"] == []  # the dashboard's view, not the visit's
    assert both.queues["visit"].empty()


@SHARING
async def test_a_second_page_of_the_patient_takes_the_call_and_the_old_one_leaves(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    """The patient taps the text message's link again during the call: the new tab
    claims the link (the old pass dies) and takes the seat; the old tab is told and let
    go, so the two never answer the doctor's offers side by side."""
    booked = await book()
    doctor, old = await in_call(sockets, booked, people.doctor_a.email)
    _, held_pass = booked.cookie.split(".", 1)
    visit, new_pass = await client.app[RECEPTION].claim(booked.token, "test", held_pass=held_pass)
    new = await sockets.patient(f"{visit.id}.{new_pass}")
    await new.until("visit", lambda v: v["state"] == "in_call")
    assert (await new.call("join_call", {}))["ok"] is True
    assert await old.next("call_over") == {"visit_id": booked.id, "reason": "replaced"}
    await old.wait_gone()
    assert (await doctor.until("peer", lambda p: p["present"]))["sid"] == new.sid
    # the doctor's signals reach the new page only
    assert (await doctor.call("signal", {"visit_id": booked.id, "candidate": candidate(2)}))[
        "ok"
    ] is True
    assert (await new.next("signal"))["candidate"] == candidate(2)
    assert old.queues["signal"].empty()


async def test_checking_the_camera_is_not_arriving_until_join(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    """The page connects to send its pre-call check before the patient presses Join: the
    doctor must not see (or admit) them until they do."""
    booked = await book()
    doctor = await sockets.clinician(people.doctor_a.email)
    assert (await doctor.next("queue"))["visits"] == []
    patient = await sockets.patient(booked, auth={"arrive": False})
    assert (await patient.next("visit"))["state"] == "scheduled"
    refused = await doctor.call("admit", {"visit_id": booked.id})
    assert refused["ok"] is False
    assert "cannot become in_call" in refused["error"]

    assert await patient.call("arrive", {}) == {"ok": True, "state": "waiting"}
    entry = (await doctor.until("queue", lambda q: len(q["visits"]) == 1))["visits"][0]
    assert entry["visit_id"] == booked.id
    assert (await patient.until("visit", lambda v: v["state"] == "waiting"))["place"] == 1
    assert await patient.call("arrive", {}) == {"ok": True, "state": "waiting"}  # a return
    assert (await doctor.call("arrive", {}))["ok"] is False  # not for a clinician
