"""The care team books a video visit from the patient's page: the join link is shown once
with a copy button, a new link replaces it, and a cancelled visit's link is dead. The
admin sets the clinic's waiting-room message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import OpenParticipant, PageErrors, Person, Server
from tests.e2e.test_login_smoke import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

JOIN_URL = re.compile(r"^http://127\.0\.0\.1:\d+/v/[A-Za-z0-9_-]{40,}$")


async def booked_link(page: Page) -> str:
    box = page.get_by_test_id("join-link-box")
    await expect(box).to_be_visible()
    link = page.get_by_test_id("join-link")
    await expect(link).to_have_value(JOIN_URL)
    return await link.input_value()


async def test_the_care_team_starts_a_visit_resends_the_link_and_cancels(
    page: Page, server: Server, page_errors: PageErrors, shots: Path
) -> None:
    await page.goto("/login")
    await sign_in(page, server.doctor.email, server.doctor.password)
    await expect(page.get_by_test_id("dashboard-title")).to_be_visible()
    await page.goto(f"/patients/{server.patient.id}")

    async with page.expect_response(
        lambda r: r.url.endswith("/api/visits") and r.request.method == "POST"
    ) as created:
        await page.get_by_test_id("start-visit").click()
    booking = await (await created.value).json()
    visit_id = booking["visit_id"]
    first = await booked_link(page)
    assert first == booking["join_url"]
    state = page.get_by_test_id(f"visit-state-{visit_id}")
    await expect(state).to_have_text("booked")
    await page.screenshot(path=shots / "patient-visit-booked.png", full_page=True)

    # Shown once: a reload lists the visit but no longer shows its link.
    await page.reload()
    await expect(state).to_have_text("booked")
    await expect(page.get_by_test_id("join-link-box")).to_be_hidden()
    assert first not in await page.content()

    await page.get_by_test_id(f"new-link-{visit_id}").click()
    await expect(page.get_by_test_id("join-link")).not_to_have_value(first)
    second = await booked_link(page)

    cancel = page.get_by_test_id(f"cancel-visit-{visit_id}")
    await cancel.click()
    await expect(cancel).to_have_text("Confirm cancel")
    await expect(state).to_have_text("booked")  # not yet: a second press confirms
    await cancel.click()
    await expect(state).to_have_text("cancelled")
    await expect(page.get_by_test_id(f"new-link-{visit_id}")).to_have_count(0)
    await expect(page.get_by_test_id("join-link-box")).to_be_hidden()

    listed = await page.request.get(f"/api/visits?patient={server.patient.id}")
    visits = {v["visit_id"]: v for v in (await listed.json())["visits"]}
    assert visits[visit_id]["state"] == "cancelled"
    for link in (first, second):
        dead = await page.request.get(link)
        assert dead.status in (404, 410), f"{link} answered {dead.status}"
    assert page_errors.messages == []


async def test_the_admin_sets_the_waiting_room_message(
    participants: OpenParticipant, server: Server, admin: Person
) -> None:
    person = await participants()
    page = person.page
    await page.goto("/login")
    await sign_in(page, admin.email, admin.password)
    await page.goto("/admin")
    message = "Dr Carter runs about 10 minutes late today. Thank you for waiting."
    await page.get_by_test_id("waiting-message").fill(message)
    async with page.expect_response(
        lambda r: r.url.endswith("/admin/waiting-message") and r.request.method == "POST"
    ) as saved:
        await page.get_by_role("button", name="Save message").click()
    assert (await saved.value).status == 303
    await expect(page).to_have_url(re.compile(r"/admin(\?.*)?$"))
    await expect(page.get_by_test_id("admin-error")).to_have_count(0)

    # The patient in the waiting room reads it (docs/visit-protocol.md, `visit.message`).
    booking = server.cli(
        "visit", "create", "--patient", server.patient.id, "--doctor", server.doctor.id
    )
    patient = await participants()
    await patient.page.goto(str(booking["join_url"]))
    await patient.page.get_by_test_id("join").click()
    await expect(patient.page.get_by_test_id("clinic-message")).to_have_text(message)
    server.cli("visit", "cancel", str(booking["visit_id"]))
    assert person.errors == []
    assert patient.errors == []
