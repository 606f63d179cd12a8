"""The relay, through real aiortc peer connections on loopback: what each side decodes."""

from __future__ import annotations

import pytest

from media.relay import RelayRefused, RelayRoom
from tests.devices.test_reliability import until
from tests.media.peers import ClientPeer, Clip

WITHIN = 30.0  # seconds: a bound for a stuck test, not a speed claim


async def join(room: RelayRoom, name: str, peer: ClientPeer) -> None:
    await peer.answer(await room.connect(name, await peer.offer()))


def slot_of(room: RelayRoom, viewer: str, source: str) -> dict[str, str]:
    for slot in room.layout(viewer):
        if slot["participant"] == source:
            return slot["mids"]
    raise AssertionError(f"{viewer} has no slot for {source}: {room.layout(viewer)}")


async def test_two_participants_see_and_hear_each_other(clip: Clip) -> None:
    room = RelayRoom("visit-1")
    doctor, patient = ClientPeer(clip), ClientPeer(clip)
    try:
        await join(room, "clinician", doctor)
        await join(room, "patient", patient)
        for viewer, client, source in (
            ("clinician", doctor, "patient"),
            ("patient", patient, "clinician"),
        ):
            mids = slot_of(room, viewer, source)
            assert await until(lambda c=client, m=mids: c.frames_in(m["video"]) >= 10, WITHIN)
            assert await until(lambda c=client, m=mids: c.frames_in(m["audio"]) >= 10, WITHIN)
            assert client.received[mids["video"]].widths == {clip.width}
        # Nothing was decoded or encoded on the way: the relay's feeds saw whole frames.
        assert room.feed("patient", "video").frames > 0
    finally:
        await room.close()
        await doctor.close()
        await patient.close()


async def test_three_participants_each_decode_both_others(clip: Clip) -> None:
    room = RelayRoom("visit-2")
    names = ("clinician", "patient", "interpreter")
    clients = {name: ClientPeer(clip) for name in names}
    try:
        for name in names:
            await join(room, name, clients[name])
        for viewer in names:
            for source in names:
                if source == viewer:
                    continue
                mids = slot_of(room, viewer, source)
                client = clients[viewer]
                assert await until(lambda c=client, m=mids: c.frames_in(m["video"]) >= 5, WITHIN)
                assert await until(lambda c=client, m=mids: c.frames_in(m["audio"]) >= 5, WITHIN)
    finally:
        await room.close()
        for client in clients.values():
            await client.close()


async def test_a_late_joiner_gets_a_keyframe_asked_of_the_publisher(clip: Clip) -> None:
    room = RelayRoom("visit-3")
    doctor, patient = ClientPeer(clip), ClientPeer(clip)
    late = ClientPeer(clip)
    try:
        await join(room, "clinician", doctor)
        await join(room, "patient", patient)
        assert await until(lambda: getattr(room.feed("patient", "video"), "frames", 0) > 5, WITHIN)
        asked_before = patient.video.keyframes_asked
        await join(room, "family", late)
        mids = slot_of(room, "family", "patient")
        assert await until(lambda: late.frames_in(mids["video"]) >= 1, WITHIN)
        # The relay asked the publisher (a PLI over RTCP) instead of waiting for its GOP.
        assert patient.video.keyframes_asked > asked_before
        outlet = next(
            s.outlets["video"] for s in room.peers["family"].slots if s.source == "patient"
        )
        assert len(outlet.keyframe_waits_ms) == 1
    finally:
        await room.close()
        for client in (doctor, patient, late):
            await client.close()


async def test_a_subscribers_picture_loss_reaches_the_publisher(clip: Clip) -> None:
    room = RelayRoom("visit-4")
    doctor, patient = ClientPeer(clip), ClientPeer(clip)
    try:
        await join(room, "clinician", doctor)
        await join(room, "patient", patient)
        mids = slot_of(room, "clinician", "patient")
        assert await until(lambda: doctor.frames_in(mids["video"]) >= 3, WITHIN)
        asked = patient.video.keyframes_asked
        receiver = next(t.receiver for t in doctor.pc.getTransceivers() if t.mid == mids["video"])
        ssrc = receiver.getSynchronizationSources()[0].source
        await receiver._send_rtcp_pli(ssrc)  # what a browser sends when it loses a picture
        assert await until(lambda: patient.video.keyframes_asked > asked, WITHIN)
    finally:
        await room.close()
        await doctor.close()
        await patient.close()


async def test_a_participant_who_leaves_frees_the_slot_and_a_rejoin_takes_one(clip: Clip) -> None:
    layouts: dict[str, list[dict[str, object]]] = {}
    room = RelayRoom("visit-5", on_layout=lambda who, layout: layouts.__setitem__(who, layout))
    doctor, patient = ClientPeer(clip), ClientPeer(clip)
    again = ClientPeer(clip)
    try:
        await join(room, "clinician", doctor)
        await join(room, "patient", patient)
        assert [s["participant"] for s in layouts["clinician"]] == ["patient", None, None]
        await room.leave("patient")
        assert [s["participant"] for s in layouts["clinician"]] == [None, None, None]
        await join(room, "patient", again)  # a reload: a new connection, the same seat
        mids = slot_of(room, "clinician", "patient")
        assert await until(lambda: doctor.frames_in(mids["video"]) >= 3, WITHIN)
    finally:
        await room.close()
        for client in (doctor, patient, again):
            await client.close()


async def test_an_audio_only_participant_publishes_sound_alone(clip: Clip) -> None:
    room = RelayRoom("visit-6")
    doctor, patient = ClientPeer(clip), ClientPeer(clip, audio_only=True)
    try:
        await join(room, "clinician", doctor)
        await join(room, "patient", patient)
        mids = slot_of(room, "clinician", "patient")
        assert await until(lambda: doctor.frames_in(mids["audio"]) >= 5, WITHIN)
        assert room.feed("patient", "video") is None
        assert doctor.frames_in(mids["video"]) == 0
    finally:
        await room.close()
        await doctor.close()
        await patient.close()


@pytest.mark.parametrize(
    ("offer", "reason"),
    [
        ("this is not SDP", "no audio or video"),
        ("v=0\r\nm=audio x UDP/TLS/RTP/SAVPF 96\r\n", "not valid SDP"),
    ],
)
async def test_an_offer_that_is_not_sdp_is_refused(offer: str, reason: str) -> None:
    room = RelayRoom("visit-7")
    with pytest.raises(RelayRefused, match=reason):
        await room.connect("patient", offer)
    assert room.peers == {}


async def test_an_offer_without_vp8_is_refused(clip: Clip) -> None:
    room = RelayRoom("visit-8")
    client = ClientPeer(clip)
    try:
        sdp = await client.offer()
        lines = [line for line in sdp.splitlines() if "VP8" not in line]
        with pytest.raises(RelayRefused, match="VP8"):
            await room.connect("patient", "\r\n".join(lines) + "\r\n")
        assert room.peers == {}
    finally:
        await client.close()
