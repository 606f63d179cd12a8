"""Client peers for relay tests: aiortc connections that publish pre-encoded frames.

VP8 and Opus are encoded once per test session (`clip()`), then replayed, so a test's
clients cost little and every frame's content is known.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from media.forward import is_vp8_keyframe, on_keyframe_request

FPS = 30


@dataclass(frozen=True)
class Clip:
    video: list[bytes]  # VP8 frames, a keyframe first and every `gop` frames
    audio: list[bytes]  # 20 ms Opus frames
    width: int
    height: int


def encode_clip(frames: int = 90, width: int = 320, height: int = 240, gop: int = 30) -> Clip:
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = fractions.Fraction(1, FPS)
    encoder.bit_rate = 500_000
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    video: list[bytes] = []
    for i in range(frames):
        frame = av.VideoFrame(width, height, "yuv420p")
        luma = bytes((x + i * 4) % 256 for x in range(width)) * height
        frame.planes[0].update(luma)
        for plane in frame.planes[1:]:
            plane.update(bytes([(i * 9) % 256]) * plane.buffer_size)
        frame.pts = i
        frame.time_base = encoder.time_base
        kinds = av.video.frame.PictureType
        frame.pict_type = kinds.I if i % gop == 0 else kinds.NONE
        video += [bytes(p) for p in encoder.encode(frame)]
    video += [bytes(p) for p in encoder.encode(None)]
    opus = av.CodecContext.create("libopus", "w")
    opus.sample_rate = 48_000
    opus.layout = "mono"
    opus.format = "s16"
    opus.time_base = fractions.Fraction(1, 48_000)
    audio: list[bytes] = []
    samples = 960
    for i in range(frames * 2 // 3 * 2):
        start = i * samples
        tone = [int(8000 * math.sin(math.tau * 440 * (start + n) / 48_000)) for n in range(samples)]
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(struct.pack(f"<{samples}h", *tone))
        frame.sample_rate = 48_000
        frame.pts = i * samples
        audio += [bytes(p) for p in opus.encode(frame)]
    assert is_vp8_keyframe(video[0])
    return Clip(video, audio, width, height)


class Replay(MediaStreamTrack):
    """Sends a clip's encoded frames in a loop, paced at `rate` frames a second."""

    def __init__(self, kind: str, frames: Sequence[bytes], rate: float) -> None:
        super().__init__()
        self.kind = kind
        self._frames = frames
        self._rate = rate
        self._step = 3000 if kind == "video" else 960
        self._tb = fractions.Fraction(1, 90_000 if kind == "video" else 48_000)
        self.sent = 0
        self.keyframes_asked = 0
        self._index = 0
        self._started: float | None = None

    def jump_to_keyframe(self) -> None:
        """A PLI reached this publisher: its next frame is the clip's next keyframe."""
        self.keyframes_asked += 1
        if self.kind == "video":
            self._index = next(
                i
                for i in range(self._index, self._index + len(self._frames))
                if is_vp8_keyframe(self._frames[i % len(self._frames)])
            )

    async def recv(self) -> av.Packet[Any]:
        loop = asyncio.get_running_loop()
        if self._started is None:
            self._started = loop.time()
        due = self._started + self.sent / self._rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        packet = av.Packet(self._frames[self._index % len(self._frames)])
        self._index += 1
        packet.pts = self.sent * self._step
        packet.time_base = self._tb
        self.sent += 1
        return packet


@dataclass
class Received:
    frames: int = 0
    widths: set[int] = field(default_factory=set)
    first_at: float | None = None


class ClientPeer:
    """A participant: publishes a clip (unless `publish` is False), receives `slots` others."""

    def __init__(
        self, clip: Clip, *, slots: int = 3, publish: bool = True, audio_only: bool = False
    ) -> None:
        # max-bundle: see media.relay.ice_configuration
        self.pc = RTCPeerConnection(RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.received: dict[str, Received] = {}
        self._readers: list[asyncio.Task[None]] = []
        self.video: Replay | None = None
        if publish:
            self.pc.addTransceiver(Replay("audio", clip.audio, 50), direction="sendonly")
            if not audio_only:
                self.video = Replay("video", clip.video, FPS)
                sender = self.pc.addTransceiver(self.video, direction="sendonly").sender
                on_keyframe_request(sender, self.video.jump_to_keyframe)
        for _ in range(slots):
            self.pc.addTransceiver("audio", direction="recvonly")
            self.pc.addTransceiver("video", direction="recvonly")

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            self._readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        seen = self.received.setdefault(str(transceiver.mid), Received())
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await track.recv()
                seen.frames += 1
                if seen.first_at is None:
                    seen.first_at = loop.time()
                if isinstance(frame, av.VideoFrame):
                    seen.widths.add(frame.width)
        except MediaStreamError:
            return

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    def frames_in(self, mid: str) -> int:
        seen = self.received.get(mid)
        return seen.frames if seen else 0

    async def close(self) -> None:
        await self.pc.close()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
