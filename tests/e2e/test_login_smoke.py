"""Smoke test of sign-in: the real form, the dashboard behind it, sign-out, small screens."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Page, ViewportSize, expect

from tests.e2e.conftest import PageErrors, Server

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

WIDE: ViewportSize = {"width": 1280, "height": 800}
NARROW: ViewportSize = {"width": 320, "height": 640}


async def sign_in(page: Page, email: str, password: str) -> None:
    await page.get_by_test_id("login-email").fill(email)
    await page.get_by_test_id("login-password").fill(password)
    await page.get_by_test_id("login-submit").click()


def assert_frame_ancestors_none(headers: dict[str, str], what: str) -> None:
    csp = headers.get("content-security-policy", "")
    directives = [d.strip() for d in csp.split(";")]
    assert "frame-ancestors 'none'" in directives, f"{what}: CSP is {csp!r}"


@pytest.mark.parametrize("viewport", [WIDE, NARROW], ids=["1280", "320"])
async def test_doctor_signs_in_sees_own_patients_and_signs_out(
    page: Page,
    server: Server,
    viewport: ViewportSize,
    page_errors: PageErrors,
    shots: Path,
) -> None:
    login = await page.goto("/login")
    assert login is not None
    assert login.status == 200
    assert_frame_ancestors_none(await login.all_headers(), "/login")

    async with page.expect_response(lambda r: r.url.endswith("/dashboard")) as answer:
        await sign_in(page, server.doctor.email, server.doctor.password)
    dashboard = await answer.value
    assert dashboard.status == 200
    assert_frame_ancestors_none(await dashboard.all_headers(), "/dashboard")

    await expect(page).to_have_url(f"{server.base_url}/dashboard")
    await expect(page.get_by_test_id("dashboard-title")).to_be_visible()
    await expect(page.get_by_test_id("signed-in-as")).to_contain_text(server.doctor.name)
    patients = page.get_by_test_id("my-patients")
    await expect(patients).to_contain_text(server.patient.name)
    await expect(patients).not_to_contain_text(server.stranger.name)
    await expect(page.locator("body")).not_to_contain_text(server.stranger.name)

    await page.screenshot(path=shots / f"dashboard-{viewport['width']}.png", full_page=True)
    scroll_width = await page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= viewport["width"], f"dashboard is {scroll_width} px wide"

    await page.get_by_test_id("logout").click()
    await expect(page).to_have_url(f"{server.base_url}/login")
    await expect(page.get_by_test_id("login-submit")).to_be_visible()
    # The session is gone: the dashboard sends the browser back to sign in.
    await page.goto("/dashboard")
    await expect(page).to_have_url(re.compile(r"/login\?next=/dashboard$"))

    assert page_errors.messages == []


async def test_wrong_password_shows_error_and_stays_on_login(
    page: Page, server: Server, page_errors: PageErrors, shots: Path
) -> None:
    await page.goto("/login")
    async with page.expect_response(
        lambda r: r.url.endswith("/login") and r.request.method == "POST"
    ) as answer:
        await sign_in(page, server.doctor.email, "not the right password at all")
    assert (await answer.value).status == 401

    await expect(page.get_by_test_id("login-error")).to_be_visible()
    await expect(page.get_by_test_id("login-error")).not_to_be_empty()
    await expect(page).to_have_url(f"{server.base_url}/login")
    await expect(page.get_by_test_id("signed-in-as")).to_have_count(0)
    await expect(page.get_by_test_id("login-email")).to_have_value(server.doctor.email)
    await page.screenshot(path=shots / "login-error-1280.png")
    # The 401 itself is logged by Chromium as a failed resource load; nothing else may be.
    unexpected = [m for m in page_errors.messages if "status of 401" not in m]
    assert unexpected == []


@pytest.mark.parametrize("viewport", [NARROW], ids=["320"])
async def test_login_page_fits_a_320px_screen(
    page: Page, viewport: ViewportSize, page_errors: PageErrors, shots: Path
) -> None:
    await page.goto("/login")

    await expect(page.get_by_test_id("login-email")).to_be_visible()
    await expect(page.get_by_test_id("login-submit")).to_be_visible()
    await expect(page.get_by_test_id("login-submit")).to_be_in_viewport()
    scroll_width = await page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= viewport["width"], f"page is {scroll_width} px wide"

    await page.screenshot(path=shots / f"login-{viewport['width']}.png", full_page=True)
    assert page_errors.messages == []
