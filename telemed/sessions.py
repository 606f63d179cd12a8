"""Server-side login sessions.

The cookie carries a 128-bit random id; the store keeps only its SHA-256, so a copy of
the database does not let anyone take over a session.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

COOKIE = "telemed_session"
TOUCH_EVERY = timedelta(minutes=1)  # how stale last_seen may get before it is written


@dataclass(frozen=True, slots=True)
class Session:
    key: str  # SHA-256 of the cookie's id
    user_id: str
    created_at: datetime
    last_seen_at: datetime
    csrf_token: str
    mfa_pending: bool  # the password was right; the second factor is still owed
    source: str  # address that logged in


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle: timedelta
    absolute: timedelta

    def expired(self, session: Session, now: datetime) -> bool:
        return now - session.last_seen_at >= self.idle or now - session.created_at >= self.absolute

    def needs_touch(self, session: Session, now: datetime) -> bool:
        return now - session.last_seen_at >= TOUCH_EVERY


def new_session_id() -> str:
    return secrets.token_urlsafe(16)  # 128 bits


def session_key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start(user_id: str, now: datetime, source: str, *, mfa_pending: bool) -> tuple[str, Session]:
    """A fresh session id (for the cookie) and the record the store keeps."""
    sid = new_session_id()
    session = Session(
        key=session_key(sid),
        user_id=user_id,
        created_at=now,
        last_seen_at=now,
        csrf_token=secrets.token_urlsafe(32),
        mfa_pending=mfa_pending,
        source=source,
    )
    return sid, session


def touched(session: Session, now: datetime) -> Session:
    return replace(session, last_seen_at=now)
