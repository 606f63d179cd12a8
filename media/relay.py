"""The selective forwarding relay: each participant's encoded frames go to the others as-is.

A participant's browser opens one peer connection to the server. Its offer holds, in
this order, what it publishes (an audio and, unless audio-only, a video m-line, `sendonly`)
and its receiving slots (pairs of `recvonly` audio and video m-lines, one pair per other
participant it can see). The server answers every m-line at once, so a participant
joining or leaving never renegotiates: the relay points a free slot of each subscriber
at the newcomer's feed and tells the browser which participant sits in which slot
(`Slot.describe()`, by mid).

Nothing is decoded or encoded: `media.forward` taps each publisher's receiver for whole
encoded frames, a `Feed` fans them out, and each subscriber's `Outlet` (the track of one
slot's sender) hands them to aiortc's sender, which only re-packetizes them. VP8 and Opus
only, so every publisher's frames suit every subscriber.

Keyframes: a subscriber's PLI/FIR, a new subscriber, a slot pointed at another feed, and
a subscriber that fell behind all ask the publisher for one (at most every
`KEYFRAME_REQUEST_INTERVAL` per feed, again and again while an outlet waits); a video
outlet forwards nothing until one arrives.

Memory: an outlet holds at most `OUTLET_FRAMES` frames. When its sender stops taking
them (a stalled subscriber), the outlet drops what it holds and waits for the next
keyframe, so it never grows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from media import forward
from media.forward import EncodedFrame

log = logging.getLogger(__name__)

OUTLET_FRAMES = {"video": 60, "audio": 100}  # about 2 s of each
FRAME_STEP = {"video": 3000, "audio": 960}  # one frame at 30 fps; 20 ms of Opus
KEYFRAME_REQUEST_INTERVAL = 0.25  # seconds between two PLIs to the same publisher
PREFERRED = {"video": "video/VP8", "audio": "audio/opus"}
KINDS = ("audio", "video")


class RelayRefused(Exception):
    """An offer the relay cannot serve, with the reason in plain words."""


Listener = Callable[[EncodedFrame], None]


class Feed:
    """One publisher's track: its encoded frames, fanned out to outlets and listeners."""

    def __init__(self, participant: str, kind: str, receiver: RTCRtpReceiver) -> None:
        self.participant = participant
        self.kind = kind
        self.receiver = receiver
        self.outlets: set[Outlet] = set()
        self.listeners: list[Listener] = []
        self.frames = 0
        self._last_request = float("-inf")
        self._requests: set[asyncio.Task[bool]] = set()

    def push(self, frame: EncodedFrame) -> None:
        self.frames += 1
        for outlet in tuple(self.outlets):
            outlet.offer(frame)
        for listener in tuple(self.listeners):
            listener(frame)

    def request_keyframe(self) -> None:
        if self.kind != "video":
            return
        now = time.monotonic()
        if now - self._last_request < KEYFRAME_REQUEST_INTERVAL:
            return
        self._last_request = now
        task = asyncio.ensure_future(forward.request_keyframe(self.receiver))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)


class Outlet(MediaStreamTrack):
    """The track of one subscriber's slot: a bounded queue of the feed's frames."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.capacity = OUTLET_FRAMES[kind]
        self.feed: Feed | None = None
        self.dropped = 0  # frames thrown away: overflow, or waiting for a keyframe
        self.keyframe_waits_ms: list[float] = []  # from each switch to its first keyframe
        self._queue: deque[EncodedFrame] = deque()
        self._ready = asyncio.Event()
        self._want_keyframe = kind == "video"
        self._switched_at: float | None = None
        self._offset: int | None = None
        self._last: int | None = None

    def switch(self, feed: Feed | None) -> None:
        """Forward `feed` from now on (None: nothing), starting on its next keyframe."""
        if feed is self.feed:
            return
        if self.feed is not None:
            self.feed.outlets.discard(self)
        self.feed = feed
        self._queue.clear()
        self._offset = None
        if feed is not None:
            feed.outlets.add(self)
            self._switched_at = time.monotonic()
            self.want_keyframe()

    def want_keyframe(self) -> None:
        """Drop delta frames until the next keyframe, and ask the publisher for one."""
        if self.kind != "video":
            return
        self._want_keyframe = True
        if self.feed is not None:
            self.feed.request_keyframe()

    def offer(self, frame: EncodedFrame) -> None:
        if self._want_keyframe:
            if not frame.keyframe:
                self.dropped += 1
                # ask again while waiting: a request made before the publisher's first
                # packet had no one to go to, and a PLI can be lost on the way
                if self.feed is not None:
                    self.feed.request_keyframe()
                return
            self._want_keyframe = False
            if self._switched_at is not None:
                self.keyframe_waits_ms.append((time.monotonic() - self._switched_at) * 1000)
                self._switched_at = None
        if len(self._queue) >= self.capacity:
            # The sender stopped taking frames: start again from a keyframe.
            self.dropped += len(self._queue)
            self._queue.clear()
            if self.kind == "video":
                self.dropped += 1
                self.want_keyframe()
                return
        self._queue.append(frame)
        self._ready.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def recv(self) -> av.Packet[Any]:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame = self._queue.popleft()
        if self._offset is None:
            # A new feed continues this track's clock one frame after where it stood.
            start = 0 if self._last is None else self._last + FRAME_STEP[self.kind]
            self._offset = start - frame.timestamp
        self._last = frame.timestamp + self._offset
        return forward.packet_of(frame, self._last)

    def stop(self) -> None:
        super().stop()
        self.switch(None)
        self._ready.set()


@dataclass(eq=False, slots=True)
class Slot:
    """One place in a subscriber's layout: where one other participant is seen and heard."""

    index: int
    outlets: dict[str, Outlet] = field(default_factory=dict)  # by kind
    mids: dict[str, str] = field(default_factory=dict)  # by kind
    source: str | None = None  # the participant shown here

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "participant": self.source, "mids": dict(self.mids)}


@dataclass(eq=False, slots=True)
class RelayPeer:
    participant: str
    pc: RTCPeerConnection
    feeds: dict[str, Feed] = field(default_factory=dict)  # what they publish, by kind
    slots: list[Slot] = field(default_factory=list)


def _offered_lines(sdp: str) -> list[tuple[str, str]]:
    """(kind, direction) of each audio or video m-line of an offer, in order."""
    try:
        description = SessionDescription.parse(sdp)
    except (ValueError, IndexError, KeyError, AttributeError, AssertionError) as exc:
        raise RelayRefused(f"the offer is not valid SDP ({exc})") from exc
    lines = []
    for media in description.media:
        if media.kind not in KINDS:
            continue
        offered = {codec.mimeType.lower() for codec in media.rtp.codecs}
        if PREFERRED[media.kind].lower() not in offered:
            raise RelayRefused(
                f"the browser offered no {PREFERRED[media.kind]} for {media.kind}: "
                "the relay forwards VP8 video and Opus audio only"
            )
        lines.append((media.kind, media.direction or "sendrecv"))
    if not lines:
        raise RelayRefused("the offer has no audio or video")
    return lines


def _prefer(transceiver: RTCRtpTransceiver) -> None:
    """Negotiate the one codec the relay forwards (and its retransmissions)."""
    kind = transceiver.kind
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in codecs if c.mimeType == PREFERRED[kind]]
    chosen += [c for c in codecs if c.mimeType == f"{kind}/rtx"]
    transceiver.setCodecPreferences(chosen)


def ice_configuration(ice_servers: Iterable[dict[str, Any]]) -> RTCConfiguration:
    """aiortc's configuration from the same ICE server list the browsers get."""
    servers = []
    for server in ice_servers:
        urls = server.get("urls")
        if urls:
            servers.append(
                RTCIceServer(
                    urls=urls,
                    username=server.get("username"),
                    credential=server.get("credential"),
                )
            )
    # One transport for every m-line (browsers offer BUNDLE). aiortc's default, balanced,
    # gives the second and later video lines a transport that bundling then drops.
    return RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


class RelayRoom:
    """The relay of one visit: everyone's peer connection with the server, and who sees whom."""

    def __init__(
        self,
        name: str,
        *,
        ice_servers: Iterable[dict[str, Any]] = (),
        on_layout: Callable[[str, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.name = name
        self._configuration = ice_configuration(ice_servers)
        self._on_layout = on_layout
        self.feed_watchers: list[Callable[[Feed], None]] = []  # told of each new feed
        self.peers: dict[str, RelayPeer] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._layouts: dict[str, list[dict[str, Any]]] = {}

    async def connect(self, participant: str, offer_sdp: str) -> str:
        """Take a participant's offer (a new one replaces their old connection); the answer.

        One offer per participant at a time: two pages of the same participant (a new tab
        while the old one offers) would otherwise both connect, and one be lost open."""
        lock = self._locks.setdefault(participant, asyncio.Lock())
        async with lock:
            return await self._connect(participant, offer_sdp)

    async def _connect(self, participant: str, offer_sdp: str) -> str:
        offered = _offered_lines(offer_sdp)
        if participant in self.peers:
            await self.leave(participant)
        pc = RTCPeerConnection(self._configuration)
        peer = RelayPeer(participant, pc)
        try:
            # aiortc applies codec preferences while it reads an offer: the transceivers
            # exist first, in the offer's order, and the offer's m-lines take them up.
            self._wire(peer, offered)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            self._tap(peer)
            await pc.setLocalDescription(await pc.createAnswer())
        except RelayRefused:
            await pc.close()
            raise
        except (
            ValueError,
            RuntimeError,
            OperationError,
            InvalidAccessError,
            InvalidStateError,
        ) as exc:
            # aiortc's own refusals of an offer
            await pc.close()
            raise RelayRefused(f"the offer cannot be answered ({exc})") from exc
        except BaseException:  # cancelled, or anything unforeseen: no connection left open
            await pc.close()
            raise

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed") and self.peers.get(participant) is peer:
                await self.leave(participant)

        self.peers[participant] = peer
        log.info(
            "relay %s: %s connected, publishing %s, %d slots",
            self.name,
            participant,
            "+".join(sorted(peer.feeds)) or "nothing",
            len(peer.slots),
        )
        for feed in peer.feeds.values():
            for watcher in tuple(self.feed_watchers):
                watcher(feed)
        self._arrange()
        return str(pc.localDescription.sdp)

    def _wire(self, peer: RelayPeer, offered: list[tuple[str, str]]) -> None:
        slots: dict[str, list[Outlet]] = {kind: [] for kind in KINDS}
        publishing: set[str] = set()
        for kind, direction in offered:
            if direction in ("sendonly", "sendrecv") and kind not in publishing:
                publishing.add(kind)
                transceiver = peer.pc.addTransceiver(kind, direction="recvonly")
            elif direction == "recvonly":
                outlet = Outlet(kind)
                transceiver = peer.pc.addTransceiver(outlet, direction="sendonly")
                forward.on_keyframe_request(transceiver.sender, outlet.want_keyframe)
                slots[kind].append(outlet)
            else:
                transceiver = peer.pc.addTransceiver(kind, direction="inactive")
            _prefer(transceiver)
        for index in range(max(len(slots["audio"]), len(slots["video"]))):
            slot = Slot(index)
            for kind in KINDS:
                if index < len(slots[kind]):
                    slot.outlets[kind] = slots[kind][index]
            peer.slots.append(slot)

    def _tap(self, peer: RelayPeer) -> None:
        """Feeds from what the participant publishes; each slot's mids for the browser."""
        outlets = {id(o): (slot, kind) for slot in peer.slots for kind, o in slot.outlets.items()}
        for transceiver in peer.pc.getTransceivers():
            track = transceiver.sender.track
            if track is not None and id(track) in outlets:
                slot, kind = outlets[id(track)]
                slot.mids[kind] = str(transceiver.mid)
            elif transceiver.direction == "recvonly":
                kind = transceiver.kind
                feed = Feed(peer.participant, kind, transceiver.receiver)
                forward.tap(transceiver.receiver, kind, feed.push)
                peer.feeds[kind] = feed

    async def leave(self, participant: str) -> None:
        peer = self.peers.pop(participant, None)
        if peer is None:
            return
        log.info("relay %s: %s left", self.name, participant)
        self._layouts.pop(participant, None)
        for slot in peer.slots:
            for outlet in slot.outlets.values():
                outlet.stop()
        for feed in peer.feeds.values():
            for outlet in tuple(feed.outlets):
                outlet.switch(None)
            feed.listeners.clear()
        self._arrange()
        await peer.pc.close()

    async def close(self) -> None:
        for participant in list(self.peers):
            await self.leave(participant)

    def layout(self, participant: str) -> list[dict[str, Any]]:
        peer = self.peers.get(participant)
        return [slot.describe() for slot in peer.slots] if peer else []

    def feed(self, participant: str, kind: str) -> Feed | None:
        peer = self.peers.get(participant)
        return peer.feeds.get(kind) if peer else None

    def _arrange(self) -> None:
        """Keep each subscriber's slots stable; seat newcomers in free ones."""
        publishers = [p for p in self.peers.values() if p.feeds]
        for peer in self.peers.values():
            wanted = [p.participant for p in publishers if p is not peer]
            for slot in peer.slots:
                if slot.source not in wanted:
                    self._point(slot, None)
            seated = {slot.source for slot in peer.slots}
            for source in wanted:
                if source in seated:
                    continue
                free = next((s for s in peer.slots if s.source is None), None)
                if free is None:
                    break
                self._point(free, self.peers[source])
            layout = self.layout(peer.participant)
            if self._layouts.get(peer.participant) != layout:
                self._layouts[peer.participant] = layout
                if self._on_layout is not None:
                    self._on_layout(peer.participant, layout)

    @staticmethod
    def _point(slot: Slot, source: RelayPeer | None) -> None:
        slot.source = source.participant if source else None
        for kind, outlet in slot.outlets.items():
            outlet.switch(source.feeds.get(kind) if source else None)
