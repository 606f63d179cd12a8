"""JSON shapes of users and patients, shared by the HTTP API and the CLI's --json."""

from __future__ import annotations

from typing import Any

from telemed.accounts import Patient, User


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
