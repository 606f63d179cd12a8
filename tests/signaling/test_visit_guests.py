"""Guests in the `/visit` namespace over real Socket.IO connections: a guest connects with
their own pass, waits, is admitted by the doctor into the call in progress, is seen by
the others (`peer`, `call`), chats with everyone, and is sent back or removed; a guest of
one visit reaches nothing of another (docs/visit-protocol.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import socketio
from aiohttp.test_utils import TestClient

from telemed.clinic import OPERATOR
from telemed.reception import Reception
from telemed.visits import GuestState, VisitState
from telemed.web.keys import RECEPTION, STORE
from tests.conftest import People, page_csrf
from tests.signaling.conftest import SHARING, Booked, Sockets, VisitSocket
from tests.signaling.test_visit_rooms import OFFER, candidate, in_call

Client = TestClient  # type: ignore[type-arg]
Book = Callable[..., Awaitable[Booked]]


@dataclass(frozen=True, slots=True)
class Invited:
    visit_id: str
    guest_id: str
    token: str
    cookie: str  # the value of `telemed_guest`: "{visit_id}.{guest_id}.{pass}"


async def invite(client: Client, visit_id: str, role: str = "interpreter") -> Invited:
    """A guest invited and their link claimed, as the guest's browser would."""
    reception: Reception = client.app[RECEPTION]
    invitation = await reception.invite(OPERATOR, visit_id, role=role, name=f"Ines {role}")
    _, guest, held = await reception.claim_guest(invitation.token, "test")
    return Invited(visit_id, guest.id, invitation.token, f"{visit_id}.{guest.id}.{held}")


async def guest_socket(sockets: Sockets, invited: Invited, **options: object) -> VisitSocket:
    return await sockets.guest(invited.cookie, **options)


async def admitted_guest(
    sockets: Sockets, doctor: VisitSocket, invited: Invited
) -> tuple[VisitSocket, dict[str, object]]:
    """The guest connects, waits, is admitted and joins the call; (socket, call ack)."""
    guest = await guest_socket(sockets, invited)
    await guest.until("visit", lambda v: v["state"] == "waiting")
    answer = await doctor.call(
        "admit_guest", {"visit_id": invited.visit_id, "guest_id": invited.guest_id}
    )
    assert answer == {
        "ok": True,
        "visit_id": invited.visit_id,
        "guest_id": invited.guest_id,
        "state": "in_call",
    }
    await guest.until("visit", lambda v: v["state"] == "in_call")
    joined = await guest.call("join_call", {})
    assert joined["ok"], joined
    return guest, joined


@SHARING
async def test_a_guest_waits_is_admitted_and_is_in_the_call_with_everyone(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    invited = await invite(client, booked.id)

    guest = await guest_socket(sockets, invited)
    seen = await guest.next("visit")
    assert seen["visit_id"] == booked.id
    assert seen["guest_id"] == invited.guest_id
    assert seen["guest_role"] == "interpreter"
    assert seen["state"] == "waiting"
    assert seen["place"] == 0
    assert seen["waiting_since"] is not None
    queue = await doctor.until(
        "queue", lambda q: any(g["online"] for v in q["visits"] for g in v["guests"])
    )
    [entry] = queue["visits"]
    assert entry["guests"] == [
        {
            "guest_id": invited.guest_id,
            "name": "Ines interpreter",
            "role": "interpreter",
            "state": "waiting",
            "waiting_since": seen["waiting_since"],
            "online": True,
        }
    ]
    refused = await guest.call("join_call", {})
    assert refused == {"ok": False, "error": "you are waiting: wait to be admitted"}

    ref = {"visit_id": booked.id, "guest_id": invited.guest_id}
    assert (await doctor.call("admit_guest", ref))["state"] == "in_call"
    assert (await guest.until("visit", lambda v: v["state"] == "in_call"))["place"] == 0
    joined = await guest.call("join_call", {})
    assert joined["ok"] is True
    assert (joined["role"], joined["participant"]) == ("guest", invited.guest_id)
    assert (joined["name"], joined["guest_role"]) == ("Ines interpreter", "interpreter")
    assert joined["peer"] is None  # a guest has no two-party counterpart
    assert joined["participants"] == [
        {
            "role": "clinician",
            "participant": "clinician",
            "name": people.doctor_a.name,
            "sid": doctor.sid,
        },
        {
            "role": "patient",
            "participant": "patient",
            "name": people.patient_1.name,
            "sid": patient.sid,
        },
    ]
    told = {
        "visit_id": booked.id,
        "present": True,
        "role": "guest",
        "participant": invited.guest_id,
        "name": "Ines interpreter",
        "guest_role": "interpreter",
        "sid": guest.sid,
    }
    assert await doctor.until("peer", lambda p: p["role"] == "guest") == told
    assert await patient.until("peer", lambda p: p["role"] == "guest") == told
    entry = (
        await doctor.until("queue", lambda q: q["visits"][0]["guests"][0]["state"] == "in_call")
    )["visits"][0]
    assert entry["state"] == "in_call"

    # chat reaches everyone in the call, with who said it
    said = await guest.call("chat", {"text": "Hola, soy la intérprete"})
    assert said["ok"]
    for other in (doctor, patient):
        assert await other.next("chat") == {
            "visit_id": booked.id,
            "from": "guest",
            "participant": invited.guest_id,
            "name": "Ines interpreter",
            "text": "Hola, soy la intérprete",
            "at": said["at"],
        }
    assert (await patient.call("chat", {"text": "Gracias"}))["ok"]
    heard = await guest.next("chat")
    assert (heard["from"], heard["name"], heard["text"]) == (
        "patient",
        people.patient_1.name,
        "Gracias",
    )
    await doctor.next("chat")

    # the two-party call's signals never reach the guest
    assert (await patient.call("signal", {"candidate": candidate(1)}))["ok"]
    assert (await doctor.next("signal"))["candidate"] == candidate(1)
    assert (await doctor.call("signal", {"visit_id": booked.id, "description": OFFER}))["ok"]
    assert (await patient.next("signal"))["description"] == OFFER
    # a guest's signal names whom it is for, and reaches only them
    untargeted = await guest.call("signal", {"candidate": candidate(2)})
    assert untargeted == {
        "ok": False,
        "error": "to: missing (a guest names whom the signal is for)",
    }
    assert (await guest.call("signal", {"candidate": candidate(3), "to": "clinician"}))["ok"]
    assert await doctor.next("signal") == {
        "visit_id": booked.id,
        "from": "guest",
        "participant": invited.guest_id,
        "candidate": candidate(3),
    }
    assert await guest.call("signal", {"candidate": None, "to": "nobody"}) == {
        "ok": False,
        "error": "to: not in this call",
    }
    assert guest.queues["signal"].empty()
    assert patient.queues["signal"].empty()

    # sent back: out of the call, back in the waiting room; the others see the seat empty
    sent = await doctor.call("send_back_guest", ref)
    assert sent["state"] == "waiting"
    assert await guest.next("call_over") == {"visit_id": booked.id, "reason": "sent_back"}
    assert (await guest.until("visit", lambda v: v["state"] == "waiting"))["waiting_since"] == (
        seen["waiting_since"]
    )  # the first arrival is kept
    gone = await patient.until("peer", lambda p: not p["present"])
    assert (gone["participant"], gone["sid"]) == (invited.guest_id, guest.sid)
    assert (await guest.call("chat", {"text": "hello?"}))["error"] == "not in this visit's call"
    assert patient.queues["call_over"].empty()  # the patient's call goes on
    assert (await patient.call("chat", {"text": "still here"}))["ok"]
    assert (await doctor.next("chat"))["text"] == "still here"

    # removed: told, disconnected, and the pass no longer opens anything
    removed = await doctor.call("remove_guest", ref)
    assert removed["state"] == "removed"
    assert (await guest.until("visit", lambda v: v["state"] == "removed"))["guest_id"] == (
        invited.guest_id
    )
    await guest.wait_gone()
    await doctor.until("queue", lambda q: q["visits"][0]["guests"] == [])
    again = VisitSocket()
    sockets.opened.append(again)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await again.connect(sockets.url, f"telemed_guest={invited.cookie}")
    assert "removed you" in (await again.refused.get())["message"]
    stored = await client.app[STORE].get_visit(booked.id)
    assert stored is not None
    assert stored.state is VisitState.IN_CALL
    assert [g.state for g in stored.guests] == [GuestState.REMOVED]


async def test_a_guest_needs_their_pass_and_joins_only_a_call_in_progress(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    invited = await invite(client, booked.id, "family")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sockets.guest(f"{booked.id}.{invited.guest_id}.wrongpass")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sockets.guest("not-a-guest-cookie")

    doctor = await sockets.clinician(people.doctor_a.email)
    guest = await guest_socket(sockets, invited, auth={"arrive": False})  # checking the camera
    assert (await guest.next("visit"))["state"] == "invited"
    assert await guest.call("arrive", {}) == {"ok": True, "state": "waiting"}
    ref = {"visit_id": booked.id, "guest_id": invited.guest_id}
    refused = await doctor.call("admit_guest", ref)
    assert refused["ok"] is False
    assert "admit the patient first" in refused["error"]
    # a guest acts as no one else
    assert (await guest.call("admit_guest", ref))["error"] == "admit_guest: not for a guest"
    assert (await guest.call("precheck", {}))["error"] == "precheck: not for a guest"
    assert (await guest.call("end", {"visit_id": booked.id}))["error"] == "end: not for a guest"
    # the patient is not admitted by a guest's arrival, and cannot move guests
    patient = await sockets.patient(booked)
    await patient.until("visit", lambda v: v["state"] == "waiting")
    assert (await patient.call("remove_guest", ref))["error"] == "remove_guest: not for a patient"
    stored = await client.app[STORE].get_visit(booked.id)
    assert stored is not None
    assert stored.guests[0].state is GuestState.WAITING


@SHARING
async def test_a_guest_of_one_visit_can_neither_join_nor_signal_into_another(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    mine = await book()
    theirs = await book(patient_id=people.patient_2.id, clinician_id=people.doctor_b.id)
    alice, _ = await in_call(sockets, mine, people.doctor_a.email)
    bob, other = await in_call(sockets, theirs, people.doctor_b.email)
    invited = await invite(client, mine.id)
    guest, _ = await admitted_guest(sockets, alice, invited)

    for event, data in [
        ("join_call", {"visit_id": theirs.id}),
        ("arrive", {"visit_id": theirs.id}),
        ("signal", {"visit_id": theirs.id, "candidate": candidate(9), "to": "clinician"}),
        ("signal", {"visit_id": theirs.id, "candidate": candidate(9), "to": "patient"}),
        ("chat", {"visit_id": theirs.id, "text": "hello"}),
        ("media", {"visit_id": theirs.id, "audio_only": True}),
    ]:
        assert await guest.call(event, data) == {"ok": False, "error": "visit_id: not your visit"}
    # nor can another visit's doctor move this guest, or the guest of this one be admitted
    # into that one through the other visit's id
    ref = {"visit_id": mine.id, "guest_id": invited.guest_id}
    assert (await bob.call("send_back_guest", ref))["error"] == "this patient is not in your care"
    wrong = {"visit_id": theirs.id, "guest_id": invited.guest_id}
    assert "has no guest" in (await bob.call("admit_guest", wrong))["error"]
    # a guest's cookie for visit A naming visit B's id opens nothing
    forged = VisitSocket()
    sockets.opened.append(forged)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await forged.connect(
            sockets.url,
            f"telemed_guest={theirs.id}.{invited.guest_id}.{invited.cookie.rsplit('.', 1)[1]}",
        )
    # the other call went on untouched, and nothing leaked into it
    assert (await other.call("signal", {"candidate": candidate(3)}))["ok"]
    assert (await bob.next("signal"))["candidate"] == candidate(3)
    assert bob.queues["signal"].empty()
    assert bob.queues["chat"].empty()
    assert other.queues["chat"].empty()
    while not bob.queues["peer"].empty():
        assert bob.queues["peer"].get_nowait()["role"] != "guest"
    stored = await client.app[STORE].get_visit(mine.id)
    assert stored is not None
    assert stored.guests[0].state is GuestState.IN_CALL


@SHARING
async def test_the_patient_sent_back_or_the_visit_ended_takes_the_guests_along(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    invited = await invite(client, booked.id)
    guest, _ = await admitted_guest(sockets, doctor, invited)

    assert (await doctor.call("send_back", {"visit_id": booked.id}))["ok"]
    assert await guest.next("call_over") == {"visit_id": booked.id, "reason": "sent_back"}
    assert (await guest.until("visit", lambda v: v["state"] == "waiting"))["state"] == "waiting"
    assert (await guest.call("join_call", {}))["ok"] is False

    assert (await doctor.call("admit", {"visit_id": booked.id}))["ok"]  # the patient again
    await patient.until("visit", lambda v: v["state"] == "in_call")
    assert (await patient.call("join_call", {}))["ok"]
    ref = {"visit_id": booked.id, "guest_id": invited.guest_id}
    assert (await doctor.call("admit_guest", ref))["ok"]  # the guest, admitted again
    await guest.until("visit", lambda v: v["state"] == "in_call")
    assert (await guest.call("join_call", {}))["ok"]

    assert (await doctor.call("end", {"visit_id": booked.id}))["ok"]
    assert await guest.until("call_over", lambda m: m["reason"] == "ended")
    assert (await guest.until("visit", lambda v: v["state"] != "in_call"))["state"] == "ended"
    await guest.wait_gone()
    again = VisitSocket()
    sockets.opened.append(again)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await again.connect(sockets.url, f"telemed_guest={invited.cookie}")
    assert "ended" in (await again.refused.get())["message"]


async def test_a_guest_removed_over_http_leaves_the_call_at_once(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    invited = await invite(client, booked.id, "colleague")
    guest, _ = await admitted_guest(sockets, doctor, invited)
    csrf = {"X-CSRF-Token": await page_csrf(client)}  # the doctor's session (signed in)
    removed = await client.delete(
        f"/api/visits/{booked.id}/guests/{invited.guest_id}", headers=csrf
    )
    assert removed.status == 200, await removed.text()
    assert await guest.next("call_over") == {"visit_id": booked.id, "reason": "removed"}
    await guest.wait_gone()
    left = await patient.until("peer", lambda p: not p["present"])
    assert (left["role"], left["participant"], left["guest_role"]) == (
        "guest",
        invited.guest_id,
        "colleague",
    )
