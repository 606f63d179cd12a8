"""The aiortc internals the relay relies on (media/forward.py), and the outlets' bounds.

An aiortc upgrade that moves or renames any of these fails here, by name, before a call
fails without a picture. The end-to-end proofs are in test_relay.py: frames tapped from a
receiver reach a subscriber, a PLI reaches the publisher.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import aiortc
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpreceiver import RTCRtpSynchronizationSource

from media import forward
from media.forward import EncodedFrame, InternalsChanged
from media.relay import OUTLET_FRAMES, Feed, Outlet
from tests.media.peers import Clip


def test_aiortc_is_the_version_the_relay_was_checked_against() -> None:
    assert aiortc.__version__ == forward.PINNED_AIORTC, (
        "aiortc changed: re-check media/forward.py against the new version's "
        "RTCRtpReceiver and RTCRtpSender, then update PINNED_AIORTC and pyproject.toml"
    )


def test_the_pin_in_pyproject_matches() -> None:
    with open("pyproject.toml", encoding="utf-8") as file:
        assert f'"aiortc=={forward.PINNED_AIORTC}"' in file.read()


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (RTCRtpReceiver, "_send_rtcp_pli"),
        (RTCRtpReceiver, "_handle_rtp_packet"),
        (RTCRtpSender, "_send_keyframe"),
        (RTCRtpSender, "_handle_rtcp_packet"),
    ],
)
def test_a_missing_internal_is_named(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str
) -> None:
    forward.check_internals()
    monkeypatch.delattr(owner, name)
    with pytest.raises(InternalsChanged, match=name):
        forward.check_internals()


async def test_the_receiver_still_keeps_its_decoder_queue_where_tap_replaces_it() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        assert hasattr(receiver, "_RTCRtpReceiver__decoder_queue")
        seen: list[EncodedFrame] = []
        forward.tap(receiver, "video", seen.append)
        tap = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
        # What RTCRtpReceiver._handle_rtp_packet puts there: (codec, JitterFrame).
        codec = receiver.getCapabilities("video").codecs[0]
        frame = type("JitterFrame", (), {"data": b"\x10\x02\x00", "timestamp": 3000})()
        tap.put((codec, frame))
        assert seen == [EncodedFrame("video", b"\x10\x02\x00", 3000, keyframe=True)]
        tap.put(None)  # the receiver stopping releases its idle decoder thread
        assert tap.get() is None
    finally:
        await pc.close()


async def test_a_receiver_without_the_private_queue_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        monkeypatch.delattr(receiver, "_RTCRtpReceiver__decoder_queue")
        with pytest.raises(InternalsChanged, match="decoder queue"):
            forward.tap(receiver, "video", lambda frame: None)
    finally:
        await pc.close()


def test_vp8_keyframes_are_told_from_delta_frames(clip: Clip) -> None:
    assert forward.is_vp8_keyframe(clip.video[0])
    assert not forward.is_vp8_keyframe(clip.video[1])
    assert not forward.is_vp8_keyframe(b"")


class SilentReceiver:
    """A publisher that has sent nothing yet: there is no source to send a PLI to."""

    _RTCRtpReceiver__rtx_ssrc: dict[int, int] = {}

    def getSynchronizationSources(self) -> list[Any]:  # noqa: N802 (aiortc's name)
        return []


class ResendingReceiver:
    """A publisher whose retransmission stream (SSRC 2, for media SSRC 1) sent last."""

    _RTCRtpReceiver__rtx_ssrc = {2: 1}

    def __init__(self) -> None:
        self.asked: list[int] = []

    def getSynchronizationSources(self) -> list[Any]:  # noqa: N802 (aiortc's name)
        return [
            RTCRtpSynchronizationSource(
                source=2, timestamp=datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
            ),
            RTCRtpSynchronizationSource(
                source=1, timestamp=datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
            ),
        ]

    async def _send_rtcp_pli(self, media_ssrc: int) -> None:
        self.asked.append(media_ssrc)


async def test_a_keyframe_is_asked_for_the_media_ssrc_not_the_retransmissions() -> None:
    receiver = ResendingReceiver()
    assert await forward.request_keyframe(receiver)  # type: ignore[arg-type]
    assert receiver.asked == [1]
    assert not await forward.request_keyframe(SilentReceiver())  # type: ignore[arg-type]


async def test_the_receiver_still_keeps_its_rtx_map() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        assert isinstance(receiver._RTCRtpReceiver__rtx_ssrc, dict)  # type: ignore[attr-defined]
    finally:
        await pc.close()


async def test_a_stalled_subscriber_holds_a_bounded_queue(clip: Clip) -> None:
    feed = Feed("patient", "video", SilentReceiver())  # type: ignore[arg-type]
    outlet = Outlet("video")
    outlet.switch(feed)
    frames = [
        EncodedFrame("video", data, i * 3000, forward.is_vp8_keyframe(data))
        for i, data in enumerate(clip.video)
    ]
    for i in range(300):  # warm up, then measure what 3,000 more frames leave behind
        feed.push(frames[i % len(frames)])
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(3000):
            feed.push(frames[i % len(frames)])
            assert outlet.queued <= OUTLET_FRAMES["video"]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 64 * 1024, f"an unread outlet grew by {grown} bytes"
    assert outlet.dropped > 2000
    outlet.stop()
    assert outlet not in feed.outlets


async def test_an_outlet_starts_on_a_keyframe_and_keeps_its_clock_across_feeds(
    clip: Clip,
) -> None:
    first = Feed("patient", "video", SilentReceiver())  # type: ignore[arg-type]
    second = Feed("family", "video", SilentReceiver())  # type: ignore[arg-type]
    outlet = Outlet("video")
    outlet.switch(first)
    first.push(EncodedFrame("video", clip.video[1], 0, keyframe=False))
    assert outlet.queued == 0  # a delta frame alone cannot be decoded
    first.push(EncodedFrame("video", clip.video[0], 900_000, keyframe=True))
    first.push(EncodedFrame("video", clip.video[1], 903_000, keyframe=False))
    stamps = [(await outlet.recv()).pts for _ in range(2)]
    assert stamps == [0, 3000]
    outlet.switch(second)
    second.push(EncodedFrame("video", clip.video[0], 42, keyframe=True))
    assert (await outlet.recv()).pts == 6000  # one frame on: no jump back for the browser
    outlet.stop()


async def test_an_outlet_waiting_for_a_keyframe_asks_again_until_one_comes(
    clip: Clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request can go nowhere (no packet yet) or be lost: a waiting outlet asks
    again, at most every KEYFRAME_REQUEST_INTERVAL, and stops once a keyframe came."""
    now = [100.0]
    monkeypatch.setattr("media.relay.time.monotonic", lambda: now[0])
    receiver = ResendingReceiver()
    feed = Feed("patient", "video", receiver)  # type: ignore[arg-type]
    outlet = Outlet("video")
    outlet.switch(feed)  # the first request
    delta = EncodedFrame("video", clip.video[1], 3000, keyframe=False)
    feed.push(delta)  # too soon for another
    now[0] += 0.3
    feed.push(delta)  # asks again
    await asyncio.gather(*feed._requests)
    assert receiver.asked == [1, 1]
    feed.push(EncodedFrame("video", clip.video[0], 6000, keyframe=True))
    now[0] += 1.0
    feed.push(delta)  # forwarded: nothing more to ask
    await asyncio.gather(*feed._requests)
    assert receiver.asked == [1, 1]
    assert outlet.queued == 2
    outlet.stop()
