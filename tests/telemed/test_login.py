"""Sign-in, throttling and lockout, sessions and their timeouts, CSRF."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from telemed import sessions
from telemed.audit import Outcome
from telemed.web.keys import STORE
from tests.conftest import PASSWORD, FakeClock, People, csrf_from, login, page_csrf

Client = TestClient  # type: ignore[type-arg]


async def audit_actions(client: Client) -> list[tuple[str, str, str]]:
    return [
        (r.event.action, r.event.outcome.value, r.event.detail)
        async for r in client.app[STORE].audit_records()
    ]


async def test_login_lands_on_the_dashboard_with_a_safe_cookie(
    client: Client, people: People
) -> None:
    response = await login(client, people.doctor_a.email)
    assert response.status == 302
    assert response.headers["Location"] == "/dashboard"
    cookie = response.cookies[sessions.COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert not cookie["secure"]  # plain HTTP in this test; Secure under TLS
    assert len(cookie.value) >= 22  # 128 bits, URL-safe base64

    dashboard = await client.get("/dashboard")
    assert dashboard.status == 200
    assert "Paula One" in await dashboard.text()
    assert ("login", "success", "password") in await audit_actions(client)


async def test_login_issues_a_new_session_id_each_time(client: Client, people: People) -> None:
    first = (await login(client, people.doctor_a.email)).cookies[sessions.COOKIE].value
    second = (await login(client, people.doctor_a.email)).cookies[sessions.COOKIE].value
    assert first != second
    # the earlier session is gone from the store: its cookie no longer works
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({sessions.COOKIE: first})
    response = await client.get("/dashboard", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"].startswith("/login")


async def test_wrong_password_is_refused_and_audited(client: Client, people: People) -> None:
    response = await login(client, people.doctor_a.email, "wrong password here")
    assert response.status == 401
    assert "Wrong e-mail address or password." in await response.text()
    assert sessions.COOKIE not in response.cookies
    assert ("login", Outcome.FAILURE.value, "wrong e-mail or password") in await audit_actions(
        client
    )


async def test_unknown_account_gets_the_same_answer(client: Client, people: People) -> None:
    response = await login(client, "nobody@example.org")
    assert response.status == 401
    assert "Wrong e-mail address or password." in await response.text()


async def test_missing_fields_are_named(client: Client, people: People) -> None:
    page = await client.get("/login")
    token = csrf_from(await page.text())
    response = await client.post("/login", data={"email": "", "password": "", "csrf_token": token})
    assert response.status == 400
    text = await response.text()
    assert "E-mail address is required." in text
    assert "Password is required." in text


async def test_repeated_failures_slow_down_then_lock(
    client: Client, people: People, clock: FakeClock
) -> None:
    email = people.doctor_a.email
    for _ in range(3):  # throttle_delay_after = 3
        assert (await login(client, email, "nope nope nope")).status == 401
    # the next try must wait a second, even with the right password
    slowed = await login(client, email)
    assert slowed.status == 429
    assert "wait 1 second" in await slowed.text()
    assert slowed.headers["Retry-After"] == "2"

    clock.advance(seconds=1)
    assert (await login(client, email, "nope nope nope")).status == 401  # 4th failure
    clock.advance(seconds=2)
    locked = await login(client, email, "nope nope nope")  # 5th failure: locks
    assert locked.status == 429
    assert "locked for 15 more minutes" in await locked.text()

    clock.advance(minutes=14)
    still = await login(client, email)
    assert still.status == 429
    assert "locked for 1 more minute" in await still.text()

    clock.advance(minutes=1)
    assert (await login(client, email)).status == 302
    assert ("login", "denied", "throttled") in await audit_actions(client)


async def test_success_clears_the_account_counter(
    client: Client, people: People, clock: FakeClock
) -> None:
    email = people.doctor_a.email
    for _ in range(2):
        assert (await login(client, email, "nope nope nope")).status == 401
    assert (await login(client, email)).status == 302
    for _ in range(2):
        assert (await login(client, email, "nope nope nope")).status == 401
    assert (await login(client, email)).status == 302  # no delay: the count started over


async def test_one_address_trying_many_accounts_is_locked(
    client: Client, people: People, clock: FakeClock
) -> None:
    # lock_address_after = 20; each account gets few tries, spread out in time
    for i in range(20):
        clock.advance(minutes=5)  # past every slow-down, within the lock window
        response = await login(client, f"guess{i % 10}@example.org", "not it at all")
        assert response.status == (429 if i == 19 else 401), i
    clock.advance(minutes=5)
    response = await login(client, people.doctor_a.email)
    assert response.status == 429
    assert "locked" in await response.text()


async def test_idle_session_expires_after_30_minutes(
    client: Client, people: People, clock: FakeClock
) -> None:
    await login(client, people.doctor_a.email)
    clock.advance(minutes=29)
    assert (await client.get("/dashboard", allow_redirects=False)).status == 200
    clock.advance(minutes=29)  # 29 minutes after the last request: still alive
    assert (await client.get("/dashboard", allow_redirects=False)).status == 200
    clock.advance(minutes=30)
    response = await client.get("/dashboard", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/login?next=/dashboard"


async def test_session_ends_after_12_hours_however_active(
    client: Client, people: People, clock: FakeClock
) -> None:
    await login(client, people.doctor_a.email)
    for _ in range(11 * 3 + 2):  # every 20 minutes for 11 h 40 min
        clock.advance(minutes=20)
        assert (await client.get("/dashboard", allow_redirects=False)).status == 200
    clock.advance(minutes=19)
    assert (await client.get("/dashboard", allow_redirects=False)).status == 200
    clock.advance(minutes=1)
    assert (await client.get("/dashboard", allow_redirects=False)).status == 302


async def test_logout_ends_the_session_on_the_server(client: Client, people: People) -> None:
    cookie = (await login(client, people.doctor_a.email)).cookies[sessions.COOKIE].value
    token = await page_csrf(client)
    response = await client.post("/logout", data={"csrf_token": token}, allow_redirects=False)
    assert response.status == 302
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({sessions.COOKIE: cookie})  # replay the old id
    assert (await client.get("/dashboard", allow_redirects=False)).status == 302
    assert any(a[0] == "logout" for a in await audit_actions(client))


async def test_state_changing_forms_need_the_csrf_token(client: Client, people: People) -> None:
    await login(client, people.admin.email)
    form = {"role": "doctor", "email": "new@example.org", "name": "New", "password": PASSWORD}
    missing = await client.post("/admin/users", data=form)
    assert missing.status == 403
    assert "did not come from this site" in await missing.text()
    wrong = await client.post("/admin/users", data={**form, "csrf_token": "forged"})
    assert wrong.status == 403
    token = await page_csrf(client, "/admin")
    ok = await client.post("/admin/users", data={**form, "csrf_token": token})
    assert ok.status == 200
    assert "User added." in await ok.text()


async def test_login_form_needs_its_csrf_cookie(client: Client, people: People) -> None:
    response = await client.post(
        "/login",
        data={"email": people.doctor_a.email, "password": PASSWORD, "csrf_token": "x" * 43},
    )
    assert response.status == 403
    assert sessions.COOKIE not in response.cookies


async def test_next_parameter_never_redirects_off_site(client: Client, people: People) -> None:
    page = await client.get("/login?next=//evil.example/")
    token = csrf_from(await page.text())
    response = await client.post(
        "/login",
        data={
            "email": people.doctor_a.email,
            "password": PASSWORD,
            "csrf_token": token,
            "next": "//evil.example/",
        },
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/dashboard"
