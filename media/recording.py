"""A call recording: the relay's VP8 and Opus frames, remuxed into WebM.

The relay already holds every participant's picture and sound encoded, as the browsers
sent them. Decoding and encoding them again (what aiortc's MediaRecorder does) would
cost CPU for every recorded participant, for the whole call, and lose quality. WebM
carries VP8 and Opus as they are, so the recorder only wraps each frame in a Matroska
block and writes it: no frame is decoded or encoded.

A recording starts on a keyframe: the frames before it cannot be decoded, and sound
without a picture would start the file on a black screen. From then on each medium
keeps its own RTP clock (video 90 kHz, audio 48 kHz), counted from its first written
frame; a frame that would move its clock backwards arrived late and is dropped.

Every call does blocking file I/O: drive a recorder from one thread
(`asyncio.to_thread`), never from the event loop.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass
from fractions import Fraction

import av
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.stream import Stream

log = logging.getLogger(__name__)

VIDEO_CLOCK = Fraction(1, 90_000)  # RTP clock of VP8 (RFC 7741)
AUDIO_CLOCK = Fraction(1, 48_000)  # RTP clock of Opus (RFC 7587)
RTP_WRAP = 2**32  # RTP timestamps are 32 bits and wrap around
VP8_START_CODE = b"\x9d\x01\x2a"
VP8_KEYFRAME_HEADER = 10  # 3-byte frame tag, start code, 2 bytes of width, 2 of height


def vp8_size(frame: bytes) -> tuple[int, int]:
    """Width and height of a VP8 keyframe, from its header (RFC 6386, section 9.1)."""
    if len(frame) < VP8_KEYFRAME_HEADER:
        raise ValueError(
            f"VP8 keyframe too short for its header: {len(frame)} bytes, need {VP8_KEYFRAME_HEADER}"
        )
    if frame[0] & 1:
        raise ValueError("VP8 keyframe: its frame tag marks an interframe")
    if frame[3:6] != VP8_START_CODE:
        raise ValueError(f"VP8 keyframe: start code is {frame[3:6].hex(' ')}, not 9d 01 2a")
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF  # the top 2 bits are scaling
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    if not width or not height:
        raise ValueError(f"VP8 keyframe: picture size is {width}x{height}")
    return width, height


class RtpClock:
    """32-bit RTP timestamps as a pts that starts at 0 and only moves forward.

    A step of half the range or more is taken as a step backwards (serial number
    arithmetic, RFC 1982): that is how a wrap-around is told from a late frame.
    """

    def __init__(self) -> None:
        self._last: int | None = None  # the last accepted timestamp, as sent
        self._pts = 0

    def forward(self, timestamp: int) -> int | None:
        """The pts of `timestamp`, or None if it does not move the clock forward."""
        if self._last is None:
            self._last = timestamp
            return 0
        step = (timestamp - self._last) % RTP_WRAP
        if step == 0 or step >= RTP_WRAP // 2:
            return None
        self._last = timestamp
        self._pts += step
        return self._pts


@dataclass(frozen=True, slots=True)
class _Webm:
    container: OutputContainer
    video: Stream
    audio: AudioStream

    def write(self, stream: Stream, data: bytes, pts: int, clock: Fraction, key: bool) -> None:
        packet = av.Packet(data)
        packet.stream = stream
        packet.time_base = clock  # PyAV rescales from it to the stream's (1/1000 in WebM)
        packet.pts = packet.dts = pts
        packet.is_keyframe = key
        self.container.mux(packet)


def _open_webm(out: typing.BinaryIO, width: int, height: int) -> _Webm:
    container = av.open(out, "w", format="webm")
    video = container.add_mux_stream("vp8", width=width, height=height)
    # Not add_mux_stream: that leaves the Opus track with 0 channels and without the
    # OpusHead that WebM players need. A libopus stream gets both when PyAV opens its
    # encoder, as it writes the header: 2 channels, 48 kHz, and a pre-skip of 312
    # samples, the look-ahead of libopus, which the browsers' encoders have too.
    # The encoder is opened, never fed: every packet is muxed as it came.
    audio = container.add_stream("libopus", rate=48_000)
    return _Webm(container, video, audio)


def _check(kind: str, data: bytes, timestamp: int) -> None:
    if not data:
        raise ValueError(f"{kind} frame is empty")
    if not 0 <= timestamp < RTP_WRAP:
        raise ValueError(f"{kind} timestamp {timestamp} is not a 32-bit RTP timestamp")


class WebmRecorder:
    """One participant's picture and sound, remuxed to WebM, starting on a keyframe.

    `out` must be writable and seekable (the sizes and the seek index are written last,
    on close). It stays open: it is the caller's. A recorder closed before any keyframe
    came has written nothing, so `out` is left empty.
    """

    def __init__(self, out: typing.BinaryIO) -> None:
        self._out = out
        self._webm: _Webm | None = None
        self._video_clock = RtpClock()
        self._audio_clock = RtpClock()
        self._closed = False
        self.frames_written: dict[str, int] = {"video": 0, "audio": 0}

    @property
    def started(self) -> bool:
        """A keyframe has been written."""
        return self._webm is not None

    def video(self, data: bytes, timestamp: int, keyframe: bool) -> None:
        """Write one VP8 frame; `timestamp` is in 90 kHz RTP units."""
        self._check_open()
        _check("video", data, timestamp)
        size = vp8_size(data) if keyframe else None
        if self._webm is None:
            if size is None:
                return  # nothing can be decoded before the first keyframe
            self._webm = _open_webm(self._out, *size)
            log.info("recording started at %dx%d", *size)
        pts = self._video_clock.forward(timestamp)
        if pts is None:
            log.debug("late video frame dropped (timestamp %d)", timestamp)
            return
        self._webm.write(self._webm.video, data, pts, VIDEO_CLOCK, keyframe)
        self.frames_written["video"] += 1

    def audio(self, data: bytes, timestamp: int) -> None:
        """Write one Opus frame; `timestamp` is in 48 kHz RTP units."""
        self._check_open()
        _check("audio", data, timestamp)
        if self._webm is None:
            return  # sound waits for the first picture
        pts = self._audio_clock.forward(timestamp)
        if pts is None:
            log.debug("late audio frame dropped (timestamp %d)", timestamp)
            return
        # Every Opus packet decodes on its own, so each is a keyframe to the muxer.
        self._webm.write(self._webm.audio, data, pts, AUDIO_CLOCK, key=True)
        self.frames_written["audio"] += 1

    def close(self) -> None:
        """Finish the file: flush the interleaving queue, write sizes and the index."""
        if self._closed:
            return
        self._closed = True
        if self._webm is not None:
            self._webm.container.close()
            written = self.frames_written
            log.info(
                "recording closed: %d video, %d audio frames", written["video"], written["audio"]
            )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("recording closed")
