"""The patient's visit summary: the printable page and the PDF, who may open them (each
refusal audited), and the PDF's text in both font modes (DejaVu Sans embedded, or the
core-font fallback)."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pypdf import PdfReader

from telemed.audit import Outcome
from telemed.errors import NotFound
from telemed.records import (
    Chart,
    Diagnosis,
    Note,
    Prescription,
    RecordHeader,
    Version,
    VersionKind,
)
from telemed.settings import Settings
from telemed.summary import LOST_NOTE, UNICODE_FONTS, core_text, summary_pdf, visit_summary
from telemed.web.keys import STORE
from tests.conftest import FakeClock, People
from tests.telemed.test_records_api import (
    NOTE,
    Client,
    book,
    record_settings,
    refused,
    sign_in,
    write_and_sign,
)

ADDENDUM = "Throat swab negative: no antibiotic is needed."
# what the clinicians write for each other, and the chat: never in the patient's summary
NOT_FOR_THE_SUMMARY = (NOTE["subjective"], NOTE["objective"], NOTE["assessment"], "Hello doctor")


@pytest.fixture
def settings(tmp_path: Path, mosquitto: int) -> Settings:
    return record_settings(tmp_path, mosquitto)


def pdf_text(content: bytes) -> str:
    """The PDF's text, its whitespace made single spaces (lines wrap where they fit)."""
    reader = PdfReader(io.BytesIO(content))
    return " ".join(" ".join(page.extract_text() for page in reader.pages).split())


async def test_the_patient_reads_prints_and_downloads_their_signed_summary(
    client: Client, people: People
) -> None:
    visit_id = await book(client, people.patient_1, people.doctor_a)
    headers = await sign_in(client, people.doctor_a)
    await write_and_sign(client, headers, visit_id)
    added = await client.post(
        f"/api/visits/{visit_id}/record/addenda", json={"text": ADDENDUM}, headers=headers
    )
    assert added.status == 201

    await sign_in(client, people.patient_1)
    page = await client.get(f"/visits/{visit_id}/summary")
    assert page.status == 200
    assert page.headers["Cache-Control"] == "no-store"
    html = await page.text()
    for shown in (
        "Your visit summary",
        "Paula One",
        "Dr Alice",
        "29 November 2026",
        'Acute pharyngitis, unspecified <span class="code">[J02.9]</span>',
        "Paracetamol",
        "500 mg",
        "every 6 hours when needed",
        "5 days",
        "No more than 4 doses in 24 hours.",
        "What to do next",
        NOTE["plan"],
        ADDENDUM,
        f'href="/visits/{visit_id}/summary.pdf"',
        "css/summary.css",
    ):
        assert shown in html, shown
    for hidden in (*NOT_FOR_THE_SUMMARY, 'data-testid="summary-draft"'):
        assert hidden not in html, hidden
    stylesheet = re.search(r'<link rel="stylesheet" href="([^"]*/summary\.css[^"]*)">', html)
    assert stylesheet is not None
    css = await (await client.get(stylesheet.group(1))).text()
    assert "@media print" in css
    assert ".bar, .skip, .no-print { display: none !important; }" in css

    download = await client.get(f"/visits/{visit_id}/summary.pdf")
    assert download.status == 200
    assert download.headers["Content-Type"] == "application/pdf"
    assert (
        download.headers["Content-Disposition"]
        == 'attachment; filename="visit-summary-2026-11-29.pdf"'
    )
    assert download.headers["Cache-Control"] == "no-store"
    content = await download.read()
    assert content.startswith(b"%PDF-")
    text = pdf_text(content)
    for shown in (
        "Patient: Paula One",
        "Date of visit: 29 November 2026",
        "Doctor: Dr Alice",
        "Acute pharyngitis, unspecified [J02.9]",
        "Paracetamol",
        "Dose: 500 mg",
        "How to take it: oral",
        "How often: every 6 hours when needed",
        "For how long: 5 days",
        "Instructions: No more than 4 doses in 24 hours.",
        f"What to do next {NOTE['plan']}",
        f"Added after the visit 29 November 2026 {ADDENDUM}",
        "Signed by Dr Alice on 29 November 2026.",
    ):
        assert shown in text, (shown, text)
    for hidden in (*NOT_FOR_THE_SUMMARY, "DRAFT"):
        assert hidden not in text, hidden

    reads = [
        r.event
        async for r in client.app[STORE].audit_records(patient_id=people.patient_1.id)
        if r.event.actor_id == people.patient_1.id and r.event.action == "record.read"
    ]
    assert [(e.action, e.outcome, e.detail) for e in reads] == [
        ("record.read", Outcome.SUCCESS, "as patient"),
        ("record.read", Outcome.SUCCESS, "as patient"),
    ]


async def test_who_may_open_the_summary_page_and_pdf(
    client: Client, people: People, clock: FakeClock
) -> None:
    visit_id = await book(client, people.patient_1, people.doctor_a)
    page, pdf = f"/visits/{visit_id}/summary", f"/visits/{visit_id}/summary.pdf"

    # signed out: sent to sign in, and back here after
    for path in (page, pdf):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 302
        assert response.headers["Location"] == f"/login?next={path}"

    headers = await sign_in(client, people.doctor_a)
    response = await client.get(page)
    assert response.status == 404  # nothing written yet
    assert "has no record yet" in await response.text()
    assert (await client.get("/visits/nosuchvisit/summary")).status == 404
    draft = await client.post(f"/api/visits/{visit_id}/record", json=NOTE, headers=headers)
    assert draft.status == 201
    # the care team previews the draft, marked as one
    response = await client.get(page)
    assert response.status == 200
    assert 'data-testid="summary-draft"' in await response.text()
    assert "DRAFT: the doctor has not signed" in pdf_text(await (await client.get(pdf)).read())
    await sign_in(client, people.nurse_a)
    assert (await client.get(page)).status == 200
    assert (await client.get(pdf)).status == 200

    # the patient: not before it is signed
    await sign_in(client, people.patient_1)
    for path in (page, pdf):
        response = await client.get(path)
        assert response.status == 404
        assert "no signed record yet" in await response.text()
    headers = await sign_in(client, people.doctor_a)
    await write_and_sign(client, headers, visit_id)
    await sign_in(client, people.patient_1)
    assert (await client.get(page)).status == 200
    assert (await client.get(pdf)).status == 200

    # another team's doctor, another patient, an admin: refused, audited
    for who in (people.doctor_b, people.patient_2, people.admin):
        await sign_in(client, who)
        for path in (page, pdf):
            await refused(client, who, "GET", path)

    # the admin, through break-glass, until it expires
    headers = await sign_in(client, people.admin)
    grant = await client.post(
        f"/api/patients/{people.patient_1.id}/break-glass",
        json={"reason": "Patient collapsed, the doctor is unreachable"},
        headers=headers,
    )
    assert grant.status == 201
    assert (await client.get(page)).status == 200
    assert "Paracetamol" in pdf_text(await (await client.get(pdf)).read())
    clock.advance(minutes=61)
    await sign_in(client, people.admin)
    for path in (page, pdf):
        await refused(client, people.admin, "GET", path)


# the PDF on its own ---------------------------------------------------------------------
T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def chart(plan: str, *, signed: bool = True) -> Chart:
    note = Note(
        subjective="Not for the summary.",
        plan=plan,
        diagnoses=(Diagnosis("J06.9", "Acute upper respiratory infection"),),
        prescriptions=(Prescription("Ibuprofène", "200 mg", "oral", "3× daily"),),
    )
    header = RecordHeader(
        "visit-1",
        "patient-1",
        "doctor-1",
        T0,
        versions=("v1",),
        signed_version=1 if signed else 0,
        signed_by="doctor-1" if signed else "",
        signed_at=T0 if signed else None,
    )
    return Chart(header, (Version(1, VersionKind.NOTE, "doctor-1", T0, note=note),))


def test_without_a_unicode_font_the_pdf_transliterates_and_says_what_it_lost() -> None:
    plan = "Rest — drink water.\r\nSee Dr Łukasz Żółć; avoid ψ-blockers."
    text = pdf_text(summary_pdf(chart(plan), "Zoë Ødegård", "Dr Łukasz Żółć", fonts=()))
    assert "Patient: Zoë Ødegård" in text  # Windows-1252 holds these
    assert "Doctor: Dr Lukasz Zólc" in text  # these lose their accents
    assert "Rest — drink water. See Dr Lukasz Zólc; avoid ?-blockers." in text
    assert "Ibuprofène" in text
    assert "How often: 3× daily" in text
    assert "Not for the summary." not in text
    assert " ".join(LOST_NOTE.split()) in text


def test_with_dejavu_installed_the_pdf_prints_every_script_it_has() -> None:
    font = next((f for f in UNICODE_FONTS if f.is_file()), None)
    if font is None:
        pytest.skip("no DejaVu Sans here (Debian: apt install fonts-dejavu-core)")
    plan = "Rest. Ψ-test, Ελληνικά, кириллица, Łódź."
    text = pdf_text(summary_pdf(chart(plan), "Zoë Ødegård", "Dr Łukasz Żółć", fonts=(font,)))
    assert f"What to do next {plan}" in text
    assert "Doctor: Dr Łukasz Żółć" in text
    assert "could not be shown" not in text
    # a script the font has no glyphs for: "?" and the note saying so
    text = pdf_text(summary_pdf(chart("Rest. 休息"), "Zoë", "Dr A", fonts=(font,)))
    assert "Rest. ??" in text
    assert " ".join(LOST_NOTE.split()) in text


def test_core_text_keeps_windows_1252_and_spells_out_the_rest() -> None:
    assert core_text("Café – 5 µg, “twice”…") == ("Café – 5 µg, “twice”…", False)
    assert core_text("Łódź ﬁne") == ("Lódz fine", False)
    assert core_text("ψ 漢") == ("? ?", True)


def test_a_draft_is_marked_and_an_empty_record_has_no_summary() -> None:
    assert "DRAFT" in pdf_text(summary_pdf(chart("Rest.", signed=False), "P", "D", fonts=()))
    assert visit_summary(chart("Rest."), "P", "D").signed
    empty = Chart(RecordHeader("visit-2", "patient-1", "doctor-1", T0, rev=0))
    with pytest.raises(NotFound, match="visit visit-2 has no record yet"):
        visit_summary(empty, "P", "D")


async def test_the_patients_own_page_lists_their_signed_summaries_only(
    client: Client, people: People
) -> None:
    signed = await book(client, people.patient_1, people.doctor_a)
    draft = await book(client, people.patient_1, people.doctor_a)
    headers = await sign_in(client, people.doctor_a)
    await write_and_sign(client, headers, signed)
    saved = await client.post(f"/api/visits/{draft}/record", json=NOTE, headers=headers)
    assert saved.status == 201

    await sign_in(client, people.patient_1)
    html = await (await client.get("/me")).text()
    assert f'data-testid="summary-{signed}"' in html
    assert f'href="/visits/{signed}/summary.pdf"' in html
    assert "Acute pharyngitis, unspecified" in html
    assert draft not in html  # a draft is the care team's until it is signed

    admin = await sign_in(client, people.admin)
    erased = await client.post(
        f"/api/patients/{people.patient_1.id}/erase",
        json={"request": "REQ-44 from the patient", "confirm": people.patient_1.id},
        headers=admin,
    )
    assert erased.status == 200
    await sign_in(client, people.patient_1)
    page = await client.get("/me")
    assert page.status == 200
    assert "Your records were erased" in await page.text()
