"""The client events of the `/visit` namespace, checked strictly (docs/visit-protocol.md).

Each parser takes the event's payload as python-socketio decoded it and returns a value,
or raises `EventRefused` naming the field and the reason. Types are exact (`true` is not
a number, `1` is not a boolean), required fields must be there, other fields must not,
and strings have lengths. Nothing here logs: payloads carry media descriptions and chat.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

VISIT_ID_MAX = 64
GUEST_ID_MAX = 64
PARTICIPANT_MAX = 64  # "patient", "clinician" or a guest's id
SDP_MAX = 64 * 1024
CANDIDATE_MAX = 1024
MID_MAX = 64
UFRAG_MAX = 256
M_LINE_MAX = 1023
CHAT_MAX = 2000
RTT_MAX_MS = 600_000.0
KBPS_MAX = 10_000_000.0
DESCRIPTION_TYPES = frozenset({"offer", "answer", "rollback"})
RECOMMENDATIONS = frozenset({"video", "audio"})


class EventRefused(Exception):
    """The event is malformed or not allowed; the message is what the client is told."""


@dataclass(frozen=True, slots=True)
class PreCheckReport:
    camera: bool
    microphone: bool
    rtt_ms: float | None
    upload_kbps: float | None
    recommendation: str


@dataclass(frozen=True, slots=True)
class Signal:
    visit_id: str | None
    body: dict[str, Any]  # {"description": {...}} or {"candidate": {...} | None}, rebuilt
    to: str | None = None  # one participant of the call; None: the other side (two-party)


@dataclass(frozen=True, slots=True)
class Chat:
    visit_id: str | None
    text: str


@dataclass(frozen=True, slots=True)
class MediaSwitch:
    visit_id: str | None
    audio_only: bool


@dataclass(frozen=True, slots=True)
class Quality:
    visit_id: str | None
    rtt_ms: float | None
    loss_pct: float | None
    kbps_in: float | None
    kbps_out: float | None
    audio_only: bool


def payload(args: tuple[Any, ...]) -> Mapping[str, Any]:
    """The one object an event carries."""
    if len(args) != 1 or not isinstance(args[0], dict):
        raise EventRefused("the event takes exactly one object")
    return args[0]


def _fields(
    data: Mapping[str, Any],
    required: set[str] | frozenset[str],
    optional: frozenset[str] = frozenset(),
) -> None:
    names = data.keys()
    if names >= required and names - required <= optional:
        return  # the usual case, without sorting anything
    for name in sorted(required):
        if name not in data:
            raise EventRefused(f"{name}: missing")
    for name in sorted(data):
        if not isinstance(name, str) or (name not in required and name not in optional):
            raise EventRefused(f"{name}: not expected here")


def _bool(data: Mapping[str, Any], name: str) -> bool:
    value = data[name]
    if not isinstance(value, bool):
        raise EventRefused(f"{name}: expected true or false")
    return value


def _text(data: Mapping[str, Any], name: str, longest: int, *, empty: bool = False) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise EventRefused(f"{name}: expected a string")
    if len(value) > longest:
        raise EventRefused(f"{name}: longer than {longest} characters")
    if not empty and not value:
        raise EventRefused(f"{name}: empty")
    return value


def _optional_text(data: Mapping[str, Any], name: str, longest: int) -> str | None:
    if data.get(name) is None:
        return None
    return _text(data, name, longest, empty=True)


def _number(data: Mapping[str, Any], name: str, highest: float) -> float | None:
    value = data[name]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EventRefused(f"{name}: expected a number or null")
    if not 0 <= value <= highest:
        raise EventRefused(f"{name}: expected between 0 and {highest:g}")
    return float(value)


def visit_id(data: Mapping[str, Any], *, required: bool) -> str | None:
    if "visit_id" not in data:
        if required:
            raise EventRefused("visit_id: missing")
        return None
    return _text(data, "visit_id", VISIT_ID_MAX)


def _with_visit(required: bool) -> tuple[set[str], frozenset[str]]:
    """The `visit_id` field: required from a clinician, optional from a patient (their
    cookie names the visit; naming another is refused by the caller)."""
    return ({"visit_id"}, frozenset()) if required else (set(), frozenset({"visit_id"}))


def parse_visit_ref(data: Mapping[str, Any]) -> str:
    """`{"visit_id"}`: a clinician's open, admit, send_back and end."""
    _fields(data, {"visit_id"})
    found = visit_id(data, required=True)
    assert found is not None
    return found


def parse_guest_ref(data: Mapping[str, Any]) -> tuple[str, str]:
    """`{"visit_id", "guest_id"}`: a clinician's admit_guest, send_back_guest and
    remove_guest."""
    _fields(data, {"visit_id", "guest_id"})
    found = visit_id(data, required=True)
    assert found is not None
    return found, _text(data, "guest_id", GUEST_ID_MAX)


def parse_join_call(data: Mapping[str, Any]) -> str | None:
    """`{}` (a patient may name their own visit)."""
    _fields(data, set(), frozenset({"visit_id"}))
    return visit_id(data, required=False)


def parse_precheck(data: Mapping[str, Any]) -> tuple[str | None, PreCheckReport]:
    _fields(
        data,
        {"camera", "microphone", "rtt_ms", "upload_kbps", "recommendation"},
        frozenset({"visit_id"}),
    )
    recommendation = _text(data, "recommendation", 16)
    if recommendation not in RECOMMENDATIONS:
        raise EventRefused("recommendation: expected video or audio")
    return visit_id(data, required=False), PreCheckReport(
        camera=_bool(data, "camera"),
        microphone=_bool(data, "microphone"),
        rtt_ms=_number(data, "rtt_ms", RTT_MAX_MS),
        upload_kbps=_number(data, "upload_kbps", KBPS_MAX),
        recommendation=recommendation,
    )


# the fields of a signal: (visit_id required, its kind) -> (required, optional)
_SIGNAL_FIELDS = {
    (visit_required, kind): (
        frozenset(_with_visit(visit_required)[0] | {kind}),
        _with_visit(visit_required)[1] | {"to"},
    )
    for visit_required in (False, True)
    for kind in ("description", "candidate")
}
_CANDIDATE_OPTIONAL = frozenset({"sdpMid", "sdpMLineIndex", "usernameFragment"})
_CANDIDATE_REQUIRED = frozenset({"candidate"})


def parse_signal(data: Mapping[str, Any], *, visit_required: bool) -> Signal:
    kinds = [k for k in ("description", "candidate") if k in data]
    if len(kinds) != 1:
        raise EventRefused("a signal carries either a description or a candidate")
    _fields(data, *_SIGNAL_FIELDS[visit_required, kinds[0]])
    found = visit_id(data, required=visit_required)
    to = _text(data, "to", PARTICIPANT_MAX) if "to" in data else None
    try:
        if kinds[0] == "description":
            return Signal(found, {"description": _description(data["description"])}, to)
        return Signal(found, {"candidate": _candidate(data["candidate"])}, to)
    except EventRefused as exc:  # name the field inside: "candidate.sdpMid: ..."
        inside = str(exc)
        joint = ": " if inside.startswith("expected") else "."
        raise EventRefused(f"{kinds[0]}{joint}{inside}") from None


def _description(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise EventRefused("expected an object")
    _fields(value, {"type", "sdp"})
    kind = _text(value, "type", 16)
    if kind not in DESCRIPTION_TYPES:
        raise EventRefused("type: expected offer, answer or rollback")
    return {"type": kind, "sdp": _text(value, "sdp", SDP_MAX, empty=kind == "rollback")}


def _candidate(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None  # the end of candidates
    if not isinstance(value, dict):
        raise EventRefused("expected an object or null")
    _fields(value, _CANDIDATE_REQUIRED, _CANDIDATE_OPTIONAL)
    index = value.get("sdpMLineIndex")
    if index is not None and (
        isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= M_LINE_MAX
    ):
        raise EventRefused(f"sdpMLineIndex: expected 0 to {M_LINE_MAX} or null")
    return {
        "candidate": _text(value, "candidate", CANDIDATE_MAX, empty=True),
        "sdpMid": _optional_text(value, "sdpMid", MID_MAX),
        "sdpMLineIndex": index,
        "usernameFragment": _optional_text(value, "usernameFragment", UFRAG_MAX),
    }


def parse_chat(data: Mapping[str, Any], *, visit_required: bool) -> Chat:
    required, optional = _with_visit(visit_required)
    _fields(data, required | {"text"}, optional)
    text = _text(data, "text", CHAT_MAX)
    if not text.strip():
        raise EventRefused("text: empty")
    return Chat(visit_id(data, required=visit_required), text)


def parse_media(data: Mapping[str, Any], *, visit_required: bool) -> MediaSwitch:
    required, optional = _with_visit(visit_required)
    _fields(data, required | {"audio_only"}, optional)
    return MediaSwitch(visit_id(data, required=visit_required), _bool(data, "audio_only"))


def parse_quality(data: Mapping[str, Any], *, visit_required: bool) -> Quality:
    required, optional = _with_visit(visit_required)
    _fields(data, required | {"rtt_ms", "loss_pct", "kbps_in", "kbps_out", "audio_only"}, optional)
    return Quality(
        visit_id(data, required=visit_required),
        rtt_ms=_number(data, "rtt_ms", RTT_MAX_MS),
        loss_pct=_number(data, "loss_pct", 100.0),
        kbps_in=_number(data, "kbps_in", KBPS_MAX),
        kbps_out=_number(data, "kbps_out", KBPS_MAX),
        audio_only=_bool(data, "audio_only"),
    )


@dataclass(frozen=True, slots=True)
class RelayOffer:
    visit_id: str | None
    sdp: str


def parse_relay_offer(data: Mapping[str, Any], *, visit_required: bool) -> RelayOffer:
    """`{"visit_id", "sdp"}`: a page's offer to the server's relay."""
    required, optional = _with_visit(visit_required)
    _fields(data, required | {"sdp"}, optional)
    return RelayOffer(visit_id(data, required=visit_required), _text(data, "sdp", SDP_MAX))


MODE_REASONS = frozenset({"ice_failed"})


def parse_mode_request(data: Mapping[str, Any], *, visit_required: bool) -> str | None:
    """`{"visit_id", "want": "relay", "reason": "ice_failed"}`: a page whose peer-to-peer
    connection keeps failing asks for the relay. Returns the visit id (if named)."""
    required, optional = _with_visit(visit_required)
    _fields(data, required | {"want", "reason"}, optional)
    if _text(data, "want", 16) != "relay":
        raise EventRefused("want: expected relay")
    if _text(data, "reason", 32) not in MODE_REASONS:
        raise EventRefused(f"reason: expected one of {', '.join(sorted(MODE_REASONS))}")
    return visit_id(data, required=visit_required)


@dataclass(frozen=True, slots=True)
class Consent:
    visit_id: str | None
    given: bool


def parse_consent(data: Mapping[str, Any], *, visit_required: bool) -> Consent:
    """`{"visit_id", "consent": bool}`: agree to recording the call, or withdraw."""
    required, optional = _with_visit(visit_required)
    _fields(data, required | {"consent"}, optional)
    return Consent(visit_id(data, required=visit_required), _bool(data, "consent"))
