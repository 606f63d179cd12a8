"""The `/visit` Socket.IO namespace: the waiting room, the doctor's queue, and the WebRTC
offer/answer/ICE exchange of a video visit, as docs/visit-protocol.md specifies.

- A patient connects with the `telemed_visit` cookie (`{visit_id}.{pass}`) of an open
  visit; a guest with the `telemed_guest` cookie (`{visit_id}.{guest_id}.{pass}`); a
  clinician with a signed-in clinician session. Anything else is refused.
- Rooms: `visit:{id}` (the patient's sockets), `guest:{id}:{guest_id}` (a guest's),
  `clinician:{user_id}` (every dashboard of that clinician), `call:{id}` (who is in the
  call now: the patient, the clinician, the guests admitted) and `pair:{id}` (the patient
  and the clinician of that call: their two-party WebRTC signals go there only). Every
  move of a visit goes through `Reception` (audited, compare-and-set), then the patient
  and the guests get `visit` and the visit's clinician gets `queue`.
- Every event is checked strictly (`signaling.events`) and answered through its ack:
  `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. A refused event changes nothing.
  An event sent without an ack (the pages send `signal`, `media`, `media_mode` and
  `quality` so) gets nothing back when it is accepted, and a `refused` event
  `{"event", "error"}` when it is not.
- Per connection: a token bucket (`signaling.events_per_second`, `event_burst`); a
  connection that keeps going past it is disconnected.
- A connection's events are handled one at a time, in the order they came, by the task
  that reads it (`signaling.server`); the connection's lock is still the first thing a
  handler awaits, so that its welcome and its disconnect (other tasks) never interleave
  with an event. A sender's events are relayed in order (an offer before its ICE
  candidates), in this process and through Redis.
- Who is connected and who sits in a call, across processes, is the `Roster`'s.
- Nothing of a signal, a chat line or a quality sample is logged; chat is never stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web

from media.relay import RelayRefused
from signaling.bucket import Limiter
from signaling.events import (
    EventRefused,
    parse_chat,
    parse_consent,
    parse_guest_ref,
    parse_join_call,
    parse_media,
    parse_mode_request,
    parse_precheck,
    parse_quality,
    parse_relay_offer,
    parse_signal,
    parse_visit_ref,
    payload,
)
from signaling.relay_desk import MediaMode, RelayDesk, RelayOff
from signaling.roster import Roster
from signaling.wire import acknowledging
from telemed import sessions
from telemed.accounts import User
from telemed.api_json import media_json, observation_json, optional_iso, precheck_json
from telemed.clinic import Actor
from telemed.clock import iso
from telemed.errors import Forbidden, NotFound, StoreUnavailable, ValidationError
from telemed.reception import LinkRefused, Reception, patient_actor
from telemed.settings import Settings
from telemed.store import Store
from telemed.turn import ice_servers
from telemed.visits import (
    GUEST_COOKIE,
    VISIT_COOKIE,
    Guest,
    GuestState,
    PreCheck,
    QualitySample,
    Recommendation,
    Visit,
    VisitState,
    parse_guest_cookie,
    parse_visit_cookie,
)
from telemed.visits import places as places_of
from telemed.web.keys import CLOCK, MONITOR, RECEPTION, RECORDS, STORE
from telemed.web.middleware import session_user, source_address

log = logging.getLogger(__name__)

NAMESPACE = "/visit"
PATIENT = "patient"
CLINICIAN = "clinician"
GUEST = "guest"
QUALITY_EVERY_SECONDS = 10.0  # at most one stored quality sample per side


def visit_room(visit_id: str) -> str:
    return f"visit:{visit_id}"


def guest_room(visit_id: str, guest_id: str) -> str:
    return f"guest:{visit_id}:{guest_id}"


def pair_room(visit_id: str) -> str:
    return f"pair:{visit_id}"


def guest_seat(guest_id: str) -> str:
    """A guest's seat in the call (the `Roster`'s key)."""
    return f"guest:{guest_id}"


def guest_sockets(visit_id: str, guest_id: str) -> str:
    """The `Roster`'s key for a guest's connected sockets."""
    return f"{visit_id}/guest/{guest_id}"


def clinician_room(user_id: str) -> str:
    return f"clinician:{user_id}"


def call_room(visit_id: str) -> str:
    return f"call:{visit_id}"


@dataclass(slots=True, eq=False)
class Peer:
    """One connection to the namespace, and what it is allowed to do."""

    sid: str
    role: str  # PATIENT, CLINICIAN or GUEST
    user_id: str  # the clinician, the visit's patient, or the guest's id
    source: str  # client address, for the audit log
    limiter: Limiter
    visit_id: str = ""  # a patient's or a guest's visit
    held_pass: str = ""  # a patient's or a guest's pass (checked again before each move)
    clinician_id: str = ""  # that visit's clinician (whose queue shows them)
    name: str = ""  # shown to the others in a call
    guest_id: str = ""
    guest_role: str = ""  # a guest's: interpreter, family, colleague
    seats: set[str] = field(default_factory=set)  # visits whose call this socket sat in
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def participant(self) -> str:
        """Who this is in a call: "patient", "clinician", or the guest's id."""
        return self.guest_id or self.role

    @property
    def seat(self) -> str:
        return guest_seat(self.guest_id) if self.guest_id else self.role

    def described(self) -> dict[str, str]:
        """Who this is, as the others in the call are told."""
        found = {"role": self.role, "participant": self.participant, "name": self.name}
        if self.guest_id:
            found["guest_role"] = self.guest_role
        return found


Handler = Callable[[Peer, Mapping[str, Any]], Awaitable[dict[str, Any]]]
PATIENTS = frozenset({PATIENT})
ARRIVING = frozenset({PATIENT, GUEST})  # through a link: the patient and the guests
CLINICIANS = frozenset({CLINICIAN})


def refusal(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


class VisitRooms(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(self, app: web.Application, settings: Settings, roster: Roster) -> None:
        """Register with the server (`sio.register_namespace`) before the app starts;
        the store and `Reception` are looked up when needed, since they open at start."""
        super().__init__(NAMESPACE)
        self.app = app
        self.roster = roster
        self.limits = settings.signaling
        self.webrtc = settings.webrtc
        self.media = media_json(settings.visits)
        self.relay = RelayDesk(
            MediaMode(settings.media.mode),
            emit=self._emit_to,
            recordings=settings.var_dir / "recordings",
            recording_max_bytes=settings.media.recording_max_mib * 2**20,
        )
        self.ticks: Callable[[], float] = time.monotonic  # rate limits (tests replace it)
        self._peers: dict[str, Peer] = {}
        self._queue_locks: dict[str, asyncio.Lock] = {}
        self._quality_kept: dict[tuple[str, str], float] = {}
        self._visit_locks: dict[str, asyncio.Lock] = {}  # recording decisions, call closing
        self._sealing: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, tuple[frozenset[str] | None, Handler]] = {
            "precheck": (PATIENTS, self._precheck),
            "arrive": (ARRIVING, self._arrive),
            "join_call": (ARRIVING, self._join_call),
            "open": (CLINICIANS, self._open),
            "admit": (CLINICIANS, self._admit),
            "send_back": (CLINICIANS, self._send_back),
            "end": (CLINICIANS, self._end),
            "admit_guest": (CLINICIANS, self._admit_guest),
            "send_back_guest": (CLINICIANS, self._send_back_guest),
            "remove_guest": (CLINICIANS, self._remove_guest),
            "signal": (None, self._signal),
            "chat": (None, self._chat),
            "media": (None, self._media),
            "quality": (None, self._quality),
            "relay_offer": (None, self._relay_offer),
            "media_mode": (None, self._mode_request),
            "recording_consent": (PATIENTS | CLINICIANS, self._recording_consent),
        }

    @property
    def reception(self) -> Reception:
        return self.app[RECEPTION]

    @property
    def store(self) -> Store:
        return self.app[STORE]

    def connected(self) -> int:
        """Connections of this process."""
        return len(self._peers)

    # dispatch ---------------------------------------------------------------------
    async def trigger_event(self, event: Any, *args: Any) -> Any:
        if event in ("connect", "disconnect") and self.server.manager.is_connected(
            args[0], NAMESPACE
        ):
            # a connected client sending an event by a reserved name, not the server's
            # own connect or disconnect (during those the sid is pending, not connected)
            return await self._answer(event, args[0], refusal("unknown event"))
        if event == "connect":
            return await self._connect(*args)
        if event == "disconnect":
            return await self._disconnect(args[0])
        return await self._answer(event, args[0], await self._event(event, args[0], args[1:]))

    async def quick_event(self, sid: str, event: Any, args: list[Any]) -> None:
        """An event sent without an ack, straight from the socket's reader
        (`wire.Server.quick_events`): handled as `trigger_event` would, and answered
        only if refused. A reserved name (`connect`, `disconnect`) is an unknown event
        here too."""
        answer = await self._event(event, sid, tuple(args))
        if not answer["ok"]:
            await self._refused(event, sid, answer)

    async def _answer(self, event: Any, sid: str, answer: dict[str, Any]) -> dict[str, Any]:
        """The answer goes back as the event's ack; an event sent without one hears only
        of a refusal, as a `refused` event."""
        if not answer["ok"] and not acknowledging():
            await self._refused(event, sid, answer)
        return answer

    async def _refused(self, event: Any, sid: str, answer: dict[str, Any]) -> None:
        name = event if isinstance(event, str) and event in self._handlers else ""
        await self.emit("refused", {"event": name, "error": answer["error"]}, to=sid)

    async def _event(self, event: Any, sid: str, data: tuple[Any, ...]) -> dict[str, Any]:
        peer = self._peers.get(sid)
        if peer is None:
            return refusal("not connected")
        verdict = peer.limiter.check(self.ticks())
        if verdict is None:
            log.info("visit: disconnecting sid=%s: too many events", sid)
            await self.disconnect(sid)
            return refusal("rate limited")
        if not verdict:
            return refusal("rate limited")
        async with peer.lock:  # the first await of every event: a sender's order holds
            if peer.sid not in self._peers:
                return refusal("not connected")
            return await self._handle(peer, event, data)

    async def _handle(self, peer: Peer, event: Any, data: tuple[Any, ...]) -> dict[str, Any]:
        entry = self._handlers.get(event) if isinstance(event, str) else None
        if entry is None:
            return refusal("unknown event")
        roles, handler = entry
        if roles is not None and peer.role not in roles:
            return refusal(f"{event}: not for a {peer.role}")
        try:
            return await handler(peer, payload(data))
        except EventRefused as exc:
            return refusal(str(exc))
        except (ValidationError, Forbidden, NotFound, LinkRefused) as exc:
            return refusal(str(exc))
        except StoreUnavailable:
            log.warning("visit: event %s of sid=%s: store unavailable", event, peer.sid)
            return refusal("the server could not save this; try again")
        except Exception:
            log.exception("visit: event %s of sid=%s failed", event, peer.sid)
            return refusal("the server failed; try again")

    # connections ------------------------------------------------------------------
    async def _connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        try:
            await self._admit_connection(sid, environ, auth)
        except StoreUnavailable:
            log.warning("visit: connection sid=%s refused: store unavailable", sid)
            raise socketio.exceptions.ConnectionRefusedError(
                "the server is busy; try again in a moment"
            ) from None
        except (ValidationError, NotFound, LinkRefused) as exc:  # moved or gone meanwhile
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None

    async def _admit_connection(self, sid: str, environ: dict[str, Any], auth: object) -> None:
        request = environ.get("aiohttp.request")
        # the HTTP handlers' own cookie parser (SimpleCookie drops every cookie when one
        # of another application's is not to its taste)
        cookies = request.cookies if request is not None else {}
        source = source_address(request) if request is not None else "unknown"
        limiter = Limiter.of(self.limits.events_per_second, self.limits.event_burst, self.ticks())
        # a clinician's session first: a clinician's browser may also hold the pass of a
        # patient's link it once opened (at the desk, to help), and stays the clinician
        _, user = await session_user(self.app, cookies.get(sessions.COOKIE))
        visit_cookie = cookies.get(VISIT_COOKIE)
        guest_cookie = cookies.get(GUEST_COOKIE)
        # a page that only checks the camera connects with {"arrive": false}: the patient
        # (or guest) is not in the queue until they press Join (the `arrive` event); a
        # guest's page says {"guest": true} (a family member's browser may also hold the
        # patient's pass, on the patient's own device)
        arriving = not (isinstance(auth, dict) and auth.get("arrive") is False)
        as_guest = isinstance(auth, dict) and auth.get("guest") is True
        if user is not None and user.role.is_clinician:
            peer = Peer(sid, CLINICIAN, user.id, source, limiter, name=user.name)
            await self.enter_room(sid, clinician_room(user.id))
        elif guest_cookie is not None and (as_guest or visit_cookie is None):
            peer = await self._connect_guest(sid, guest_cookie, source, limiter, arriving)
        elif visit_cookie is not None:
            peer = await self._connect_patient(sid, visit_cookie, source, limiter, arriving)
        else:
            raise socketio.exceptions.ConnectionRefusedError(
                "open the visit link again, or sign in as a clinician"
            )
        self._peers[sid] = peer
        # the first `visit` or `queue` must follow the CONNECT packet, sent on return
        self.server.start_background_task(self._welcome, peer)
        log.info("visit: %s connected sid=%s", peer.role, sid)

    async def _connect_patient(
        self, sid: str, value: str, source: str, limiter: Limiter, arriving: bool
    ) -> Peer:
        parsed = parse_visit_cookie(value)
        if parsed is None:
            raise socketio.exceptions.ConnectionRefusedError(
                "This visit link is no longer valid on this device."
            )
        visit_id, held_pass = parsed
        try:
            visit = await self.reception.visit_for_pass(visit_id, held_pass)
        except LinkRefused as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        if arriving:
            visit = await self.reception.arrive(visit, source)
        patient = await self.store.get_patient(visit.patient_id)
        peer = Peer(
            sid,
            PATIENT,
            visit.patient_id,
            source,
            limiter,
            visit_id=visit.id,
            held_pass=held_pass,
            clinician_id=visit.clinician_id,
            name=patient.name if patient is not None else "",
        )
        await self.enter_room(sid, visit_room(visit.id))
        await self.roster.join_visit(visit.id, sid)
        try:
            if not visit.patient_online:
                await self.reception.set_patient_online(visit.id, True)
        except BaseException:  # refused after all: the roster must not count this socket
            await self.roster.leave_visit(visit.id, sid)
            raise
        return peer

    async def _connect_guest(
        self, sid: str, value: str, source: str, limiter: Limiter, arriving: bool
    ) -> Peer:
        parsed = parse_guest_cookie(value)
        if parsed is None:
            raise socketio.exceptions.ConnectionRefusedError(
                "This visit link is no longer valid on this device."
            )
        try:
            visit, guest = await self.reception.guest_for_pass(*parsed)
        except LinkRefused as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        if arriving:
            visit, guest = await self.reception.guest_arrive(visit, guest, source)
        peer = Peer(
            sid,
            GUEST,
            guest.id,
            source,
            limiter,
            visit_id=visit.id,
            held_pass=parsed[2],
            clinician_id=visit.clinician_id,
            name=guest.name,
            guest_id=guest.id,
            guest_role=guest.role.value,
        )
        key = guest_sockets(visit.id, guest.id)
        await self.enter_room(sid, guest_room(visit.id, guest.id))
        await self.roster.join_visit(key, sid)
        try:
            if not guest.online:
                await self.reception.set_guest_online(visit.id, guest.id, True)
        except BaseException:  # refused after all: the roster must not count this socket
            await self.roster.leave_visit(key, sid)
            raise
        return peer

    async def _welcome(self, peer: Peer) -> None:
        try:
            async with peer.lock:
                if peer.role in ARRIVING:
                    await self._publish(peer.clinician_id, changed=peer.visit_id)
                else:
                    await self._send_queue(peer.user_id, to=peer.sid)
        except Exception:
            log.exception("visit: welcome of sid=%s failed", peer.sid)

    async def _disconnect(self, sid: str) -> None:
        peer = self._peers.pop(sid, None)
        if peer is None:
            return
        try:
            async with peer.lock:
                for visit_id in sorted(peer.seats):
                    await self._leave_seat(peer, visit_id)
                if peer.role == PATIENT:
                    left = await self.roster.leave_visit(peer.visit_id, sid)
                    if left == 0:
                        await self.reception.set_patient_online(peer.visit_id, False)
                        await self._publish(peer.clinician_id, changed=peer.visit_id)
                elif peer.role == GUEST:
                    key = guest_sockets(peer.visit_id, peer.guest_id)
                    if await self.roster.leave_visit(key, sid) == 0:
                        await self.reception.set_guest_online(peer.visit_id, peer.guest_id, False)
                        await self._publish(peer.clinician_id, changed=peer.visit_id)
        except Exception:
            log.exception("visit: disconnect of sid=%s not fully handled", sid)
        log.info("visit: %s disconnected sid=%s", peer.role, sid)

    async def _leave_seat(self, peer: Peer, visit_id: str) -> None:
        peer.seats.discard(visit_id)
        await self.relay.leave(visit_id, peer.participant, peer.sid)
        if await self.roster.leave_seat(visit_id, peer.seat, peer.sid):
            await self.emit(
                "peer",
                {"visit_id": visit_id, "present": False, **peer.described(), "sid": peer.sid},
                room=call_room(visit_id),
                skip_sid=peer.sid,
            )

    # the patient --------------------------------------------------------------------
    async def _patient_visit(self, peer: Peer, named: str | None) -> Visit:
        """The patient's visit, its pass checked again (a reissued link kills it)."""
        if named is not None and named != peer.visit_id:
            raise EventRefused("visit_id: not your visit")
        return await self.reception.visit_for_pass(peer.visit_id, peer.held_pass)

    async def _precheck(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        named, report = parse_precheck(data)
        visit = await self._patient_visit(peer, named)
        precheck = PreCheck(
            camera=report.camera,
            microphone=report.microphone,
            rtt_ms=report.rtt_ms,
            upload_kbps=report.upload_kbps,
            recommendation=Recommendation(report.recommendation),
            at=self.app[CLOCK](),
        )
        await self.reception.record_precheck(visit, precheck, peer.source)
        await self._publish(peer.clinician_id, changed=visit.id)
        return {"ok": True}

    async def _guest_visit(self, peer: Peer, named: str | None) -> tuple[Visit, Guest]:
        """The guest's visit and the guest, their pass checked again."""
        if named is not None and named != peer.visit_id:
            raise EventRefused("visit_id: not your visit")
        return await self.reception.guest_for_pass(peer.visit_id, peer.guest_id, peer.held_pass)

    async def _arrive(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        """The patient (or a guest) pressed Join: into the waiting room (a return changes
        nothing)."""
        named = parse_join_call(data)
        if peer.role == GUEST:
            visit, guest = await self._guest_visit(peer, named)
            visit, guest = await self.reception.guest_arrive(visit, guest, peer.source)
            await self._publish(peer.clinician_id, changed=visit.id)
            return {"ok": True, "state": guest.state.value}
        visit = await self._patient_visit(peer, named)
        visit = await self.reception.arrive(visit, peer.source)
        await self._publish(peer.clinician_id, changed=visit.id, places=True)
        return {"ok": True, "state": visit.state.value}

    async def _join_call(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        named = parse_join_call(data)
        if peer.role == GUEST:
            visit, guest = await self._guest_visit(peer, named)
            if guest.state is not GuestState.IN_CALL:
                return refusal(f"you are {guest.state.value}: wait to be admitted")
        else:
            visit = await self._patient_visit(peer, named)
        if visit.state is not VisitState.IN_CALL:
            return refusal(f"the visit is {visit.state.value}: wait to be admitted")
        return await self._sit(peer, visit.id)

    # the clinician ------------------------------------------------------------------
    async def _actor(self, peer: Peer) -> Actor:
        """The clinician as they are now (deactivated or no longer a clinician: out)."""
        user: User | None = await self.store.get_user(peer.user_id)
        if user is None or not user.active or not user.role.is_clinician:
            self.server.start_background_task(self.disconnect, peer.sid)
            raise Forbidden("your account can no longer do this")
        return Actor.of(user, peer.source)

    async def _open(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        visit_id = parse_visit_ref(data)
        visit = await self.reception.visit_for_clinician(
            await self._actor(peer), visit_id, "visit.open"
        )
        if visit.state is not VisitState.IN_CALL:
            return refusal(f"the visit is {visit.state.value}, not in a call")
        return await self._sit(peer, visit.id)

    async def _admit(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        visit = await self.reception.admit(await self._actor(peer), parse_visit_ref(data))
        answer = await self._sit(peer, visit.id)
        await self._publish(visit.clinician_id, changed=visit.id, places=True)
        return answer

    async def _send_back(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        visit = await self.reception.send_back(await self._actor(peer), parse_visit_ref(data))
        await self._close_call(visit.id, "sent_back")
        await self._publish(visit.clinician_id, changed=visit.id, places=True)
        return {"ok": True, "visit_id": visit.id, "state": visit.state.value}

    async def _end(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        visit = await self.reception.end(await self._actor(peer), parse_visit_ref(data))
        await self._close_call(visit.id, "ended")
        await self._publish(visit.clinician_id, changed=visit.id, places=True)
        for sid in await self.roster.visit_sids(visit.id):  # in every process
            await self.disconnect(sid)
        await self.roster.forget_visit(visit.id)
        await self._let_guests_go(visit, visit.guests)
        return {"ok": True, "visit_id": visit.id, "state": visit.state.value}

    # the clinician's moves of a guest ---------------------------------------------------
    async def _admit_guest(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        """waiting -> in_call, into a call in progress: the guest gets `visit` (in_call)
        and joins the call themselves (`join_call`)."""
        visit_id, guest_id = parse_guest_ref(data)
        if not self.relay.can_relay():
            return refusal(
                "guests need the relay to see and hear the call, and media.mode is p2p on "
                "this server"
            )
        visit, guest = await self.reception.admit_guest(await self._actor(peer), visit_id, guest_id)
        await self._publish(visit.clinician_id, changed=visit.id)
        return _guest_answer(visit, guest)

    async def _send_back_guest(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        visit_id, guest_id = parse_guest_ref(data)
        visit, guest = await self.reception.send_back_guest(
            await self._actor(peer), visit_id, guest_id
        )
        await self._guest_leaves_call(visit.id, guest, "sent_back")
        await self._publish(visit.clinician_id, changed=visit.id)
        return _guest_answer(visit, guest)

    async def _remove_guest(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        visit_id, guest_id = parse_guest_ref(data)
        visit, guest = await self.reception.remove_guest(
            await self._actor(peer), visit_id, guest_id
        )
        await self.guest_removed(visit, guest)
        return _guest_answer(visit, guest)

    async def guest_removed(self, visit: Visit, guest: Guest) -> None:
        """A guest was removed (here, or through the clinic's HTTP API): out of the call,
        told, and their pages disconnected, in every process."""
        await self._guest_leaves_call(visit.id, guest, "removed")
        await self._publish(visit.clinician_id, changed=visit.id)
        await self.emit(
            "visit", self._guest_view(visit, guest, ""), room=guest_room(visit.id, guest.id)
        )
        await self._let_guests_go(visit, (guest,))

    async def _guest_leaves_call(self, visit_id: str, guest: Guest, reason: str) -> None:
        """The guest's page is told (`call_over`) and leaves the call room; the others see
        the guest's seat empty."""
        seat = guest_seat(guest.id)
        sid = (await self.roster.seats(visit_id)).get(seat)
        await self.emit(
            "call_over",
            {"visit_id": visit_id, "reason": reason},
            room=guest_room(visit_id, guest.id),
        )
        await self.relay.leave(visit_id, guest.id)
        if sid is None:
            return
        await self.leave_room(sid, call_room(visit_id))  # in whichever process it is
        local = self._peers.get(sid)
        if local is not None:
            local.seats.discard(visit_id)
        if await self.roster.leave_seat(visit_id, seat, sid):
            await self.emit(
                "peer",
                {"visit_id": visit_id, "present": False, **_described(guest), "sid": sid},
                room=call_room(visit_id),
            )

    async def _let_guests_go(self, visit: Visit, guests: tuple[Guest, ...]) -> None:
        """Disconnect these guests' pages, in every process, and forget their sockets."""
        for guest in guests:
            key = guest_sockets(visit.id, guest.id)
            for sid in await self.roster.visit_sids(key):
                await self.disconnect(sid)
            await self.roster.forget_visit(key)

    # the call -----------------------------------------------------------------------
    async def _sit(self, peer: Peer, visit_id: str) -> dict[str, Any]:
        """Enter the call room, tell the others, answer with the `call` payload."""
        room = call_room(visit_id)
        await self.enter_room(peer.sid, room)
        if peer.role != GUEST:
            await self.enter_room(peer.sid, pair_room(visit_id))
        others, previous = await self.roster.take_seat(visit_id, peer.seat, peer.sid)
        peer.seats.add(visit_id)
        if previous is not None and previous != peer.sid:
            await self._unseat(previous, peer.seat, visit_id)
        current = await self.store.get_visit(visit_id)
        seated = current is not None and current.state is VisitState.IN_CALL
        if current is not None and seated and peer.role == GUEST:
            guest = current.guest(peer.guest_id)
            seated = guest is not None and guest.state is GuestState.IN_CALL
        if current is None or not seated:  # moved meanwhile
            await self.leave_room(peer.sid, room)
            await self.leave_room(peer.sid, pair_room(visit_id))
            await self._leave_seat(peer, visit_id)
            return refusal("the call is over")
        if peer.role == GUEST:
            try:  # a third participant: only the relay carries everyone to everyone
                await self._to_relay(visit_id, "a guest joined the call")
            except RelayOff as exc:
                await self.leave_room(peer.sid, room)
                await self._leave_seat(peer, visit_id)
                return refusal(str(exc))
        await self.emit(
            "peer",
            {"visit_id": visit_id, "present": True, **peer.described(), "sid": peer.sid},
            room=room,
            skip_sid=peer.sid,
        )
        participants = [await self._seated(current, seat, sid) for seat, sid in others.items()]
        other_seat = {PATIENT: CLINICIAN, CLINICIAN: PATIENT}.get(peer.role)
        call = {
            "visit_id": visit_id,
            **peer.described(),
            "polite": peer.role != CLINICIAN,
            "ice_servers": ice_servers(
                self.webrtc, f"{visit_id}-{peer.participant}", self.app[CLOCK]()
            ),
            "media": self.media,
            "peer": next((p for p in participants if p["participant"] == other_seat), None),
            "participants": sorted(participants, key=_participant_order),
            "mode": self.relay.mode_of(visit_id).value,
            "recording": self.relay.recording(visit_id),
            # this side's own consent to recording, as stored (a reload shows it again)
            "consent": peer.role != GUEST and current.consent(peer.role),
        }
        await self.emit("call", call, to=peer.sid)
        return {"ok": True, **call}

    async def _seated(self, visit: Visit, seat: str, sid: str) -> dict[str, str]:
        """Who sits in `seat` of the visit's call, as the others are told."""
        local = self._peers.get(sid)
        if local is not None:
            return {**local.described(), "sid": sid}
        if seat.startswith("guest:"):
            guest = visit.guest(seat.removeprefix("guest:"))
            if guest is not None:
                return {**_described(guest), "sid": sid}
            return {
                "role": GUEST,
                "participant": seat.removeprefix("guest:"),
                "name": "",
                "sid": sid,
            }
        if seat == PATIENT:
            patient = await self.store.get_patient(visit.patient_id)
            name = patient.name if patient is not None else ""
        else:  # a clinician's page in another process: the visit's clinician
            user = await self.store.get_user(visit.clinician_id)
            name = user.name if user is not None else ""
        return {"role": seat, "participant": seat, "name": name, "sid": sid}

    async def _unseat(self, sid: str, seat: str, visit_id: str) -> None:
        """Another page took `sid`'s seat (the patient or a guest reopened the link in a
        new tab, or a colleague opened the call): `sid` leaves the call, in whichever
        process it is. A patient's or guest's old page is also disconnected: its pass
        died when the new page claimed the link."""
        await self.emit("call_over", {"visit_id": visit_id, "reason": "replaced"}, to=sid)
        # the old page's relay connection too (if it has one in this process)
        await self.relay.leave(visit_id, seat.removeprefix("guest:"), sid)
        await self.leave_room(sid, call_room(visit_id))
        await self.leave_room(sid, pair_room(visit_id))
        if seat != CLINICIAN:
            await self.disconnect(sid)

    async def _close_call(self, visit_id: str, reason: str) -> None:
        room = call_room(visit_id)
        async with self._visit_lock(visit_id):
            if self.relay.recording(visit_id):
                await self._tell_recording(visit_id, False)
            await self.emit("call_over", {"visit_id": visit_id, "reason": reason}, room=room)
            await self.roster.clear_call(visit_id)
            await self.close_room(room)  # in every process, through the Redis manager
            await self.close_room(pair_room(visit_id))
            # the pages are out of the call room first: no offer can reopen the relay
            if reason == "ended":
                files = await self.relay.end(visit_id)
                self._visit_locks.pop(visit_id, None)
            else:
                files = await self.relay.close_room(visit_id)
        for side in (PATIENT, CLINICIAN):
            self._quality_kept.pop((visit_id, side), None)
        visit = await self.store.get_visit(visit_id)
        if visit is not None:
            self._seal_later(visit, files)

    def _in_call(self, peer: Peer, named: str | None) -> str:
        """The visit whose call the event is for; the sender must sit in it."""
        if peer.role != CLINICIAN:
            if named is not None and named != peer.visit_id:
                raise EventRefused("visit_id: not your visit")
            visit_id = peer.visit_id
        else:
            assert named is not None
            visit_id = named
        if not self._in_room(peer.sid, call_room(visit_id)):
            raise EventRefused("not in this visit's call")
        return visit_id

    def _in_room(self, sid: str, room: str) -> bool:
        """Whether `sid` is in `room` now (in this process: the sender's own socket). Not
        `self.rooms(sid)`: python-socketio walks every room of the namespace for that (60%
        of a loaded server's time, measured); nor `get_participants`, which copies the
        room into a new dict and walks it through two generators for every event. The
        manager's table (`rooms[namespace][room]`: sid -> engine sid, the same table for
        the Redis manager, whose rooms hold this process's sockets) answers in one look-up."""
        members = self.server.manager.rooms.get(NAMESPACE, {}).get(room)
        return members is not None and sid in members

    async def _relay(
        self, peer: Peer, event: str, visit_id: str, body: dict[str, Any], *, room: str = ""
    ) -> None:
        """To the others in the call (or in `room`); a guest's carry their guest id."""
        sender = {"participant": peer.guest_id} if peer.guest_id else {}
        # the client manager's emit, as `self.emit` ends in, minus two calls and a log call
        await self.server.manager.emit(
            event,
            {"visit_id": visit_id, "from": peer.role, **sender, **body},
            NAMESPACE,
            room=room or call_room(visit_id),
            skip_sid=peer.sid,
        )

    async def _signal(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        """Without `to`: the two-party call's signals, patient <-> clinician (guests never
        see them). With `to`: to that participant of the call only."""
        signal = parse_signal(data, visit_required=peer.role == CLINICIAN)
        visit_id = self._in_call(peer, signal.visit_id)
        if signal.to is None:
            if peer.role == GUEST:
                raise EventRefused("to: missing (a guest names whom the signal is for)")
            await self._relay(peer, "signal", visit_id, signal.body, room=pair_room(visit_id))
            return {"ok": True}
        seat = signal.to if signal.to in (PATIENT, CLINICIAN) else guest_seat(signal.to)
        sid = (await self.roster.seats(visit_id)).get(seat)
        if sid is None or sid == peer.sid:
            raise EventRefused("to: not in this call")
        sender = {"participant": peer.guest_id} if peer.guest_id else {}
        await self.emit(
            "signal", {"visit_id": visit_id, "from": peer.role, **sender, **signal.body}, to=sid
        )
        return {"ok": True}

    async def _chat(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        chat = parse_chat(data, visit_required=peer.role == CLINICIAN)
        visit_id = self._in_call(peer, chat.visit_id)
        at = iso(self.app[CLOCK]())
        body = {"participant": peer.participant, "name": peer.name, "text": chat.text, "at": at}
        await self._relay(peer, "chat", visit_id, body)
        return {"ok": True, "at": at}

    async def _media(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        media = parse_media(data, visit_required=peer.role == CLINICIAN)
        visit_id = self._in_call(peer, media.visit_id)
        await self._relay(peer, "media", visit_id, {"audio_only": media.audio_only})
        return {"ok": True}

    async def _quality(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        q = parse_quality(data, visit_required=peer.role == CLINICIAN)
        visit_id = self._in_call(peer, q.visit_id)
        await self._relay(
            peer,
            "quality",
            visit_id,
            {
                "rtt_ms": q.rtt_ms,
                "loss_pct": q.loss_pct,
                "kbps_in": q.kbps_in,
                "kbps_out": q.kbps_out,
                "audio_only": q.audio_only,
            },
        )
        if peer.role == GUEST:  # the visit keeps the two-party call's samples
            return {"ok": True, "stored": False}
        now, key = self.ticks(), (visit_id, peer.role)
        last = self._quality_kept.get(key)
        if last is None or now - last >= QUALITY_EVERY_SECONDS:
            self._quality_kept[key] = now
            sample = QualitySample(
                at=self.app[CLOCK](),
                side=peer.role,
                rtt_ms=q.rtt_ms,
                loss_pct=q.loss_pct,
                kbps_in=q.kbps_in,
                kbps_out=q.kbps_out,
                audio_only=q.audio_only,
            )
            await self.reception.record_quality(visit_id, sample)
            return {"ok": True, "stored": True}
        return {"ok": True, "stored": False}

    # the relay, and recording --------------------------------------------------------
    async def _emit_to(self, event: str, body: dict[str, Any], sid: str) -> None:
        await self.emit(event, body, to=sid)

    async def _to_relay(self, visit_id: str, reason: str) -> None:
        """Move the visit's call to the relay (media.mode auto); the pages in the call
        are told and reconnect through the server. RelayOff where media.mode is p2p."""
        if self.relay.to_relay(visit_id, reason):
            await self.emit(
                "media_mode",
                {"visit_id": visit_id, "mode": MediaMode.RELAY.value, "reason": reason},
                room=call_room(visit_id),
            )

    async def _relay_offer(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        offer = parse_relay_offer(data, visit_required=peer.role == CLINICIAN)
        visit_id = self._in_call(peer, offer.visit_id)
        servers = ice_servers(self.webrtc, f"{visit_id}-relay", self.app[CLOCK]())
        try:
            answer = await self.relay.offer(
                visit_id, peer.participant, peer.sid, offer.sdp, servers, peer.described()
            )
        except RelayRefused as exc:
            return refusal(str(exc))
        return {"ok": True, "visit_id": visit_id, **answer}

    async def _mode_request(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        """A page whose peer-to-peer connection keeps failing asks for the relay."""
        visit_id = self._in_call(
            peer, parse_mode_request(data, visit_required=peer.role == CLINICIAN)
        )
        try:
            await self._to_relay(visit_id, "peer-to-peer ICE failed")
        except RelayOff as exc:
            return refusal(str(exc))
        return {"ok": True, "mode": self.relay.mode_of(visit_id).value}

    async def _recording_consent(self, peer: Peer, data: Mapping[str, Any]) -> dict[str, Any]:
        """The patient or the clinician agrees to recording, or withdraws. Recording
        runs while both agree (in this call), and stops at once when either withdraws."""
        consent = parse_consent(data, visit_required=peer.role == CLINICIAN)
        visit_id = self._in_call(peer, consent.visit_id)
        if consent.given and not self.relay.can_relay():
            return refusal("recording needs the relay, and media.mode is p2p on this server")
        if peer.role == CLINICIAN:
            actor = await self._actor(peer)
        else:
            actor = patient_actor(await self._patient_visit(peer, visit_id), peer.source)
        # One decision at a time per visit, from what is stored now: a consent and a
        # withdrawal crossing, or a send-back meanwhile, never leave a recording running.
        async with self._visit_lock(visit_id):
            visit = await self.reception.set_recording_consent(
                actor, visit_id, peer.role, consent.given
            )
            await self._relay(peer, "recording_consent", visit_id, {"consent": consent.given})
            if visit.may_record and not self.relay.recording(visit_id):
                await self._to_relay(visit_id, "a recording starts")
                servers = ice_servers(self.webrtc, f"{visit_id}-relay", self.app[CLOCK]())
                self.relay.start_recording(visit_id, servers)
                await self._tell_recording(visit_id, True)
            elif not visit.may_record and self.relay.recording(visit_id):
                await self._tell_recording(visit_id, False)
                self._seal_later(visit, await self.relay.stop_recording(visit_id))
            recording = self.relay.recording(visit_id)
        return {"ok": True, "recording": recording}

    def _visit_lock(self, visit_id: str) -> asyncio.Lock:
        lock = self._visit_locks.get(visit_id)
        if lock is None:
            lock = self._visit_locks[visit_id] = asyncio.Lock()
        return lock

    def _seal_later(self, visit: Visit, files: Mapping[str, Path]) -> None:
        """Seal the files in a task of their own (a long call's files take a while); the
        server awaits these before it stops."""
        if not files:
            return
        task = asyncio.create_task(self._keep_recording(visit, files))
        self._sealing.add(task)
        task.add_done_callback(self._sealing.discard)

    async def _tell_recording(self, visit_id: str, active: bool) -> None:
        await self.emit(
            "recording", {"visit_id": visit_id, "active": active}, room=call_room(visit_id)
        )

    async def _keep_recording(self, visit: Visit, files: Mapping[str, Path]) -> None:
        """Seal each participant's recording into the visit's record (as its clinician),
        then delete the plain file. A file that cannot be sealed is kept, and logged."""
        if not files:
            return
        user = await self.store.get_user(visit.clinician_id)
        if user is None:
            log.error("visit %s: recording kept unsealed: its clinician is gone", visit.id)
            return
        actor = Actor.of(user, "recording")
        stamp = self.app[CLOCK]().strftime("%Y%m%d-%H%M%S")
        limit = self.app[RECORDS].policy.recording_max_bytes
        for participant, path in sorted(files.items()):
            name = f"recording-{stamp}-{participant}.webm"
            size = (await asyncio.to_thread(path.stat)).st_size
            if size > limit:  # the writer stops short of the limit: this is not expected
                log.error(
                    "visit %s: recording %s kept unsealed at %s: %d bytes",
                    visit.id,
                    name,
                    path,
                    size,
                )
                continue
            body = await asyncio.to_thread(path.read_bytes)
            try:
                await self.app[RECORDS].attach_recording(actor, visit.id, name, body)
            except (ValidationError, Forbidden, NotFound, StoreUnavailable) as exc:
                log.error(
                    "visit %s: recording %s kept unsealed at %s: %s", visit.id, name, path, exc
                )
                continue
            except Exception:  # noqa: BLE001 (one file failing must not lose the others)
                log.exception("visit %s: recording %s kept unsealed at %s", visit.id, name, path)
                continue
            await asyncio.to_thread(path.unlink)
            log.info("visit %s: recording sealed into the record (%d bytes)", visit.id, len(body))

    async def shutdown(self) -> None:
        """The server stops: recordings are finished and sealed, relay rooms closed."""
        for visit_id, files in (await self.relay.close()).items():
            visit = await self.store.get_visit(visit_id)
            if visit is not None:
                self._seal_later(visit, files)
        if self._sealing:
            await asyncio.gather(*self._sealing, return_exceptions=True)

    # what the patient and the clinician see ----------------------------------------------
    def _queue_lock(self, clinician_id: str) -> asyncio.Lock:
        lock = self._queue_locks.get(clinician_id)
        if lock is None:
            lock = self._queue_locks[clinician_id] = asyncio.Lock()
        return lock

    async def _publish(self, clinician_id: str, *, changed: str, places: bool = False) -> None:
        """After a change to visit `changed`: its patient and its guests get `visit`, its
        clinician gets `queue`; with `places`, every waiting patient of that clinician
        gets their (new) place too."""
        async with self._queue_lock(clinician_id):
            visits = await self._send_queue(clinician_id, to=clinician_room(clinician_id))
            message = await self.reception.waiting_message()
            place = places_of(visits)
            tell = [v for v in visits if places or v.id == changed]
            if not any(v.id == changed for v in visits):
                gone = await self.store.get_visit(changed)
                if gone is not None:
                    tell.append(gone)
            for visit in tell:
                await self.emit(
                    "visit",
                    {
                        "visit_id": visit.id,
                        "state": visit.state.value,
                        "place": place.get(visit.id, 0),
                        "message": message,
                        "waiting_since": optional_iso(visit.waiting_since),
                    },
                    room=visit_room(visit.id),
                )
                for guest in visit.present_guests:
                    await self.emit(
                        "visit",
                        self._guest_view(visit, guest, message),
                        room=guest_room(visit.id, guest.id),
                    )

    @staticmethod
    def _guest_view(visit: Visit, guest: Guest, message: str) -> dict[str, Any]:
        """What a guest's page is told: the guest's own state (the visit's, once it is
        over)."""
        return {
            "visit_id": visit.id,
            "guest_id": guest.id,
            "guest_role": guest.role.value,
            "state": visit.state.value if not visit.open else guest.state.value,
            "place": 0,
            "message": message,
            "waiting_since": optional_iso(guest.waiting_since),
        }

    async def _news2(self, patient_id: str) -> dict[str, Any] | None:
        """The score for the queue (the clinician's access to the patient was checked
        and audited when the visit was booked and opened); None when unmonitored."""
        monitor = self.app.get(MONITOR)
        score = await monitor.current_news2(patient_id) if monitor is not None else None
        if score is None:
            return None
        return {
            "score": score["score"],
            "band": score["risk"] or score["risk_at_least"],
            "complete": score["complete"],
            "label": score["label"],
        }

    async def visit_changed(self, visit: Visit, *, pass_revoked: bool = False) -> None:
        """Tell the open pages about a change made outside the rooms (the clinic's HTTP
        API: cancel, no-show, a new link). A visit that is over, or whose pass died with
        a new link, loses its patient's connections, in every process."""
        await self._publish(visit.clinician_id, changed=visit.id, places=True)
        if visit.open and not pass_revoked:
            return
        for sid in await self.roster.visit_sids(visit.id):
            await self.disconnect(sid)
        if not visit.open:
            await self.roster.forget_visit(visit.id)
            await self._let_guests_go(visit, visit.guests)

    async def _send_queue(self, clinician_id: str, *, to: str) -> list[Visit]:
        """The clinician's queue to `to` (a socket or their room); returns it."""
        visits = await self.reception.queue(clinician_id)
        await self.emit("queue", {"visits": [await self._entry(v) for v in visits]}, to=to)
        return visits

    async def _entry(self, visit: Visit) -> dict[str, Any]:
        patient = await self.store.get_patient(visit.patient_id)
        latest = await self.store.latest_observations(visit.patient_id)
        return {
            "visit_id": visit.id,
            "patient_id": visit.patient_id,
            "patient_name": patient.name if patient is not None else "",
            "state": visit.state.value,
            "waiting_since": optional_iso(visit.waiting_since),
            "scheduled_at": iso(visit.scheduled_at),
            "patient_online": visit.patient_online,
            "precheck": precheck_json(visit.precheck),
            "news2": await self._news2(visit.patient_id),
            "latest": [observation_json(o) for o in latest],
            "guests": [
                {
                    "guest_id": g.id,
                    "name": g.name,
                    "role": g.role.value,
                    "state": g.state.value,
                    "waiting_since": optional_iso(g.waiting_since),
                    "online": g.online,
                }
                for g in visit.present_guests
            ],
        }


def _described(guest: Guest) -> dict[str, str]:
    return {
        "role": GUEST,
        "participant": guest.id,
        "name": guest.name,
        "guest_role": guest.role.value,
    }


def _participant_order(p: Mapping[str, str]) -> tuple[int, str]:
    return ({CLINICIAN: 0, PATIENT: 1}.get(p["role"], 2), p["participant"])


def _guest_answer(visit: Visit, guest: Guest) -> dict[str, Any]:
    return {"ok": True, "visit_id": visit.id, "guest_id": guest.id, "state": guest.state.value}
