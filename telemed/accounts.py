"""People: users with a role, patients, and who may see which patient."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from telemed.errors import ValidationError


class Role(StrEnum):
    ADMIN = "admin"
    DOCTOR = "doctor"
    NURSE = "nurse"
    PATIENT = "patient"

    @property
    def is_clinician(self) -> bool:
        return self in (Role.DOCTOR, Role.NURSE)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str  # lower-cased, unique
    name: str
    role: Role
    password_hash: str  # argon2id; "" when the user cannot log in with a password
    created_at: datetime
    active: bool = True
    totp_secret: str = ""  # base32; "" when two-factor sign-in is not enrolled
    totp_last_step: int = 0  # last accepted TOTP time step, refuses a replayed code
    recovery_codes: tuple[str, ...] = field(default=())  # SHA-256 hashes, one use each


@dataclass(frozen=True, slots=True)
class Patient:
    """A patient's administrative record. Its id is the id of the patient's user."""

    id: str
    name: str
    birth_date: date | None
    language: str  # BCP 47 tag for the patient-facing pages, e.g. "en", "es"
    created_at: datetime


def new_id() -> str:
    """An opaque, unguessable identifier (128 bits, hex: never starts with "-", which a
    command line would read as an option)."""
    return secrets.token_hex(16)


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024


def clean_email(value: str) -> str:
    email = value.strip().lower()
    if not email:
        raise ValidationError("email", "is required")
    if len(email) > 254 or not _EMAIL.match(email):
        raise ValidationError("email", "is not an e-mail address")
    return email


def clean_name(value: str) -> str:
    name = " ".join(value.split())
    if not name:
        raise ValidationError("name", "is required")
    if len(name) > 200:
        raise ValidationError("name", "is longer than 200 characters")
    return name


def clean_role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise ValidationError("role", f"must be one of {allowed}") from None


def clean_language(value: str) -> str:
    language = value.strip() or "en"
    if not _LANGUAGE.match(language):
        raise ValidationError("language", "is not a language tag such as en or es")
    return language


def check_password_strength(password: str, *, email: str = "") -> None:
    if len(password) < MIN_PASSWORD:
        raise ValidationError("password", f"must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ValidationError("password", f"must be at most {MAX_PASSWORD} characters")
    if email and password.lower() == email.lower():
        raise ValidationError("password", "must not be the e-mail address")


def may_see_patient(user: User, patient_id: str, team_of_patient: frozenset[str]) -> bool:
    """The one access rule for patient data.

    A clinician sees the patients of their care teams, a patient sees themself, and an
    admin sees the administrative record (never clinical content, enforced where that
    content is served).
    """
    if not user.active:
        return False
    if user.role is Role.ADMIN:
        return True
    if user.role is Role.PATIENT:
        return user.id == patient_id
    return user.id in team_of_patient
