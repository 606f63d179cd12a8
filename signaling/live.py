"""The live dashboard feed over Socket.IO: new vitals, alerts and device presence reach
the open dashboards of the patient's care team within a second of being stored.

- A connection is accepted only with a signed-in clinician's session cookie (and, as
  python-socketio checks by default, from this site's own origin).
- Each connection joins one room per patient of its user's care teams. Rooms are checked
  again every `RESYNC_SECONDS`, so a clinician taken off a care team stops receiving
  that patient's events even on a connection that stays open.
- Events carry ids, codes, values and times; the dashboard already knows the names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from http.cookies import SimpleCookie
from typing import Any

import socketio
from aiohttp import web

from telemed import sessions
from telemed.api_json import alert_json, observation_json
from telemed.clock import iso
from telemed.monitoring import Alert, Observation
from telemed.store import Store
from telemed.web.middleware import session_user

log = logging.getLogger(__name__)

RESYNC_SECONDS = 60.0


def room(patient_id: str) -> str:
    return f"patient:{patient_id}"


class LiveHub:
    """A `telemed.live.LiveFeed` that emits to the care team's open dashboards."""

    def __init__(
        self, app: web.Application, sio: socketio.AsyncServer, store: Callable[[], Store]
    ) -> None:
        """Handle the default namespace of `sio` (a `signaling.server.SignalingServer`'s);
        `store` is looked up when needed, since it opens only when the app starts."""
        self.app = app
        self._store = store
        self.sio = sio
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self._users: dict[str, str] = {}  # sid -> user id
        self._task: asyncio.Task[None] | None = None

    @property
    def store(self) -> Store:
        return self._store()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._resync_forever(), name="live-resync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # the server disconnects the clients and stops the engine (`SignalingServer.stop`)

    # connections ------------------------------------------------------------------
    async def _connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        morsel = cookie.get(sessions.COOKIE)
        _, user = await session_user(self.app, morsel.value if morsel else None)
        if user is None or not user.role.is_clinician:
            raise socketio.exceptions.ConnectionRefusedError("sign in as a clinician")
        self._users[sid] = user.id
        await self._sync(sid, user.id)
        log.info("live: dashboard connected user=%s", user.id)

    async def _disconnect(self, sid: str, reason: object = None) -> None:
        self._users.pop(sid, None)

    async def _sync(self, sid: str, user_id: str) -> None:
        """Make the connection's rooms match the user's care teams now."""
        user = await self.store.get_user(user_id)
        wanted = (
            {room(p) for p in await self.store.patients_of(user_id)}
            if user is not None and user.active
            else set()
        )
        current = {r for r in self.sio.rooms(sid) if r.startswith("patient:")}
        for r in current - wanted:
            await self.sio.leave_room(sid, r)
        for r in wanted - current:
            await self.sio.enter_room(sid, r)
        if user is None or not user.active:
            await self.sio.disconnect(sid)

    async def resync(self) -> None:
        for sid, user_id in list(self._users.items()):
            try:
                await self._sync(sid, user_id)
            except KeyError:  # disconnected meanwhile
                self._users.pop(sid, None)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            try:
                await self.resync()
            except Exception:
                log.exception("live: room resync failed; trying again later")

    # LiveFeed ---------------------------------------------------------------------
    async def observations_stored(
        self, patient_id: str, observations: Sequence[Observation]
    ) -> None:
        await self.sio.emit(
            "observations",
            {"patient_id": patient_id, "observations": [observation_json(o) for o in observations]},
            to=room(patient_id),
        )

    async def alert_changed(self, alert: Alert) -> None:
        await self.sio.emit("alert", alert_json(alert), to=room(alert.patient_id))

    async def news2_changed(self, patient_id: str, score: dict[str, Any]) -> None:
        await self.sio.emit("news2", {"patient_id": patient_id, **score}, to=room(patient_id))

    async def device_presence(
        self, patient_id: str, device_id: str, online: bool, at: datetime
    ) -> None:
        await self.sio.emit(
            "presence",
            {"patient_id": patient_id, "device_id": device_id, "online": online, "at": iso(at)},
            to=room(patient_id),
        )
