"""Recording a relayed call: files per participant that decode, nothing after stop."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import av
import pytest

from media.relay import RelayRoom
from media.taping import CallRecording
from tests.devices.test_reliability import until
from tests.media.peers import ClientPeer, Clip
from tests.media.test_relay import WITHIN, join


@contextlib.asynccontextmanager
async def doctor_and_patient(
    clip: Clip, name: str
) -> AsyncIterator[tuple[RelayRoom, Callable[[], ClientPeer]]]:
    """A relay room with the doctor and the patient connected; `more()` gives another
    client peer. Everything is closed on the way out."""
    room = RelayRoom(name)
    clients = [ClientPeer(clip), ClientPeer(clip)]

    def more() -> ClientPeer:
        clients.append(ClientPeer(clip))
        return clients[-1]

    try:
        await join(room, "clinician", clients[0])
        await join(room, "patient", clients[1])
        yield room, more
    finally:
        await room.close()
        for client in clients:
            await client.close()


def decoded(path: Path) -> dict[str, int]:
    counts = {"video": 0, "audio": 0, "width": 0}
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                counts["video"] += 1
                counts["width"] = frame.width
            else:
                counts["audio"] += 1
    return counts


async def test_each_participant_is_recorded_as_it_was_forwarded(clip: Clip, tmp_path: Path) -> None:
    async with doctor_and_patient(clip, "visit-r1") as (room, more):
        recording = CallRecording(room, tmp_path / "rec")
        recording.start()
        assert stat.S_IMODE((tmp_path / "rec").stat().st_mode) == 0o700
        start = room.feed("patient", "video").frames
        await join(room, "interpreter", more())  # joins while it runs: recorded too
        assert await until(lambda: room.feed("patient", "video").frames > start + 60, WITHIN)
        assert await until(
            lambda: getattr(room.feed("interpreter", "video"), "frames", 0) > 60, WITHIN
        )
        files = await recording.stop()
        assert set(files) == {"clinician", "patient", "interpreter"}
        sizes = {name: path.stat().st_size for name, path in files.items()}
        for path in files.values():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            counts = decoded(path)
            assert counts["video"] > 0
            assert counts["audio"] > 0
            assert counts["width"] == clip.width
        # After stop, nothing more is written, though the call goes on.
        frames = room.feed("patient", "video").frames
        assert await until(lambda: room.feed("patient", "video").frames > frames + 10, WITHIN)
        assert {name: path.stat().st_size for name, path in files.items()} == sizes
        assert all(not feed.listeners for p in room.peers.values() for feed in p.feeds.values())
        assert await recording.stop() == files  # stopping twice changes nothing


async def test_a_recording_stopped_before_any_picture_leaves_no_file(
    clip: Clip, tmp_path: Path
) -> None:
    room = RelayRoom("visit-r2")
    recording = CallRecording(room, tmp_path / "rec")
    recording.start()
    assert await recording.stop() == {}
    assert list((tmp_path / "rec").iterdir()) == []
    await room.close()


async def test_a_participant_who_reconnects_is_recorded_on_both_connections(
    clip: Clip, tmp_path: Path
) -> None:
    """A reload or a new network gives the participant a new feed whose clock starts at
    0 again: its frames go on after the first ones, from its first keyframe."""
    async with doctor_and_patient(clip, "visit-r3") as (room, more):
        recording = CallRecording(room, tmp_path / "rec")
        recording.start()
        first = room.feed("patient", "video")
        start = first.frames
        assert await until(lambda: first.frames > start + 45, WITHIN)
        await room.leave("patient")
        before = first.frames - start  # at most this many from the first connection
        await join(room, "patient", more())
        assert await until(lambda: getattr(room.feed("patient", "video"), "frames", 0) > 45, WITHIN)
        files = await recording.stop()
        assert decoded(files["patient"])["video"] > before


async def test_a_file_stops_short_of_its_limit_and_still_plays(clip: Clip, tmp_path: Path) -> None:
    async with doctor_and_patient(clip, "visit-r4") as (room, _):
        recording = CallRecording(room, tmp_path / "rec", max_bytes=100_000)
        recording.start()
        feed = room.feed("patient", "video")
        start = feed.frames
        assert await until(lambda: feed.frames > start + 150, WITHIN)  # ~200 KB of video
        delivered = feed.frames - start
        files = await recording.stop()
        path = files["patient"]
        assert path.stat().st_size <= 100_000
        assert 0 < decoded(path)["video"] < delivered  # it stopped, and what it has plays


async def test_a_file_the_disk_refuses_ends_alone(
    clip: Clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith("patient.webm"):
            raise OSError(28, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("media.taping.os.open", refusing)
    async with doctor_and_patient(clip, "visit-r5") as (room, _):
        recording = CallRecording(room, tmp_path / "rec")
        recording.start()
        feed = room.feed("clinician", "video")
        start = feed.frames
        assert await until(lambda: feed.frames > start + 45, WITHIN)
        files = await recording.stop()
        assert set(files) == {"clinician"}  # the doctor's file is whole
        assert decoded(files["clinician"])["video"] > 0
