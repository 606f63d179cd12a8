"""The media mode of a visit and its relay room, without Socket.IO (the namespace's tests
drive the events)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from media.relay import RelayRefused
from signaling.relay_desk import MediaMode, RelayDesk, RelayOff
from tests.devices.test_reliability import until
from tests.media.peers import ClientPeer, Clip
from tests.media.test_relay import WITHIN


class Sent:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str]] = []

    async def __call__(self, event: str, payload: dict[str, Any], to: str) -> None:
        self.events.append((event, payload, to))

    def layouts(self, sid: str) -> list[list[Any]]:
        return [[s["participant"] for s in p["slots"]] for e, p, to in self.events if to == sid]


def desk(mode: MediaMode, tmp_path: Path, sent: Sent | None = None) -> RelayDesk:
    return RelayDesk(mode, emit=sent or Sent(), recordings=tmp_path)


def test_p2p_mode_never_relays(tmp_path: Path) -> None:
    relay = desk(MediaMode.P2P, tmp_path)
    assert relay.mode_of("v1") is MediaMode.P2P
    assert not relay.can_relay()
    with pytest.raises(RelayOff, match="media.mode is p2p"):
        relay.to_relay("v1", "admit a third participant")


def test_auto_starts_peer_to_peer_and_moves_once(tmp_path: Path) -> None:
    relay = desk(MediaMode.AUTO, tmp_path)
    assert relay.mode_of("v1") is MediaMode.P2P
    assert relay.to_relay("v1", "ICE failed") is True
    assert relay.to_relay("v1", "a third participant") is False
    assert relay.mode_of("v1") is MediaMode.RELAY
    assert relay.mode_of("v2") is MediaMode.P2P


async def test_a_relay_offer_for_a_peer_to_peer_visit_is_refused(
    tmp_path: Path, clip: Clip
) -> None:
    relay = desk(MediaMode.AUTO, tmp_path)
    client = ClientPeer(clip)
    try:
        with pytest.raises(RelayRefused, match="peer to peer"):
            await relay.offer("v1", "patient", "sid-p", await client.offer(), [])
    finally:
        await client.close()


async def test_relayed_visit_layouts_reach_each_page(tmp_path: Path, clip: Clip) -> None:
    sent = Sent()
    relay = desk(MediaMode.RELAY, tmp_path, sent)
    doctor, patient, interpreter = ClientPeer(clip), ClientPeer(clip), ClientPeer(clip)
    try:
        who = {"role": "clinician", "name": "Dr Carter"}
        answer = await relay.offer("v1", "clinician", "sid-d", await doctor.offer(), [], who)
        await doctor.answer(answer["sdp"])
        assert [s["participant"] for s in answer["slots"]] == [None, None, None]
        answer = await relay.offer("v1", "patient", "sid-p", await patient.offer(), [])
        await patient.answer(answer["sdp"])
        assert answer["slots"][0]["participant"] == "clinician"
        assert answer["slots"][0]["name"] == "Dr Carter"
        who = {"role": "guest", "name": "Ines", "participant": "forged"}
        answer = await relay.offer("v1", "interpreter", "sid-i", await interpreter.offer(), [], who)
        await interpreter.answer(answer["sdp"])
        assert await until(
            lambda: ["patient", "interpreter", None] in sent.layouts("sid-d"), WITHIN
        )
        slots = [s for e, p, to in sent.events if to == "sid-d" for s in p["slots"]]
        assert {"participant": "interpreter", "role": "guest", "name": "Ines"}.items() <= next(
            s for s in slots if s["participant"] == "interpreter"
        ).items()
        mids = answer["slots"][0]["mids"]
        assert await until(lambda: interpreter.frames_in(mids["video"]) > 3, WITHIN)

        # Layouts are numbered per page, so the page keeps the newer of an answer and an
        # event that cross on the way: the interpreter's answer came after its layouts.
        seqs = [p["seq"] for e, p, to in sent.events if to == "sid-d"]
        assert seqs == sorted(set(seqs))
        assert answer["seq"] > max([p["seq"] for e, p, to in sent.events if to == "sid-i"] or [0])

        # A page that was replaced (reload) leaving does not take the new one out.
        await relay.leave("v1", "patient", sid="an-old-page")
        assert await until(lambda: ["patient", "interpreter", None] == sent.layouts("sid-d")[-1], 1)
        await relay.leave("v1", "patient", sid="sid-p")
        assert await until(lambda: sent.layouts("sid-d")[-1] == [None, "interpreter", None], WITHIN)

        # Sent back: the room closes, the visit stays relayed for the next call.
        await relay.close_room("v1")
        assert relay.mode_of("v1") is MediaMode.RELAY
    finally:
        await relay.close()
        for client in (doctor, patient, interpreter):
            await client.close()


async def test_a_recording_of_a_relayed_visit_gives_a_file_per_participant(
    tmp_path: Path, clip: Clip
) -> None:
    relay = desk(MediaMode.AUTO, tmp_path)
    relay.to_relay("v1", "record")
    doctor, patient = ClientPeer(clip), ClientPeer(clip)
    try:
        for name, client in (("clinician", doctor), ("patient", patient)):
            answer = await relay.offer("v1", name, f"sid-{name}", await client.offer(), [])
            await client.answer(answer["sdp"])
        relay.start_recording("v1", [])
        assert relay.recording("v1")
        mids = answer["slots"][0]["mids"]
        assert await until(lambda: patient.frames_in(mids["video"]) > 40, WITHIN)
        files = await relay.stop_recording("v1")
        assert not relay.recording("v1")
        assert set(files) == {"clinician", "patient"}
        assert all(path.parent.parent == tmp_path / "v1" for path in files.values())
        # files kept unsealed by that recording do not stop the next one
        relay.start_recording("v1", [])
        assert await until(lambda: patient.frames_in(mids["video"]) > 80, WITHIN)
        again = await relay.stop_recording("v1")
        assert set(again) == {"clinician", "patient"}
        assert {p.parent for p in again.values()}.isdisjoint({p.parent for p in files.values()})
        assert all(path.exists() for path in (*files.values(), *again.values()))
        assert await relay.end("v1") == {}
        assert relay.mode_of("v1") is MediaMode.P2P  # forgotten with the visit
    finally:
        await relay.close()
        await doctor.close()
        await patient.close()


@pytest.mark.parametrize("closing", ["leave", "close_room", "end"])
async def test_an_offer_answered_after_its_page_left_or_the_call_closed_connects_nobody(
    tmp_path: Path, clip: Clip, closing: str
) -> None:
    """A guest removed (or the call sent back or ended) while the relay answers their
    offer: the new connection is closed, not seated with everyone's media."""
    relay = desk(MediaMode.RELAY, tmp_path)
    doctor, guest = ClientPeer(clip), ClientPeer(clip)
    try:
        answer = await relay.offer("v1", "clinician", "sid-d", await doctor.offer(), [])
        await doctor.answer(answer["sdp"])
        room = relay._visits["v1"].room
        assert room is not None
        pending = asyncio.create_task(
            relay.offer("v1", "interpreter", "sid-i", await guest.offer(), [])
        )
        await asyncio.sleep(0)  # the offer is being answered now
        if closing == "leave":
            await relay.leave("v1", "interpreter")
        elif closing == "close_room":
            await relay.close_room("v1")
        else:
            await relay.end("v1")
        with pytest.raises(RelayRefused, match="while the relay was answering"):
            await pending
        assert "interpreter" not in room.peers
    finally:
        await relay.close()
        await doctor.close()
        await guest.close()
        # aiortc cancels a closed connection's tasks without awaiting them, and aioice may
        # still start the consent checks of a connection closed while it connected (they
        # end by themselves when consent fails, ~30 s): this test ends them
        await asyncio.sleep(0.2)
        current = asyncio.current_task()
        ending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        for task in ending:
            task.cancel()
        await asyncio.gather(*ending, return_exceptions=True)
