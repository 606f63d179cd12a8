"""The consultation record of a visit: what the doctor writes, in versions, then signed.

A record is append-only. Each save of the note appends a version holding the whole note
(SOAP, diagnoses, prescriptions, chat transcript, attachments); nothing is overwritten,
and the history shows every version to the care team. The doctor signs the latest
version; after that only addenda are appended. A record's id is its visit's id.

Stored, a version's clinical fields are sealed (`telemed.sealing`) and the record header
holds only ids, times and the order of versions: see `SealedVersion` and `RecordHeader`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import accumulate
from typing import Any

from telemed.clock import iso, parse_iso
from telemed.errors import ValidationError

MAX_TEXT = 20_000  # characters per SOAP section or addendum
MAX_SHORT = 500  # a diagnosis display, a prescription's parts
MAX_ITEMS = 50  # diagnoses or prescriptions per note
MAX_CHAT = 500  # chat lines kept in a note (each up to MAX_CHAT_TEXT: the body stays < 1 MiB)
MAX_CHAT_TEXT = 1_000
SOAP = ("subjective", "objective", "assessment", "plan")
PRESCRIPTION_PARTS = ("medication", "dose", "route", "frequency", "duration", "instructions")
PRESCRIPTION_REQUIRED = ("medication", "dose", "route", "frequency")
# what a client may send when it saves a note: the note, the version it began from, and
# the attachments it keeps
NOTE_JSON_FIELDS = (*SOAP, "diagnoses", "prescriptions", "chat", "base_version", "attachments")
# ICD-10 (WHO) and ICD-10-CM: a letter, two characters, and up to four after the dot
ICD10 = re.compile(r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")


class VersionKind(StrEnum):
    NOTE = "note"  # the whole note, as the doctor saved it
    ADDENDUM = "addendum"  # text appended after signing


@dataclass(frozen=True, slots=True)
class Diagnosis:
    code: str  # ICD-10, e.g. "J06.9"
    display: str  # e.g. "Acute upper respiratory infection, unspecified"


@dataclass(frozen=True, slots=True)
class Prescription:
    medication: str
    dose: str
    route: str
    frequency: str
    duration: str = ""
    instructions: str = ""


@dataclass(frozen=True, slots=True)
class ChatLine:
    sender: str  # "doctor" or "patient"
    at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class Note:
    subjective: str = ""
    objective: str = ""
    assessment: str = ""
    plan: str = ""
    diagnoses: tuple[Diagnosis, ...] = ()
    prescriptions: tuple[Prescription, ...] = ()
    chat: tuple[ChatLine, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """The stored header: no clinical content. `versions` lists the ids of the stored
    versions in order (number 1 first); `rev` counts changes (compare and set)."""

    id: str  # the visit's id
    patient_id: str
    clinician_id: str
    created_at: datetime
    rev: int = 1
    versions: tuple[str, ...] = ()
    signed_version: int = 0  # the number of the signed version; 0 while unsigned
    signed_by: str = ""
    signed_at: datetime | None = None

    @property
    def signed(self) -> bool:
        return self.signed_version > 0


@dataclass(frozen=True, slots=True)
class SealedVersion:
    """One stored version: its clinical fields sealed under data key `key_id`."""

    id: str
    record_id: str
    number: int  # 1, 2, ...
    patient_id: str
    kind: VersionKind
    author_id: str
    created_at: datetime
    key_id: str
    fields: Mapping[str, bytes]  # field name -> sealed value
    attachment_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SealedAttachment:
    id: str
    record_id: str
    patient_id: str
    author_id: str
    created_at: datetime
    content_type: str
    size: int
    key_id: str
    name: bytes  # the file name, sealed
    body: bytes  # the content, sealed


@dataclass(frozen=True, slots=True)
class Attachment:
    id: str
    name: str
    content_type: str
    size: int
    created_at: datetime
    author_id: str


@dataclass(frozen=True, slots=True)
class Version:
    """One version as its readers see it, opened."""

    number: int
    kind: VersionKind
    author_id: str
    created_at: datetime
    note: Note | None = None  # kind note
    addendum: str = ""  # kind addendum
    attachment_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BreakGlass:
    """An admin's emergency access to one patient's records: stated, timed, audited."""

    id: str
    admin_id: str
    patient_id: str
    reason: str
    opened_at: datetime
    expires_at: datetime

    def active(self, now: datetime) -> bool:
        return self.opened_at <= now < self.expires_at


@dataclass(frozen=True, slots=True)
class Chart:
    """A record as read: the header, its versions opened, and its attachments."""

    header: RecordHeader
    versions: tuple[Version, ...] = field(default=())
    attachments: tuple[Attachment, ...] = field(default=())

    @property
    def latest_note(self) -> Version | None:
        notes = [v for v in self.versions if v.kind is VersionKind.NOTE]
        return notes[-1] if notes else None

    @property
    def signed_note(self) -> Version | None:
        if not self.header.signed:
            return None
        return next(v for v in self.versions if v.number == self.header.signed_version)

    @property
    def addenda(self) -> list[Version]:
        return [v for v in self.versions if v.kind is VersionKind.ADDENDUM]


# input ------------------------------------------------------------------------
def _text(body: Mapping[str, Any], key: str, where: str, limit: int, *, required: bool) -> str:
    value = body.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError(f"{where}{key}", "must be a string")
    value = value.strip()
    if required and not value:
        raise ValidationError(f"{where}{key}", "is required")
    if len(value) > limit:
        raise ValidationError(f"{where}{key}", f"is longer than {limit} characters")
    return value


def _items(body: Mapping[str, Any], key: str, limit: int) -> list[Mapping[str, Any]]:
    items = body.get(key, [])
    if items is None:
        return []
    if not isinstance(items, list):
        raise ValidationError(key, "must be a list")
    if len(items) > limit:
        raise ValidationError(key, f"holds more than {limit} entries")
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValidationError(f"{key}[{index}]", "must be an object")
    return items


def clean_icd10(value: str, where: str = "code") -> str:
    code = value.strip().upper()
    if not ICD10.match(code):
        raise ValidationError(where, f"{value!r} is not an ICD-10 code such as J06.9")
    return code


def note_from_json(body: Any) -> Note:
    """A note from the JSON a client sent; `ValidationError` names the field at fault."""
    if not isinstance(body, Mapping):
        raise ValidationError("note", "must be a JSON object")
    for key in body:
        if key not in NOTE_JSON_FIELDS:
            raise ValidationError(str(key), "is not a field of a note")
    soap = {k: _text(body, k, "", MAX_TEXT, required=False) for k in SOAP}
    diagnoses = []
    for i, item in enumerate(_items(body, "diagnoses", MAX_ITEMS)):
        where = f"diagnoses[{i}]."
        code = _text(item, "code", where, 16, required=True)
        diagnoses.append(
            Diagnosis(
                clean_icd10(code, where + "code"),
                _text(item, "display", where, MAX_SHORT, required=True),
            )
        )
    prescriptions = []
    for i, item in enumerate(_items(body, "prescriptions", MAX_ITEMS)):
        where = f"prescriptions[{i}]."
        parts = {
            part: _text(item, part, where, MAX_SHORT, required=part in PRESCRIPTION_REQUIRED)
            for part in PRESCRIPTION_PARTS
        }
        prescriptions.append(Prescription(**parts))
    chat = []
    for i, item in enumerate(_items(body, "chat", MAX_CHAT)):
        where = f"chat[{i}]."
        sender = _text(item, "sender", where, 16, required=True)
        if sender not in ("doctor", "patient"):
            raise ValidationError(where + "sender", "must be doctor or patient")
        at_text = _text(item, "at", where, 40, required=True)
        try:
            at = parse_iso(at_text)
        except ValueError:
            raise ValidationError(where + "at", "is not an ISO 8601 time") from None
        chat.append(ChatLine(sender, at, _text(item, "text", where, MAX_CHAT_TEXT, required=True)))
    return Note(
        **soap, diagnoses=tuple(diagnoses), prescriptions=tuple(prescriptions), chat=tuple(chat)
    )


# sealed fields ------------------------------------------------------------------
# A note version is sealed as one field, "note": its texts in a fixed order (counts
# before the lists), laid out as a count (2 bytes), each text's length in UTF-8 bytes
# (4 bytes each, little-endian), then the texts. It is opened only after its tag
# checked, so a layout error means a bug, never an attacker's input; it is still refused
# rather than guessed (`NoteLayoutError`). A tenth of JSON's cost for 4 KB of text (no
# per-character escaping), and exact for any text.
NOTE_FIELD = "note"
ADDENDUM_FIELD = "addendum"
_COUNT = struct.Struct("<H")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class NoteLayoutError(ValueError):
    """An opened note does not follow the layout (a bug, reported as unreadable)."""


def _pack(texts: list[str]) -> bytes:
    data = [t.encode() for t in texts]
    sizes = struct.pack(f"<H{len(data)}I", len(data), *map(len, data))
    return sizes + b"".join(data)


def _unpack(blob: bytes) -> list[str]:
    try:
        (count,) = _COUNT.unpack_from(blob)
        sizes = struct.unpack_from(f"<{count}I", blob, _COUNT.size)
    except struct.error as exc:
        raise NoteLayoutError(f"the lengths are cut short ({exc})") from None
    at = _COUNT.size + 4 * count
    ends = list(accumulate(sizes, initial=at))
    if ends[-1] != len(blob):
        raise NoteLayoutError("the texts do not fill the note exactly")
    return [blob[a:b].decode() for a, b in zip(ends, ends[1:], strict=False)]


def note_fields(note: Note) -> dict[str, bytes]:
    texts = [note.subjective, note.objective, note.assessment, note.plan]
    texts.append(str(len(note.diagnoses)))
    for d in note.diagnoses:
        texts += (d.code, d.display)
    texts.append(str(len(note.prescriptions)))
    for p in note.prescriptions:
        texts += (p.medication, p.dose, p.route, p.frequency, p.duration, p.instructions)
    texts.append(str(len(note.chat)))
    for c in note.chat:  # times as whole milliseconds since the epoch: exact and cheap
        texts += (c.sender, str((c.at - _EPOCH) // _MS), c.text)
    return {NOTE_FIELD: _pack(texts)}


def note_from_fields(fields: Mapping[str, bytes]) -> Note:
    try:
        texts = iter(_unpack(fields[NOTE_FIELD]))
        subjective, objective, assessment, plan = (next(texts) for _ in SOAP)
        diagnoses = [Diagnosis(next(texts), next(texts)) for _ in range(int(next(texts)))]
        prescriptions = [
            Prescription(*(next(texts) for _ in PRESCRIPTION_PARTS))
            for _ in range(int(next(texts)))
        ]
        chat = [
            ChatLine(next(texts), _EPOCH + _MS * int(next(texts)), next(texts))
            for _ in range(int(next(texts)))
        ]
        if next(texts, None) is not None:
            raise NoteLayoutError("texts are left over")
    except (KeyError, StopIteration, ValueError, UnicodeDecodeError) as exc:
        # the exception's own text may quote the opened note: only its kind is said
        raise NoteLayoutError(
            f"the opened note does not follow its layout ({type(exc).__name__})"
        ) from None
    return Note(
        subjective,
        objective,
        assessment,
        plan,
        diagnoses=tuple(diagnoses),
        prescriptions=tuple(prescriptions),
        chat=tuple(chat),
    )


# output -------------------------------------------------------------------------
def note_json(note: Note) -> dict[str, Any]:
    return {
        **{k: getattr(note, k) for k in SOAP},
        "diagnoses": [{"code": d.code, "display": d.display} for d in note.diagnoses],
        "prescriptions": [
            {part: getattr(p, part) for part in PRESCRIPTION_PARTS} for p in note.prescriptions
        ],
        "chat": [{"sender": c.sender, "at": iso(c.at), "text": c.text} for c in note.chat],
    }


def attachment_json(a: Attachment) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "content_type": a.content_type,
        "size": a.size,
        "created_at": iso(a.created_at),
        "author_id": a.author_id,
    }


def version_json(v: Version) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": v.number,
        "kind": v.kind.value,
        "author_id": v.author_id,
        "created_at": iso(v.created_at),
    }
    if v.note is not None:
        out["note"] = note_json(v.note)
        out["attachment_ids"] = list(v.attachment_ids)
    if v.kind is VersionKind.ADDENDUM:
        out["text"] = v.addendum
    return out


def chart_json(chart: Chart, *, history: bool = False) -> dict[str, Any]:
    """The record as the API serves it: the latest note (or, for a patient, the signed
    one: the caller passes a chart holding only what the reader may see)."""
    h = chart.header
    latest = chart.signed_note if h.signed else chart.latest_note
    out: dict[str, Any] = {
        "id": h.id,
        "visit_id": h.id,
        "patient_id": h.patient_id,
        "clinician_id": h.clinician_id,
        "created_at": iso(h.created_at),
        "version": chart.versions[-1].number if chart.versions else 0,
        "signed": h.signed,
        "signed_version": h.signed_version or None,
        "signed_by": h.signed_by or None,
        "signed_at": iso(h.signed_at) if h.signed_at else None,
        "note": note_json(latest.note) if latest and latest.note else None,
        "note_version": latest.number if latest else None,
        "addenda": [
            {
                "version": v.number,
                "author_id": v.author_id,
                "at": iso(v.created_at),
                "text": v.addendum,
            }
            for v in chart.addenda
        ],
        "attachments": [
            attachment_json(a)
            for a in chart.attachments
            if latest is None or a.id in latest.attachment_ids
        ],
    }
    if history:
        out["history"] = [version_json(v) for v in chart.versions]
    return out


def break_glass_json(grant: BreakGlass, now: datetime) -> dict[str, Any]:
    return {
        "id": grant.id,
        "admin_id": grant.admin_id,
        "patient_id": grant.patient_id,
        "reason": grant.reason,
        "opened_at": iso(grant.opened_at),
        "expires_at": iso(grant.expires_at),
        "active": grant.active(now),
    }
