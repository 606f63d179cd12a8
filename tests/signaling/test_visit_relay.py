"""Relayed calls through the `/visit` namespace: real aiortc peers offer to the server's
relay over Socket.IO (`relay_offer`), as the pages do; the media mode of a visit
(media.mode p2p | relay | auto) and the move to the relay; consented recording, sealed
into the visit's record."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from typing import Any

import av
import pytest
from aiohttp.test_utils import TestClient

from signaling.events import SDP_MAX, EventRefused, parse_relay_offer
from telemed.clinic import Actor
from telemed.records import note_from_json
from telemed.web.keys import RECORDS, SETTINGS, STORE, VISIT_ROOMS
from tests.conftest import People
from tests.devices.test_reliability import until
from tests.media.peers import ClientPeer, Clip
from tests.media.test_relay import WITHIN
from tests.signaling.conftest import Booked, Sockets, VisitSocket
from tests.signaling.test_visit_guests import admitted_guest, invite
from tests.signaling.test_visit_rooms import in_call
from tests.telemed.records_kit import NOTE as KIT_NOTE

Client = TestClient  # type: ignore[type-arg]
Book = Callable[..., Awaitable[Booked]]
RELAY = pytest.mark.parametrize("signaling_env", [{"TELEMED_MEDIA_MODE": "relay"}], indirect=True)
P2P = pytest.mark.parametrize("signaling_env", [{"TELEMED_MEDIA_MODE": "p2p"}], indirect=True)


async def offer(socket: VisitSocket, peer: ClientPeer, visit_id: str) -> dict[str, Any]:
    """The page's relay offer, answered; the answer's layout."""
    answer = await socket.call("relay_offer", {"visit_id": visit_id, "sdp": await peer.offer()})
    assert answer["ok"], answer
    await peer.answer(answer["sdp"])
    return answer


def mids_of(slots: list[dict[str, Any]], participant: str) -> dict[str, str]:
    return next(s["mids"] for s in slots if s["participant"] == participant)


async def sees(
    socket: VisitSocket, peer: ClientPeer, participant: str, slots: Any
) -> list[dict[str, Any]]:
    """`peer` decodes `participant`'s video and receives their sound (waiting for the
    layout that seats them when the answer's did not yet)."""
    if not any(s["participant"] == participant for s in slots):
        slots = (
            await socket.until(
                "layout", lambda m: any(s["participant"] == participant for s in m["slots"])
            )
        )["slots"]
    mids = mids_of(slots, participant)
    assert await until(lambda: peer.frames_in(mids["video"]) >= 3, WITHIN)
    assert await until(lambda: peer.frames_in(mids["audio"]) >= 3, WITHIN)
    return list(slots)


async def test_a_guest_moves_an_auto_visit_to_the_relay_and_all_three_see_each_other(
    client: Client, people: People, book: Book, sockets: Sockets, clip: Clip
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    assert (await doctor.call("open", {"visit_id": booked.id}))["mode"] == "p2p"
    refused = await patient.call("relay_offer", {"sdp": "v=0\r\n"})
    assert refused == {
        "ok": False,
        "error": "this visit's media goes peer to peer: no relay offer is expected",
    }
    invited = await invite(client, booked.id)
    guest, joined = await admitted_guest(sockets, doctor, invited)
    assert joined["mode"] == "relay"
    moved = {"visit_id": booked.id, "mode": "relay", "reason": "a guest joined the call"}
    assert await doctor.next("media_mode") == moved
    assert await patient.next("media_mode") == moved

    peers = {
        "clinician": ClientPeer(clip),
        "patient": ClientPeer(clip),
        invited.guest_id: ClientPeer(clip),
    }
    pages = {"clinician": doctor, "patient": patient, invited.guest_id: guest}
    try:
        answers = {who: await offer(pages[who], peers[who], booked.id) for who in pages}
        seen: dict[str, dict[str, Any]] = {}
        for viewer in pages:
            for source in pages:
                if source != viewer:
                    slots = await sees(
                        pages[viewer], peers[viewer], source, answers[viewer]["slots"]
                    )
                    seen[f"{viewer}>{source}"] = next(
                        s for s in slots if s["participant"] == source
                    )
        # each slot names who is there, as the call payloads do
        assert (
            seen[f"clinician>{invited.guest_id}"]["role"],
            seen[f"clinician>{invited.guest_id}"]["name"],
        ) == ("guest", "Ines interpreter")
        assert seen[f"{invited.guest_id}>clinician"]["name"] == people.doctor_a.name
        assert seen[f"{invited.guest_id}>patient"]["role"] == "patient"

        # the guest leaves (sent back): the others' layouts free the slot
        ref = {"visit_id": booked.id, "guest_id": invited.guest_id}
        assert (await doctor.call("send_back_guest", ref))["ok"]
        await doctor.until(
            "layout", lambda m: invited.guest_id not in {s["participant"] for s in m["slots"]}
        )
    finally:
        for peer in peers.values():
            await peer.close()


@RELAY
async def test_a_forced_relay_visit_carries_two_participants(
    people: People, book: Book, sockets: Sockets, clip: Clip
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    opened = await doctor.call("open", {"visit_id": booked.id})
    assert opened["mode"] == "relay"
    d, p = ClientPeer(clip), ClientPeer(clip)
    try:
        doctor_answer = await offer(doctor, d, booked.id)
        patient_answer = await offer(patient, p, booked.id)
        await sees(doctor, d, "patient", doctor_answer["slots"])
        await sees(patient, p, "clinician", patient_answer["slots"])
        # a page's new offer (a reload, a network change) replaces its connection
        again = ClientPeer(clip)
        try:
            patient_answer = await offer(patient, again, booked.id)
            await sees(patient, again, "clinician", patient_answer["slots"])
        finally:
            await again.close()
    finally:
        await d.close()
        await p.close()


async def test_failing_peer_to_peer_asks_for_the_relay(
    people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    for bad in (
        {"want": "p2p", "reason": "ice_failed"},
        {"want": "relay", "reason": "boredom"},
        {"want": "relay"},
    ):
        assert (await patient.call("media_mode", bad))["ok"] is False
    asked = await patient.call("media_mode", {"want": "relay", "reason": "ice_failed"})
    assert asked == {"ok": True, "mode": "relay"}
    told = {"visit_id": booked.id, "mode": "relay", "reason": "peer-to-peer ICE failed"}
    assert await doctor.next("media_mode") == told
    assert await patient.next("media_mode") == told
    # sent back and admitted again, the visit keeps the relay it needed
    assert (await doctor.call("send_back", {"visit_id": booked.id}))["ok"]
    assert (await doctor.call("admit", {"visit_id": booked.id}))["mode"] == "relay"


@P2P
async def test_p2p_mode_refuses_guests_the_relay_and_recording(
    client: Client, people: People, book: Book, sockets: Sockets
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    invited = await invite(client, booked.id)
    guest = await sockets.guest(invited.cookie)
    await guest.until("visit", lambda v: v["state"] == "waiting")
    refused = await doctor.call(
        "admit_guest", {"visit_id": booked.id, "guest_id": invited.guest_id}
    )
    assert refused["ok"] is False
    assert "media.mode is p2p" in refused["error"]
    asked = await patient.call("media_mode", {"want": "relay", "reason": "ice_failed"})
    assert asked["ok"] is False
    assert "media.mode is p2p" in asked["error"]
    consent = await doctor.call("recording_consent", {"visit_id": booked.id, "consent": True})
    assert consent["ok"] is False
    assert "media.mode is p2p" in consent["error"]


async def test_relay_offers_are_checked(people: People, book: Book, sockets: Sockets) -> None:
    booked = await book()
    other = await book(patient_id=people.patient_2.id, clinician_id=people.doctor_b.id)
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    assert (await patient.call("media_mode", {"want": "relay", "reason": "ice_failed"}))["ok"]
    for bad, error in (
        ({}, "sdp: missing"),
        ({"sdp": 5}, "sdp: expected a string"),
        ({"sdp": "v=0\r\n", "extra": 1}, "extra"),
        ({"visit_id": other.id, "sdp": "v=0\r\n"}, "not your visit"),
        ({"sdp": "v=0\r\n"}, "no audio or video"),
    ):
        answer = await patient.call("relay_offer", bad)
        assert answer["ok"] is False, bad
        assert error in answer["error"], (bad, answer)
    # (a longer SDP than the engine's max_event_bytes never reaches the handler)
    with pytest.raises(EventRefused, match="sdp: longer than"):
        parse_relay_offer({"sdp": "x" * (SDP_MAX + 1)}, visit_required=False)
    # the doctor names a visit; one whose call they are not in is refused
    answer = await doctor.call("relay_offer", {"visit_id": other.id, "sdp": "v=0\r\n"})
    assert answer == {"ok": False, "error": "not in this visit's call"}


async def test_a_consented_recording_is_sealed_into_the_record_and_decodes(
    client: Client, people: People, book: Book, sockets: Sockets, clip: Clip
) -> None:
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    d, p = ClientPeer(clip), ClientPeer(clip)
    try:
        first = await doctor.call("recording_consent", {"visit_id": booked.id, "consent": True})
        assert first == {"ok": True, "recording": False}  # the patient has not agreed yet
        assert await patient.next("recording_consent") == {
            "visit_id": booked.id,
            "from": "clinician",
            "consent": True,
        }
        both = await patient.call("recording_consent", {"consent": True})
        assert both == {"ok": True, "recording": True}
        assert await doctor.next("media_mode") == {
            "visit_id": booked.id,
            "mode": "relay",
            "reason": "a recording starts",
        }
        assert await doctor.next("recording") == {"visit_id": booked.id, "active": True}
        assert await patient.next("recording") == {"visit_id": booked.id, "active": True}
        doctor_answer = await offer(doctor, d, booked.id)
        await offer(patient, p, booked.id)
        mids = mids_of(
            (await doctor.until("layout", lambda m: m["slots"][0]["participant"]))["slots"]
            if not doctor_answer["slots"][0]["participant"]
            else doctor_answer["slots"],
            "patient",
        )
        assert await until(lambda: d.frames_in(mids["video"]) >= 60, WITHIN)

        # the patient withdraws: it stops at once, and the files go into the record
        stopped = await patient.call("recording_consent", {"consent": False})
        assert stopped == {"ok": True, "recording": False}
        assert await doctor.next("recording") == {"visit_id": booked.id, "active": False}
    finally:
        await d.close()
        await p.close()

    # the files are sealed in a task of their own, after the answer
    rooms = client.app[VISIT_ROOMS]
    assert await until(lambda: not rooms._sealing, WITHIN)
    visit = await client.app[STORE].get_visit(booked.id)
    assert [(c.side, c.given) for c in visit.recording_consents] == [
        ("clinician", True),
        ("patient", True),
        ("patient", False),
    ]
    stored = await client.app[STORE].list_attachments(booked.id)
    assert sorted(a.content_type for a in stored) == ["video/webm", "video/webm"]
    for sealed in stored:
        assert not sealed.body.startswith(b"\x1a\x45\xdf\xa3")  # not readable without the key
        assert b"webm" not in sealed.body
    doctor_actor = await actor_of(client, people.doctor_a.id)
    for sealed in stored:
        meta, body = await client.app[RECORDS].attachment(doctor_actor, sealed.id)
        assert meta.name.startswith("recording-")
        frames = {"video": 0, "audio": 0}
        with av.open(io.BytesIO(body)) as container:
            for frame in container.decode(*container.streams):
                frames["video" if isinstance(frame, av.VideoFrame) else "audio"] += 1
        assert frames["video"] > 0
        assert frames["audio"] > 0
    actions = [
        r.event.action
        async for r in client.app[STORE].audit_records(patient_id=people.patient_1.id)
    ]
    assert actions.count("visit.recording_consent") == 3
    assert actions.count("attachment.write") == 2
    # the plain files are gone once sealed
    assert not list((client.app[SETTINGS].var_dir / "recordings").glob("**/*.webm"))


async def actor_of(client: Client, user_id: str) -> Actor:
    user = await client.app[STORE].get_user(user_id)
    assert user is not None
    return Actor.of(user, "test")


async def test_a_recording_that_cannot_be_sealed_is_kept_not_lost(
    client: Client, people: People, book: Book, sockets: Sockets, clip: Clip
) -> None:
    """The record was signed during the call (it takes attachments before signing): the
    recording stays on disk, unsealed, for an operator, and the call goes on."""
    booked = await book()
    doctor, patient = await in_call(sockets, booked, people.doctor_a.email)
    d, p = ClientPeer(clip), ClientPeer(clip)
    try:
        await doctor.call("recording_consent", {"visit_id": booked.id, "consent": True})
        assert (await patient.call("recording_consent", {"consent": True}))["recording"]
        answer = await offer(doctor, d, booked.id)
        await offer(patient, p, booked.id)
        mids = mids_of(await sees(doctor, d, "patient", answer["slots"]), "patient")
        office = client.app[RECORDS]
        actor = await actor_of(client, people.doctor_a.id)
        saved = await office.save_note(actor, booked.id, note_from_json(KIT_NOTE))
        await office.sign(actor, booked.id, saved.versions[-1].number)
        frames = d.frames_in(mids["video"])
        assert await until(lambda: d.frames_in(mids["video"]) > frames + 30, WITHIN)
        assert (await patient.call("recording_consent", {"consent": False})) == {
            "ok": True,
            "recording": False,
        }
    finally:
        await d.close()
        await p.close()
    rooms = client.app[VISIT_ROOMS]
    assert await until(lambda: not rooms._sealing, WITHIN)
    kept = list((client.app[SETTINGS].var_dir / "recordings" / booked.id).glob("*/*.webm"))
    assert kept, "the unsealed recordings must stay on disk"
    assert await client.app[STORE].list_attachments(booked.id) == []
