"""The patient's plain-language summary of a visit, and the PDF of it they can keep.

Pure: it takes the chart as read (`RecordsOffice.chart` has already decided who may see
what, and audited it) and the names to print, and returns values and bytes.

The summary shows what the patient needs to act on: the diagnoses in words (the ICD-10
code in brackets), the medicines and how to take them, the plan as "What to do next",
and what the doctor added after signing. The notes the clinicians write for each other
(history, examination, reasoning) stay out.

Characters in the PDF: fpdf2's core fonts hold one byte per character. When a DejaVu
Sans TrueType font is installed (Debian and Ubuntu: the fonts-dejavu-core package), it is
embedded, subset, and the Latin, Greek and Cyrillic scripts print as written (a
character it has no glyph for, such as Chinese, prints as "?"). Otherwise the core
Helvetica is used with the Windows-1252 encoding; a character outside it is
transliterated (its accents dropped, or a few letters spelt out: "ł" as "l") or, failing
that, printed as "?". Whenever a "?" was printed, the PDF says so and points to the
printable page, which shows every character.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import TTFFont

from telemed.errors import NotFound
from telemed.records import Chart, Diagnosis, Prescription

# where the distributions install DejaVu Sans
UNICODE_FONTS: tuple[Path, ...] = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),  # Debian, Ubuntu
    Path("/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf"),  # Fedora
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),  # Arch
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),  # Alpine, older Fedora
)
CORE_ENCODING = "windows-1252"
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
# letters that Unicode does not decompose into a base letter and an accent
SPELLINGS = {
    "ł": "l",
    "Ł": "L",
    "đ": "d",
    "Đ": "D",
    "ħ": "h",
    "Ħ": "H",
    "ı": "i",
    "ŀ": "l",
    "Ŀ": "L",
    "ŉ": "'n",
    "ĸ": "k",
    "ſ": "s",
    "ŧ": "t",
    "Ŧ": "T",
    "\u2212": "-",  # minus sign
    "\u2010": "-",  # hyphen
    "\u2011": "-",  # non-breaking hyphen
    "\u2009": " ",  # thin space
    "\u202f": " ",  # narrow no-break space
}
LOST_NOTE = (
    "Some characters could not be shown in this PDF and appear as '?'. "
    "The visit summary page in your browser shows all of them."
)


@dataclass(frozen=True, slots=True)
class AddedNote:
    """What the doctor added after signing."""

    at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class VisitSummary:
    visit_id: str
    visit_at: datetime
    patient_name: str
    doctor_name: str
    signed_at: datetime | None  # None: a draft, which only the care team sees
    diagnoses: tuple[Diagnosis, ...]
    prescriptions: tuple[Prescription, ...]
    next_steps: str  # the plan
    added: tuple[AddedNote, ...]

    @property
    def signed(self) -> bool:
        return self.signed_at is not None


def visit_summary(
    chart: Chart, patient_name: str, doctor_name: str, *, visit_at: datetime | None = None
) -> VisitSummary:
    """The summary of the note the reader sees: the signed one, or (for the care team,
    before signing) the latest draft. `visit_at` defaults to when the record began."""
    header = chart.header
    shown = chart.signed_note if header.signed else chart.latest_note
    if shown is None or shown.note is None:
        raise NotFound(f"visit {header.id} has no record yet")
    note = shown.note
    return VisitSummary(
        visit_id=header.id,
        visit_at=visit_at or header.created_at,
        patient_name=patient_name,
        doctor_name=doctor_name,
        signed_at=header.signed_at if header.signed else None,
        diagnoses=note.diagnoses,
        prescriptions=note.prescriptions,
        next_steps=note.plan,
        added=tuple(AddedNote(v.created_at, v.addendum) for v in chart.addenda),
    )


def long_date(moment: datetime) -> str:
    """29 November 2026 (UTC), the same whatever the server's locale."""
    return f"{moment.day} {MONTHS[moment.month - 1]} {moment.year}"


def medicine_lines(p: Prescription) -> list[tuple[str, str]]:
    """A prescription as labelled lines, in the words a patient reads; empty parts left
    out."""
    lines = [
        ("Dose", p.dose),
        ("How to take it", p.route),
        ("How often", p.frequency),
        ("For how long", p.duration),
        ("Instructions", p.instructions),
    ]
    return [(label, value) for label, value in lines if value]


def summary_pdf(
    chart: Chart,
    patient_name: str,
    doctor_name: str,
    *,
    visit_at: datetime | None = None,
    fonts: Sequence[Path] = UNICODE_FONTS,
) -> bytes:
    """The summary as a PDF: A4, one column, selectable text. `fonts`: where to look for
    DejaVu Sans (the first that exists is embedded; none: the core-font fallback)."""
    summary = visit_summary(chart, patient_name, doctor_name, visit_at=visit_at)
    return render_pdf(summary, fonts)


def render_pdf(summary: VisitSummary, fonts: Sequence[Path] = UNICODE_FONTS) -> bytes:
    writer = _Writer(next((f for f in fonts if f.is_file()), None))
    writer.title("Your visit summary")
    if not summary.signed:
        writer.warning("DRAFT: the doctor has not signed this summary yet.")
    writer.fact("Patient", summary.patient_name)
    writer.fact("Date of visit", long_date(summary.visit_at))
    writer.fact("Doctor", summary.doctor_name)

    writer.heading("What we found")
    if not summary.diagnoses:
        writer.paragraph("No diagnosis was recorded at this visit.")
    for d in summary.diagnoses:
        writer.bullet(f"{d.display} [{d.code}]")

    writer.heading("Your medicines")
    if not summary.prescriptions:
        writer.paragraph("No medicine was prescribed at this visit.")
    for p in summary.prescriptions:
        writer.subheading(p.medication)
        for label, value in medicine_lines(p):
            writer.fact(label, value)

    writer.heading("What to do next")
    writer.paragraph(summary.next_steps or "Your doctor wrote no further steps.")

    if summary.added:
        writer.heading("Added after the visit")
        for added in summary.added:
            writer.subheading(long_date(added.at))
            writer.paragraph(added.text)

    if summary.signed_at is not None:
        writer.gap()
        writer.paragraph(f"Signed by {summary.doctor_name} on {long_date(summary.signed_at)}.")
    return writer.finish()


class _Writer:
    """fpdf2, with the font chosen once and every string made printable in it."""

    def __init__(self, font: Path | None) -> None:
        self.pdf = pdf = FPDF(format="A4")
        pdf.set_auto_page_break(auto=True, margin=18)
        pdf.set_margins(18, 18, 18)
        pdf.set_title("Visit summary")
        pdf.set_creator("Telemed")
        pdf.add_page()
        self.unicode = font is not None
        self.lost = False
        self.cmap: Collection[int] = ()
        if font is not None:
            self.family = "dejavu"
            pdf.add_font(self.family, "", font)
            embedded = pdf.fonts[self.family]
            if isinstance(embedded, TTFFont):
                self.cmap = embedded.cmap  # the characters it has glyphs for
            bold = font.with_name(font.stem + "-Bold" + font.suffix)
            self.bold = "B" if bold.is_file() else ""
            if self.bold:
                pdf.add_font(self.family, "B", bold)
        else:
            self.family = "helvetica"
            self.bold = "B"
            pdf.core_fonts_encoding = CORE_ENCODING

    def _text(self, text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
        if self.unicode:
            printable, lost = font_text(text, self.cmap)
        else:
            printable, lost = core_text(text)
        self.lost = self.lost or lost
        return printable

    def _write(self, text: str, size: float, *, bold: bool = False, gap: float = 0) -> None:
        self.pdf.set_font(self.family, self.bold if bold else "", size)
        self.pdf.multi_cell(
            0,
            size * 0.5,
            self._text(text),
            align="L",
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
        if gap:
            self.pdf.ln(gap)

    def title(self, text: str) -> None:
        self._write(text, 18, bold=True, gap=3)

    def heading(self, text: str) -> None:
        self.pdf.ln(4)
        self._write(text, 14, bold=True, gap=1.5)

    def subheading(self, text: str) -> None:
        self.pdf.ln(1)
        self._write(text, 11.5, bold=True)

    def fact(self, label: str, value: str) -> None:
        self._write(f"{label}: {value}", 11)

    def bullet(self, text: str) -> None:
        self._write(f"\u2022 {text}", 11)

    def paragraph(self, text: str) -> None:
        self._write(text, 11)

    def warning(self, text: str) -> None:
        self._write(text, 12, bold=True, gap=2)

    def gap(self) -> None:
        self.pdf.ln(4)

    def finish(self) -> bytes:
        if self.lost:
            self.gap()
            self._write(LOST_NOTE, 9)
        return bytes(self.pdf.output())


def font_text(text: str, cmap: Collection[int]) -> tuple[str, bool]:
    """`text` with the characters the embedded font has no glyph for (Chinese, in DejaVu
    Sans) as "?", and whether there were any."""
    missing = {ch for ch in text if ch != "\n" and ord(ch) not in cmap}
    if not missing:
        return text, False
    return "".join("?" if ch in missing else ch for ch in text), True


def core_text(text: str) -> tuple[str, bool]:
    """`text` in what the core fonts print (Windows-1252), and whether any character had
    to become "?"."""
    out: list[str] = []
    lost = False
    for ch in text:
        if ch == "\n" or _printable(ch):
            out.append(ch)
            continue
        spelt = SPELLINGS.get(ch)
        if spelt is None:
            decomposed = unicodedata.normalize("NFKD", ch)
            base = "".join(c for c in decomposed if not unicodedata.combining(c))
            if base and all(_printable(c) for c in base):
                spelt = base
        if spelt is None:
            spelt, lost = "?", True
        out.append(spelt)
    return "".join(out), lost


def _printable(ch: str) -> bool:
    if unicodedata.category(ch).startswith("C"):  # controls and unassigned
        return False
    try:
        ch.encode(CORE_ENCODING)
    except UnicodeEncodeError:
        return False
    return True
