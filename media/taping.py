"""Recording a relayed call: each participant's frames, as forwarded, into a WebM file.

A `CallRecording` listens to every feed of a `RelayRoom` (and to the feeds of whoever
joins later), and a thread of its own remuxes the frames (`media.recording`): file
writes never run on the event loop, and listening costs the relay one queue put per
frame. Each participant gets a file, `{participant}.webm`, created 0600 in `folder`.
When the recording starts, every publisher is asked for a keyframe, so that a file
starts within a moment, not at the publisher's next scheduled keyframe.

`stop()` detaches at once (nothing said after it is written), finishes the files and
returns those that hold a picture; the caller seals them and deletes the plain files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from pathlib import Path
from typing import BinaryIO

from media.forward import EncodedFrame
from media.recording import RTP_WRAP, WebmRecorder
from media.relay import Feed, Listener, RelayRoom

log = logging.getLogger(__name__)


STEP = {"video": 3000, "audio": 960}  # one frame at 30 fps; 20 ms of Opus (RTP units)
CLOSE_SLACK = 256 * 1024  # bytes a file may still grow by after the writer stops it


class CallRecording:
    def __init__(self, room: RelayRoom, folder: Path, *, max_bytes: int = 2**40) -> None:
        self.room = room
        self.folder = folder
        self.max_bytes = max_bytes  # per file: a participant's file stops short of it
        self._frames: queue.SimpleQueue[tuple[str, int, EncodedFrame] | None] = queue.SimpleQueue()
        self._attached: list[tuple[Feed, Listener]] = []
        self._thread = threading.Thread(target=self._write, name="call-recording", daemon=True)
        self._files: dict[str, tuple[BinaryIO, WebmRecorder]] = {}
        self._done: set[str] = set()  # participants whose file is full or failed
        self._stopped = False
        self.frames = {"video": 0, "audio": 0, "keyframes": 0}  # taken by the writer
        # A participant who reconnects (a reload, a new network) comes back as a new feed
        # whose clock starts again at 0: each feed's frames are moved onto the file's own
        # clock, one frame after where it stood, from the new feed's first keyframe.
        self._feed_of: dict[tuple[str, str], int] = {}
        self._offset: dict[tuple[str, str], int] = {}
        self._last: dict[tuple[str, str], int] = {}
        self._want_keyframe: set[str] = set()

    def start(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._thread.start()
        self.room.feed_watchers.append(self._attach)
        for peer in self.room.peers.values():
            for feed in peer.feeds.values():
                self._attach(feed)
        log.info("recording %s: started on %d feeds", self.room.name, len(self._attached))

    def _attach(self, feed: Feed) -> None:
        if self._stopped:
            return
        participant, source = feed.participant, id(feed)
        keyed = feed.kind != "video"

        def listen(frame: EncodedFrame) -> None:
            nonlocal keyed
            if not keyed:  # the file starts on a keyframe: ask until one comes
                keyed = frame.keyframe
                if not keyed:
                    feed.request_keyframe()
            self._frames.put((participant, source, frame))

        feed.listeners.append(listen)
        self._attached.append((feed, listen))
        feed.request_keyframe()

    async def stop(self) -> dict[str, Path]:
        """Stop now; the finished files, by participant (those that got a keyframe)."""
        if not self._stopped:
            self._stopped = True
            if self._attach in self.room.feed_watchers:
                self.room.feed_watchers.remove(self._attach)
            for feed, listen in self._attached:
                if listen in feed.listeners:
                    feed.listeners.remove(listen)
            self._attached.clear()
            self._frames.put(None)
            if self._thread.is_alive():
                await asyncio.to_thread(self._thread.join)
            log.info("recording %s: stopped after %s", self.room.name, self.frames)
        found = {}
        for participant in self._files:
            path = self._path(participant)
            if path.exists() and path.stat().st_size > 0:
                found[participant] = path
            else:
                path.unlink(missing_ok=True)
        return found

    def _path(self, participant: str) -> Path:
        return self.folder / f"{participant}.webm"

    def _write(self) -> None:
        log.info("recording %s: writer running", self.room.name)
        try:
            while (item := self._frames.get()) is not None:
                participant, source, frame = item
                self.frames[frame.kind] += 1
                self.frames["keyframes"] += frame.keyframe and frame.kind == "video"
                if participant in self._done:
                    continue
                timestamp = self._on_file_clock(participant, source, frame)
                if timestamp is None:
                    continue
                try:
                    recorder = self._recorder(participant)
                    if frame.kind == "video":
                        recorder.video(frame.data, timestamp % RTP_WRAP, frame.keyframe)
                    else:
                        recorder.audio(frame.data, timestamp % RTP_WRAP)
                except ValueError as exc:  # a frame the muxer cannot take: skip it, go on
                    log.warning("recording: %s's frame skipped: %s", participant, exc)
                except OSError as exc:  # the disk: this participant's file ends here
                    log.error("recording %s: %s's file ends: %s", self.room.name, participant, exc)
                    self._finish(participant)
                    continue
                self._check_size(participant)
        finally:
            for participant in list(self._files):
                self._finish(participant)

    def _on_file_clock(self, participant: str, source: int, frame: EncodedFrame) -> int | None:
        """The frame's timestamp on its file's clock; None to leave it out (a new feed's
        video before its first keyframe)."""
        key = (participant, frame.kind)
        if self._feed_of.get(key) != source:
            self._feed_of[key] = source
            self._offset.pop(key, None)
            if frame.kind == "video":
                self._want_keyframe.add(participant)
        if frame.kind == "video" and participant in self._want_keyframe:
            if not frame.keyframe:
                return None
            self._want_keyframe.discard(participant)
        if key not in self._offset:
            last = self._last.get(key)
            start = 0 if last is None else last + STEP[frame.kind]
            self._offset[key] = start - frame.timestamp
        self._last[key] = frame.timestamp + self._offset[key]
        return self._last[key]

    def _check_size(self, participant: str) -> None:
        file = self._files[participant][0]
        # the muxer holds up to a few tens of KB before they reach the file, and the index
        # written on close takes a little more: stop well short
        if file.tell() >= self.max_bytes - min(CLOSE_SLACK, self.max_bytes // 2):
            log.warning("recording %s: %s's file is full", self.room.name, participant)
            self._finish(participant)

    def _finish(self, participant: str) -> None:
        """Close the participant's file (once); later frames of theirs are left out."""
        self._done.add(participant)
        opened = self._files.get(participant)
        if opened is None or opened[0].closed:
            return
        file, recorder = opened
        try:
            recorder.close()
        except Exception:  # noqa: BLE001 (the other participants' files must still close)
            log.exception(
                "recording %s: %s's file did not close cleanly", self.room.name, participant
            )
        finally:
            file.close()

    def _recorder(self, participant: str) -> WebmRecorder:
        if participant not in self._files:
            fd = os.open(self._path(participant), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            file = os.fdopen(fd, "w+b")
            self._files[participant] = (file, WebmRecorder(file))
        return self._files[participant][1]
