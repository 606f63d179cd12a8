"""JSON shapes of users and patients, shared by the HTTP API and the CLI's --json."""

from __future__ import annotations

from typing import Any

from telemed.accounts import Patient, User
from telemed.clock import iso
from telemed.monitoring import Alert, Observation
from telemed.settings import VisitSettings
from telemed.visits import Guest, PreCheck, Visit


def patient_json(p: Patient) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "birth_date": p.birth_date.isoformat() if p.birth_date else None,
        "language": p.language,
    }


def user_json(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "email": u.email,
        "name": u.name,
        "role": u.role.value,
        "active": u.active,
        "two_factor": bool(u.totp_secret),
    }


def optional_iso(moment: Any) -> str | None:
    return None if moment is None else iso(moment)


def alert_json(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "patient_id": a.patient_id,
        "rule": a.rule,
        "severity": a.severity.value,
        "state": a.state.value,
        "value": a.value,
        "score": a.score,
        "opened_at": iso(a.opened_at),
        "last_breach_at": iso(a.last_breach_at),
        "acknowledged_by": a.acknowledged_by or None,
        "acknowledged_at": optional_iso(a.acknowledged_at),
        "resolved_by": a.resolved_by or None,
        "resolved_at": optional_iso(a.resolved_at),
        "detail": a.detail,
    }


def observation_json(o: Observation) -> dict[str, Any]:
    return {
        "device_id": o.device_id,
        "code": o.code,
        "value": o.value,
        "unit": o.unit,
        "taken_at": iso(o.taken_at),
    }


def precheck_json(p: PreCheck | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "camera": p.camera,
        "microphone": p.microphone,
        "rtt_ms": p.rtt_ms,
        "upload_kbps": p.upload_kbps,
        "recommendation": p.recommendation.value,
        "at": iso(p.at),
    }


def visit_json(v: Visit) -> dict[str, Any]:
    """A visit as the clinic sees it; never its link's or pass's hash."""
    return {
        "visit_id": v.id,
        "patient_id": v.patient_id,
        "doctor_id": v.clinician_id,
        "state": v.state.value,
        "scheduled_at": iso(v.scheduled_at),
        "link_expires_at": iso(v.link_expires_at),
        "link_claimed": v.link_claimed_at is not None,
        "waiting_since": optional_iso(v.waiting_since),
        "admitted_at": optional_iso(v.admitted_at),
        "ended_at": optional_iso(v.ended_at),
        "patient_online": v.patient_online,
        "precheck": precheck_json(v.precheck),
        "transitions": [
            {"state": t.state.value, "at": iso(t.at), "by": t.by} for t in v.transitions
        ],
        "guests": [guest_json(g) for g in v.guests],
    }


def guest_json(g: Guest) -> dict[str, Any]:
    """A visit's guest as the clinic sees them; never their link's or pass's hash."""
    return {
        "guest_id": g.id,
        "role": g.role.value,
        "name": g.name,
        "state": g.state.value,
        "expires_at": iso(g.link_expires_at),
        "invited_at": iso(g.invited_at),
        "invited_by": g.invited_by,
        "link_claimed": g.link_claimed_at is not None,
        "waiting_since": optional_iso(g.waiting_since),
        "admitted_at": optional_iso(g.admitted_at),
        "removed_at": optional_iso(g.removed_at),
        "online": g.online,
    }


def media_json(settings: VisitSettings) -> dict[str, int]:
    """The call's media limits, as the patient's page and the call payload carry them."""
    return {
        "low_bandwidth_kbps": settings.low_bandwidth_kbps,
        "low_bandwidth_height": settings.low_bandwidth_height,
        "audio_only_below_kbps": settings.audio_only_below_kbps,
    }


def join_url(base_url: str, token: str) -> str:
    return f"{base_url}/v/{token}"
