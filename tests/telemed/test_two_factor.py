"""Two-factor sign-in: enrolment, the second step of sign-in, and requiring it for clinicians."""

from __future__ import annotations

import re
from pathlib import Path

import pyotp
from aiohttp.test_utils import TestClient

from telemed import totp
from telemed.app import create_app
from telemed.clinic import OPERATOR
from telemed.web.keys import CLINIC, STORE
from tests.conftest import PASSWORD, FakeClock, People, login, make_settings, page_csrf

Client = TestClient  # type: ignore[type-arg]

_SECRET = re.compile(r'data-testid="totp-secret">([A-Z2-7]+)<')
_RECOVERY_LIST = re.compile(r'data-testid="recovery-codes">(.*?)</ul>', re.S)
_CODE = re.compile(r"<code>([^<]+)</code>")
SECOND_FACTOR = "/login/second-factor"


def current_code(secret: str, clock: FakeClock) -> str:
    return pyotp.TOTP(secret).at(clock.now)


def wrong_code(secret: str, clock: FakeClock) -> str:
    """Six digits that match none of the steps the server accepts now (±1 step)."""
    otp = pyotp.TOTP(secret)
    accepted = {otp.at(clock.now, counter_offset=offset) for offset in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(1000)) if c not in accepted)


async def enrol(client: Client, clock: FakeClock) -> tuple[str, list[str]]:
    """Turn on 2FA for the signed-in user through the page; returns the secret and codes."""
    page = await client.get("/account/2fa")
    assert page.status == 200
    html = await page.text()
    match = _SECRET.search(html)
    assert match, "the page shows no secret"
    secret = match.group(1)
    token = await page_csrf(client, "/account/2fa")
    done = await client.post(
        "/account/2fa",
        data={"csrf_token": token, "secret": secret, "code": current_code(secret, clock)},
    )
    assert done.status == 200, await done.text()
    listing = _RECOVERY_LIST.search(await done.text())
    assert listing, "no recovery codes shown"
    return secret, _CODE.findall(listing.group(1))


async def logout(client: Client) -> None:
    """Sign out through the form (a doctor: the dashboard carries the session's token)."""
    token = await page_csrf(client, "/dashboard")
    response = await client.post("/logout", data={"csrf_token": token}, allow_redirects=False)
    assert response.status == 302


async def second_factor(client: Client, code: str):  # type: ignore[no-untyped-def]
    token = await page_csrf(client, SECOND_FACTOR)
    return await client.post(
        SECOND_FACTOR, data={"csrf_token": token, "code": code}, allow_redirects=False
    )


async def sign_in_with_password(client: Client, email: str) -> None:
    response = await login(client, email)
    assert response.status == 302
    assert response.headers["Location"] == SECOND_FACTOR


async def enrolled_doctor(client: Client, people: People, clock: FakeClock) -> str:
    """Dr Alice with 2FA on, signed out, the clock past the step used to enrol."""
    await login(client, people.doctor_a.email)
    secret, _ = await enrol(client, clock)
    await logout(client)
    clock.advance(seconds=60)
    return secret


# enrolment --------------------------------------------------------------------------
async def test_enrolment_shows_a_qr_code_and_turns_2fa_on(
    client: Client, people: People, clock: FakeClock
) -> None:
    await login(client, people.doctor_a.email)
    page = await client.get("/account/2fa")
    assert page.status == 200
    html = await page.text()
    assert "<svg" in html
    assert "</svg>" in html
    match = _SECRET.search(html)
    assert match
    secret = match.group(1)
    assert len(secret) >= 32
    token = await page_csrf(client, "/account/2fa")

    refused = await client.post(
        "/account/2fa",
        data={"csrf_token": token, "secret": secret, "code": wrong_code(secret, clock)},
    )
    assert refused.status == 400
    assert "code:" in await refused.text()
    user = await client.app[STORE].get_user(people.doctor_a.id)
    assert user is not None
    assert user.totp_secret == ""

    accepted = await client.post(
        "/account/2fa",
        data={"csrf_token": token, "secret": secret, "code": current_code(secret, clock)},
    )
    assert accepted.status == 200
    html = await accepted.text()
    assert 'data-testid="2fa-enrolled"' in html
    listing = _RECOVERY_LIST.search(html)
    assert listing
    codes = _CODE.findall(listing.group(1))
    assert len(codes) == 10
    assert len(set(codes)) == 10

    user = await client.app[STORE].get_user(people.doctor_a.id)
    assert user is not None
    assert user.totp_secret == secret
    assert len(user.recovery_codes) == 10
    assert set(user.recovery_codes) == {totp.hash_recovery_code(c) for c in codes}
    stored = " ".join(user.recovery_codes)
    assert not any(c in stored or c.replace("-", "") in stored for c in codes)


async def test_recovery_codes_are_shown_only_once(
    client: Client, people: People, clock: FakeClock
) -> None:
    await login(client, people.doctor_a.email)
    _, codes = await enrol(client, clock)
    again = await client.get("/account/2fa")
    assert again.status == 200
    html = await again.text()
    assert 'data-testid="2fa-enrolled"' in html
    assert "Recovery codes left: 10" in html
    assert 'data-testid="recovery-codes"' not in html
    assert not any(c in html for c in codes)


async def test_a_patient_cannot_enrol(client: Client, people: People) -> None:
    await login(client, people.patient_1.email)
    assert (await client.get("/account/2fa")).status == 403


# sign-in ----------------------------------------------------------------------------
async def test_sign_in_asks_for_the_second_factor(
    client: Client, people: People, clock: FakeClock
) -> None:
    secret = await enrolled_doctor(client, people, clock)
    await sign_in_with_password(client, people.doctor_a.email)
    # the password alone does not sign in
    pending = await client.get("/dashboard", allow_redirects=False)
    assert pending.status == 302
    assert pending.headers["Location"].startswith("/login")
    assert (await client.get("/api/me")).status == 401

    wrong = await second_factor(client, wrong_code(secret, clock))
    assert wrong.status == 401
    assert "not right" in await wrong.text()

    right = await second_factor(client, current_code(secret, clock))
    assert right.status == 302
    assert right.headers["Location"] == "/dashboard"
    dashboard = await client.get("/dashboard", allow_redirects=False)
    assert dashboard.status == 200
    assert "Paula One" in await dashboard.text()


async def test_a_code_cannot_be_replayed(client: Client, people: People, clock: FakeClock) -> None:
    secret = await enrolled_doctor(client, people, clock)
    code = current_code(secret, clock)
    await sign_in_with_password(client, people.doctor_a.email)
    assert (await second_factor(client, code)).status == 302

    await logout(client)
    clock.advance(seconds=10)  # same 30-second step: the code is still "current"
    assert current_code(secret, clock) == code
    await sign_in_with_password(client, people.doctor_a.email)
    replay = await second_factor(client, code)
    assert replay.status == 401
    assert (await client.get("/dashboard", allow_redirects=False)).status == 302


async def test_a_recovery_code_works_once(client: Client, people: People, clock: FakeClock) -> None:
    await login(client, people.doctor_a.email)
    _, codes = await enrol(client, clock)
    await logout(client)

    await sign_in_with_password(client, people.doctor_a.email)
    used = await second_factor(client, codes[3])
    assert used.status == 302
    assert (await client.get("/dashboard", allow_redirects=False)).status == 200
    user = await client.app[STORE].get_user(people.doctor_a.id)
    assert user is not None
    assert len(user.recovery_codes) == 9

    await logout(client)
    await sign_in_with_password(client, people.doctor_a.email)
    again = await second_factor(client, codes[3])
    assert again.status == 401


async def test_too_many_wrong_codes_are_throttled(
    client: Client, people: People, clock: FakeClock
) -> None:
    secret = await enrolled_doctor(client, people, clock)
    await sign_in_with_password(client, people.doctor_a.email)
    bad = wrong_code(secret, clock)
    for _ in range(3):  # throttle_delay_after = 3
        assert (await second_factor(client, bad)).status == 401
    throttled = await second_factor(client, current_code(secret, clock))
    assert throttled.status == 429
    assert "Too many wrong codes" in await throttled.text()
    assert (await client.get("/dashboard", allow_redirects=False)).status == 302
    audit = [
        (r.event.action, r.event.outcome.value, r.event.detail)
        async for r in client.app[STORE].audit_records()
    ]
    assert ("login.second_factor", "denied", "throttled") in audit


async def test_the_password_step_does_not_reset_the_wrong_code_count(
    client: Client, people: People, clock: FakeClock
) -> None:
    """Whoever knows the password must not get unlimited guesses at the code by signing in
    with the password again between guesses."""
    secret = await enrolled_doctor(client, people, clock)
    bad = wrong_code(secret, clock)
    for _ in range(3):
        await sign_in_with_password(client, people.doctor_a.email)
        assert (await second_factor(client, bad)).status == 401
    await sign_in_with_password(client, people.doctor_a.email)
    assert (await second_factor(client, bad)).status == 429


# requiring two-factor sign-in -------------------------------------------------------
async def test_admin_setting_forces_clinicians_to_enrol(
    client: Client, people: People, clock: FakeClock
) -> None:
    await login(client, people.admin.email)
    token = await page_csrf(client, "/admin")
    saved = await client.post(
        "/admin/settings", data={"csrf_token": token, "require_2fa": "on"}, allow_redirects=False
    )
    assert saved.status == 303
    assert saved.headers["Location"] == "/admin?done=settings"
    assert await client.app[CLINIC].require_2fa(False)
    audit = [
        (r.event.action, r.event.outcome.value, r.event.detail, r.event.actor_id)
        async for r in client.app[STORE].audit_records()
    ]
    assert (
        "settings.update",
        "success",
        "require_2fa_for_clinicians=True",
        people.admin.id,
    ) in audit

    # a doctor without 2FA gets in with the password, but only to the enrolment page
    assert (await login(client, people.doctor_a.email)).status == 302
    forced = await client.get("/dashboard", allow_redirects=False)
    assert forced.status == 302
    assert forced.headers["Location"] == "/account/2fa"
    api = await client.get("/api/patients")
    assert api.status == 403
    assert "two-factor" in (await api.json())["error"]

    await enrol(client, clock)
    assert (await client.get("/dashboard", allow_redirects=False)).status == 200
    assert (await client.get("/api/patients")).status == 200

    # patients are never forced
    assert (await login(client, people.patient_1.email)).status == 302
    assert (await client.get("/me", allow_redirects=False)).status == 200
    assert (await client.get("/api/me")).status == 200


async def test_a_doctor_cannot_change_the_setting(client: Client, people: People) -> None:
    await login(client, people.doctor_a.email)
    token = await page_csrf(client)
    response = await client.post(
        "/admin/settings", data={"csrf_token": token, "require_2fa": "on"}, allow_redirects=False
    )
    assert response.status == 403
    assert not await client.app[CLINIC].require_2fa(False)


async def test_config_default_forces_clinicians_to_enrol(
    aiohttp_client: object, tmp_path: Path, mosquitto: int, clock: FakeClock
) -> None:
    settings = make_settings(
        tmp_path, mosquitto, TELEMED_SECURITY_REQUIRE_2FA_FOR_CLINICIANS="true"
    )
    assert settings.security.require_2fa_for_clinicians
    client: Client = await aiohttp_client(create_app(settings, clock=clock))  # type: ignore[operator]
    clinic = client.app[CLINIC]
    nurse = await clinic.add_user(
        OPERATOR, role="nurse", email="nina@example.org", name="Nurse Nina", password=PASSWORD
    )
    patient = await clinic.add_user(
        OPERATOR, role="patient", email="pat@example.org", name="Pat Three", password=PASSWORD
    )
    await clinic.add_care_team_member(OPERATOR, patient.id, nurse.id)

    assert (await login(client, nurse.email)).status == 302
    forced = await client.get("/dashboard", allow_redirects=False)
    assert forced.status == 302
    assert forced.headers["Location"] == "/account/2fa"
    assert (await client.get("/api/patients")).status == 403
    await enrol(client, clock)
    dashboard = await client.get("/dashboard", allow_redirects=False)
    assert dashboard.status == 200
    assert "Pat Three" in await dashboard.text()

    assert (await login(client, patient.email)).status == 302
    assert (await client.get("/me", allow_redirects=False)).status == 200
