"""Every use of aiortc's internals, in one place: encoded frames in and out of aiortc.

Why this module exists: stock aiortc decodes every frame it receives (a thread per
receiver) and encodes every frame it sends. A relay that does that costs about 9% of a
core per 640x480 VP8 stream. Our relay forwards the encoded frames instead, and aiortc
has no public API for that on the receiving side:

- In: `RTCRtpReceiver` reassembles frames in its jitter buffer, then puts
  `(codec, JitterFrame)` on a private queue that its decoder thread reads. `tap()`
  replaces that queue, before the receiver starts, with one that hands each encoded
  frame to us; the decoder thread then only waits for the receiver to stop.
- Out: `RTCRtpSender` packs an `av.Packet` from its track without encoding (the public
  path aiortc's MediaPlayer uses with `decode=False`). Nothing private there.
- Keyframes: `request_keyframe()` sends the publisher a PLI through the receiver's
  `_send_rtcp_pli()`, for the media SSRC (not the retransmission one: the receiver's
  private RTX map tells them apart). A subscriber's PLI/FIR makes `RTCRtpSender` call its
  own `_send_keyframe()`, which only sets a flag for an encoder we never run;
  `on_keyframe_request()` routes that call to the relay instead.

The names used are checked at import (`check_internals()`), and tests/media/
test_forward.py drives each of them through real peer connections: an aiortc upgrade
that changes them fails loudly there, not silently in a call. aiortc is pinned in
pyproject.toml for the same reason.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import aiortc
import av
from aiortc import RTCRtpReceiver, RTCRtpSender

PINNED_AIORTC = "1.16.0"

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000  # Opus in RTP always counts at 48 kHz
TIME_BASES = {"video": Fraction(1, VIDEO_CLOCK), "audio": Fraction(1, AUDIO_CLOCK)}

_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_STARTED = "_RTCRtpReceiver__started"
_RTX_SSRC = "_RTCRtpReceiver__rtx_ssrc"  # RTX SSRC -> media SSRC, from the remote SDP


class InternalsChanged(RuntimeError):
    """The installed aiortc no longer has what the relay relies on."""


def check_internals() -> None:
    """Refuse to run the relay on an aiortc whose internals we have not checked."""
    missing = [
        name
        for owner, name in (
            (RTCRtpReceiver, "_send_rtcp_pli"),
            (RTCRtpReceiver, "_handle_rtp_packet"),
            (RTCRtpSender, "_send_keyframe"),
            (RTCRtpSender, "_handle_rtcp_packet"),
        )
        if not callable(getattr(owner, name, None))
    ]
    if missing:
        raise InternalsChanged(
            f"aiortc {aiortc.__version__} lacks {', '.join(missing)}: the media relay was "
            f"written against aiortc {PINNED_AIORTC} (see media/forward.py)"
        )


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One whole encoded frame, as the publisher sent it."""

    kind: str  # "audio" or "video"
    data: bytes
    timestamp: int  # in the codec's RTP clock, counted from the publisher's first frame
    keyframe: bool


def is_vp8_keyframe(data: bytes) -> bool:
    """RFC 6386 9.1: bit 0 of the frame tag is 0 on a key frame."""
    return bool(data) and data[0] & 0x01 == 0


class _FrameTap:
    """Stands in for a receiver's decoder queue: frames go to `sink`, not to a decoder.

    The receiver calls `put((codec, frame))` on the event loop for each reassembled frame,
    and `put(None)` when it stops; its decoder thread blocks in `get()` until then.
    """

    def __init__(self, kind: str, sink: Callable[[EncodedFrame], None]) -> None:
        self._kind = kind
        self._sink = sink
        self._stop: queue.SimpleQueue[None] = queue.SimpleQueue()

    def put(self, item: tuple[Any, Any] | None) -> None:
        if item is None:
            self._stop.put(None)
            return
        codec, frame = item
        data = bytes(frame.data)
        if not data:
            return
        video = self._kind == "video"
        if video and codec.name != "VP8":
            return  # negotiation allows only VP8; anything else is not forwarded
        keyframe = is_vp8_keyframe(data) if video else True
        self._sink(EncodedFrame(self._kind, data, int(frame.timestamp), keyframe))

    def get(self) -> None:
        return self._stop.get()


def tap(receiver: RTCRtpReceiver, kind: str, sink: Callable[[EncodedFrame], None]) -> None:
    """Send the receiver's encoded frames to `sink` instead of decoding them.

    Call it before the receiver starts: from the peer connection's "track" event, or
    right after setRemoteDescription.
    """
    if not all(hasattr(receiver, name) for name in (_DECODER_QUEUE, _STARTED, _RTX_SSRC)):
        raise InternalsChanged(
            f"aiortc {aiortc.__version__}: RTCRtpReceiver has no private decoder queue "
            f"(written against {PINNED_AIORTC}, see media/forward.py)"
        )
    if getattr(receiver, _STARTED):
        raise RuntimeError("tap() must come before the receiver starts")
    setattr(receiver, _DECODER_QUEUE, _FrameTap(kind, sink))


async def request_keyframe(receiver: RTCRtpReceiver) -> bool:
    """Ask the publisher behind `receiver` for a keyframe (RTCP PLI).

    False when no packet has arrived yet (there is no source to ask): the publisher's
    first frame is a keyframe anyway.
    """
    # The sources include the retransmission (RTX) stream's SSRC once a packet was
    # resent; a PLI must name the media stream's, or the browser ignores it.
    rtx = getattr(receiver, _RTX_SSRC)
    media = [s for s in receiver.getSynchronizationSources() if s.source not in rtx]
    if not media:
        return False
    latest = max(media, key=lambda s: s.timestamp)
    await receiver._send_rtcp_pli(latest.source)
    return True


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call `callback` when the subscriber behind `sender` asks for a keyframe (PLI/FIR)."""
    sender._send_keyframe = callback  # type: ignore[method-assign]


def packet_of(frame: EncodedFrame, timestamp: int) -> av.Packet[Any]:
    """An `av.Packet` that `RTCRtpSender` packs as-is, stamped with `timestamp`."""
    packet = av.Packet(frame.data)
    packet.pts = timestamp
    packet.time_base = TIME_BASES[frame.kind]
    return packet


check_internals()
