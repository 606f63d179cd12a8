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


class CallRecording:
    def __init__(self, room: RelayRoom, folder: Path) -> None:
        self.room = room
        self.folder = folder
        self._frames: queue.SimpleQueue[tuple[str, EncodedFrame] | None] = queue.SimpleQueue()
        self._attached: list[tuple[Feed, Listener]] = []
        self._thread = threading.Thread(target=self._write, name="call-recording", daemon=True)
        self._files: dict[str, tuple[BinaryIO, WebmRecorder]] = {}
        self._stopped = False
        self.frames = {"video": 0, "audio": 0, "keyframes": 0}  # taken by the writer

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
        participant = feed.participant

        def listen(frame: EncodedFrame) -> None:
            self._frames.put((participant, frame))

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
                participant, frame = item
                self.frames[frame.kind] += 1
                self.frames["keyframes"] += frame.keyframe and frame.kind == "video"
                recorder = self._recorder(participant)
                try:
                    if frame.kind == "video":
                        recorder.video(frame.data, frame.timestamp % RTP_WRAP, frame.keyframe)
                    else:
                        recorder.audio(frame.data, frame.timestamp % RTP_WRAP)
                except ValueError as exc:  # a frame the muxer cannot take: skip it, go on
                    log.warning("recording: %s's frame skipped: %s", participant, exc)
        finally:
            for file, recorder in self._files.values():
                try:
                    recorder.close()
                finally:
                    file.close()

    def _recorder(self, participant: str) -> WebmRecorder:
        if participant not in self._files:
            fd = os.open(self._path(participant), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            file = os.fdopen(fd, "w+b")
            self._files[participant] = (file, WebmRecorder(file))
        return self._files[participant][1]
