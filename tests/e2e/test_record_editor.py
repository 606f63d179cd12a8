"""The consultation record's editor in the doctor's call view, in headless Chromium, by
keyboard: Tab through the note, Ctrl+Enter for a row, Ctrl+S to save, Alt+Shift+S to sign
(after the confirmation), Escape to close the history. What the page shows is checked
against what the records API answers afterwards. Also: a save over someone else's newer
version, and the in-call chat saved with the note.

Every wait is on a condition under a timeout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import ConsoleMessage, Dialog, Page, ViewportSize, expect

from tests.e2e.conftest import OpenParticipant, PageErrors, Server
from tests.e2e.test_login_smoke import sign_in
from tests.e2e.test_visit_call import STEP_TIMEOUT, book, patient_joins

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MAX_TABS = 60  # from the top of the call view to the note's first field

SUBJECTIVE = "Sore throat for 3 days, no fever."
OBJECTIVE = "Red pharynx, no exudate. Temp 37.2 °C."
ASSESSMENT = "Viral pharyngitis."
PLAN = "Fluids, paracetamol, review in a week if not better."
ADDENDUM = "Patient phoned: feeling better."
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))  # the signature is what the server checks


async def open_call_view(page: Page, server: Server, visit_id: str) -> None:
    await page.goto("/login")
    await sign_in(page, server.doctor.email, server.doctor.password)
    await expect(page.get_by_test_id("dashboard-title")).to_be_visible()
    await page.goto(f"/visits/{visit_id}")
    await expect(page.get_by_test_id("record-version")).to_have_attribute(
        "data-version", "0", timeout=STEP_TIMEOUT
    )


async def focused(page: Page) -> str:
    element_id: str = await page.evaluate("document.activeElement && document.activeElement.id")
    return element_id or ""


async def focused_testid(page: Page) -> str:
    testid: str = await page.evaluate(
        "document.activeElement ? document.activeElement.dataset.testid || '' : ''"
    )
    return testid


async def tab_to(page: Page, element_id: str) -> None:
    """Press Tab from where the focus is until `element_id` has it."""
    for _ in range(MAX_TABS):
        if await focused(page) == element_id:
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"#{element_id} is not reachable with Tab")


async def record_json(page: Page, visit_id: str) -> Any:
    response = await page.request.get(f"/api/visits/{visit_id}/record")
    assert response.ok, f"{response.status}: {await response.text()}"
    return await response.json()


async def unlabelled_fields(page: Page) -> list[str]:
    found: list[str] = await page.evaluate(
        """() => Array.from(document.querySelectorAll(
              '#record input, #record textarea, #record select'))
            .filter((f) => f.type !== 'hidden' && f.labels.length === 0)
            .map((f) => f.id || f.name || f.outerHTML.slice(0, 60))"""
    )
    return found


async def test_the_doctor_writes_saves_and_signs_the_note_by_keyboard(
    page: Page, server: Server, page_errors: PageErrors, shots: Path
) -> None:
    visit_id, _ = book(server)
    console: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        console.append(message.text)

    page.on("console", on_console)
    await open_call_view(page, server, visit_id)
    await expect(page.get_by_test_id("record-version")).to_have_text("Nothing saved yet")

    # From the top of the page, Tab reaches the note; then type, Tab, type...
    await page.keyboard.press("Tab")
    await tab_to(page, "note-subjective")
    keys = page.keyboard
    await keys.type(SUBJECTIVE)
    await keys.press("Tab")
    assert await focused(page) == "note-objective"
    await keys.type(OBJECTIVE)
    await keys.press("Tab")
    await keys.type(ASSESSMENT)
    await keys.press("Tab")
    assert await focused(page) == "note-plan"
    await keys.type(PLAN)

    # The diagnoses: Tab to their "Add" button, Ctrl+Enter adds a row (twice).
    await keys.press("Tab")
    assert await focused_testid(page) == "add-diagnosis"
    await keys.press("Control+Enter")
    await expect(page.get_by_test_id("diagnoses-row-0")).to_be_visible()
    assert (await focused(page)).endswith("-code")
    await keys.type("flu")  # not an ICD-10 code: refused below
    await keys.press("Tab")
    await keys.type("Acute upper respiratory infection, unspecified")
    await keys.press("Control+Enter")
    await expect(page.get_by_test_id("diagnoses-row-1")).to_be_visible()
    await keys.type("r05")
    await keys.press("Tab")
    await keys.type("Cough")

    # A prescription: on to its "Add" button (past row 2's Remove and the diagnoses' Add).
    for _ in range(3):
        await keys.press("Tab")
    assert await focused_testid(page) == "add-prescription"
    await keys.press("Control+Enter")
    for text in ("Paracetamol 500 mg tablets", "1 g", "oral", "every 6 hours as needed"):
        await keys.type(text)
        await keys.press("Tab")
    await keys.type("5 days")
    await keys.press("Tab")
    await keys.type("No more than 4 g a day")
    assert await unlabelled_fields(page) == []

    # Ctrl+S: the API refuses the code; the error names the field, which gets the focus.
    await keys.press("Control+s")
    error = page.get_by_test_id("record-error")
    await expect(error).to_contain_text("Diagnosis 1, ICD-10 code", timeout=STEP_TIMEOUT)
    await expect(error).to_contain_text("is not an ICD-10 code such as J06.9")
    await expect(error).to_contain_text("Not saved.")
    code = page.get_by_test_id("diagnoses-row-0").locator("[data-part=code]")
    await expect(code).to_be_focused()
    await expect(code).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_test_id("record-version")).to_have_text("Nothing saved yet")

    await keys.press("Control+a")
    await keys.type("j06.9")
    await keys.press("Control+s")
    await expect(page.get_by_test_id("record-version")).to_have_text(
        "Version 1", timeout=STEP_TIMEOUT
    )
    await expect(page.get_by_test_id("record-saved")).to_contain_text("Saved as version 1")
    await expect(error).to_be_empty()
    await expect(code).not_to_have_attribute("aria-invalid", "true")
    await page.screenshot(path=shots / "record-editor-saved.png", full_page=True)

    # Alt+Shift+S signs, once the confirmation is accepted.
    asked: list[str] = []

    async def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.once("dialog", accept)
    await keys.press("Alt+Shift+S")
    await expect(page.get_by_test_id("record-signed")).to_contain_text(
        "signed (version 1)", timeout=STEP_TIMEOUT
    )
    assert len(asked) == 1
    assert "Sign version 1" in asked[0]
    await expect(page.get_by_test_id("record-form")).to_be_hidden()
    await expect(page.get_by_test_id("signed-note")).to_contain_text(ASSESSMENT)
    await expect(page.get_by_test_id("signed-note")).to_contain_text("J06.9 — Acute upper")
    await expect(page.locator("#addendum-text")).to_be_focused()

    saved = await record_json(page, visit_id)
    assert saved["signed"] is True
    assert saved["signed_version"] == 1
    assert saved["signed_by"] == server.doctor.id
    assert saved["version"] == 1
    note = saved["note"]
    assert (note["subjective"], note["objective"]) == (SUBJECTIVE, OBJECTIVE)
    assert (note["assessment"], note["plan"]) == (ASSESSMENT, PLAN)
    assert note["diagnoses"] == [
        {"code": "J06.9", "display": "Acute upper respiratory infection, unspecified"},
        {"code": "R05", "display": "Cough"},
    ]
    assert note["prescriptions"] == [
        {
            "medication": "Paracetamol 500 mg tablets",
            "dose": "1 g",
            "route": "oral",
            "frequency": "every 6 hours as needed",
            "duration": "5 days",
            "instructions": "No more than 4 g a day",
        }
    ]
    assert note["chat"] == []

    # After signing, Ctrl+S adds the addendum being written.
    await keys.type(ADDENDUM)
    await keys.press("Control+s")
    await expect(page.get_by_test_id("addenda")).to_contain_text(ADDENDUM, timeout=STEP_TIMEOUT)
    await expect(page.get_by_test_id("record-version")).to_have_text("Version 2")
    addenda = (await record_json(page, visit_id))["addenda"]
    assert [(a["version"], a["text"]) for a in addenda] == [(2, ADDENDUM)]

    # The history: every version, readable; Escape closes it and gives the focus back.
    history_button = page.get_by_test_id("record-history-open")
    for _ in range(MAX_TABS):  # past the addendum's button
        if await focused_testid(page) == "record-history-open":
            break
        await keys.press("Tab")
    await expect(history_button).to_be_focused()
    await keys.press("Enter")
    history = page.get_by_test_id("record-history")
    await expect(history).to_be_visible()
    await expect(page.get_by_test_id("history-version-2")).to_be_focused(timeout=STEP_TIMEOUT)
    await expect(page.get_by_test_id("history-view")).to_contain_text(ADDENDUM)
    await keys.press("Tab")
    assert await focused_testid(page) == "history-version-1"
    await keys.press("Enter")
    await expect(page.get_by_test_id("history-view")).to_contain_text(SUBJECTIVE)
    await expect(page.get_by_test_id("history-version-1")).to_contain_text("(signed)")
    await page.screenshot(path=shots / "record-history.png")
    await keys.press("Escape")
    await expect(history).to_be_hidden()
    await expect(history_button).to_be_focused()

    # the browser reports the refused save (400) itself; nothing else went wrong
    refused = [m for m in page_errors.messages if "status of 400" in m and "/record'" in m]
    assert len(refused) == 1
    assert [m for m in page_errors.messages if m not in refused] == []
    for text in (SUBJECTIVE, ASSESSMENT, "Paracetamol", ADDENDUM):
        assert not [m for m in console if text in m], "note content reached the console"


async def test_a_save_over_a_newer_version_is_refused_and_offers_to_reload(
    page: Page, server: Server, page_errors: PageErrors
) -> None:
    visit_id, _ = book(server)
    await open_call_view(page, server, visit_id)
    await page.get_by_test_id("note-subjective").fill("First words")
    await page.keyboard.press("Control+s")
    await expect(page.get_by_test_id("record-version")).to_have_text(
        "Version 1", timeout=STEP_TIMEOUT
    )

    # Someone else (here: the same doctor, from elsewhere) saves version 2 meanwhile.
    csrf = await page.get_by_test_id("record").get_attribute("data-csrf")
    assert csrf
    other = await page.request.post(
        f"/api/visits/{visit_id}/record",
        data={"subjective": "Written elsewhere", "base_version": 1},
        headers={"X-CSRF-Token": csrf},
    )
    assert other.status == 201, await other.text()

    await page.get_by_test_id("note-subjective").fill("My later words")
    await page.keyboard.press("Control+s")
    conflict = page.get_by_test_id("record-conflict")
    await expect(conflict).to_be_visible(timeout=STEP_TIMEOUT)
    await expect(conflict).to_contain_text("Someone saved a newer version of this note")
    await expect(conflict).to_contain_text("version 2")
    await expect(page.get_by_test_id("record-reload")).to_be_focused()
    await expect(page.get_by_test_id("note-subjective")).to_have_value("My later words")
    assert (await record_json(page, visit_id))["note"]["subjective"] == "Written elsewhere"

    await page.keyboard.press("Enter")  # "Load the newer version"
    await expect(page.get_by_test_id("note-subjective")).to_have_value("Written elsewhere")
    await expect(page.get_by_test_id("record-version")).to_have_text("Version 2")
    await expect(conflict).to_be_hidden()
    await page.get_by_test_id("note-subjective").fill("Agreed words")
    await page.keyboard.press("Control+s")
    await expect(page.get_by_test_id("record-version")).to_have_text(
        "Version 3", timeout=STEP_TIMEOUT
    )
    assert (await record_json(page, visit_id))["note"]["subjective"] == "Agreed words"
    refused = [m for m in page_errors.messages if "status of 409" in m and "/record'" in m]
    assert len(refused) == 1  # the browser's own report of the refused save
    assert [m for m in page_errors.messages if m not in refused] == []


@pytest.mark.parametrize(
    "viewport",
    [{"width": 320, "height": 640}, {"width": 1600, "height": 900}],
    ids=["320", "1600"],
)
async def test_the_editor_fits_the_screen(
    page: Page, server: Server, viewport: ViewportSize, shots: Path
) -> None:
    visit_id, _ = book(server)
    await open_call_view(page, server, visit_id)
    await page.get_by_test_id("add-diagnosis").click()
    await page.get_by_test_id("add-prescription").click()
    overflow: int = await page.evaluate(
        "document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth"
    )
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px"
    await page.screenshot(path=shots / f"record-editor-{viewport['width']}.png", full_page=True)
    boxes = [
        await page.get_by_test_id(testid).bounding_box()
        for testid in ("remote-video", "record", "chat-log")
    ]
    assert all(boxes)
    video, record, _ = [b for b in boxes if b is not None]
    if viewport["width"] >= 1500:  # three columns: the video, the note, the details
        assert record["x"] > video["x"] + video["width"]
        assert abs(record["y"] - video["y"]) < 200


async def test_an_attachment_joins_the_note_without_losing_what_is_typed(
    page: Page, server: Server, page_errors: PageErrors
) -> None:
    visit_id, _ = book(server)
    await open_call_view(page, server, visit_id)
    await page.get_by_test_id("note-subjective").fill("Rash on the left forearm")
    await page.get_by_test_id("attach-file").set_input_files(
        {"name": "forearm.png", "mimeType": "image/png", "buffer": PNG}
    )
    await page.get_by_test_id("attach-upload").click()
    # the typed note is saved first (version 1), the upload adds version 2
    await expect(page.get_by_test_id("attachments")).to_contain_text(
        "forearm.png", timeout=STEP_TIMEOUT
    )
    await expect(page.get_by_test_id("record-version")).to_have_text("Version 2")
    await expect(page.get_by_test_id("record-saved")).to_contain_text("Attached forearm.png")
    await expect(page.get_by_test_id("attach-file")).to_have_value("")

    await page.get_by_test_id("note-plan").fill("Emollient twice a day")
    await page.keyboard.press("Control+s")
    await expect(page.get_by_test_id("record-version")).to_have_text(
        "Version 3", timeout=STEP_TIMEOUT
    )
    saved = await record_json(page, visit_id)
    assert saved["note"]["subjective"] == "Rash on the left forearm"
    assert saved["note"]["plan"] == "Emollient twice a day"
    assert [(a["name"], a["content_type"], a["size"]) for a in saved["attachments"]] == [
        ("forearm.png", "image/png", len(PNG))
    ]
    link = page.get_by_test_id("attachments").get_by_role("link", name="forearm.png")
    href = await link.get_attribute("href")
    assert href == f"/api/attachments/{saved['attachments'][0]['id']}"
    download = await page.request.get(href)
    assert await download.body() == PNG
    assert page_errors.messages == []


async def test_the_chat_of_the_call_is_saved_with_the_note(
    participants: OpenParticipant, server: Server
) -> None:
    visit_id, join_url = book(server)
    patient = await patient_joins(participants, join_url)
    doctor = await participants()
    await open_call_view(doctor.page, server, visit_id)
    await doctor.page.get_by_test_id(f"admit-{visit_id}").click(timeout=STEP_TIMEOUT)
    chat_text = doctor.page.get_by_test_id("chat-text")
    await expect(chat_text).to_be_enabled(timeout=STEP_TIMEOUT)
    await expect(patient.page.get_by_test_id("chat-text")).to_be_visible(timeout=STEP_TIMEOUT)

    await chat_text.fill("How is the cough today?")
    await chat_text.press("Enter")
    await expect(patient.page.get_by_test_id("chat-log")).to_contain_text(
        "How is the cough today?", timeout=STEP_TIMEOUT
    )
    await patient.page.get_by_test_id("chat-text").fill("Better, thank you.")
    await patient.page.get_by_test_id("chat-send").click()
    await expect(doctor.page.get_by_test_id("chat-log")).to_contain_text(
        "Better, thank you.", timeout=STEP_TIMEOUT
    )

    await doctor.page.get_by_test_id("note-subjective").fill("Cough improving.")
    await doctor.page.keyboard.press("Control+s")
    await expect(doctor.page.get_by_test_id("record-version")).to_have_text(
        "Version 1", timeout=STEP_TIMEOUT
    )
    chat = (await record_json(doctor.page, visit_id))["note"]["chat"]
    assert [(c["sender"], c["text"]) for c in chat] == [
        ("doctor", "How is the cough today?"),
        ("patient", "Better, thank you."),
    ]
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", c["at"]) for c in chat)

    # saved again, the transcript is kept once, not repeated
    await doctor.page.get_by_test_id("note-plan").fill("Review in a week.")
    await doctor.page.keyboard.press("Control+s")
    await expect(doctor.page.get_by_test_id("record-version")).to_have_text(
        "Version 2", timeout=STEP_TIMEOUT
    )
    assert len((await record_json(doctor.page, visit_id))["note"]["chat"]) == 2

    await doctor.page.get_by_test_id("end-visit").click()
    await doctor.page.get_by_test_id("end-visit-confirm").click()
    assert doctor.errors == []
