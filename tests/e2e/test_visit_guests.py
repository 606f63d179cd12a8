"""A guest in a video visit, end to end, in three browser contexts: the doctor admits the
patient, invites an interpreter from the call view and gets the link; the interpreter
opens it, joins the waiting room, is admitted with `admit-guest-{guest_id}` and sees the
call and the people in it, chats; the doctor and the patient's two-party call goes on
undisturbed; the doctor removes the interpreter, whose page says so.

Every wait is on a condition under a timeout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.e2e.conftest import OpenParticipant, Server
from tests.e2e.test_visit_call import (
    STEP_TIMEOUT,
    book,
    media_flows,
    open_doctor,
    patient_joins,
    wait_for_media,
    waiting_room,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


async def test_the_doctor_invites_and_admits_an_interpreter(
    participants: OpenParticipant, server: Server, shots: Path
) -> None:
    visit_id, join_url = book(server)
    doctor = await open_doctor(participants, server)
    patient = await patient_joins(participants, join_url)
    await doctor.page.get_by_test_id(f"admit-{visit_id}").click(timeout=STEP_TIMEOUT)
    await expect(doctor.page).to_have_url(re.compile(rf"/visits/{visit_id}$"))
    await wait_for_media(doctor.page)
    await wait_for_media(patient.page)

    # The doctor invites an interpreter from the call view and gets their link.
    call = doctor.page
    await expect(call.get_by_test_id("guests-empty")).to_be_visible()
    await call.get_by_test_id("guest-role").select_option("interpreter")
    await call.get_by_test_id("guest-name").fill("Ines Ortiz")
    await call.get_by_test_id("invite-guest").click()
    link = call.get_by_test_id("guest-link")
    await expect(link).to_have_value(re.compile(r"/v/[A-Za-z0-9_-]{43}$"), timeout=STEP_TIMEOUT)
    guest_url = await link.input_value()
    assert guest_url != join_url
    await expect(call.get_by_test_id("copy-guest-link")).to_be_visible()
    listed = call.locator("[data-testid^=guest-state-]")
    await expect(listed).to_have_text(re.compile("invited"))
    state_id = await listed.get_attribute("data-testid")
    assert state_id is not None
    guest_id = state_id.removeprefix("guest-state-")
    await call.screenshot(path=shots / "visit-guest-invited.png", full_page=True)

    # The interpreter opens the link: the patient's page, as the interpreter.
    interpreter = await participants()
    page = interpreter.page
    await page.goto(guest_url)
    await expect(page.get_by_test_id("joining-as")).to_have_text(
        "You are joining as the interpreter."
    )
    await page.get_by_test_id("join").click()
    await expect(waiting_room(page)).to_be_visible()
    await expect(page.get_by_test_id("place-line")).to_have_count(0)  # no place in line
    await expect(call.get_by_test_id(f"guest-state-{guest_id}")).to_have_text(
        "in the waiting room", timeout=STEP_TIMEOUT
    )
    await page.screenshot(path=shots / "visit-guest-waiting.png")

    # The doctor admits them; their page shows the call and who is in it.
    await call.get_by_test_id(f"admit-guest-{guest_id}").click()
    in_call = page.get_by_test_id("guest-in-call")
    await expect(in_call).to_be_visible(timeout=STEP_TIMEOUT)
    await expect(in_call).to_contain_text("You are in the call.")
    people = page.get_by_test_id("participants")
    await expect(people).to_contain_text(server.doctor.name, timeout=STEP_TIMEOUT)
    await expect(people).to_contain_text(server.patient.name)
    await expect(call.get_by_test_id(f"guest-state-{guest_id}")).to_have_text("in the call")
    await expect(call.get_by_test_id(f"send-back-guest-{guest_id}")).to_be_visible()
    await page.screenshot(path=shots / "visit-guest-in-call.png")

    # Chat reaches everyone, with the interpreter's name.
    await page.get_by_test_id("chat-text").fill("Hello, I am the interpreter.")
    await page.get_by_test_id("chat-send").click()
    await expect(call.get_by_test_id("chat-log")).to_contain_text("Ines Ortiz")
    await expect(call.get_by_test_id("chat-log")).to_contain_text("Hello, I am the interpreter.")
    await expect(patient.page.get_by_test_id("chat-log")).to_contain_text("Ines Ortiz")
    await call.get_by_test_id("chat-text").fill("Welcome.")
    await call.get_by_test_id("chat-text").press("Enter")
    await expect(page.get_by_test_id("chat-log")).to_contain_text("Welcome.")

    # The doctor and the patient's call went on: the same connection, media flowing.
    await media_flows(patient.page)
    await media_flows(doctor.page)

    # Removed: the interpreter's page says so, and the doctor's list forgets them.
    await call.get_by_test_id(f"remove-guest-{guest_id}").click()
    await expect(page.get_by_test_id("refused-message")).to_have_text(
        "The clinic removed you from this visit. The link no longer works.",
        timeout=STEP_TIMEOUT,
    )
    await expect(call.get_by_test_id(f"guest-{guest_id}")).to_have_count(0)
    await media_flows(patient.page)
    for person in (doctor, patient, interpreter):
        assert not person.errors, person.errors
