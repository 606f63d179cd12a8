"""A demo clinic for a first start: one doctor, one nurse, two patients (and an admin).

Seeded only into an empty SQLite store, never into MongoDB (a production store).
Passwords are random; they are printed once and kept in var/demo-logins.txt (0600).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from telemed.clinic import OPERATOR, Clinic
from telemed.errors import TelemedError

LOGINS_FILE = "demo-logins.txt"
MARKER = "doctor@demo.clinic"  # present only in a store seeded with the demo clinic


class DemoRefused(TelemedError):
    pass


@dataclass(frozen=True, slots=True)
class DemoLogin:
    role: str
    name: str
    email: str
    password: str


PEOPLE = (
    ("admin", "Ada Admin", "admin@demo.clinic", "en", ""),
    ("doctor", "Dr. Dana Doctor", "doctor@demo.clinic", "en", ""),
    ("nurse", "Nico Nurse", "nurse@demo.clinic", "en", ""),
    ("patient", "Pat Patient", "pat@demo.clinic", "en", "1958-03-14"),
    ("patient", "Rosa Rural", "rosa@demo.clinic", "es", "1949-11-02"),
)


async def seed(clinic: Clinic, var_dir: Path) -> list[DemoLogin]:
    if clinic.store.kind != "sqlite":
        raise DemoRefused("demo seeding is refused on a MongoDB store")
    if not await clinic.store.is_empty():
        raise DemoRefused("demo seeding needs an empty store")
    logins: list[DemoLogin] = []
    ids: dict[str, str] = {}
    for role, name, email, language, born in PEOPLE:
        password = secrets.token_urlsafe(12)
        user = await clinic.add_user(
            OPERATOR,
            role=role,
            email=email,
            name=name,
            password=password,
            language=language,
            birth_date=born,
        )
        ids[email] = user.id
        logins.append(DemoLogin(role, name, email, password))
    for patient in ("pat@demo.clinic", "rosa@demo.clinic"):
        for clinician in ("doctor@demo.clinic", "nurse@demo.clinic"):
            await clinic.add_care_team_member(OPERATOR, ids[patient], ids[clinician])
    await asyncio.to_thread(_write_private, var_dir / LOGINS_FILE, format_logins(logins))
    return logins


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def format_logins(logins: list[DemoLogin]) -> str:
    lines = ["Demo clinic sign-ins (change or remove these accounts before real use):"]
    for login in logins:
        lines.append(
            f"  {login.role:8} {login.email:22} password: {login.password}   ({login.name})"
        )
    return "\n".join(lines) + "\n"
