"""Call recordings (media/recording.py): real VP8 and Opus in, a WebM that decodes out.

Frames are encoded once per module with PyAV, then fed as the relay forwards them:
whole frames with their RTP timestamps, picture and sound interleaved in time.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import pytest

from media.recording import RTP_WRAP, WebmRecorder

WIDTH, HEIGHT = 320, 240
FPS = 30
VIDEO_FRAMES = 60  # two seconds
KEYFRAMES = (0, 30)
VIDEO_STEP = 90_000 // FPS  # RTP ticks between frames
AUDIO_FRAMES = 100  # two seconds of 20 ms Opus frames
AUDIO_STEP = 960
KINDS = ("video", "audio")


@dataclass(frozen=True, slots=True)
class Clip:
    video: list[bytes]  # VP8, keyframes at KEYFRAMES
    audio: list[bytes]  # Opus, 20 ms each


@dataclass(frozen=True, slots=True)
class Sent:
    """One frame as the relay hands it on."""

    kind: str  # "video" or "audio"
    index: int  # in the clip
    data: bytes
    timestamp: int  # RTP, 32 bits
    at: Fraction  # seconds into the call

    @property
    def keyframe(self) -> bool:
        return self.kind == "video" and self.index in KEYFRAMES


def encode_video() -> list[bytes]:
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.time_base = Fraction(1, FPS)
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    ramp = bytes(range(256)) * (WIDTH * HEIGHT // 256 + 2)
    frames: list[bytes] = []
    for i in range(VIDEO_FRAMES):
        picture = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        y, u, v = picture.planes
        y.update(ramp[i * 4 : i * 4 + y.buffer_size])  # a gradient sliding along
        u.update(bytes([i * 3 % 256]) * u.buffer_size)
        v.update(bytes([128]) * v.buffer_size)
        picture.pts = i
        if i in KEYFRAMES:
            picture.pict_type = av.video.frame.PictureType.I
        frames += [bytes(packet) for packet in encoder.encode(picture)]
    frames += [bytes(packet) for packet in encoder.encode(None)]
    assert [i for i, frame in enumerate(frames) if frame[0] & 1 == 0] == list(KEYFRAMES)
    return frames


def encode_audio() -> list[bytes]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48_000, "mono", "s16"
    frames: list[bytes] = []
    for i in range(AUDIO_FRAMES + 1):  # one more: the encoder lags a frame behind
        n = range(i * AUDIO_STEP, (i + 1) * AUDIO_STEP)
        tone = [int(8000 * math.sin(2 * math.pi * 440 * t / 48_000)) for t in n]
        sound = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_STEP)
        sound.planes[0].update(struct.pack(f"<{AUDIO_STEP}h", *tone))
        sound.sample_rate = 48_000
        sound.pts = i * AUDIO_STEP
        frames += [bytes(packet) for packet in encoder.encode(sound)]
    return frames[:AUDIO_FRAMES]


@pytest.fixture(scope="module")
def clip() -> Clip:
    return Clip(encode_video(), encode_audio())


def call(clip: Clip, video_base: int = 1_234_567, audio_base: int = 7_654_321) -> list[Sent]:
    """The clip as the relay sees it: both media interleaved in the order they happen."""
    video = [
        Sent("video", i, data, (video_base + i * VIDEO_STEP) % RTP_WRAP, Fraction(i, FPS))
        for i, data in enumerate(clip.video)
    ]
    audio = [
        Sent("audio", i, data, (audio_base + i * AUDIO_STEP) % RTP_WRAP, Fraction(i, 50))
        for i, data in enumerate(clip.audio)
    ]
    return sorted(video + audio, key=lambda sent: (sent.at, sent.kind != "video"))


def play(recorder: WebmRecorder, frames: list[Sent]) -> None:
    for sent in frames:
        if sent.kind == "video":
            recorder.video(sent.data, sent.timestamp, sent.keyframe)
        else:
            recorder.audio(sent.data, sent.timestamp)


@dataclass
class Recording:
    """What the file holds: its packets as stored, and what they decode to."""

    packets: dict[str, list[av.Packet[Any]]]  # by kind
    pictures: list[av.VideoFrame]
    sounds: list[av.AudioFrame]
    channels: int  # of the audio track
    opus_header: bytes | None


def read_back(out: BinaryIO) -> Recording:
    out.flush()
    with av.open(out.name) as container:
        file = Recording({kind: [] for kind in KINDS}, [], [], 0, None)
        for packet in container.demux():
            if packet.size:  # not the empty packet that flushes a decoder
                file.packets[packet.stream.type].append(packet)
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    file.pictures.append(frame)
                elif isinstance(frame, av.AudioFrame):
                    file.sounds.append(frame)
        audio = container.streams.audio[0].codec_context
        file.channels, file.opus_header = audio.channels, audio.extradata
        return file


def seconds(packet: av.Packet[Any]) -> float:
    assert packet.pts is not None
    return float(packet.pts * packet.time_base)


@pytest.fixture
def out(tmp_path: Path) -> Iterator[BinaryIO]:
    with (tmp_path / "call.webm").open("wb") as file:
        yield file


@pytest.fixture
def recorder(out: BinaryIO) -> Iterator[WebmRecorder]:
    recorder = WebmRecorder(out)
    yield recorder
    recorder.close()


def test_a_call_remuxes_to_webm_that_decodes(
    clip: Clip, out: BinaryIO, recorder: WebmRecorder
) -> None:
    play(recorder, call(clip))
    recorder.close()

    assert recorder.frames_written == {"video": VIDEO_FRAMES, "audio": AUDIO_FRAMES}
    file = read_back(out)
    assert len(file.pictures) == VIDEO_FRAMES
    assert {(frame.width, frame.height) for frame in file.pictures} == {(WIDTH, HEIGHT)}
    assert len(file.sounds) == AUDIO_FRAMES
    assert {frame.sample_rate for frame in file.sounds} == {48_000}
    # Remuxed, not re-encoded: the file holds the very bytes that were sent.
    assert [bytes(packet) for packet in file.packets["video"]] == clip.video
    assert [bytes(packet) for packet in file.packets["audio"]] == clip.audio
    assert [p.is_keyframe for p in file.packets["video"]] == [
        i in KEYFRAMES for i in range(VIDEO_FRAMES)
    ]
    # Both clocks start with the recording and keep their pace (audio is stored 6.5 ms
    # late, its Opus pre-skip; WebM counts in milliseconds).
    assert seconds(file.packets["video"][0]) == 0
    assert seconds(file.packets["video"][-1]) == pytest.approx((VIDEO_FRAMES - 1) / FPS, abs=2e-3)
    assert seconds(file.packets["audio"][0]) == pytest.approx(0, abs=7e-3)
    assert seconds(file.packets["audio"][-1]) == pytest.approx((AUDIO_FRAMES - 1) / 50, abs=7e-3)


def test_the_opus_track_says_what_it_holds(
    clip: Clip, out: BinaryIO, recorder: WebmRecorder
) -> None:
    """Players need the channel count and the OpusHead (add_mux_stream gives neither)."""
    play(recorder, call(clip)[:10])
    recorder.close()

    file = read_back(out)
    assert file.channels == 2
    assert file.opus_header is not None
    assert file.opus_header.startswith(b"OpusHead")


def test_nothing_is_written_before_the_first_keyframe(
    clip: Clip, out: BinaryIO, recorder: WebmRecorder
) -> None:
    # Joined mid-picture: the first keyframe to arrive is the clip's second.
    frames = [s for s in call(clip) if (s.kind, s.index) != ("video", 0)]
    before = [s for s in frames if s.at < Fraction(KEYFRAMES[1], FPS)]
    assert not any(s.keyframe for s in before)
    play(recorder, before)
    assert not recorder.started
    assert recorder.frames_written == {"video": 0, "audio": 0}
    assert out.tell() == 0

    play(recorder, frames[len(before) :])
    assert recorder.started
    recorder.close()

    after = frames[len(before) :]
    assert recorder.frames_written == {
        "video": sum(s.kind == "video" for s in after),
        "audio": sum(s.kind == "audio" for s in after),
    }
    file = read_back(out)
    assert bytes(file.packets["video"][0]) == clip.video[KEYFRAMES[1]]
    assert seconds(file.packets["video"][0]) == 0
    assert seconds(file.packets["audio"][0]) == pytest.approx(0, abs=7e-3)  # Opus pre-skip
    assert len(file.pictures) == VIDEO_FRAMES - KEYFRAMES[1]


def test_timestamps_that_wrap_around_keep_counting(
    clip: Clip, out: BinaryIO, recorder: WebmRecorder
) -> None:
    video_base = RTP_WRAP - 10 * VIDEO_STEP
    audio_base = RTP_WRAP - 7 * AUDIO_STEP - 1
    frames = call(clip, video_base, audio_base)
    assert {s.timestamp < 100_000 for s in frames} == {True, False}  # they do wrap

    play(recorder, frames)
    recorder.close()

    assert recorder.frames_written == {"video": VIDEO_FRAMES, "audio": AUDIO_FRAMES}
    file = read_back(out)
    for kind in KINDS:
        times = [seconds(packet) for packet in file.packets[kind]]
        assert times == sorted(times)
    assert seconds(file.packets["video"][-1]) == pytest.approx((VIDEO_FRAMES - 1) / FPS, abs=2e-3)
    assert seconds(file.packets["audio"][-1]) == pytest.approx((AUDIO_FRAMES - 1) / 50, abs=7e-3)


@pytest.mark.parametrize(
    ("video_base", "audio_base"),
    [(0, 0), (RTP_WRAP - 12 * VIDEO_STEP, RTP_WRAP - 20 * AUDIO_STEP)],
    ids=["plain", "across-the-wrap"],
)
def test_late_and_repeated_frames_are_dropped(
    clip: Clip, out: BinaryIO, recorder: WebmRecorder, video_base: int, audio_base: int
) -> None:
    frames = call(clip, video_base, audio_base)
    cut = next(i for i, s in enumerate(frames) if s.kind == "video" and s.index == 25)
    late = [s for s in frames[:cut] if (s.kind, s.index) in {("video", 9), ("audio", 17)}]
    repeated = [next(s for s in reversed(frames[:cut]) if s.kind == kind) for kind in KINDS]
    play(recorder, frames[:cut])
    written = dict(recorder.frames_written)
    play(recorder, late + repeated)
    assert recorder.frames_written == written
    play(recorder, frames[cut:])
    recorder.close()

    assert recorder.frames_written == {"video": VIDEO_FRAMES, "audio": AUDIO_FRAMES}
    file = read_back(out)
    assert [bytes(packet) for packet in file.packets["video"]] == clip.video
    assert [bytes(packet) for packet in file.packets["audio"]] == clip.audio


def keyframe_with(clip: Clip, at: int, data: bytes) -> bytes:
    keyframe = clip.video[0]
    return keyframe[:at] + data + keyframe[at + len(data) :]


MALFORMED: dict[str, tuple[Callable[[WebmRecorder, Clip], None], str]] = {
    "empty video": (lambda r, c: r.video(b"", 0, False), "video frame is empty"),
    "empty keyframe": (lambda r, c: r.video(b"", 0, True), "video frame is empty"),
    "empty audio": (lambda r, c: r.audio(b"", 0), "audio frame is empty"),
    "short keyframe": (
        lambda r, c: r.video(c.video[0][:9], 0, True),
        "VP8 keyframe too short for its header: 9 bytes, need 10",
    ),
    "interframe as keyframe": (
        lambda r, c: r.video(c.video[1], 0, True),
        "frame tag marks an interframe",
    ),
    "no start code": (
        lambda r, c: r.video(keyframe_with(c, 3, b"\x9d\x01\x2b"), 0, True),
        "start code is 9d 01 2b, not 9d 01 2a",
    ),
    "no picture": (
        lambda r, c: r.video(keyframe_with(c, 6, bytes(4)), 0, True),
        "picture size is 0x0",
    ),
    "negative timestamp": (
        lambda r, c: r.video(c.video[0], -1, True),
        "video timestamp -1 is not a 32-bit RTP timestamp",
    ),
    "timestamp past 32 bits": (
        lambda r, c: r.audio(c.audio[0], RTP_WRAP),
        "audio timestamp 4294967296 is not a 32-bit RTP timestamp",
    ),
}


@pytest.mark.parametrize("case", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_frames_are_refused_and_write_nothing(
    clip: Clip, out: BinaryIO, recorder: WebmRecorder, case: tuple[Callable[..., None], str]
) -> None:
    feed, message = case
    with pytest.raises(ValueError, match=message):
        feed(recorder, clip)
    assert not recorder.started
    assert recorder.frames_written == {"video": 0, "audio": 0}
    recorder.close()
    assert out.tell() == 0


def test_a_malformed_frame_mid_call_writes_nothing(
    clip: Clip, out: BinaryIO, recorder: WebmRecorder
) -> None:
    frames = call(clip)
    play(recorder, frames[:20])
    written = dict(recorder.frames_written)
    with pytest.raises(ValueError, match="start code"):
        recorder.video(keyframe_with(clip, 3, b"\x00\x00\x00"), frames[20].timestamp, True)
    with pytest.raises(ValueError, match="audio frame is empty"):
        recorder.audio(b"", frames[20].timestamp)
    assert recorder.frames_written == written
    play(recorder, frames[20:])
    recorder.close()

    assert recorder.frames_written == {"video": VIDEO_FRAMES, "audio": AUDIO_FRAMES}
    assert [bytes(packet) for packet in read_back(out).packets["video"]] == clip.video


def test_a_closed_recording_refuses_frames(clip: Clip, recorder: WebmRecorder) -> None:
    recorder.video(clip.video[0], 0, True)
    recorder.close()
    with pytest.raises(RuntimeError, match="^recording closed$"):
        recorder.video(clip.video[1], VIDEO_STEP, False)
    with pytest.raises(RuntimeError, match="^recording closed$"):
        recorder.audio(clip.audio[0], 0)
    with pytest.raises(RuntimeError, match="^recording closed$"):
        recorder.video(b"", 0, True)  # closed comes first, whatever the frame
    assert recorder.frames_written == {"video": 1, "audio": 0}


def test_closing_twice_changes_nothing(clip: Clip, out: BinaryIO, recorder: WebmRecorder) -> None:
    play(recorder, call(clip))
    recorder.close()
    size = out.tell()
    assert size > 0
    recorder.close()

    assert out.tell() == size
    assert not out.closed  # the file is the caller's
    assert len(read_back(out).pictures) == VIDEO_FRAMES


def test_a_recording_that_never_saw_a_keyframe_leaves_an_empty_file(
    clip: Clip, out: BinaryIO, recorder: WebmRecorder
) -> None:
    """An empty file, not a WebM without frames: nothing was recorded, and it shows."""
    play(recorder, [s for s in call(clip) if not s.keyframe])
    recorder.close()

    assert not recorder.started
    assert recorder.frames_written == {"video": 0, "audio": 0}
    assert not out.closed
    assert Path(out.name).stat().st_size == 0
