"""Who may read and write consultation records, and how they are sealed; each act audited.

Access (one place for the web handlers, the FHIR export and the pages):
- the patient's care team reads every version and writes: notes, signature, addenda,
  attachments;
- the patient reads their own signed records (the signed note, its addenda and
  attachments), never a draft;
- an admin (and the operator at the command line) reads no clinical content, except
  through break-glass: a stated reason, for `break_glass_minutes`, audited, and shown to
  the care team. Break-glass reads; it never writes;
- everyone else is refused, and the refusal is audited.

Every read, write and refusal leaves an audit entry that names the record, never its
content.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import ParamSpec, TypeVar

from telemed.accounts import Role, new_id
from telemed.audit import Outcome
from telemed.clinic import Actor, Clinic
from telemed.clock import iso, parse_iso
from telemed.errors import (
    Conflict,
    Forbidden,
    NotFound,
    StoreUnavailable,
    TelemedError,
    ValidationError,
)
from telemed.keyring import KeyringError
from telemed.records import (
    ADDENDUM_FIELD,
    MAX_TEXT,
    Attachment,
    BreakGlass,
    Chart,
    Note,
    NoteLayoutError,
    RecordHeader,
    SealedAttachment,
    SealedVersion,
    Version,
    VersionKind,
    note_fields,
    note_from_fields,
)
from telemed.sealing import Binding, DataKey, Sealer, SealError, Shredded, WrappedKey
from telemed.settings import ATTACHMENT_TYPES, RecordSettings, split_urls

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

UPDATE_ATTEMPTS = 5
ERASED = "erased:"  # + patient id: a clinic setting holding the time of the erasure
MAX_REASON = 500
MAX_FILE_NAME = 255
# what a file's first bytes must be for its declared type
SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "application/pdf": (b"%PDF-",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
}
assert set(SIGNATURES) == set(ATTACHMENT_TYPES)
RECORDING_TYPE = "video/webm"
WEBM_SIGNATURE = b"\x1a\x45\xdf\xa3"  # the EBML header that opens a Matroska/WebM file


class Reader(StrEnum):
    CARE_TEAM = "care_team"
    PATIENT = "patient"
    BREAK_GLASS = "break_glass"


class RecordUnreadable(TelemedError):
    """A record cannot be opened (erased, a missing or wrong key, altered data): the
    message says which. Never answered with partial or garbled content."""

    def __init__(self, message: str, *, erased: bool) -> None:
        super().__init__(message)
        self.erased = erased


@dataclass(frozen=True, slots=True)
class RecordPolicy:
    attachment_max_bytes: int
    attachment_types: frozenset[str]
    break_glass: timedelta
    recording_max_bytes: int = 1024 * 1024 * 1024  # a call recording (WebM), per participant


def record_policy(settings: RecordSettings, *, recording_max_mib: int = 1024) -> RecordPolicy:
    return RecordPolicy(
        attachment_max_bytes=settings.attachment_max_kib * 1024,
        attachment_types=frozenset(split_urls(settings.attachment_types)),
        break_glass=timedelta(minutes=settings.break_glass_minutes),
        recording_max_bytes=recording_max_mib * 2**20,
    )


def attachment_binding(record_id: str, attachment_id: str, patient_id: str, part: str) -> Binding:
    """An attachment's name and body: bound to its record, itself and its patient."""
    return Binding(record_id, 0, patient_id, f"attachment/{attachment_id}/{part}")


def _stated(text: str, field: str, shortest: int, hint: str) -> str:
    """A reason or reference an admin must give: one line, neither too short nor long."""
    text = " ".join(text.split())
    if len(text) < shortest:
        raise ValidationError(field, f"{hint} (at least {shortest} characters)")
    if len(text) > MAX_REASON:
        raise ValidationError(field, f"is longer than {MAX_REASON} characters")
    return text


class RecordsOffice:
    def __init__(self, clinic: Clinic, sealer: Sealer, policy: RecordPolicy) -> None:
        self.clinic = clinic
        self.store = clinic.store
        self.clock = clinic.clock
        self.sealer = sealer
        self.policy = policy

    # access ---------------------------------------------------------------------
    async def _access(
        self, actor: Actor, patient_id: str, action: str, entity: str, *, write: bool
    ) -> tuple[Reader, str]:
        """How the actor may reach this patient's records (and the break-glass grant id
        when that is how); refuse, audited, otherwise."""
        user = actor.user
        if user is not None and user.active:
            if user.role.is_clinician and user.id in await self.store.care_team(patient_id):
                return Reader.CARE_TEAM, ""
            if not write and user.role is Role.PATIENT and user.id == patient_id:
                return Reader.PATIENT, ""
            if not write and user.role is Role.ADMIN:
                now = self.clock()
                grants = await self.store.break_glass_grants(
                    patient_id=patient_id, admin_id=user.id
                )
                active = next((g for g in grants if g.active(now)), None)
                if active is not None:
                    return Reader.BREAK_GLASS, active.id
        reason = (
            "admins read no clinical content (break-glass only)"
            if actor.is_admin
            else ("not on the care team")
        )
        await self.clinic.audit(
            actor, action, Outcome.DENIED, patient_id=patient_id, entity=entity, detail=reason
        )
        raise Forbidden(f"{action}: {reason}")

    async def _audit(
        self,
        actor: Actor,
        action: str,
        patient_id: str,
        entity: str,
        detail: str = "",
        outcome: Outcome = Outcome.SUCCESS,
    ) -> None:
        await self.clinic.audit(
            actor, action, outcome, patient_id=patient_id, entity=entity, detail=detail
        )

    async def _visit_patient(self, record_id: str) -> tuple[str, str]:
        visit = await self.store.get_visit(record_id)
        if visit is None:
            raise NotFound(f"visit {record_id} does not exist")
        return visit.patient_id, visit.clinician_id

    # reading --------------------------------------------------------------------
    async def chart(self, actor: Actor, record_id: str, *, history: bool = False) -> Chart:
        """The record of a visit as the actor may see it. A patient gets the signed
        version and its addenda only; a record not yet signed is not found for them."""
        patient_id, clinician_id = await self._visit_patient(record_id)
        entity = f"Composition/{record_id}"
        action = "record.history" if history else "record.read"
        reader, grant = await self._access(actor, patient_id, action, entity, write=False)
        if history and reader is Reader.PATIENT:
            detail = "the history is the care team's"
            await self._audit(actor, action, patient_id, entity, detail, Outcome.DENIED)
            raise Forbidden(f"{action}: {detail}")
        header = await self.store.get_record(record_id)
        if header is None or (reader is Reader.PATIENT and not header.signed):
            await self._audit(actor, action, patient_id, entity, "no record yet")
            if reader is Reader.PATIENT:
                raise NotFound(f"visit {record_id} has no signed record yet")
            return Chart(RecordHeader(record_id, patient_id, clinician_id, self.clock(), rev=0))
        try:
            chart = await self._open(header, patient_reader=reader is Reader.PATIENT)
        except RecordUnreadable as exc:
            await self._audit(actor, action, patient_id, entity, str(exc), Outcome.FAILURE)
            raise
        detail = f"break-glass {grant}" if grant else f"as {reader.value}"
        await self._audit(actor, action, patient_id, entity, detail)
        return chart

    async def charts_of_patient(self, actor: Actor, patient_id: str) -> list[Chart]:
        """Every record of the patient the actor may read (a patient: the signed ones)."""
        entity = f"Patient/{patient_id}"
        reader, grant = await self._access(actor, patient_id, "record.list", entity, write=False)
        if await self.erased_at(patient_id) is not None:
            await self._audit(actor, "record.list", patient_id, entity, "erased", Outcome.FAILURE)
            raise RecordUnreadable(f"patient {patient_id}'s records were erased", erased=True)
        headers = await self.store.list_records(patient_id)
        if reader is Reader.PATIENT:
            headers = [h for h in headers if h.signed]
        charts = [await self._open(h, patient_reader=reader is Reader.PATIENT) for h in headers]
        detail = f"break-glass {grant}" if grant else f"count={len(charts)}"
        await self._audit(actor, "record.list", patient_id, entity, detail)
        return charts

    async def _open(
        self, header: RecordHeader, *, patient_reader: bool, latest_only: bool = False
    ) -> Chart:
        numbers = range(1, len(header.versions) + 1)
        wanted = list(zip(numbers, header.versions, strict=True))
        if patient_reader:  # the signed note and what came after it (addenda)
            wanted = [(n, vid) for n, vid in wanted if n >= header.signed_version]
        if latest_only:
            wanted = wanted[-1:]
        stored = {v.id: v for v in await self.store.record_versions([vid for _, vid in wanted])}
        attachments = await self.store.list_attachments(header.id)
        key_ids = {v.key_id for v in stored.values()} | {a.key_id for a in attachments}
        keys = await self.store.get_data_keys(key_ids)
        opened: dict[str, DataKey] = {}

        def key(key_id: str) -> DataKey:
            if key_id not in opened:
                wrapped = keys.get(key_id)
                if wrapped is None:
                    raise Shredded(
                        f"record {header.id}: its data key is destroyed (the patient's data "
                        "was erased)"
                    )
                if wrapped.patient_id != header.patient_id:
                    raise SealError(f"record {header.id}: a data key of another patient")
                opened[key_id] = self.sealer.open_key(wrapped)
            return opened[key_id]

        versions: list[Version] = []
        try:
            for number, vid in wanted:
                sealed = stored.get(vid)
                if sealed is None:
                    raise SealError(f"record {header.id}: version {number} is missing")
                versions.append(await self._call(self._open_version, header, number, sealed, key))
            files = [await self._call(self._open_attachment_name, a, key) for a in attachments]
        except (SealError, KeyringError, NoteLayoutError) as exc:
            raise RecordUnreadable(str(exc), erased=isinstance(exc, Shredded)) from exc
        except (KeyError, UnicodeDecodeError) as exc:  # a stored kind that does not fit
            raise RecordUnreadable(
                f"record {header.id}: a version does not hold what its kind says "
                f"({type(exc).__name__})",
                erased=False,
            ) from None
        if patient_reader and versions:
            shown = set(versions[0].attachment_ids)
            files = [a for a in files if a.id in shown]
        return Chart(header, tuple(versions), tuple(files))

    @staticmethod
    def _open_version(
        header: RecordHeader, number: int, sealed: SealedVersion, key: Callable[[str], DataKey]
    ) -> Version:
        data_key = key(sealed.key_id)
        # the binding comes from the header being read, not from the stored version: a
        # version moved to another record, number or patient fails its tag check
        plain = {
            name: data_key.open(Binding(header.id, number, header.patient_id, name), blob)
            for name, blob in sealed.fields.items()
        }
        if sealed.kind is VersionKind.NOTE:
            note = note_from_fields(plain)
            return Version(
                number,
                sealed.kind,
                sealed.author_id,
                sealed.created_at,
                note=note,
                attachment_ids=sealed.attachment_ids,
            )
        return Version(
            number,
            sealed.kind,
            sealed.author_id,
            sealed.created_at,
            addendum=plain[ADDENDUM_FIELD].decode(),
        )

    @staticmethod
    def _open_attachment_name(a: SealedAttachment, key: Callable[[str], DataKey]) -> Attachment:
        name = key(a.key_id).open(
            attachment_binding(a.record_id, a.id, a.patient_id, "name"), a.name
        )
        return Attachment(a.id, name.decode(), a.content_type, a.size, a.created_at, a.author_id)

    async def attachment(self, actor: Actor, attachment_id: str) -> tuple[Attachment, bytes]:
        stored = await self.store.get_attachment(attachment_id)
        if stored is None:
            raise NotFound(f"attachment {attachment_id} does not exist")
        entity = f"Binary/{attachment_id}"
        reader, grant = await self._access(
            actor, stored.patient_id, "attachment.read", entity, write=False
        )
        if reader is Reader.PATIENT and not await self._signed_with(stored):
            # a patient sees the attachments of their signed notes only
            raise NotFound(f"attachment {attachment_id} does not exist")
        keys = await self.store.get_data_keys([stored.key_id])
        try:
            wrapped = keys.get(stored.key_id)
            if wrapped is None:
                raise Shredded(
                    f"attachment {attachment_id}: its data key is destroyed (the patient's "
                    "data was erased)"
                )
            if wrapped.patient_id != stored.patient_id:
                raise SealError(f"attachment {attachment_id}: a data key of another patient")
            data_key = await self._call(self.sealer.open_key, wrapped)
            meta = self._open_attachment_name(stored, lambda _: data_key)
            body = data_key.open(
                attachment_binding(stored.record_id, stored.id, stored.patient_id, "body"),
                stored.body,
            )
        except (SealError, KeyringError) as exc:
            await self._audit(
                actor, "attachment.read", stored.patient_id, entity, str(exc), Outcome.FAILURE
            )
            raise RecordUnreadable(str(exc), erased=isinstance(exc, Shredded)) from exc
        detail = f"break-glass {grant}" if grant else f"as {reader.value}"
        await self._audit(actor, "attachment.read", stored.patient_id, entity, detail)
        return meta, body

    # writing --------------------------------------------------------------------
    async def save_note(
        self,
        actor: Actor,
        record_id: str,
        note: Note,
        *,
        base_version: int | None = None,
        attachment_ids: Sequence[str] | None = None,
    ) -> Chart:
        """Append a version holding the whole note. `base_version` (the version the
        writer started from) refuses an edit made over someone else's newer one. The
        attachments listed stay on the note; by default, those of the version before."""
        patient_id, clinician_id = await self._visit_patient(record_id)
        entity = f"Composition/{record_id}"
        await self._access(actor, patient_id, "record.write", entity, write=True)
        await self._refuse_if_erased(patient_id)
        header = await self._header(record_id, patient_id, clinician_id)
        if header.signed:
            raise ValidationError("record", "is signed: add an addendum instead")
        if base_version is not None and base_version != len(header.versions):
            raise Conflict(
                f"record {record_id} is at version {len(header.versions)}, not {base_version}: "
                "reload it and edit again"
            )
        if attachment_ids is None:
            attachment_ids = await self._current_attachments(header)
        known = {a.id for a in await self.store.list_attachments(record_id)}
        for aid in attachment_ids:
            if aid not in known:
                raise ValidationError("attachments", f"{aid} is not an attachment of this record")
        header = await self._append(
            actor,
            header,
            VersionKind.NOTE,
            note_fields(note),
            tuple(attachment_ids),
            require_signed=False,
        )
        await self._audit(
            actor, "record.write", patient_id, entity, f"version={len(header.versions)}"
        )
        return await self._open(header, patient_reader=False)

    async def add_addendum(self, actor: Actor, record_id: str, text: str) -> Chart:
        patient_id, clinician_id = await self._visit_patient(record_id)
        entity = f"Composition/{record_id}"
        await self._access(actor, patient_id, "record.addendum", entity, write=True)
        await self._refuse_if_erased(patient_id)
        text = text.strip()
        if not text:
            raise ValidationError("text", "is required")
        if len(text) > MAX_TEXT:
            raise ValidationError("text", f"is longer than {MAX_TEXT} characters")
        header = await self._header(record_id, patient_id, clinician_id)
        if not header.signed:
            raise ValidationError("record", "is not signed yet: edit the note instead")
        header = await self._append(
            actor,
            header,
            VersionKind.ADDENDUM,
            {ADDENDUM_FIELD: text.encode()},
            (),
            require_signed=True,
        )
        await self._audit(
            actor, "record.addendum", patient_id, entity, f"version={len(header.versions)}"
        )
        return await self._open(header, patient_reader=False)

    async def sign(self, actor: Actor, record_id: str, version: int) -> Chart:
        """Sign `version`, which must be the latest: what the doctor read is what is
        signed. After this, only addenda."""
        patient_id, clinician_id = await self._visit_patient(record_id)
        entity = f"Composition/{record_id}"
        await self._access(actor, patient_id, "record.sign", entity, write=True)
        user = actor.user
        if user is None or user.role is not Role.DOCTOR:
            await self._audit(
                actor, "record.sign", patient_id, entity, "doctors sign", Outcome.DENIED
            )
            raise Forbidden("record.sign: only a doctor signs a record")
        header = await self.store.get_record(record_id)
        if header is None or not header.versions:
            raise ValidationError("record", "has no note to sign")
        if header.signed:
            raise ValidationError("record", f"is signed already (version {header.signed_version})")
        if version != len(header.versions):
            raise Conflict(
                f"record {record_id} is at version {len(header.versions)}, not {version}: "
                "read the latest version before signing"
            )
        signed = dataclasses.replace(
            header,
            rev=header.rev + 1,
            signed_version=version,
            signed_by=user.id,
            signed_at=self.clock(),
        )
        if not await self.store.replace_record(signed):
            raise Conflict(f"record {record_id} changed while signing: read it and sign again")
        await self._audit(actor, "record.sign", patient_id, entity, f"version={version}")
        return await self._open(signed, patient_reader=False)

    async def attach(
        self, actor: Actor, record_id: str, name: str, content_type: str, body: bytes
    ) -> Attachment:
        """Seal a file under its own data key and add it to the record's next note
        version (the note itself is saved as a new version listing it)."""
        if content_type not in self.policy.attachment_types:
            allowed = ", ".join(sorted(self.policy.attachment_types))
            raise ValidationError("content_type", f"{content_type!r} is not one of {allowed}")
        if len(body) > self.policy.attachment_max_bytes:
            raise ValidationError(
                "file", f"is larger than {self.policy.attachment_max_bytes // 1024} KiB"
            )
        if not body.startswith(SIGNATURES[content_type]):
            raise ValidationError("file", f"its content is not {content_type}")
        return await self._attach(actor, record_id, name, content_type, body)

    async def attach_recording(
        self, actor: Actor, record_id: str, name: str, body: bytes
    ) -> Attachment:
        """A call recording (WebM, made by the relay with the consent stored on the
        visit): sealed and attached like any file, under its own size limit."""
        if not body.startswith(WEBM_SIGNATURE):
            raise ValidationError("file", f"its content is not {RECORDING_TYPE}")
        if len(body) > self.policy.recording_max_bytes:
            limit = self.policy.recording_max_bytes
            size = f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit // 1024} KiB"
            raise ValidationError("file", f"is larger than {size}")
        return await self._attach(actor, record_id, name, RECORDING_TYPE, body)

    async def _attach(
        self, actor: Actor, record_id: str, name: str, content_type: str, body: bytes
    ) -> Attachment:
        patient_id, clinician_id = await self._visit_patient(record_id)
        entity = f"Composition/{record_id}"
        await self._access(actor, patient_id, "attachment.write", entity, write=True)
        await self._refuse_if_erased(patient_id)
        name = name.strip().replace("/", "_").replace("\\", "_")[:MAX_FILE_NAME] or "attachment"
        header = await self._header(record_id, patient_id, clinician_id)
        if header.signed:
            raise ValidationError("record", "is signed: attachments go on before signing")
        now = self.clock()
        attachment_id = new_id()
        data_key = await self._new_key(patient_id, now)
        sealed = SealedAttachment(
            id=attachment_id,
            record_id=record_id,
            patient_id=patient_id,
            author_id=actor.id,
            created_at=now,
            content_type=content_type,
            size=len(body),
            key_id=data_key.id,
            name=data_key.seal(
                attachment_binding(record_id, attachment_id, patient_id, "name"), name.encode()
            ),
            body=data_key.seal(
                attachment_binding(record_id, attachment_id, patient_id, "body"), body
            ),
        )
        await self.store.add_attachment(sealed)
        # the note keeps its content and gains the file, as a new version
        latest = await self._current(header)
        note = latest.note if latest is not None and latest.note is not None else Note()
        ids = (*(latest.attachment_ids if latest else ()), attachment_id)
        await self._append(
            actor, header, VersionKind.NOTE, note_fields(note), ids, require_signed=False
        )
        await self._audit(
            actor, "attachment.write", patient_id, f"Binary/{attachment_id}", f"record={record_id}"
        )
        return Attachment(attachment_id, name, content_type, len(body), now, actor.id)

    # break-glass and erasure ------------------------------------------------------
    async def break_glass(self, actor: Actor, patient_id: str, reason: str) -> BreakGlass:
        """An admin opens emergency read access to one patient's records."""
        user = actor.user
        entity = f"Patient/{patient_id}"
        if user is None or user.role is not Role.ADMIN or not user.active:
            await self._audit(
                actor, "break_glass.open", patient_id, entity, "admins only", Outcome.DENIED
            )
            raise Forbidden("break_glass.open: only an admin (signed in) may do this")
        reason = _stated(reason, "reason", 10, "state why")
        await self._require_patient(patient_id)
        now = self.clock()
        grant = BreakGlass(
            new_id(), user.id, patient_id, reason, now, now + self.policy.break_glass
        )
        await self.store.add_break_glass(grant)
        await self._audit(
            actor,
            "break_glass.open",
            patient_id,
            entity,
            f"grant={grant.id} until={grant.expires_at:%H:%M}Z",
        )
        log.warning(
            "break-glass opened grant=%s patient=%s admin=%s", grant.id, patient_id, user.id
        )
        return grant

    async def break_glass_grants(self, actor: Actor, patient_id: str) -> list[BreakGlass]:
        """Shown to the care team (and to admins): who broke the glass, when, why."""
        user = actor.user
        team = await self.store.care_team(patient_id)
        if not actor.is_admin and not (user is not None and user.active and user.id in team):
            await self._audit(
                actor,
                "break_glass.list",
                patient_id,
                f"Patient/{patient_id}",
                "not on the care team",
                Outcome.DENIED,
            )
            raise Forbidden("break_glass.list: this patient is not in your care")
        return await self.store.break_glass_grants(patient_id=patient_id)

    async def erase_patient(self, actor: Actor, patient_id: str, request: str) -> int:
        """Crypto-shredding: destroy every data key of the patient. Afterwards none of
        their records or attachments opens, for anyone, from any copy of the store made
        from now on. `request` names the valid erasure request (its reference)."""
        entity = f"Patient/{patient_id}"
        if not actor.is_admin:
            await self._audit(
                actor, "patient.erase", patient_id, entity, "admins only", Outcome.DENIED
            )
            raise Forbidden("patient.erase: only an admin may do this")
        request = _stated(request, "request", 5, "name the erasure request")
        await self._require_patient(patient_id)
        # the mark goes first: a writer that missed it made its data key before this
        # delete, which destroys it; one that sees it destroys its own (see _new_key)
        await self.store.put_setting(ERASED + patient_id, iso(self.clock()))
        destroyed = await self.store.delete_data_keys(patient_id)
        await self._audit(
            actor, "patient.erase", patient_id, entity, f"data_keys={destroyed} request={request}"
        )
        log.warning("patient erased patient=%s data_keys=%d", patient_id, destroyed)
        return destroyed

    async def _require_patient(self, patient_id: str) -> None:
        if await self.store.get_patient(patient_id) is None:
            raise NotFound(f"patient {patient_id} does not exist")

    async def erased_at(self, patient_id: str) -> datetime | None:
        """When the patient's data was erased, if it was."""
        stamp = await self.store.get_setting(ERASED + patient_id)
        return None if stamp is None else parse_iso(stamp)

    async def check_write(self, actor: Actor, record_id: str, action: str) -> None:
        """Refuse (audited) before a large upload is read, as the write itself would."""
        patient_id, _ = await self._visit_patient(record_id)
        await self._access(actor, patient_id, action, f"Composition/{record_id}", write=True)
        await self._refuse_if_erased(patient_id)

    async def _refuse_if_erased(self, patient_id: str) -> None:
        if await self.erased_at(patient_id) is not None:
            raise RecordUnreadable(
                f"patient {patient_id}'s records were erased: nothing more is written", erased=True
            )

    # plumbing -------------------------------------------------------------------
    async def _header(self, record_id: str, patient_id: str, clinician_id: str) -> RecordHeader:
        header = await self.store.get_record(record_id)
        if header is not None:
            return header
        try:
            await self.store.add_record(
                RecordHeader(record_id, patient_id, clinician_id, self.clock(), rev=1)
            )
        except Conflict:
            pass  # another writer created it first
        header = await self.store.get_record(record_id)
        if header is None:
            raise StoreUnavailable(f"record {record_id} vanished after it was created")
        return header

    async def _signed_with(self, attachment: SealedAttachment) -> bool:
        """Whether the record's signed note lists the attachment (its ids are not sealed:
        no need to open anything to know)."""
        header = await self.store.get_record(attachment.record_id)
        if header is None or not header.signed:
            return False
        signed = await self.store.record_versions([header.versions[header.signed_version - 1]])
        return bool(signed) and attachment.id in signed[0].attachment_ids

    async def _current(self, header: RecordHeader) -> Version | None:
        """The latest version, opened alone (before signing, every version is a note)."""
        if not header.versions:
            return None
        chart = await self._open(header, patient_reader=False, latest_only=True)
        return chart.latest_note

    async def _current_attachments(self, header: RecordHeader) -> tuple[str, ...]:
        if not header.versions:
            return ()
        stored = await self.store.record_versions([header.versions[-1]])
        if stored and stored[0].kind is VersionKind.NOTE:
            return stored[0].attachment_ids
        return ()

    async def _new_key(self, patient_id: str, now: datetime) -> DataKey:
        """A fresh data key, stored wrapped by the primary KEK. If a rotation made
        another key primary meanwhile, this key is re-wrapped at once, so a rotation
        that passed it by still leaves the old KEK wrapping nothing."""
        await self._refuse_if_erased(patient_id)
        await asyncio.to_thread(self.sealer.provider.refresh)  # a stat; a read if it changed
        data_key, wrapped = await self._call(self.sealer.new_key, patient_id, now)
        await self.store.add_data_key(wrapped)
        if await self.erased_at(patient_id) is not None:  # erased meanwhile: leave nothing
            await self.store.delete_data_keys(patient_id)
            await self._refuse_if_erased(patient_id)
        await asyncio.to_thread(self.sealer.provider.refresh)
        primary = self.sealer.provider.primary_id()
        if wrapped.kek_id != primary:
            rewrapped: WrappedKey = await self._call(self.sealer.rewrap, wrapped, primary)
            await self.store.rewrap_data_keys([(wrapped, rewrapped)])
        return data_key

    async def _append(
        self,
        actor: Actor,
        header: RecordHeader,
        kind: VersionKind,
        plain: dict[str, bytes],
        attachment_ids: tuple[str, ...],
        *,
        require_signed: bool,
    ) -> RecordHeader:
        """Seal and store the version, then list it on the header by compare and set;
        on a lost race, seal again as the next number (a note carries its number in its
        associated data)."""
        for _ in range(UPDATE_ATTEMPTS):
            if header.signed != require_signed:
                state = "is not signed" if require_signed else "was signed meanwhile"
                raise Conflict(f"record {header.id} {state}")
            number = len(header.versions) + 1
            now = self.clock()
            data_key = await self._new_key(header.patient_id, now)
            fields = {
                name: data_key.seal(Binding(header.id, number, header.patient_id, name), value)
                for name, value in plain.items()
            }
            version = SealedVersion(
                id=new_id(),
                record_id=header.id,
                number=number,
                patient_id=header.patient_id,
                kind=kind,
                author_id=actor.id,
                created_at=now,
                key_id=data_key.id,
                fields=fields,
                attachment_ids=attachment_ids,
            )
            await self.store.add_record_version(version)
            updated = dataclasses.replace(
                header, rev=header.rev + 1, versions=(*header.versions, version.id)
            )
            if await self.store.replace_record(updated):
                return updated
            fresh = await self.store.get_record(header.id)
            if fresh is None:
                raise StoreUnavailable(f"record {header.id} vanished")
            header = fresh
        raise StoreUnavailable(f"record {header.id}: lost {UPDATE_ATTEMPTS} updates in a row")

    async def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Key operations run on a worker thread when the provider blocks (a KMS)."""
        if self.sealer.provider.blocking:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)
