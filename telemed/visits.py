"""A video visit: who, when, where it stands, and the patient's join link.

The states and the moves between them are the whole lifecycle::

    scheduled --join--> waiting --admit--> in_call --end--> ended
        |                 ^  |                |
        |                 |  +--send back-----+ (back to the waiting room)
        +--> cancelled    +--(rejoin keeps the place: waiting_since is kept)
        +--> no_show

`ended`, `cancelled` and `no_show` are final: the join link dies with them.

The join link carries a 256-bit token; only its SHA-256 is stored. The token is single
use: the first browser that claims it gets a pass (a second secret, kept in an HttpOnly
cookie, also stored only as a hash), and only that pass lets the same browser back in
during the visit. Opening the link does not claim it (link previews in messaging apps
fetch links); the patient's first press on the page does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from telemed.clock import iso, parse_iso

MAX_QUALITY_SAMPLES = 360  # a sample every 10 s: an hour of call quality per visit


class VisitState(StrEnum):
    SCHEDULED = "scheduled"
    WAITING = "waiting"
    IN_CALL = "in_call"
    ENDED = "ended"
    CANCELLED = "cancelled"
    NO_SHOW = "no_show"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({VisitState.ENDED, VisitState.CANCELLED, VisitState.NO_SHOW})
OPEN_STATES = frozenset(VisitState) - FINAL_STATES

MOVES: dict[VisitState, frozenset[VisitState]] = {
    VisitState.SCHEDULED: frozenset(
        {VisitState.WAITING, VisitState.ENDED, VisitState.CANCELLED, VisitState.NO_SHOW}
    ),
    VisitState.WAITING: frozenset({VisitState.IN_CALL, VisitState.ENDED, VisitState.CANCELLED}),
    VisitState.IN_CALL: frozenset({VisitState.WAITING, VisitState.ENDED}),
    VisitState.ENDED: frozenset(),
    VisitState.CANCELLED: frozenset(),
    VisitState.NO_SHOW: frozenset(),
}


class InvalidMove(Exception):
    """The visit cannot go from its state to the one asked for."""

    def __init__(self, current: VisitState, wanted: VisitState) -> None:
        super().__init__(f"a visit that is {current.value} cannot become {wanted.value}")
        self.current = current
        self.wanted = wanted


class Recommendation(StrEnum):
    VIDEO = "video"
    AUDIO = "audio"


@dataclass(frozen=True, slots=True)
class Transition:
    state: VisitState
    at: datetime
    by: str  # a user id, "patient", or "system"


@dataclass(frozen=True, slots=True)
class PreCheck:
    """What the patient's pre-call check found, as their browser reported it."""

    camera: bool
    microphone: bool
    rtt_ms: float | None  # round trip to the server
    upload_kbps: float | None  # estimated upload to the server
    recommendation: Recommendation
    at: datetime


@dataclass(frozen=True, slots=True)
class QualitySample:
    """One side's view of the call at one moment (from WebRTC getStats)."""

    at: datetime
    side: str  # "patient" or "clinician"
    rtt_ms: float | None
    loss_pct: float | None  # inbound packets lost, in percent over the last interval
    kbps_in: float | None
    kbps_out: float | None
    audio_only: bool


@dataclass(frozen=True, slots=True)
class Visit:
    id: str
    patient_id: str
    clinician_id: str
    scheduled_at: datetime
    created_at: datetime
    created_by: str
    link_hash: str  # SHA-256 of the join token
    link_expires_at: datetime
    state: VisitState = VisitState.SCHEDULED
    version: int = 1  # bumped by every stored change; updates compare and set on it
    link_claimed_at: datetime | None = None
    pass_hash: str = ""  # SHA-256 of the claiming browser's pass
    waiting_since: datetime | None = None
    admitted_at: datetime | None = None
    ended_at: datetime | None = None
    transitions: tuple[Transition, ...] = ()
    precheck: PreCheck | None = None
    quality: tuple[QualitySample, ...] = ()
    patient_online: bool = False  # a patient's page is connected now (a hint for the queue)

    @property
    def open(self) -> bool:
        return not self.state.final

    def move(self, to: VisitState, at: datetime, by: str) -> Visit:
        """The visit after the move, with its transition recorded; raise `InvalidMove`."""
        if to not in MOVES[self.state]:
            raise InvalidMove(self.state, to)
        changes: dict[str, Any] = {
            "state": to,
            "transitions": (*self.transitions, Transition(to, at, by)),
        }
        if to is VisitState.WAITING and self.waiting_since is None:
            changes["waiting_since"] = at  # sent back keeps the original place
        if to is VisitState.IN_CALL:
            changes["admitted_at"] = at
        if to.final:
            changes["ended_at"] = at
        return dataclasses.replace(self, **changes)

    def link_usable(self, now: datetime) -> bool:
        return self.open and now < self.link_expires_at

    def with_quality(self, sample: QualitySample) -> Visit:
        kept = (*self.quality, sample)[-MAX_QUALITY_SAMPLES:]
        return dataclasses.replace(self, quality=kept)


def places(queue: list[Visit]) -> dict[str, int]:
    """Each waiting visit's place in `queue` (oldest arrival first): 1 is seen next."""
    waiting = [v for v in queue if v.state is VisitState.WAITING]
    return {v.id: n for n, v in enumerate(waiting, start=1)}


# secrets -------------------------------------------------------------------------


def new_secret() -> str:
    """A 256-bit URL-safe secret: a join token or a browser's pass."""
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return bool(stored_hash) and hmac.compare_digest(secret_hash(secret), stored_hash)


# the patient's pass, as the browser keeps it --------------------------------------

VISIT_COOKIE = "telemed_visit"  # HttpOnly; value "{visit_id}.{pass}"
MAX_COOKIE_PART = 128


def visit_cookie_value(visit_id: str, held_pass: str) -> str:
    return f"{visit_id}.{held_pass}"


def parse_visit_cookie(value: str | None) -> tuple[str, str] | None:
    """(visit_id, pass) from a `telemed_visit` cookie's value; None when it is missing or
    not of that shape. Whether the pass opens the visit is `Reception.visit_for_pass`'s
    to say."""
    if not value:
        return None
    visit_id, dot, held_pass = value.partition(".")
    if not dot or not visit_id or not held_pass:
        return None
    if len(visit_id) > MAX_COOKIE_PART or len(held_pass) > MAX_COOKIE_PART:
        return None
    if not (visit_id.isascii() and held_pass.isascii()):
        return None
    return visit_id, held_pass


# documents (both store adapters keep a visit as one document) ------------------------


def visit_to_doc(visit: Visit) -> dict[str, Any]:
    pre = visit.precheck
    return {
        "id": visit.id,
        "patient_id": visit.patient_id,
        "clinician_id": visit.clinician_id,
        "scheduled_at": iso(visit.scheduled_at),
        "created_at": iso(visit.created_at),
        "created_by": visit.created_by,
        "link_hash": visit.link_hash,
        "link_expires_at": iso(visit.link_expires_at),
        "state": visit.state.value,
        "version": visit.version,
        "link_claimed_at": _iso(visit.link_claimed_at),
        "pass_hash": visit.pass_hash,
        "patient_online": visit.patient_online,
        "waiting_since": _iso(visit.waiting_since),
        "admitted_at": _iso(visit.admitted_at),
        "ended_at": _iso(visit.ended_at),
        "transitions": [
            {"state": t.state.value, "at": iso(t.at), "by": t.by} for t in visit.transitions
        ],
        "precheck": None
        if pre is None
        else {
            "camera": pre.camera,
            "microphone": pre.microphone,
            "rtt_ms": pre.rtt_ms,
            "upload_kbps": pre.upload_kbps,
            "recommendation": pre.recommendation.value,
            "at": iso(pre.at),
        },
        "quality": [
            {
                "at": iso(q.at),
                "side": q.side,
                "rtt_ms": q.rtt_ms,
                "loss_pct": q.loss_pct,
                "kbps_in": q.kbps_in,
                "kbps_out": q.kbps_out,
                "audio_only": q.audio_only,
            }
            for q in visit.quality
        ],
    }


def visit_from_doc(doc: dict[str, Any]) -> Visit:
    pre = doc.get("precheck")
    return Visit(
        id=doc["id"],
        patient_id=doc["patient_id"],
        clinician_id=doc["clinician_id"],
        scheduled_at=parse_iso(doc["scheduled_at"]),
        created_at=parse_iso(doc["created_at"]),
        created_by=doc["created_by"],
        link_hash=doc["link_hash"],
        link_expires_at=parse_iso(doc["link_expires_at"]),
        state=VisitState(doc["state"]),
        version=int(doc["version"]),
        link_claimed_at=_parse(doc.get("link_claimed_at")),
        pass_hash=doc.get("pass_hash", ""),
        patient_online=bool(doc.get("patient_online", False)),
        waiting_since=_parse(doc.get("waiting_since")),
        admitted_at=_parse(doc.get("admitted_at")),
        ended_at=_parse(doc.get("ended_at")),
        transitions=tuple(
            Transition(VisitState(t["state"]), parse_iso(t["at"]), t["by"])
            for t in doc.get("transitions", ())
        ),
        precheck=None
        if pre is None
        else PreCheck(
            camera=bool(pre["camera"]),
            microphone=bool(pre["microphone"]),
            rtt_ms=pre["rtt_ms"],
            upload_kbps=pre["upload_kbps"],
            recommendation=Recommendation(pre["recommendation"]),
            at=parse_iso(pre["at"]),
        ),
        quality=tuple(
            QualitySample(
                at=parse_iso(q["at"]),
                side=q["side"],
                rtt_ms=q["rtt_ms"],
                loss_pct=q["loss_pct"],
                kbps_in=q["kbps_in"],
                kbps_out=q["kbps_out"],
                audio_only=bool(q["audio_only"]),
            )
            for q in doc.get("quality", ())
        ),
    )


def _iso(at: datetime | None) -> str | None:
    return None if at is None else iso(at)


def _parse(text: str | None) -> datetime | None:
    return None if text is None else parse_iso(text)
