"""Login throttling: failures for one account or one address slow down, then lock.

After `delay_after` failures each further try must wait, doubling from one second; after
`lock_after` failures the key is locked for `lock` from the last failure. A success
clears the account's counter. Pure functions over a small record the store keeps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_DELAY = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Throttle:
    key: str  # "account:<email>" or "address:<ip>"
    failures: int
    last_failure_at: datetime


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    delay_after: int
    lock_after: int
    lock: timedelta

    def wait(self, state: Throttle | None, now: datetime) -> timedelta:
        """How long the next try must still wait (zero when it may go ahead)."""
        if state is None or state.failures < self.delay_after:
            return timedelta(0)
        if state.failures >= self.lock_after:
            until = state.last_failure_at + self.lock
        else:
            step = state.failures - self.delay_after
            until = state.last_failure_at + min(timedelta(seconds=2**step), MAX_DELAY)
        return max(until - now, timedelta(0))

    def locked(self, state: Throttle | None) -> bool:
        return state is not None and state.failures >= self.lock_after

    def failed(self, key: str, state: Throttle | None, now: datetime) -> Throttle:
        if state is not None and now - state.last_failure_at >= self.lock:
            state = None  # a quiet spell as long as a lock forgives older failures
        return Throttle(key, (state.failures if state else 0) + 1, now)


def account_key(email: str) -> str:
    """Hashed: whatever was typed as an e-mail address (maybe a password) is not kept."""
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    return f"account:{digest}"


def address_key(address: str) -> str:
    return f"address:{address}"


def second_factor_key(user_id: str) -> str:
    return f"2fa:{user_id}"


@dataclass(frozen=True, slots=True)
class LoginThrottling:
    """Accounts lock after few failures; a shared address (a clinic's NAT) after more."""

    account: ThrottlePolicy
    address: ThrottlePolicy
