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

Guests (an interpreter, a family member, a colleague) are invited by the care team, each
with their own join link and pass, under the same rules. A guest's own states::

    invited --join--> waiting --admit--> in_call --send back--> waiting
       |                 |                  |
       +-----------------+------------------+--remove--> removed

A guest is admitted only into a call in progress (the visit is `in_call`: the doctor has
admitted the patient). When the visit goes back to the waiting room its guests in the
call go back too; when the visit is over, every guest's link dies with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from telemed.clock import iso, parse_iso
from telemed.errors import ValidationError

MAX_QUALITY_SAMPLES = 360  # a sample every 10 s: an hour of call quality per visit
MAX_GUEST_NAME = 80  # characters of a guest's display name


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


class GuestRole(StrEnum):
    """Why a guest is in the call."""

    INTERPRETER = "interpreter"
    FAMILY = "family"
    COLLEAGUE = "colleague"


class GuestState(StrEnum):
    INVITED = "invited"
    WAITING = "waiting"
    IN_CALL = "in_call"
    REMOVED = "removed"


GUEST_MOVES: dict[GuestState, frozenset[GuestState]] = {
    GuestState.INVITED: frozenset({GuestState.WAITING, GuestState.REMOVED}),
    GuestState.WAITING: frozenset({GuestState.IN_CALL, GuestState.REMOVED}),
    GuestState.IN_CALL: frozenset({GuestState.WAITING, GuestState.REMOVED}),
    GuestState.REMOVED: frozenset(),
}


class InvalidGuestMove(Exception):
    """The guest cannot go from their state to the one asked for."""

    def __init__(self, current: GuestState, wanted: GuestState) -> None:
        super().__init__(f"a guest who is {current.value} cannot become {wanted.value}")
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
class Guest:
    """Someone the care team invited into the call, with their own link and pass."""

    id: str
    role: GuestRole
    name: str  # shown to the others in the call; at most MAX_GUEST_NAME characters
    link_hash: str  # SHA-256 of the guest's join token
    link_expires_at: datetime  # the visit's, when the guest was invited
    invited_at: datetime
    invited_by: str  # a user id, or "cli"
    state: GuestState = GuestState.INVITED
    link_claimed_at: datetime | None = None
    pass_hash: str = ""  # SHA-256 of the claiming browser's pass
    waiting_since: datetime | None = None  # the first arrival; kept across rejoins
    admitted_at: datetime | None = None
    removed_at: datetime | None = None
    online: bool = False  # a page of the guest's is connected now (a hint for the queue)

    @property
    def removed(self) -> bool:
        return self.state is GuestState.REMOVED

    def move(self, to: GuestState, at: datetime) -> Guest:
        """The guest after the move; raise `InvalidGuestMove`."""
        if to not in GUEST_MOVES[self.state]:
            raise InvalidGuestMove(self.state, to)
        changes: dict[str, Any] = {"state": to}
        if to is GuestState.WAITING and self.waiting_since is None:
            changes["waiting_since"] = at
        if to is GuestState.IN_CALL:
            changes["admitted_at"] = at
        if to is GuestState.REMOVED:
            changes["removed_at"] = at
            changes["pass_hash"] = ""  # the browser's pass dies at once
            changes["online"] = False
        return dataclasses.replace(self, **changes)


def guest_role(value: object) -> GuestRole:
    """A guest's role from outside (the API, the CLI); `ValidationError` naming `role`."""
    choices = ", ".join(r.value for r in GuestRole)
    if not isinstance(value, str):
        raise ValidationError("role", f"must be one of {choices}")
    try:
        return GuestRole(value)
    except ValueError:
        raise ValidationError("role", f"must be one of {choices}") from None


def guest_name(value: object) -> str:
    """A guest's display name, its runs of spaces made one; `ValidationError` naming
    `name` when it is missing, too long or holds control characters."""
    if not isinstance(value, str):
        raise ValidationError("name", "must be a string")
    if any(_control(c) for c in value if c not in "\t\n"):
        raise ValidationError("name", "must not hold control characters")
    text = " ".join(value.split())
    if not text:
        raise ValidationError("name", "is required")
    if len(text) > MAX_GUEST_NAME:
        raise ValidationError("name", f"is longer than {MAX_GUEST_NAME} characters")
    return text


def _control(c: str) -> bool:
    """A control character, or one that reorders text (which could spoof a name)."""
    return unicodedata.category(c) == "Cc" or unicodedata.bidirectional(c) in _BIDI_CONTROLS


_BIDI_CONTROLS = frozenset({"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})


@dataclass(frozen=True, slots=True)
class RecordingConsent:
    """The patient or the clinician, in the call, agreeing to record it or withdrawing."""

    side: str  # "patient" or "clinician"
    given: bool
    at: datetime
    by: str  # the clinician's user id, or "patient"


RECORDING_SIDES = ("patient", "clinician")


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
    guests: tuple[Guest, ...] = ()  # in the order they were invited, the removed ones too
    recording_consents: tuple[RecordingConsent, ...] = ()  # every change, oldest first

    def consent(self, side: str) -> bool:
        """Whether `side` agrees to recording now: its latest word in this call (a
        consent does not outlive the call it was given in: sent back, it is asked again)."""
        since = self.admitted_at
        said = [
            c
            for c in self.recording_consents
            if c.side == side and (since is None or c.at >= since)
        ]
        return bool(said) and said[-1].given

    @property
    def may_record(self) -> bool:
        """Both the patient and the clinician agree, and the visit is in a call."""
        return self.state is VisitState.IN_CALL and all(map(self.consent, RECORDING_SIDES))

    def with_consent(self, consent: RecordingConsent) -> Visit:
        return dataclasses.replace(self, recording_consents=(*self.recording_consents, consent))

    @property
    def open(self) -> bool:
        return not self.state.final

    @property
    def present_guests(self) -> tuple[Guest, ...]:
        """The guests not removed: they count towards the call's participants."""
        return tuple(g for g in self.guests if not g.removed)

    def guest(self, guest_id: str) -> Guest | None:
        return next((g for g in self.guests if g.id == guest_id), None)

    def with_guest(self, guest: Guest) -> Visit:
        """The visit with `guest` added, or put in place of the guest with its id."""
        if self.guest(guest.id) is None:
            return dataclasses.replace(self, guests=(*self.guests, guest))
        return dataclasses.replace(
            self, guests=tuple(guest if g.id == guest.id else g for g in self.guests)
        )

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
        if self.state is VisitState.IN_CALL and to is VisitState.WAITING:
            # the call is over for now: its guests wait with the patient
            changes["guests"] = tuple(
                g.move(GuestState.WAITING, at) if g.state is GuestState.IN_CALL else g
                for g in self.guests
            )
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


# a guest's pass, as the browser keeps it -------------------------------------------

GUEST_COOKIE = "telemed_guest"  # HttpOnly; value "{visit_id}.{guest_id}.{pass}"


def guest_cookie_value(visit_id: str, guest_id: str, held_pass: str) -> str:
    return f"{visit_id}.{guest_id}.{held_pass}"


def parse_guest_cookie(value: str | None) -> tuple[str, str, str] | None:
    """(visit_id, guest_id, pass) from a `telemed_guest` cookie's value; None when it is
    missing or not of that shape."""
    if not value:
        return None
    parts = value.split(".", 2)
    if len(parts) != 3 or not all(parts):
        return None
    if any(len(p) > MAX_COOKIE_PART or not p.isascii() for p in parts):
        return None
    return parts[0], parts[1], parts[2]


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
        "guests": [_guest_doc(g) for g in visit.guests],
        "recording_consents": [
            {"side": c.side, "given": c.given, "at": iso(c.at), "by": c.by}
            for c in visit.recording_consents
        ],
    }


def _guest_doc(g: Guest) -> dict[str, Any]:
    return {
        "id": g.id,
        "role": g.role.value,
        "name": g.name,
        "link_hash": g.link_hash,
        "link_expires_at": iso(g.link_expires_at),
        "invited_at": iso(g.invited_at),
        "invited_by": g.invited_by,
        "state": g.state.value,
        "link_claimed_at": _iso(g.link_claimed_at),
        "pass_hash": g.pass_hash,
        "waiting_since": _iso(g.waiting_since),
        "admitted_at": _iso(g.admitted_at),
        "removed_at": _iso(g.removed_at),
        "online": g.online,
    }


def _guest_from_doc(doc: dict[str, Any]) -> Guest:
    return Guest(
        id=doc["id"],
        role=GuestRole(doc["role"]),
        name=doc["name"],
        link_hash=doc["link_hash"],
        link_expires_at=parse_iso(doc["link_expires_at"]),
        invited_at=parse_iso(doc["invited_at"]),
        invited_by=doc["invited_by"],
        state=GuestState(doc["state"]),
        link_claimed_at=_parse(doc.get("link_claimed_at")),
        pass_hash=doc.get("pass_hash", ""),
        waiting_since=_parse(doc.get("waiting_since")),
        admitted_at=_parse(doc.get("admitted_at")),
        removed_at=_parse(doc.get("removed_at")),
        online=bool(doc.get("online", False)),
    )


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
        guests=tuple(_guest_from_doc(g) for g in doc.get("guests", ())),
        recording_consents=tuple(
            RecordingConsent(c["side"], bool(c["given"]), parse_iso(c["at"]), c["by"])
            for c in doc.get("recording_consents", ())
        ),
    )


def _iso(at: datetime | None) -> str | None:
    return None if at is None else iso(at)


def _parse(text: str | None) -> datetime | None:
    return None if text is None else parse_iso(text)
