"""Media relay benchmark: forwarded VP8 streams per core, against stock aiortc re-encoding.

    .venv/bin/python bench/relay.py [--steps 8,16,32,...] [--seconds 8] [--profile FILE]

One run, two server kinds over the same clients and the same load steps, each step in a
fresh server process:

1. relay: `media.relay.RelayRoom`, the real code, behind a bench-only aiohttp endpoint
   (`POST /offer` takes a participant's offer SDP and returns the answer). Nothing is
   decoded or encoded: each publisher's frames are forwarded as they came.
2. baseline: stock aiortc. The server receives the decoded track, subscribes one
   `aiortc.contrib.media.MediaRelay` proxy per subscriber and hands it to that
   subscriber's sender, which re-encodes VP8 per subscriber.

Rooms are calls of `--room-size` (2) participants, each publishing 640x480 30 fps VP8 and
seeing every other one: a room of N carries N x (N - 1) forwarded video streams (one
publisher's video at one subscriber is one stream). The default is the product's common
case, a one-to-one visit: 2 streams per room, each one inbound and one outbound stream on
the server, with no fan-out to spread a publisher's cost over.

The clients (`--client-procs` processes, `--role clients`) replay a clip encoded once at
start with libvpx (realtime, ~600 kbit/s CBR, a keyframe every `--gop` frames), and jump
to the clip's next keyframe when a PLI reaches them (`media.forward.on_keyframe_request`),
as tests/media/peers.py's Replay does. Subscribers decode nothing: their receivers are
tapped (`media.forward.tap`) and each encoded frame is counted, with its RTP timestamp, so
lost frames show as gaps. Opus is off unless `--audio` (then every participant also
publishes and receives audio; "streams" still counts video).

Per step and server kind, over the steady window (`--seconds`, after `--warmup`): each
stream's delivery rate (frames over the time between the window's first and last frame),
its frame loss (RTP timestamp gaps), how far its arrivals strayed from its media clock
(jitter plus any growing backlog), and the CPU of the server process (psutil, user +
system, all threads) in % of one core, next to the client processes' and what the rest
of the machine used, and the worst event-loop lag of the server and of the clients. A
step holds if every stream delivered >= 29.7 fps with <= 1% loss and strayed <= 250 ms.
The sweep stops at the first step that fails `--retries` + 1 times. After each window,
`--joins` late subscribers join room 0 one after the other; each measures, on the client,
from its answer being applied to the first keyframe on each of its slots (for the relay:
its PLI to the publisher, then the forwarded keyframe).

Processes: this coordinator (encodes the clip, starts and stops everything, reads CPU);
one server per step; the client processes. All children are in their own session and
are stopped on exit, on Ctrl-C and on SIGTERM; a child whose stdin closes stops by itself.

The last line is JSON: streams and cpu_per_stream (largest holding relay step),
baseline_streams and baseline_cpu_per_stream, ratio = baseline_cpu_per_stream /
cpu_per_stream, streams_per_core = 100 / cpu_per_stream, keyframe_on_join_ms (median at
that step), every step's figures and the settings. `--profile FILE` runs the relay twice
more at its largest holding step, under py-spy (self time by component) and under
cProfile (time per stage of a packet's way), and prints both. bench/README.md reads the
figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import fractions
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from procs import cpu_seconds, free_port  # bench/procs.py

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(1, str(ROOT))

WIDTH, HEIGHT, FPS = 640, 480, 30
VIDEO_STEP = 3000  # 90 kHz RTP clock, one frame at 30 fps
AUDIO_RATE = 50  # 20 ms Opus frames
HOLD_FPS = 29.7  # a step holds if every stream delivers at least this (<= 1% loss)
HOLD_DRIFT_MS = 250.0  # ... and its arrivals stray no further from its media clock
START_TIMEOUT = 60.0
CONNECT_TIMEOUT = 90.0  # every stream of a step has its first frame within this
STOP_GRACE = 15.0
CONNECT_CONCURRENCY = 6  # rooms being connected at once, per client process


# the clip ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Clip:
    video: list[bytes]  # VP8, a keyframe first and every `gop` frames
    audio: list[bytes]  # 20 ms Opus frames (empty unless --audio)


def _scene(rng: random.Random, width: int, height: int, noise: int) -> list[bytes]:
    """A textured picture larger than the frame: smooth shapes plus a little sensor noise."""
    rows = []
    for y in range(height):
        cy = math.cos(y / 17.0)
        rows.append(
            bytes(
                max(0, min(255, int(128 + 60 * math.sin(x / 23.0) * cy
                                    + 40 * math.sin((x + 2 * y) / 61.0)
                                    + rng.randint(-noise, noise))))
                for x in range(width)
            )
        )  # fmt: skip
    return rows


def encode_clip(seconds: float, gop: int, bitrate: int, audio: bool) -> Clip:
    """Encode once: a slowly panning scene with a moving block, as a webcam call looks."""
    import av

    frames = max(gop, int(seconds * FPS) // gop * gop)  # whole GOPs, so the loop keeps them
    rng = random.Random(7)
    sw, sh = WIDTH + 256, HEIGHT + 128
    scene = _scene(rng, sw, sh, noise=8)
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height = WIDTH, HEIGHT
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = fractions.Fraction(1, FPS)
    encoder.framerate = FPS
    encoder.bit_rate = bitrate
    encoder.gop_size = gop
    encoder.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(bitrate),  # minrate = maxrate = bit_rate: CBR, as a browser sends
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
    }
    kinds = av.video.frame.PictureType
    video: list[bytes] = []
    for i in range(frames):
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        px, py = int(64 + 60 * math.sin(i / 40)), int(32 + 30 * math.sin(i / 55))
        hx, hy = int(200 + 40 * math.sin(i / 9)), int(120 + 20 * math.cos(i / 7))
        luma = bytearray()
        for y in range(HEIGHT):
            row = scene[y + py][px : px + WIDTH]
            if hy <= y < hy + 200:
                moving = scene[(y * 3 + i) % sh]
                row = row[:hx] + moving[hx : hx + 200] + row[hx + 200 :]
            luma += row
        frame.planes[0].update(bytes(luma))
        for k, plane in enumerate(frame.planes[1:]):
            plane.update(bytes([120 + 10 * k]) * plane.buffer_size)
        frame.pts = i
        frame.time_base = encoder.time_base
        frame.pict_type = kinds.I if i % gop == 0 else kinds.NONE
        video += [bytes(p) for p in encoder.encode(frame)]
    video += [bytes(p) for p in encoder.encode(None)]
    sound: list[bytes] = []
    if audio:
        opus = av.CodecContext.create("libopus", "w")
        opus.sample_rate = 48_000
        opus.layout = "mono"
        opus.format = "s16"
        opus.time_base = fractions.Fraction(1, 48_000)
        samples = 48_000 // AUDIO_RATE
        for i in range(int(seconds * AUDIO_RATE)):
            start = i * samples
            tone = [
                int(6000 * math.sin(math.tau * 440 * (start + n) / 48_000)) for n in range(samples)
            ]
            chunk = av.AudioFrame(format="s16", layout="mono", samples=samples)
            chunk.planes[0].update(struct.pack(f"<{samples}h", *tone))
            chunk.sample_rate = 48_000
            chunk.pts = start
            sound += [bytes(p) for p in opus.encode(chunk)]
    return Clip(video, sound)


def save_clip(clip: Clip, path: Path) -> None:
    with path.open("wb") as out:
        for frames in (clip.video, clip.audio):
            out.write(struct.pack("<I", len(frames)))
            for data in frames:
                out.write(struct.pack("<I", len(data)))
                out.write(data)


def load_clip(path: Path) -> Clip:
    raw = path.read_bytes()
    pos = 0
    lists: list[list[bytes]] = []
    for _ in range(2):
        (count,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        frames = []
        for _ in range(count):
            (size,) = struct.unpack_from("<I", raw, pos)
            frames.append(raw[pos + 4 : pos + 4 + size])
            pos += 4 + size
        lists.append(frames)
    return Clip(lists[0], lists[1])


def clip_figures(clip: Clip) -> dict[str, Any]:
    """What one published stream puts on the wire: bit rate, frame and packet sizes."""
    from aiortc.codecs.vpx import Vp8Encoder

    from media.forward import is_vp8_keyframe

    keys = [d for d in clip.video if is_vp8_keyframe(d)]
    deltas = [d for d in clip.video if not is_vp8_keyframe(d)]
    packets = sum(len(Vp8Encoder._packetize(d, 0)) for d in clip.video)
    seconds = len(clip.video) / FPS
    return {
        "frames": len(clip.video),
        "kbit_per_s": round(sum(map(len, clip.video)) * 8 / seconds / 1000),
        "keyframe_bytes": round(statistics.mean(map(len, keys))),
        "delta_bytes": round(statistics.mean(map(len, deltas))),
        "rtp_packets_per_s": round(packets / seconds, 1),
    }


# clients -------------------------------------------------------------------------------------
@dataclass
class Window:
    start: float = math.inf
    end: float = -math.inf


def _replay_track(kind: str, frames: Sequence[bytes], rate: float, window: Window) -> Any:
    """A track that replays encoded frames, paced at `rate`, honouring keyframe requests."""
    import av
    from aiortc import MediaStreamTrack

    from media.forward import is_vp8_keyframe

    class Replay(MediaStreamTrack):
        def __init__(self) -> None:
            super().__init__()
            self.kind = kind
            self.sent = 0
            self.sent_in_window = 0
            self.window_first = self.window_last = 0.0
            self.keyframes_asked = 0
            self._index = 0
            self._step = VIDEO_STEP if kind == "video" else 48_000 // AUDIO_RATE
            self._tb = fractions.Fraction(1, 90_000 if kind == "video" else 48_000)
            self._started: float | None = None

        def jump_to_keyframe(self) -> None:
            """A PLI reached this publisher: its next frame is the clip's next keyframe."""
            self.keyframes_asked += 1
            if kind == "video":
                self._index = next(
                    i
                    for i in range(self._index, self._index + len(frames))
                    if is_vp8_keyframe(frames[i % len(frames)])
                )

        async def recv(self) -> av.Packet:
            loop = asyncio.get_running_loop()
            if self._started is None:
                self._started = loop.time()
            due = self._started + self.sent / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            packet = av.Packet(frames[self._index % len(frames)])
            self._index += 1
            packet.pts = self.sent * self._step
            packet.time_base = self._tb
            self.sent += 1
            now = time.monotonic()
            if window.start <= now < window.end:
                if not self.sent_in_window:
                    self.window_first = now
                self.sent_in_window += 1
                self.window_last = now
            return packet

        def rate(self) -> float:
            span = self.window_last - self.window_first
            return (self.sent_in_window - 1) / span if span > 0 else 0.0

    return Replay()


@dataclass
class Tally:
    """One forwarded stream at one subscriber: what arrived, and when."""

    kind: str
    window: Window
    frames: int = 0  # in the window
    octets: int = 0  # of those frames
    first_ts: int | None = None  # unwrapped RTP timestamps of the window's first and last
    last_ts: int = 0
    _prev_raw: int = 0
    first_in_window: float = 0.0  # arrival times of the window's first and last frames
    last_in_window: float = 0.0
    lag_min: float = math.inf  # arrival time minus media time, in seconds (+ a constant)
    lag_max: float = -math.inf
    first_at: float | None = None
    first_keyframe_at: float | None = None
    first_was_keyframe: bool | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    keyframed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_frame(self, frame: Any) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
            self.first_was_keyframe = frame.keyframe
            self.arrived.set()
        if frame.keyframe and self.first_keyframe_at is None:
            self.first_keyframe_at = now
            self.keyframed.set()
        if not self.window.start <= now < self.window.end:
            return
        self.frames += 1
        self.octets += len(frame.data)
        if self.first_ts is None:
            self.first_ts = self.last_ts = frame.timestamp
            self.first_in_window = now
        else:
            step = (frame.timestamp - self._prev_raw) & 0xFFFFFFFF
            self.last_ts += step - (1 << 32) if step >= 1 << 31 else step
        self._prev_raw = frame.timestamp
        self.last_in_window = now
        lag = now - (self.last_ts - self.first_ts) / self.clock
        self.lag_min = min(self.lag_min, lag)
        self.lag_max = max(self.lag_max, lag)

    @property
    def clock(self) -> int:
        return 90_000 if self.kind == "video" else 48_000

    def figures(self) -> dict[str, Any]:
        step = VIDEO_STEP if self.kind == "video" else 48_000 // AUDIO_RATE
        expected = 0 if self.first_ts is None else (self.last_ts - self.first_ts) // step + 1
        span = self.last_in_window - self.first_in_window
        return {
            # the delivery rate between the window's first and last frames: not the count
            # over the window, whose edges move it by a frame either way
            "fps": (self.frames - 1) / span if self.frames > 1 and span > 0 else 0.0,
            "frames": self.frames,
            "expected": expected,
            "lost": max(0, expected - self.frames),
            # how far arrivals drifted from the media clock: jitter, plus any growing backlog
            "delay_spread_ms": (self.lag_max - self.lag_min) * 1e3 if self.frames else None,
            "kbit_per_s": self.octets * 8 / span / 1000 if span > 0 else 0.0,
        }


class BenchPeer:
    """A participant's peer connection: publishes the clip (unless not), receives `slots`."""

    def __init__(
        self, clip: Clip, window: Window, *, publish: bool, slots: int, audio: bool
    ) -> None:
        from aiortc import (
            MediaStreamTrack,
            RTCBundlePolicy,
            RTCConfiguration,
            RTCPeerConnection,
        )

        from media.forward import on_keyframe_request, tap

        # max-bundle: aiortc's balanced policy orphans the second and later video m-lines
        self.pc = RTCPeerConnection(RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.video: Any = None
        self.tallies: dict[str, Tally] = {}  # by mid
        self.connected_at: float | None = None
        if publish:
            if audio:
                track = _replay_track("audio", clip.audio, AUDIO_RATE, window)
                self.pc.addTransceiver(track, direction="sendonly")
            self.video = _replay_track("video", clip.video, FPS, window)
            sender = self.pc.addTransceiver(self.video, direction="sendonly").sender
            on_keyframe_request(sender, self.video.jump_to_keyframe)
        for _ in range(slots):
            if audio:
                self.pc.addTransceiver("audio", direction="recvonly")
            self.pc.addTransceiver("video", direction="recvonly")

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
            tally = self.tallies[str(transceiver.mid)] = Tally(track.kind, window)
            tap(transceiver.receiver, track.kind, tally.on_frame)

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected" and self.connected_at is None:
                self.connected_at = time.monotonic()

    def video_tallies(self) -> list[Tally]:
        return [t for t in self.tallies.values() if t.kind == "video"]

    async def join(self, http: Any, url: str, room: str, participant: str) -> float:
        """Offer, take the server's answer; the monotonic time the answer was applied."""
        from aiortc import RTCSessionDescription

        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"room": room, "participant": participant, "sdp": self.pc.localDescription.sdp}
        async with asyncio.timeout(60), http.post(url + "/offer", json=body) as response:
            answer = await response.json()
            if response.status != 200:
                raise RuntimeError(f"{room}/{participant} refused: {answer}")
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        return time.monotonic()

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.pc.close()


class LagProbe:
    """How late the event loop wakes a 10 ms sleep: what a stalled loop does to every stream."""

    PERIOD = 0.01

    def __init__(self) -> None:
        self.late: list[tuple[float, float]] = []  # (monotonic time, seconds late) over 2 ms

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.PERIOD)
            now = time.monotonic()
            if (late := now - before - self.PERIOD) > 0.002:
                self.late.append((now, late))

    def worst_ms(self, start: float, end: float) -> float:
        return max((late * 1e3 for at, late in self.late if start <= at < end), default=0.0)


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def emit(kind: str, value: Any) -> None:
    sys.stdout.write(json.dumps({kind: value}) + "\n")
    sys.stdout.flush()


async def wait_all(events: list[asyncio.Event], within: float) -> int:
    """Wait until every event is set, at most `within` seconds; how many are not."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            for event in events:
                await event.wait()
    return sum(1 for event in events if not event.is_set())


async def fetch_json(http: Any, url: str) -> dict[str, Any]:
    async with asyncio.timeout(30), http.get(url) as response:
        body: dict[str, Any] = await response.json()
        return body


async def late_joins(
    a: argparse.Namespace, clip: Clip, http: Any, room: str, count: int
) -> list[dict[str, Any]]:
    """Subscribers joining a running room, one at a time: answer to first keyframe, per slot."""
    joins = []
    for j in range(count):
        peer = BenchPeer(clip, Window(), publish=False, slots=a.room_size, audio=a.audio)
        name = f"late-{j}"
        try:
            applied = await peer.join(http, a.url, room, name)
            tallies = peer.video_tallies()
            await wait_all([t.keyframed for t in tallies], 20)
            server = await fetch_json(http, f"{a.url}/stats?room={room}&participant={name}")

            def since(at: float | None, applied: float = applied) -> float | None:
                return None if at is None else (at - applied) * 1e3

            joins.append(
                {
                    "keyframe_ms": [since(t.first_keyframe_at) for t in tallies],
                    "connected_ms": since(peer.connected_at),
                    "first_was_keyframe": [t.first_was_keyframe for t in tallies],
                    "server_keyframe_wait_ms": server.get("keyframe_waits_ms", []),
                }
            )
            async with asyncio.timeout(30):
                leave = {"room": room, "participant": name}
                async with http.post(a.url + "/leave", json=leave) as response:
                    await response.read()
        finally:
            await peer.close()
        await asyncio.sleep(0.3)  # past KEYFRAME_REQUEST_INTERVAL: each join asks anew
    return joins


async def run_clients(a: argparse.Namespace) -> None:
    import gc

    import aiohttp

    clip = load_clip(Path(a.clip))
    window = Window()
    rooms: list[str] = json.loads(a.rooms)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    peers: list[BenchPeer] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect_room(room: str) -> None:
        async with gate:
            for n in range(a.room_size):
                peer = BenchPeer(clip, window, publish=True, slots=a.room_size - 1, audio=a.audio)
                peers.append(peer)
                await peer.join(http, a.url, room, f"p{n}")

    stdin = await _stdin_reader()
    probe = LagProbe()
    probing = asyncio.create_task(probe.run())
    try:
        await asyncio.gather(*(connect_room(room) for room in rooms))
        tallies = [t for p in peers for t in p.video_tallies()]
        missing = await wait_all([t.arrived for t in tallies], CONNECT_TIMEOUT)
        gc.collect()
        gc.freeze()  # connecting's leftovers, out of the collector's way (both kinds alike)
        emit("ready", {"streams": len(tallies), "missing": missing})
        line = await stdin.readline()
        if not line:
            return
        go = json.loads(line)
        window.start, window.end = go["start"], go["end"]
        await asyncio.sleep(max(0.0, window.end - time.monotonic() + 0.2))
        joins = await late_joins(a, clip, http, rooms[0], go["joins"]) if go["joins"] else []
        streams = [t.figures() for t in tallies]
        audio = [t.figures() for p in peers for t in p.tallies.values() if t.kind == "audio"]
        emit(
            "result",
            {
                "streams": streams,
                "audio_fps": [s["fps"] for s in audio],
                "publisher_fps": [p.video.rate() for p in peers if p.video],
                "keyframes_asked": sum(p.video.keyframes_asked for p in peers if p.video),
                "joins": joins,
                "loop_lag_max_ms": probe.worst_ms(window.start, window.end),
            },
        )
    finally:
        probing.cancel()
        await asyncio.gather(probing, return_exceptions=True)
        await asyncio.gather(*(peer.close() for peer in peers))
        await http.close()


# the servers ---------------------------------------------------------------------------------
class BaselineRoom:
    """Stock aiortc: decode each publisher once, re-encode per subscriber (MediaRelay).

    The offers are the relay's (what a participant publishes, then its receiving slots),
    so the answer's senders are made per slot before the offer is read, as RelayRoom
    does; `MediaRelay.subscribe(track)` then goes to a slot with `replaceTrack`, which is
    what `addTrack` does to a free transceiver, aimed at the slot's m-line.
    """

    def __init__(self, name: str) -> None:
        from aiortc.contrib.media import MediaRelay

        self.name = name
        self.relay = MediaRelay()
        self.pcs: dict[str, Any] = {}
        self.sources: dict[str, dict[str, Any]] = {}  # participant -> kind -> remote track
        self.slots: dict[str, list[dict[str, Any]]] = {}  # participant -> [kind -> sender]
        self.seated: dict[str, list[str | None]] = {}  # participant -> source per slot

    async def connect(self, participant: str, offer_sdp: str) -> str:
        from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
        from aiortc.sdp import SessionDescription

        from media.relay import PREFERRED, ice_configuration

        pc = RTCPeerConnection(ice_configuration(()))
        receiving: dict[str, Any] = {}
        senders: dict[str, list[Any]] = {"audio": [], "video": []}
        for media in SessionDescription.parse(offer_sdp).media:
            if media.direction in ("sendonly", "sendrecv") and media.kind not in receiving:
                transceiver = pc.addTransceiver(media.kind, direction="recvonly")
                receiving[media.kind] = transceiver
            else:
                transceiver = pc.addTransceiver(media.kind, direction="sendonly")
                senders[media.kind].append(transceiver.sender)
            codecs = RTCRtpSender.getCapabilities(media.kind).codecs
            transceiver.setCodecPreferences(
                [c for c in codecs if c.mimeType in (PREFERRED[media.kind], f"{media.kind}/rtx")]
            )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        self.pcs[participant] = pc
        self.sources[participant] = {k: t.receiver.track for k, t in receiving.items()}
        count = max(len(senders["audio"]), len(senders["video"]))
        self.slots[participant] = [
            {k: s[i] for k, s in senders.items() if i < len(s)} for i in range(count)
        ]
        self.seated[participant] = [None] * count
        self._arrange()
        return str(pc.localDescription.sdp)

    def _arrange(self) -> None:
        for viewer, seats in self.seated.items():
            for source, tracks in self.sources.items():
                if source == viewer or not tracks or source in seats or None not in seats:
                    continue
                index = seats.index(None)
                seats[index] = source
                for kind, sender in self.slots[viewer][index].items():
                    if kind in tracks:
                        sender.replaceTrack(self.relay.subscribe(tracks[kind]))

    async def leave(self, participant: str) -> None:
        pc = self.pcs.pop(participant, None)
        self.sources.pop(participant, None)
        self.slots.pop(participant, None)
        self.seated.pop(participant, None)
        if pc is not None:
            await pc.close()

    async def close(self) -> None:
        for participant in list(self.pcs):
            await self.leave(participant)

    def stats(self) -> dict[str, Any]:
        return {}


def relay_stats(room: Any) -> dict[str, Any]:
    outlets = [o for p in room.peers.values() for s in p.slots for o in s.outlets.values()]
    return {
        "outlets": len(outlets),
        "dropped": sum(o.dropped for o in outlets),
        "queued_max": max((o.queued for o in outlets), default=0),
    }


def role_server(a: argparse.Namespace) -> None:
    import logging

    from aiohttp import web

    logging.basicConfig(level=logging.WARNING)
    rooms_key = web.AppKey("rooms", dict)
    probe_key = web.AppKey("probe", LagProbe)

    def new_room(name: str) -> Any:
        if a.kind == "relay":
            from media.relay import RelayRoom

            return RelayRoom(name)
        return BaselineRoom(name)

    async def probe_ctx(app: web.Application) -> AsyncIterator[None]:
        app[probe_key] = probe = LagProbe()
        task = asyncio.create_task(probe.run())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def rooms_ctx(app: web.Application) -> AsyncIterator[None]:
        app[rooms_key] = rooms = {}
        yield
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE / 2):
                await asyncio.gather(*(room.close() for room in rooms.values()))

    async def offer(request: web.Request) -> web.Response:
        from media.relay import RelayRefused

        body = await request.json()
        rooms = request.app[rooms_key]
        room = rooms.get(body["room"]) or rooms.setdefault(body["room"], new_room(body["room"]))
        try:
            answer = await room.connect(body["participant"], body["sdp"])
        except RelayRefused as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"sdp": answer})

    async def leave(request: web.Request) -> web.Response:
        body = await request.json()
        room = request.app[rooms_key].get(body["room"])
        if room is not None:
            await room.leave(body["participant"])
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        if "start" in request.query:  # the event loop's worst lag in a window
            start, end = float(request.query["start"]), float(request.query["end"])
            worst = request.app[probe_key].worst_ms(start, end)
            return web.json_response({"loop_lag_max_ms": worst})
        if a.kind != "relay":
            return web.json_response({})
        if "participant" in request.query:  # a late joiner's outlets: switch to keyframe
            room = request.app[rooms_key].get(request.query["room"])
            peer = room.peers.get(request.query["participant"]) if room else None
            waits = [
                ms
                for slot in (peer.slots if peer else [])
                for outlet in slot.outlets.values()
                for ms in outlet.keyframe_waits_ms
            ]
            return web.json_response({"keyframe_waits_ms": waits})
        rooms = request.app[rooms_key].values()
        each = [relay_stats(room) for room in rooms]
        return web.json_response(
            {
                "outlets": sum(s["outlets"] for s in each),
                "dropped": sum(s["dropped"] for s in each),
                "queued_max": max((s["queued_max"] for s in each), default=0),
            }
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"kind": a.kind})

    profiling: dict[str, Any] = {}  # the cProfile run the coordinator asked for, if any

    async def profile_start(request: web.Request) -> web.Response:
        import cProfile

        # CPU time of this thread (the event loop, where the relay does all its work): not
        # wall time, which would count the waits for a core on a shared machine
        profiling["profiler"] = profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        return web.json_response({"ok": True})

    async def profile_stop(request: web.Request) -> web.Response:
        profiler = profiling.pop("profiler")
        profiler.disable()
        await asyncio.to_thread(profiler.dump_stats, (await request.json())["path"])
        return web.json_response({"ok": True})

    async def serve() -> None:
        app = web.Application()
        app.cleanup_ctx.append(probe_ctx)
        app.cleanup_ctx.append(rooms_ctx)
        app.router.add_post("/offer", offer)
        app.router.add_post("/leave", leave)
        app.router.add_get("/stats", stats)
        app.router.add_get("/healthz", healthz)
        app.router.add_post("/profile/start", profile_start)
        app.router.add_post("/profile/stop", profile_stop)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", a.port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        stdin = await _stdin_reader()
        watcher = asyncio.create_task(stdin.read())  # EOF: the coordinator is gone
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({watcher, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for task in (watcher, waiter):
            task.cancel()
        await asyncio.gather(watcher, waiter, return_exceptions=True)
        await runner.cleanup()

    asyncio.run(serve())


def role_clients(a: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_clients(a))


# the coordinator -----------------------------------------------------------------------------
def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process)."""
    import psutil

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


class Children:
    """Every process this run starts: stopped on exit, on Ctrl-C and on SIGTERM."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the coordinator, which stops them in order
            **kwargs,
        )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            with contextlib.suppress(OSError):
                if process.stdin is not None:
                    process.stdin.close()
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.processes)):
            self.stop(process)


def wait_http(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url}")


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=10.0) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return {}


def post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60.0) as response:
        return json.loads(response.read())


def read_line(process: subprocess.Popen[str], what: str, timeout: float) -> dict[str, Any]:
    """The next JSON line of a child's stdout, within `timeout` seconds."""
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise RuntimeError(f"no {what} from a client process within {timeout:g} s")
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"a client process exited before its {what}")
            if line.startswith("{"):
                message: dict[str, Any] = json.loads(line)
                if what in message:
                    return message


def run_step(
    a: argparse.Namespace,
    children: Children,
    clip_path: Path,
    kind: str,
    streams: int,
    profile: tuple[str, str] | None = None,  # ("py-spy" or "cprofile", output file)
) -> dict[str, Any]:
    per_room = a.room_size * (a.room_size - 1)
    rooms = [f"room-{i}" for i in range(max(1, streams // per_room))]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = children.start(
        [sys.executable, str(SCRIPT), "--role", "server", "--kind", kind, "--port", str(port)]
    )
    clients: list[subprocess.Popen[str]] = []
    try:
        wait_http(url + "/healthz", server)
        procs = max(1, min(a.client_procs, len(rooms)))
        for c in range(procs):
            clients.append(
                children.start(
                    [
                        sys.executable,
                        str(SCRIPT),
                        "--role",
                        "clients",
                        "--url",
                        url,
                        "--clip",
                        str(clip_path),
                        "--rooms",
                        json.dumps(rooms[c::procs]),
                        "--room-size",
                        str(a.room_size),
                    ]
                    + (["--audio"] if a.audio else []),
                    stdout=subprocess.PIPE,
                )  # fmt: skip
            )
        started = time.monotonic()
        ready = [read_line(c, "ready", CONNECT_TIMEOUT + 60)["ready"] for c in clients]
        connect_s = time.monotonic() - started
        start = time.monotonic() + a.warmup
        end = start + a.seconds
        for n, client in enumerate(clients):
            assert client.stdin is not None
            go = {"start": start, "end": end, "joins": a.joins if n == 0 else 0}
            client.stdin.write(json.dumps(go) + "\n")
            client.stdin.flush()
        time.sleep(max(0.0, start - time.monotonic()))
        profiler = None
        if profile and profile[0] == "py-spy":
            profiler = start_profile(server.pid, a.seconds, profile[1])
        elif profile:
            post_json(url + "/profile/start", {})
        pids = [c.pid for c in clients]
        cpu0 = (cpu_seconds([server.pid]), cpu_seconds(pids), machine_busy(), time.monotonic())
        time.sleep(max(0.0, end - time.monotonic()))
        cpu1 = (cpu_seconds([server.pid]), cpu_seconds(pids), machine_busy(), time.monotonic())
        if profile and profile[0] == "cprofile":
            post_json(url + "/profile/stop", {"path": profile[1]})
        results = [read_line(c, "result", 120)["result"] for c in clients]
        server_stats = get_json(url + "/stats")
        server_lag = get_json(f"{url}/stats?start={start}&end={end}").get("loop_lag_max_ms")
        if profiler is not None:
            profiler.wait(timeout=120)
    finally:
        for client in clients:
            children.stop(client)
        children.stop(server)
    wall = cpu1[3] - cpu0[3]
    server_cpu, clients_cpu = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    figures = [s for r in results for s in r["streams"]]
    fps = [s["fps"] for s in figures]
    expected = sum(s["expected"] for s in figures)
    lost = sum(s["lost"] for s in figures)
    publisher_fps = [f for r in results for f in r["publisher_fps"]]
    joins = [j for r in results for j in r["joins"]]
    keyframe_ms = [ms for j in joins for ms in j["keyframe_ms"] if ms is not None]
    server_percent = 100 * server_cpu / wall
    step = {
        "kind": kind,
        "streams": len(figures),
        "rooms": len(rooms),
        "missing": sum(r["missing"] for r in ready),
        "fps_min": round(min(fps, default=0.0), 2),
        "fps_mean": round(statistics.mean(fps), 2) if fps else 0.0,
        "kbit_per_s_mean": round(statistics.mean(s["kbit_per_s"] for s in figures))
        if figures
        else 0,
        "loss_percent": round(100 * lost / expected, 3) if expected else 100.0,
        "loss_max_percent": round(
            max((100 * s["lost"] / s["expected"] for s in figures if s["expected"]), default=0), 2
        ),
        "holds": bool(fps)
        and min(fps) >= HOLD_FPS
        and all(s["lost"] <= 0.01 * s["expected"] for s in figures)
        and all((s["delay_spread_ms"] or 0) <= HOLD_DRIFT_MS for s in figures)
        and len(figures) == streams,
        "delay_spread_max_ms": round(
            max((s["delay_spread_ms"] or 0 for s in figures), default=0), 1
        ),
        "server_cpu_percent": round(server_percent, 1),
        "cpu_per_stream": round(server_percent / len(figures), 3) if figures else None,
        "clients_cpu_percent": round(100 * clients_cpu / wall, 1),
        "other_cpu_percent": round(100 * (cpu1[2] - cpu0[2] - server_cpu - clients_cpu) / wall, 1),
        "publisher_fps_min": round(min(publisher_fps, default=0.0), 2),
        "server_loop_lag_max_ms": None if server_lag is None else round(server_lag, 1),
        "clients_loop_lag_max_ms": round(max(r["loop_lag_max_ms"] for r in results), 1),
        "keyframes_asked": sum(r["keyframes_asked"] for r in results),
        "server_dropped": server_stats.get("dropped"),
        "keyframe_on_join_ms": median(keyframe_ms),
        "join_connected_ms": median([j["connected_ms"] for j in joins if j["connected_ms"]]),
        "join_first_frame_keyframe": all(all(j["first_was_keyframe"]) for j in joins),
        "join_keyframe_ms": [round(ms, 1) for ms in keyframe_ms],
        "join_server_keyframe_wait_ms": [
            round(ms, 1) for j in joins for ms in j.get("server_keyframe_wait_ms", [])
        ],
        "connect_s": round(connect_s, 1),
    }
    if audio_fps := [f for r in results for f in r["audio_fps"]]:
        step["audio_fps_min"] = round(min(audio_fps), 2)
    return step


def start_profile(pid: int, seconds: float, path: str) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}/usr/local/bin")
    if spy is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return subprocess.Popen(
        [spy, "record", "--nonblocking", "--function", "--pid", str(pid),
         "--duration", str(int(seconds)), "--rate", "200", "--format", "raw", "--output", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")

# py-spy: where the server's busy samples END (self time), grouped by component; the first
# match of the leaf frame wins, so the shares add up to 100%. Its stacks are not used for
# stages: for these resumed coroutines py-spy (0.4, CPython 3.11) put a good part of the
# send path's samples under the receiver's RTCP (`_handle_rtp_packet -> _send_rtcp`,
# 11-15% of the samples, where cProfile counts ~1%), so the stages come from cProfile.
COMPONENTS: list[tuple[str, str, tuple[str, ...] | None]] = [
    ("UDP send: the sendto syscall", "asyncio/selector_events.py",
     ("_SelectorDatagramTransport.sendto",)),
    ("UDP receive: recvfrom, datagram dispatch", "asyncio/selector_events.py",
     ("_SelectorDatagramTransport._read_ready",)),
    ("SRTP encrypt and decrypt (pylibsrtp, libsrtp in C)", "pylibsrtp/", None),
    ("REMB bandwidth estimator (aiortc/rate.py)", "aiortc/rate.py", None),
    ("RTP/RTCP parse and serialize (aiortc/rtp.py)", "aiortc/rtp.py", None),
    ("jitter buffer (aiortc/jitterbuffer.py)", "aiortc/jitterbuffer.py", None),
    ("VP8 payload descriptor, codec lookup (aiortc/codecs)", "aiortc/codecs/", None),
    ("RTCRtpReceiver: stats, NACK, RTCP (aiortc)", "aiortc/rtcrtpreceiver.py", None),
    ("RTCRtpSender: packet loop, RTCP (aiortc)", "aiortc/rtcrtpsender.py", None),
    ("DTLS transport: RTP routing (aiortc)", "aiortc/rtcdtlstransport.py", None),
    ("NTP clock (aiortc/clock.py)", "aiortc/clock.py", None),
    ("ICE connection (aioice)", "aioice/", None),
    ("the relay (media/relay.py, media/forward.py)", "media/", None),
    ("event loop, selector, queues, tasks (asyncio)", "asyncio/", None),
    ("event loop, selector, queues, tasks (asyncio)", "selectors.py", None),
    ("aiortc, other", "aiortc/", None),
]  # fmt: skip


def component(function: str, file: str) -> str:
    for label, part, functions in COMPONENTS:
        if part in file and (functions is None or function in functions):
            return label
    return "other"


def finish_spy(path: str) -> dict[str, Any]:
    own: collections.Counter[str] = collections.Counter()
    parts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        if "decoder_worker" in stack:
            continue  # aiortc's idle decoder threads, parked on the relay's tap
        n = int(count)
        total += n
        own[leaf] += n
        match = FRAME.match(leaf)
        parts[component(match["function"], match["file"]) if match else "other"] += n
    if not total:
        print(f"\npy-spy: no samples in {path}")
        return {}
    print(f"\npy-spy, relay server ({total} busy samples at 200 Hz): self time by component")
    for label, n in parts.most_common():
        print(f"  {100 * n / total:5.1f}%  {label}")
    print("top functions, self time:")
    for frame, n in own.most_common(20):
        print(f"  {100 * n / total:5.1f}%  {_short(frame)[:110]}")
    return {
        "samples": total,
        "components": {k: round(100 * v / total, 1) for k, v in parts.most_common()},
        "top": {_short(k)[:110]: round(100 * v / total, 1) for k, v in own.most_common(12)},
    }


# cProfile: cumulative time of each stage of a packet's way through the relay server, as
# (label, file part, function name); the outermost match (largest cumulative) is taken.
STAGES: list[tuple[str, str, str]] = [
    ("UDP read: _read_ready (recvfrom, aioice, queue)", "asyncio/selector_events.py",
     "_read_ready"),
    ("receive task: RTCDtlsTransport._recv_next (aioice queue hop, all below)",
     "aiortc/rtcdtlstransport.py", "_recv_next"),
    ("receive, per packet in: _handle_rtp_data", "aiortc/rtcdtlstransport.py",
     "_handle_rtp_data"),
    ("  SRTP decrypt (unprotect)", "pylibsrtp/", "unprotect"),
    ("  RTP parse", "aiortc/rtp.py", "parse"),
    ("  RTCRtpReceiver._handle_rtp_packet", "aiortc/rtcrtpreceiver.py", "_handle_rtp_packet"),
    ("    REMB estimator (RemoteBitrateEstimator.add)", "aiortc/rate.py", "add"),
    ("    jitter buffer (JitterBuffer.add)", "aiortc/jitterbuffer.py", "add"),
    ("    VP8 depayload", "aiortc/codecs/__init__.py", "depayload"),
    ("    the relay: tap, Feed.push, Outlet.offer", "media/forward.py", "put"),
    ("send, per frame out: RTCRtpSender._run_rtp", "aiortc/rtcrtpsender.py", "_run_rtp"),
    ("  the relay: Outlet.recv, packet_of", "media/relay.py", "recv"),
    ("  VP8 packetize (Vp8Encoder.pack)", "aiortc/codecs/vpx.py", "pack"),
    ("  RTP serialize", "aiortc/rtp.py", "serialize"),
    ("  RTCDtlsTransport._send_rtp", "aiortc/rtcdtlstransport.py", "_send_rtp"),
    ("    SRTP encrypt (protect)", "pylibsrtp/", "protect"),
    ("    aioice Connection.send", "aioice/ice.py", "send"),
    ("      the sendto syscall", "~", "<method 'sendto' of '_socket.socket' objects>"),
]  # fmt: skip


def finish_cprofile(path: str, seconds: float) -> dict[str, Any]:
    import pstats

    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    busy = sum(tt for _, _, tt, _, _ in stats.values())  # CPU time of the event loop
    print(
        f"\ncProfile, relay server event loop: {busy:.2f} s of CPU in {seconds:g} s (cProfile "
        "slows Python code more than C: read the shares)"
    )
    print("  % busy     calls   µs/call  stage (cumulative)")
    stages = {}
    for label, part, name in STAGES:
        found = [v for (f, _, n), v in stats.items() if part in f and n == name]
        if not found:
            continue
        calls, _, _, cumulative, _ = max(found, key=lambda v: v[3])
        stages[label.strip()] = round(100 * cumulative / busy, 1)
        share, per_call = 100 * cumulative / busy, 1e6 * cumulative / calls
        print(f"  {share:6.1f}  {calls:8d}  {per_call:8.1f}  {label}")
    print("top functions, own time:")
    ranked = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)
    for (file, line, name), (_, calls, own, _, _) in ranked[:16]:
        print(f"  {100 * own / busy:5.1f}%  {calls:8d}  {_short(file)}:{line}({name})")
    return {"cpu_s": round(busy, 2), "stages": stages}


def _short(text: str) -> str:
    """A frame or a path without the virtualenv's and the interpreter's folders."""
    text = text.replace(str(ROOT) + "/", "")
    return re.sub(r"[^\s(]*/(?:site-packages|lib/python3\.\d+)/", "", text)


def sweep(
    a: argparse.Namespace, children: Children, clip_path: Path, kind: str, steps: list[int]
) -> list[dict[str, Any]]:
    """Each step in turn, until one fails `--retries` + 1 times (both kinds alike)."""
    done = []
    for streams in steps:
        for attempt in range(1 + a.retries):
            step = run_step(a, children, clip_path, kind, streams)
            step["attempt"] = attempt + 1
            done.append(step)
            print(describe(step), flush=True)
            if step["holds"]:
                break
        if not step["holds"] and not a.keep_going:
            break
    return done


NOISY = 25.0  # % of a core used by processes not in the run: above it, say so


def describe(step: dict[str, Any]) -> str:
    cpu = step["cpu_per_stream"]
    verdict = "holds" if step["holds"] else "FAILS"
    if step["other_cpu_percent"] > NOISY:
        verdict += " (NOISE: other processes busy)"
    return (
        f"{step['kind']:8} {step['streams']:4} streams  fps min {step['fps_min']:5.2f}  "
        f"loss {step['loss_percent']:.2f}%  delay spread {step['delay_spread_max_ms']:6.1f} ms | "
        f"CPU % of a core: server {step['server_cpu_percent']:5.1f} "
        f"({'-' if cpu is None else f'{cpu:.2f}'}/stream), clients "
        f"{step['clients_cpu_percent']:5.1f}, other {step['other_cpu_percent']:5.1f} | "
        f"loop lag max: server {step['server_loop_lag_max_ms']} ms, clients "
        f"{step['clients_loop_lag_max_ms']} ms | join keyframe {step['keyframe_on_join_ms']} ms "
        f"| {verdict}"
    )


def largest_holding(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    holding = [s for s in steps if s["holds"]]
    return max(holding, key=lambda s: s["streams"]) if holding else None


def steps_of(text: str, per_room: int) -> list[int]:
    """Stream counts, rounded up to whole rooms."""
    steps = []
    for part in text.split(","):
        wanted = int(part)
        rounded = max(per_room, -(-wanted // per_room) * per_room)
        if rounded not in steps:
            steps.append(rounded)
    return steps


def coordinate(a: argparse.Namespace, tmp: Path, children: Children) -> dict[str, Any]:
    per_room = a.room_size * (a.room_size - 1)
    t0 = time.monotonic()
    clip = encode_clip(a.clip_seconds, a.gop, a.bitrate, a.audio)
    clip_path = tmp / "clip.bin"
    save_clip(clip, clip_path)
    clip_info = clip_figures(clip)
    print(f"clip encoded in {time.monotonic() - t0:.1f} s: {clip_info}", flush=True)

    relay_steps = sweep(a, children, clip_path, "relay", steps_of(a.steps, per_room))
    baseline_steps = sweep(a, children, clip_path, "baseline", steps_of(a.baseline_steps, per_room))
    relay = largest_holding(relay_steps)
    baseline = largest_holding(baseline_steps)

    profile = None
    if a.profile:
        at = relay or relay_steps[0]
        profile = {"streams": at["streams"]}
        for tool, path in (("py-spy", a.profile), ("cprofile", a.profile + ".pstats")):
            print(f"\nprofiling the relay at {at['streams']} streams with {tool}", flush=True)
            step = run_step(a, children, clip_path, "relay", at["streams"], (tool, path))
            print("  " + describe(step), flush=True)
            if tool == "py-spy":
                profile[tool] = finish_spy(path)
            else:
                profile[tool] = finish_cprofile(path, a.seconds)

    cpu = relay["cpu_per_stream"] if relay else None
    base_cpu = baseline["cpu_per_stream"] if baseline else None
    ratio = round(base_cpu / cpu, 2) if cpu and base_cpu else None
    per_core = round(100 / cpu, 1) if cpu else None
    return {
        "streams": relay["streams"] if relay else 0,
        "cpu_per_stream": cpu,
        "server_cpu_percent": relay["server_cpu_percent"] if relay else None,
        "clients_cpu_percent": relay["clients_cpu_percent"] if relay else None,
        "other_cpu_percent": relay["other_cpu_percent"] if relay else None,
        "fps_min": relay["fps_min"] if relay else None,
        "loss_percent": relay["loss_percent"] if relay else None,
        "baseline_streams": baseline["streams"] if baseline else 0,
        "baseline_cpu_per_stream": base_cpu,
        "baseline_server_cpu_percent": baseline["server_cpu_percent"] if baseline else None,
        "baseline_clients_cpu_percent": baseline["clients_cpu_percent"] if baseline else None,
        "ratio": ratio,
        "streams_per_core": per_core,
        "keyframe_on_join_ms": relay["keyframe_on_join_ms"] if relay else None,
        "join_connected_ms": relay["join_connected_ms"] if relay else None,
        "baseline_keyframe_on_join_ms": baseline["keyframe_on_join_ms"] if baseline else None,
        "targets_met": bool(ratio and per_core and ratio >= 10 and per_core >= 100),
        # what other processes of the machine used during the steps, in % of one core: above
        # NOISY the CPU figures move (contention batches packets: less CPU per stream)
        "other_cpu_percent_max": max(s["other_cpu_percent"] for s in relay_steps + baseline_steps),
        "noisy": any(s["other_cpu_percent"] > NOISY for s in relay_steps + baseline_steps),
        "relay_steps": relay_steps,
        "baseline_steps": baseline_steps,
        "profile": profile,
        "clip": clip_info,
        "room_size": a.room_size,
        "audio": a.audio,
        "seconds": a.seconds,
        "warmup": a.warmup,
        "joins": a.joins,
        "client_procs": a.client_procs,
        "bitrate": a.bitrate,
        "gop": a.gop,
        "cores": os.cpu_count(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--steps", default="8,16,32,48,64,80,96,128",
                   help="relay load steps, in forwarded video streams")  # fmt: skip
    p.add_argument("--baseline-steps", default="2,4,6,8,10,12,16",
                   help="baseline load steps, in forwarded video streams")  # fmt: skip
    p.add_argument("--retries", type=int, default=1,
                   help="times a failing step runs again before the sweep stops")  # fmt: skip
    p.add_argument("--keep-going", action="store_true",
                   help="run every step, not stopping at the first that fails")  # fmt: skip
    p.add_argument("--room-size", type=int, default=2, help="participants per room, all publish")
    p.add_argument("--audio", action="store_true", help="Opus too (streams still count video)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured window per step")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds not measured per step")
    p.add_argument("--joins", type=int, default=4, help="late subscribers after each window")
    p.add_argument("--client-procs", type=int, default=2, help="client processes")
    p.add_argument("--bitrate", type=int, default=600_000, help="the clip's VP8 bit rate")
    p.add_argument("--gop", type=int, default=90, help="frames between the clip's keyframes")
    p.add_argument("--clip-seconds", type=float, default=9.0, help="length of the replayed clip")
    p.add_argument("--profile", metavar="FILE",
                   help="profile the relay server at its largest holding step: py-spy's raw "
                   "stacks to FILE, then cProfile's to FILE.pstats (two more steps)")  # fmt: skip
    p.add_argument("--role", choices=("server", "clients"), help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=("relay", "baseline"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--clip", help=argparse.SUPPRESS)
    p.add_argument("--rooms", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.room_size < 2:
        p.error("--room-size must be at least 2")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.role == "server":
        role_server(a)
        return 0
    if a.role == "clients":
        role_clients(a)
        return 0
    children = Children()

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-relay-") as folder:
            result = coordinate(a, Path(folder), children)
    except KeyboardInterrupt:
        print("interrupted: stopping the child processes", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
