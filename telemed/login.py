"""Password sign-in with throttling per account and per address, every try audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from telemed.accounts import User
from telemed.audit import Outcome
from telemed.clinic import Actor, Clinic
from telemed.passwords import averify_password
from telemed.throttle import LoginThrottling, account_key, address_key


@dataclass(frozen=True, slots=True)
class LoginResult:
    user: User | None
    message: str = ""  # what the person is told when `user` is None
    retry_after: timedelta = timedelta(0)


def _wait_message(wait: timedelta, locked: bool) -> str:
    seconds = max(1, int(wait.total_seconds() + 0.999))
    if locked:
        minutes = max(1, (seconds + 59) // 60)
        return (
            "Too many failed sign-ins: this account or address is locked for "
            f"{minutes} more minute{'s' if minutes != 1 else ''}."
        )
    plural = "s" if seconds != 1 else ""
    return f"Too many failed sign-ins: wait {seconds} second{plural} and try again."


async def attempt_login(
    clinic: Clinic, throttling: LoginThrottling, email: str, password: str, source: str
) -> LoginResult:
    store, now = clinic.store, clinic.clock()
    email = email.strip().lower()
    keys = (account_key(email), address_key(source))
    policies = (throttling.account, throttling.address)
    states = [await store.get_throttle(k) for k in keys]
    waits = [p.wait(s, now) for p, s in zip(policies, states, strict=True)]
    wait = max(waits)
    user = await store.find_user_by_email(email) if email else None
    actor = Actor.of(user, source) if user else Actor("anonymous", "anonymous", source)
    if wait > timedelta(0):
        locked = any(
            p.locked(s) and w > timedelta(0)
            for p, s, w in zip(policies, states, waits, strict=True)
        )
        await clinic.audit(actor, "login", Outcome.DENIED, detail="throttled")
        return LoginResult(None, _wait_message(wait, locked), wait)

    ok = await averify_password(user.password_hash if user else "", password)
    if user is not None and ok and user.active:
        await store.delete_throttle(keys[0])
        await clinic.audit(Actor.of(user, source), "login", detail="password")
        return LoginResult(user)

    for policy, key, state in zip(policies, keys, states, strict=True):
        await store.put_throttle(policy.failed(key, state, now))
    await clinic.audit(actor, "login", Outcome.FAILURE, detail="wrong e-mail or password")
    states = [await store.get_throttle(k) for k in keys]
    if any(p.locked(s) for p, s in zip(policies, states, strict=True)):
        lock = throttling.account.lock
        return LoginResult(None, _wait_message(lock, True), lock)
    return LoginResult(None, "Wrong e-mail address or password.")
