"""An admin deactivates, reactivates, resets passwords and two-factor enrolment."""

from __future__ import annotations

import dataclasses

from aiohttp.test_utils import TestClient

from telemed.clinic import OPERATOR
from telemed.web.keys import CLINIC, CLOCK, STORE
from tests.conftest import PASSWORD, People, login, page_csrf

Client = TestClient  # type: ignore[type-arg]


async def admin_post(client: Client, path: str, data: dict[str, str]) -> tuple[int, str]:
    token = await page_csrf(client, "/admin")
    response = await client.post(path, data={**data, "csrf_token": token})
    return response.status, await response.text()


async def test_deactivating_a_user_stops_sign_in_sessions_and_tokens(
    client: Client, people: People, aiohttp_client: object
) -> None:
    _, secret = await client.app[CLINIC].create_token(OPERATOR, people.doctor_a.email)
    bearer = {"Authorization": f"Bearer {secret}"}
    assert (await client.get("/api/me", headers=bearer)).status == 200

    doctor = await aiohttp_client(client.server)  # type: ignore[operator]
    await login(doctor, people.doctor_a.email)
    assert (await doctor.get("/dashboard", allow_redirects=False)).status == 200

    await login(client, people.admin.email)
    status, text = await admin_post(
        client, f"/admin/users/{people.doctor_a.id}", {"action": "deactivate"}
    )
    assert status == 200
    assert "User deactivated" in text

    assert (await doctor.get("/dashboard", allow_redirects=False)).status == 302
    assert (await client.get("/api/me", headers=bearer)).status == 401
    assert (await login(doctor, people.doctor_a.email)).status == 401

    status, text = await admin_post(
        client, f"/admin/users/{people.doctor_a.id}", {"action": "reactivate"}
    )
    assert "User reactivated." in text
    assert (await login(doctor, people.doctor_a.email)).status == 302
    actions = [r.event.action async for r in client.app[STORE].audit_records()]
    assert "user.deactivate" in actions
    assert "user.reactivate" in actions


async def test_an_admin_cannot_deactivate_themself(client: Client, people: People) -> None:
    await login(client, people.admin.email)
    status, text = await admin_post(
        client, f"/admin/users/{people.admin.id}", {"action": "deactivate"}
    )
    assert status == 400
    assert "user: you cannot deactivate your own account" in text


async def test_unknown_action_and_unknown_user_are_named(client: Client, people: People) -> None:
    await login(client, people.admin.email)
    status, text = await admin_post(client, f"/admin/users/{people.nurse_a.id}", {"action": "x"})
    assert status == 400
    assert "action: choose" in text
    status, text = await admin_post(client, "/admin/users/nope", {"action": "deactivate"})
    assert status == 400
    assert "user: no user has id nope" in text


async def test_setting_a_password_ends_sessions_and_the_new_one_works(
    client: Client, people: People, aiohttp_client: object
) -> None:
    nurse = await aiohttp_client(client.server)  # type: ignore[operator]
    await login(nurse, people.nurse_a.email)
    await login(client, people.admin.email)

    status, text = await admin_post(
        client, "/admin/passwords", {"user_id": people.nurse_a.id, "password": "short"}
    )
    assert status == 400
    assert "password: must be at least 12 characters" in text
    assert 'value="short"' not in text

    new = "a brand new passphrase"
    status, text = await admin_post(
        client, "/admin/passwords", {"user_id": people.nurse_a.id, "password": new}
    )
    assert "Password set" in text
    assert (await nurse.get("/dashboard", allow_redirects=False)).status == 302
    assert (await login(nurse, people.nurse_a.email, PASSWORD)).status == 401
    assert (await login(nurse, people.nurse_a.email, new)).status == 302


async def test_resetting_two_factor_clears_the_enrolment(client: Client, people: People) -> None:
    store = client.app[STORE]
    enrolled = dataclasses.replace(
        people.doctor_b, totp_secret="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", recovery_codes=("x",)
    )
    await store.update_user(enrolled)
    await login(client, people.admin.email)
    status, text = await admin_post(
        client, f"/admin/users/{people.doctor_b.id}", {"action": "reset_2fa"}
    )
    assert "Two-factor sign-in reset" in text
    after = await store.get_user(people.doctor_b.id)
    assert after is not None
    assert after.totp_secret == ""
    assert after.recovery_codes == ()
    # the next sign-in needs only the password
    other = await login(client, people.doctor_b.email)
    assert other.headers["Location"] == "/dashboard"


async def test_a_doctor_cannot_manage_users(client: Client, people: People) -> None:
    await login(client, people.doctor_a.email)
    token = await page_csrf(client, "/dashboard")
    response = await client.post(
        f"/admin/users/{people.nurse_a.id}", data={"action": "deactivate", "csrf_token": token}
    )
    assert response.status == 403
    nurse = await client.app[STORE].get_user(people.nurse_a.id)
    assert nurse is not None
    assert nurse.active


async def test_an_admin_unlocks_a_locked_out_account(
    client: Client, people: People, aiohttp_client: object
) -> None:
    nurse = await aiohttp_client(client.server)  # type: ignore[operator]
    for _ in range(5):  # lock_account_after = 5 (spread out past the slow-down)
        client.app[CLOCK].advance(minutes=2)  # type: ignore[attr-defined]
        await login(nurse, people.nurse_a.email, "wrong wrong wrong")
    assert (await login(nurse, people.nurse_a.email)).status == 429

    await login(client, people.admin.email)
    text = await (await client.get("/admin")).text()
    assert "locked out" in text
    status, text = await admin_post(
        client, f"/admin/users/{people.nurse_a.id}", {"action": "unlock"}
    )
    assert "Sign-in unlocked" in text
    assert (await login(nurse, people.nurse_a.email)).status == 302
    actions = [r.event.action async for r in client.app[STORE].audit_records()]
    assert "user.unlock" in actions


async def test_staff_need_a_password_but_patients_may_have_none(
    client: Client, people: People
) -> None:
    await login(client, people.admin.email)
    base = {"name": "New Person", "language": "en", "birth_date": ""}
    status, text = await admin_post(
        client, "/admin/users", {**base, "role": "nurse", "email": "n2@example.org"}
    )
    assert status == 400
    assert "password: is required for staff accounts" in text
    status, text = await admin_post(
        client, "/admin/users", {**base, "role": "patient", "email": "p3@example.org"}
    )
    assert "User added." in text
    added = await client.app[STORE].find_user_by_email("p3@example.org")
    assert added is not None
    assert added.password_hash == ""
