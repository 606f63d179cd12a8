"""How each visit's media goes (peer to peer or through the relay), and the relay rooms.

`media.mode` (config) sets the rule:

- `p2p`: the browsers connect to each other; the server carries signaling only. A third
  participant cannot be seen or heard, so admitting one is refused.
- `relay`: every participant connects to the server's relay (`media.relay`).
- `auto` (the default): a visit starts peer to peer and moves to the relay, for the rest
  of the visit, when a browser reports that peer-to-peer ICE keeps failing, when a third
  participant enters the call, or when a recording starts. The pages are told with a
  `media_mode` event and reconnect without reloading.

The relay of a visit lives in the process that served its first relay offer. With several
server processes (Redis), a visit's sockets must reach one process for relayed media
(sticky routing by visit at the proxy): this is a known limit (README).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from media.relay import RelayRefused, RelayRoom
from media.taping import CallRecording

log = logging.getLogger(__name__)


class MediaMode(StrEnum):
    P2P = "p2p"
    RELAY = "relay"
    AUTO = "auto"


class RelayOff(Exception):
    """The relay was asked for where `media.mode` is p2p."""


Emit = Callable[[str, dict[str, Any], str], Awaitable[None]]  # event, payload, to (a sid)


@dataclass(eq=False)
class _Visit:
    mode: MediaMode
    room: RelayRoom | None = None
    sids: dict[str, str] = field(default_factory=dict)  # participant -> the offering socket
    who: dict[str, dict[str, Any]] = field(default_factory=dict)  # participant -> role, name
    # participant -> the number of the last layout made for them: a layout event and an
    # offer's answer travel separately, and the page keeps the newer one
    seq: dict[str, int] = field(default_factory=dict)
    recording: CallRecording | None = None


class RelayDesk:
    def __init__(
        self,
        mode: MediaMode,
        *,
        emit: Emit,
        recordings: Path,
        recording_max_bytes: int = 2**30,
    ) -> None:
        self.mode = mode
        self._emit = emit
        self._recordings = recordings
        self._recording_max_bytes = recording_max_bytes
        self._visits: dict[str, _Visit] = {}
        self._sending: set[asyncio.Future[None]] = set()
        self._recordings_made = 0

    def _visit(self, visit_id: str) -> _Visit:
        if visit_id not in self._visits:
            start = MediaMode.RELAY if self.mode is MediaMode.RELAY else MediaMode.P2P
            self._visits[visit_id] = _Visit(start)
        return self._visits[visit_id]

    def mode_of(self, visit_id: str) -> MediaMode:
        """P2P or RELAY: how the visit's media goes now."""
        visit = self._visits.get(visit_id)
        if visit is not None:
            return visit.mode
        return MediaMode.RELAY if self.mode is MediaMode.RELAY else MediaMode.P2P

    def can_relay(self) -> bool:
        return self.mode is not MediaMode.P2P

    def to_relay(self, visit_id: str, reason: str) -> bool:
        """Move the visit to the relay; True if it moved now (tell the call room)."""
        if self.mode is MediaMode.P2P:
            raise RelayOff(f"the relay is off (media.mode is p2p): cannot {reason}")
        visit = self._visit(visit_id)
        if visit.mode is MediaMode.RELAY:
            return False
        visit.mode = MediaMode.RELAY
        log.info("visit %s moves to the relay: %s", visit_id, reason)
        return True

    async def offer(
        self,
        visit_id: str,
        participant: str,
        sid: str,
        sdp: str,
        ice_servers: list[dict[str, Any]],
        who: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A participant's relay offer: `{"sdp": answer, "slots": layout}`. `who` (role,
        name...) goes with the participant's slot in the others' layouts."""
        visit = self._visit(visit_id)
        if visit.mode is not MediaMode.RELAY:
            raise RelayRefused("this visit's media goes peer to peer: no relay offer is expected")
        room = self._room(visit_id, visit, ice_servers)
        visit.sids[participant] = sid
        visit.who[participant] = dict(who or {})
        answer = await room.connect(participant, sdp)
        # Answering takes a while (ICE gathering): the participant may have been sent back,
        # removed or replaced, or the call closed, meanwhile. Then the new connection goes.
        if self._visits.get(visit_id) is not visit or visit.room is not room:
            await room.leave(participant)
            raise RelayRefused("the call closed while the relay was answering")
        if visit.sids.get(participant) != sid:
            if visit.sids.get(participant) is None:
                await room.leave(participant)
            raise RelayRefused("this page left the call while the relay was answering")
        slots = self._slots(visit_id, room.layout(participant))
        return {"sdp": answer, "slots": slots, "seq": self._next(visit, participant)}

    def _room(self, visit_id: str, visit: _Visit, ice_servers: list[dict[str, Any]]) -> RelayRoom:
        if visit.room is None:
            visit.room = RelayRoom(
                visit_id,
                ice_servers=ice_servers,
                on_layout=lambda who, slots: self._layout_changed(visit_id, who, slots),
            )
        return visit.room

    @staticmethod
    def _next(visit: _Visit, participant: str) -> int:
        visit.seq[participant] = visit.seq.get(participant, 0) + 1
        return visit.seq[participant]

    def _slots(self, visit_id: str, layout: list[dict[str, Any]]) -> list[dict[str, Any]]:
        visit = self._visits.get(visit_id)
        known = visit.who if visit is not None else {}
        return [{**known.get(slot["participant"] or "", {}), **slot} for slot in layout]

    def _layout_changed(
        self, visit_id: str, participant: str, layout: list[dict[str, Any]]
    ) -> None:
        visit = self._visits.get(visit_id)
        if visit is None or (sid := visit.sids.get(participant)) is None:
            return
        payload = {
            "visit_id": visit_id,
            "slots": self._slots(visit_id, layout),
            "seq": self._next(visit, participant),
        }
        task = asyncio.ensure_future(self._emit("layout", payload, sid))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def leave(self, visit_id: str, participant: str, sid: str | None = None) -> None:
        """A participant left the call (or their page did: only if `sid` is still theirs)."""
        visit = self._visits.get(visit_id)
        if visit is None or visit.room is None:
            return
        if sid is not None and visit.sids.get(participant) != sid:
            return
        visit.sids.pop(participant, None)
        await visit.room.leave(participant)

    def recording(self, visit_id: str) -> bool:
        visit = self._visits.get(visit_id)
        return visit is not None and visit.recording is not None

    def start_recording(self, visit_id: str, ice_servers: list[dict[str, Any]]) -> None:
        """Record the visit's relay room (made now if no page has offered yet), each start
        in a folder of its own: a file kept unsealed by an earlier one stays apart."""
        visit = self._visit(visit_id)
        if visit.recording is not None:
            return
        room = self._room(visit_id, visit, ice_servers)
        self._recordings_made += 1
        folder = self._recordings / visit_id / f"{time.time_ns()}-{self._recordings_made}"
        visit.recording = CallRecording(room, folder, max_bytes=self._recording_max_bytes)
        visit.recording.start()

    async def stop_recording(self, visit_id: str) -> dict[str, Path]:
        """Stop at once; the finished files by participant (the caller seals them)."""
        visit = self._visits.get(visit_id)
        if visit is None or visit.recording is None:
            return {}
        recording, visit.recording = visit.recording, None
        return await recording.stop()

    async def close_room(self, visit_id: str) -> dict[str, Path]:
        """The call is over for now (sent back): stop recording, close the relay room.

        The visit keeps its mode: a call that needed the relay will need it again.
        """
        files = await self.stop_recording(visit_id)
        visit = self._visits.get(visit_id)
        if visit is not None and visit.room is not None:
            room, visit.room = visit.room, None
            visit.sids.clear()
            await room.close()
        return files

    async def end(self, visit_id: str) -> dict[str, Path]:
        """The visit is over: its room closes and the desk forgets it."""
        files = await self.close_room(visit_id)
        self._visits.pop(visit_id, None)
        return files

    async def close(self) -> dict[str, dict[str, Path]]:
        """Every visit's room closed and recording finished (one failing stops no other)."""
        files = {}
        for visit_id in list(self._visits):
            try:
                files[visit_id] = await self.end(visit_id)
            except Exception:  # noqa: BLE001 (the others must still close)
                log.exception("relay: visit %s did not close cleanly", visit_id)
        for task in list(self._sending):
            task.cancel()
        return files
