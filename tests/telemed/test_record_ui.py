"""The consultation record in the pages, server side, through the real app: the editor in
the clinician's call view, the break-glass notice on the patient's page, and the admin's
emergency access and erasure forms (CSRF, a reason, a typed confirmation).

What the editor does in a browser is tested in tests/e2e/test_record_editor.py."""

from __future__ import annotations

import json
import re

import pytest
from aiohttp.test_utils import TestClient

from telemed.accounts import User
from telemed.clinic import OPERATOR, Actor
from telemed.records import note_from_json
from telemed.records_office import RecordUnreadable
from telemed.web.keys import RECEPTION, RECORDS
from tests.conftest import FakeClock, People, login, page_csrf
from tests.telemed.test_pages import FIELDS, NOT_LABELLED, PageParts, parse

Client = TestClient  # type: ignore[type-arg]

REASON = "Patient unconscious in A&E, care team unreachable"
_STATIC = re.compile(r'src="(/static/js/record\.js[^"]*)"')


def as_actor(user: User) -> Actor:
    return Actor.of(user, "127.0.0.1")


async def book(client: Client, people: People) -> str:
    booking = await client.app[RECEPTION].book(
        OPERATOR, patient_id=people.patient_1.id, clinician_id=people.doctor_a.id
    )
    return booking.visit.id


def by_id(parts: PageParts, element_id: str) -> dict[str, str]:
    found = [e.attrs for e in parts.elements if e.attrs.get("id") == element_id]
    assert found, f"no element with id {element_id!r}"
    return found[0]


def assert_labelled(name: str, parts: PageParts) -> None:
    for element in parts.elements:
        if element.tag not in FIELDS or element.attrs.get("type", "text") in NOT_LABELLED:
            continue
        labelled = element.attrs.get("id", "") in parts.label_for or element.inside_label
        assert labelled, f"{name}: <{element.tag} id={element.attrs.get('id')!r}> has no label"


# the call view ------------------------------------------------------------------------
async def test_the_call_view_holds_the_record_editor(client: Client, people: People) -> None:
    visit_id = await book(client, people)
    await login(client, people.doctor_a.email)
    page = await client.get(f"/visits/{visit_id}")
    assert page.status == 200
    html = await page.text()
    parts = parse(html)

    editor = by_id(parts, "record")
    assert editor["data-visit"] == visit_id
    assert editor["data-me"] == people.doctor_a.id
    assert editor["data-can-sign"] == "yes"
    assert editor["data-csrf"] == await page_csrf(client, "/dashboard")  # the session's
    names = json.loads(editor["data-people"])
    assert names[people.doctor_a.id] == "Dr Alice"
    assert names[people.nurse_a.id] == "Nurse Ann"
    assert people.doctor_b.id not in names  # not on this patient's team
    for key in ("subjective", "objective", "assessment", "plan"):
        assert by_id(parts, f"note-{key}")["name"] == key
    assert by_id(parts, "addendum-text")
    assert by_id(parts, "attach-file")["accept"] == "application/pdf,image/jpeg,image/png"
    buttons = {e.attrs.get("data-testid") for e in parts.elements if e.tag == "button"}
    assert {"record-save", "record-sign", "record-history-open", "add-diagnosis"} <= buttons
    assert {"add-prescription", "attach-upload", "addendum-add"} <= buttons
    assert any(e.tag == "dialog" for e in parts.elements)
    assert_labelled("call view", parts)
    assert parts.inline_scripts == 0
    assert not [e for e in parts.elements if "style" in e.attrs]

    script = _STATIC.search(html)
    assert script, "the call view does not load record.js"
    served = await client.get(script.group(1))
    assert served.status == 200
    body = await served.text()
    assert "/api/visits/" in body
    assert "console.log" not in body  # nothing of a note reaches the console


async def test_a_nurse_edits_but_is_not_offered_to_sign(client: Client, people: People) -> None:
    visit_id = await book(client, people)
    await login(client, people.nurse_a.email)
    parts = parse(await (await client.get(f"/visits/{visit_id}")).text())
    assert by_id(parts, "record")["data-can-sign"] == "no"
    buttons = {e.attrs.get("data-testid") for e in parts.elements if e.tag == "button"}
    assert "record-save" in buttons
    assert "record-sign" not in buttons


async def test_no_editor_for_a_doctor_outside_the_care_team(client: Client, people: People) -> None:
    visit_id = await book(client, people)
    await login(client, people.doctor_b.email)
    page = await client.get(f"/visits/{visit_id}")
    assert page.status == 403
    assert 'id="record"' not in await page.text()


# the patient page's break-glass notice ------------------------------------------------
@pytest.mark.parametrize("reader", ["doctor_a", "nurse_a", "admin"])
async def test_the_patient_page_lists_break_glass_grants(
    client: Client, people: People, clock: FakeClock, reader: str
) -> None:
    patient = people.patient_1.id
    await login(client, getattr(people, reader).email)
    before = await (await client.get(f"/patients/{patient}")).text()
    assert 'data-testid="break-glass-notice"' not in before

    await client.app[RECORDS].break_glass(as_actor(people.admin), patient, REASON)
    clock.advance(minutes=5)
    page = await client.get(f"/patients/{patient}")
    assert page.status == 200
    html = await page.text()
    notice = html.split('data-testid="break-glass-notice"', 1)[1].split("</section>", 1)[0]
    assert "Ada Admin opened access on" in notice
    assert "29 Nov 2026 09:00 UTC" in notice  # when
    assert "until" in notice
    assert "29 Nov 2026 10:00 UTC" in notice  # break_glass_minutes = 60
    assert "(open now)" in notice
    assert "Patient unconscious in A&amp;E, care team unreachable" in notice  # why, escaped

    for _ in range(3):  # past the grant's hour (in steps shorter than the session's idle time)
        clock.advance(minutes=20)
        assert (await client.get(f"/patients/{patient}")).status == 200
    later = await (await client.get(f"/patients/{patient}")).text()
    assert "Ada Admin opened access on" in later
    assert "(open now)" not in later


async def test_another_patients_grant_is_not_shown(client: Client, people: People) -> None:
    await client.app[RECORDS].break_glass(as_actor(people.admin), people.patient_2.id, REASON)
    await login(client, people.doctor_a.email)
    html = await (await client.get(f"/patients/{people.patient_1.id}")).text()
    assert 'data-testid="break-glass-notice"' not in html
    assert "unconscious" not in html


# the admin's forms --------------------------------------------------------------------
async def admin_post(client: Client, path: str, form: dict[str, str]):  # type: ignore[no-untyped-def]
    token = await page_csrf(client, "/admin")
    return await client.post(path, data={**form, "csrf_token": token})


async def test_the_admin_page_has_the_break_glass_and_erase_forms(
    client: Client, people: People
) -> None:
    await login(client, people.admin.email)
    html = await (await client.get("/admin")).text()
    parts = parse(html)
    assert_labelled("/admin", parts)
    forms = {e.attrs.get("action"): e.attrs for e in parts.elements if e.tag == "form"}
    assert forms["/admin/break-glass"]["method"] == "post"
    assert forms["/admin/erase"]["method"] == "post"
    assert "Emergency access (break-glass)" in html
    assert "Erase patient data" in html
    reason = by_id(parts, "bg-reason")
    assert "required" in reason
    assert reason["minlength"] == "10"
    for field in ("erase-request", "erase-confirm", "bg-patient", "erase-patient"):
        assert "required" in by_id(parts, field), field
    # the patient's id is shown where it must be typed back
    assert f"Paula One ({people.patient_1.id})" in html


async def test_the_admin_opens_emergency_access_with_a_reason(
    client: Client, people: People
) -> None:
    await login(client, people.admin.email)
    patient = people.patient_1.id
    office = client.app[RECORDS]

    short = await admin_post(client, "/admin/break-glass", {"patient": patient, "reason": "x"})
    assert short.status == 400
    text = await short.text()
    assert "reason: state why (at least 10 characters)" in text
    assert await office.break_glass_grants(OPERATOR, patient) == []

    none = await admin_post(client, "/admin/break-glass", {"patient": "", "reason": REASON})
    assert none.status == 400
    assert "patient: choose a patient" in await none.text()

    opened = await admin_post(client, "/admin/break-glass", {"patient": patient, "reason": REASON})
    assert opened.status == 200
    assert opened.url.path == "/admin"
    html = await opened.text()
    assert "Emergency access opened." in html
    assert 'data-testid="break-glass-grants"' in html
    grants = await office.break_glass_grants(OPERATOR, patient)
    assert [(g.admin_id, g.reason) for g in grants] == [(people.admin.id, REASON)]

    # the care team sees it on the patient's page
    await login(client, people.doctor_a.email)
    page = await (await client.get(f"/patients/{patient}")).text()
    assert 'data-testid="break-glass-notice"' in page
    assert "Ada Admin" in page


async def test_the_forms_need_the_csrf_token_and_an_admin(client: Client, people: People) -> None:
    patient = people.patient_1.id
    office = client.app[RECORDS]
    await login(client, people.admin.email)
    forged = await client.post("/admin/break-glass", data={"patient": patient, "reason": REASON})
    assert forged.status == 403
    erase = {"patient": patient, "request": "DSR-2026-17", "confirm": patient}
    assert (await client.post("/admin/erase", data=erase)).status == 403

    await login(client, people.doctor_a.email)
    token = await page_csrf(client, "/dashboard")
    as_doctor = await client.post(
        "/admin/break-glass", data={"patient": patient, "reason": REASON, "csrf_token": token}
    )
    assert as_doctor.status == 403
    erased = await client.post("/admin/erase", data={**erase, "csrf_token": token})
    assert erased.status == 403
    assert await office.break_glass_grants(OPERATOR, patient) == []


async def test_the_admin_erases_a_patient_after_typing_their_id(
    client: Client, people: People
) -> None:
    visit_id = await book(client, people)
    office = client.app[RECORDS]
    note = note_from_json({"subjective": "Headache", "plan": "Rest"})
    await office.save_note(as_actor(people.doctor_a), visit_id, note)
    patient = people.patient_1.id
    await login(client, people.admin.email)

    form = {
        "form": "erase",  # the form's hidden marker, as a browser sends it
        "patient": patient,
        "request": "DSR-2026-17",
        "confirm": people.patient_2.id,
    }
    wrong = await admin_post(client, "/admin/erase", form)
    assert wrong.status == 400
    text = await wrong.text()
    assert "confirm: type the chosen patient&#39;s id exactly" in text
    assert 'value="DSR-2026-17"' in text  # the reference is kept, the confirmation is not
    assert (await office.chart(as_actor(people.doctor_a), visit_id)).latest_note is not None

    no_reference = await admin_post(
        client, "/admin/erase", {"patient": patient, "request": "", "confirm": patient}
    )
    assert no_reference.status == 400
    assert "request: name the erasure request" in await no_reference.text()

    done = await admin_post(
        client, "/admin/erase", {"patient": patient, "request": "DSR-2026-17", "confirm": patient}
    )
    assert done.status == 200
    assert done.url.path == "/admin"
    assert "The patient&#39;s data was erased" in await done.text()
    with pytest.raises(RecordUnreadable) as gone:
        await office.chart(as_actor(people.doctor_a), visit_id)
    assert gone.value.erased
