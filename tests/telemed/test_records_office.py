"""The records office on SQLite: versions, signing, addenda, attachments, and key
rotation (under concurrent writes, interrupted then resumed). Access by role through
HTTP is in test_records_api.py; the raw dump and erasure on every adapter in
store/test_records_at_rest.py."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from telemed.audit import Outcome
from telemed.errors import Conflict, Forbidden, NotFound, ValidationError
from telemed.key_custody import KeyCustody
from telemed.keyring import KeyFile, KeyringError
from telemed.records import VersionKind, note_from_json
from telemed.records_office import RecordsOffice, RecordUnreadable
from telemed.sealing import Sealer, WrappedKey
from telemed.settings import StoreSettings
from telemed.store import Store, open_store
from tests.telemed.records_kit import ATTACHMENT, NOTE, PNG, POLICY, Kit, make_kit


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'r.db'}", database=""))
    yield store
    await store.close()


@pytest_asyncio.fixture
async def kit(store: Store, tmp_path: Path) -> Kit:
    return await make_kit(store, tmp_path / "keys" / "k.json")


async def test_each_save_appends_a_version_and_history_keeps_them_all(kit: Kit) -> None:
    doctor = kit.actor(kit.doctor)
    visit_id = await kit.visit()
    first = note_from_json(NOTE)
    await kit.office.save_note(doctor, visit_id, first)
    second = dataclasses.replace(first, plan="Come back in a week")
    chart = await kit.office.save_note(doctor, visit_id, second, base_version=1)
    assert [v.number for v in chart.versions] == [1, 2]
    assert chart.versions[0].note == first
    assert chart.versions[1].note == second
    # an edit made from version 1 after version 2 exists is refused, nothing appended
    with pytest.raises(Conflict, match="version 2, not 1"):
        await kit.office.save_note(doctor, visit_id, first, base_version=1)
    assert len((await kit.store.get_record(visit_id)).versions) == 2  # type: ignore[union-attr]


async def test_signing_freezes_the_note_and_only_addenda_follow(kit: Kit) -> None:
    doctor, nurse = kit.actor(kit.doctor), kit.actor(kit.nurse)
    visit_id = await kit.visit()
    with pytest.raises(ValidationError, match="no note to sign"):
        await kit.office.sign(doctor, visit_id, 1)
    await kit.office.save_note(doctor, visit_id, note_from_json(NOTE))
    await kit.office.save_note(nurse, visit_id, note_from_json({**NOTE, "plan": "x"}))
    with pytest.raises(Conflict, match="read the latest"):
        await kit.office.sign(doctor, visit_id, 1)
    with pytest.raises(Forbidden, match="only a doctor"):
        await kit.office.sign(nurse, visit_id, 2)
    with pytest.raises(ValidationError, match="not signed yet"):
        await kit.office.add_addendum(doctor, visit_id, "too early")
    chart = await kit.office.sign(doctor, visit_id, 2)
    assert chart.header.signed_version == 2
    assert chart.header.signed_by == kit.doctor.id
    with pytest.raises(ValidationError, match="signed already"):
        await kit.office.sign(doctor, visit_id, 2)
    with pytest.raises(ValidationError, match="add an addendum"):
        await kit.office.save_note(doctor, visit_id, note_from_json(NOTE))
    with pytest.raises(ValidationError, match="before signing"):
        await kit.office.attach(doctor, visit_id, "a.png", "image/png", PNG)
    chart = await kit.office.add_addendum(nurse, visit_id, "Called back: better")
    assert [v.kind for v in chart.versions] == [VersionKind.NOTE] * 2 + [VersionKind.ADDENDUM]
    assert chart.signed_note is not None
    assert chart.signed_note.note is not None
    assert chart.signed_note.note.plan == "x"
    # the patient reads the signed note and the addendum, never the first draft
    seen = await kit.office.chart(kit.actor(kit.patient), visit_id)
    assert [v.number for v in seen.versions] == [2, 3]


async def test_attachments_are_checked_and_sealed_apart(kit: Kit) -> None:
    doctor = kit.actor(kit.doctor)
    visit_id = await kit.visit()
    await kit.office.save_note(doctor, visit_id, note_from_json(NOTE))
    with pytest.raises(ValidationError, match="content_type"):
        await kit.office.attach(doctor, visit_id, "a.gif", "image/gif", b"GIF89a")
    with pytest.raises(ValidationError, match="not application/pdf"):
        await kit.office.attach(doctor, visit_id, "a.pdf", "application/pdf", PNG)
    with pytest.raises(ValidationError, match="larger than 64 KiB"):
        await kit.office.attach(doctor, visit_id, "big.pdf", "application/pdf", b"%PDF-" * 20_000)
    assert await kit.store.list_attachments(visit_id) == []
    made = await kit.office.attach(doctor, visit_id, "../scan.pdf", "application/pdf", ATTACHMENT)
    assert made.name == ".._scan.pdf"
    chart = await kit.office.chart(doctor, visit_id)
    # the note kept its content and gained the file, as version 2
    assert chart.latest_note is not None
    assert chart.latest_note.number == 2
    assert chart.latest_note.note == note_from_json(NOTE)
    assert chart.latest_note.attachment_ids == (made.id,)
    meta, body = await kit.office.attachment(doctor, made.id)
    assert body == ATTACHMENT
    assert meta.content_type == "application/pdf"
    # the patient cannot fetch it before the record is signed
    with pytest.raises(NotFound, match="does not exist"):
        await kit.office.attachment(kit.actor(kit.patient), made.id)
    # once signed, it is theirs to read
    await kit.office.sign(doctor, visit_id, 2)
    _, theirs = await kit.office.attachment(kit.actor(kit.patient), made.id)
    assert theirs == ATTACHMENT


async def test_every_read_write_and_refusal_is_audited(kit: Kit) -> None:
    visit_id = await kit.signed_record()
    with pytest.raises(Forbidden):
        await kit.office.chart(kit.actor(kit.outsider), visit_id)
    with pytest.raises(Forbidden):
        await kit.office.chart(kit.actor(kit.admin), visit_id)
    with pytest.raises(Forbidden):
        await kit.office.save_note(kit.actor(kit.patient), visit_id, note_from_json(NOTE))
    entries = [r.event async for r in kit.store.audit_records(patient_id=kit.patient.id)]
    seen = [
        (e.action, e.actor_id, e.outcome)
        for e in entries
        if e.action.startswith(("record", "attachment"))
    ]
    assert ("record.write", kit.doctor.id, Outcome.SUCCESS) in seen
    assert ("attachment.write", kit.doctor.id, Outcome.SUCCESS) in seen
    assert ("record.sign", kit.doctor.id, Outcome.SUCCESS) in seen
    assert ("record.addendum", kit.doctor.id, Outcome.SUCCESS) in seen
    assert ("record.read", kit.outsider.id, Outcome.DENIED) in seen
    assert ("record.read", kit.admin.id, Outcome.DENIED) in seen
    assert ("record.write", kit.patient.id, Outcome.DENIED) in seen
    for e in entries:  # no clinical content in the log
        assert "Capybaracillin" not in e.detail
        assert "Zebracough" not in e.detail


async def test_break_glass_is_timed_stated_and_read_only(kit: Kit) -> None:
    visit_id = await kit.signed_record()
    admin = kit.actor(kit.admin)
    with pytest.raises(ValidationError, match="reason"):
        await kit.office.break_glass(admin, kit.patient.id, "because")
    with pytest.raises(Forbidden):
        await kit.office.break_glass(kit.actor(kit.doctor), kit.patient.id, "I want to see it")
    grant = await kit.office.break_glass(
        admin, kit.patient.id, "Unconscious in the ER, no team reachable"
    )
    chart = await kit.office.chart(admin, visit_id, history=True)
    assert chart.header.signed
    assert len(chart.versions) == 3
    with pytest.raises(Forbidden):  # reads, never writes
        await kit.office.add_addendum(admin, visit_id, "admin note")
    with pytest.raises(Forbidden):  # one patient only
        await kit.office.chart(admin, await kit.signed_record(kit.other_patient))
    # shown to the care team
    shown = await kit.office.break_glass_grants(kit.actor(kit.nurse), kit.patient.id)
    assert [g.id for g in shown] == [grant.id]
    with pytest.raises(Forbidden):
        await kit.office.break_glass_grants(kit.actor(kit.outsider), kit.patient.id)
    entries = [r.event async for r in kit.store.audit_records(patient_id=kit.patient.id)]
    assert any(e.action == "record.history" and grant.id in e.detail for e in entries)
    kit.clock.advance(minutes=61)
    with pytest.raises(Forbidden):
        await kit.office.chart(admin, visit_id)


async def _all_open(kit: Kit, visit_ids: list[str]) -> None:
    for visit_id in visit_ids:
        chart = await kit.office.chart(kit.actor(kit.doctor), visit_id, history=True)
        assert chart.versions
        assert chart.versions[0].note is not None


async def test_rotation_under_concurrent_writes_leaves_the_old_key_wrapping_nothing(
    kit: Kit, store: Store, tmp_path: Path
) -> None:
    old = kit.keys.primary_id()
    doctor = kit.actor(kit.doctor)
    visits = [await kit.visit() for _ in range(6)]
    for visit_id in visits:
        for _ in range(3):
            await kit.office.save_note(doctor, visit_id, note_from_json(NOTE))
    # enough data keys that the rotation takes many batches
    sealer = Sealer(kit.keys)
    for _ in range(3):
        for _ in range(1000):
            _, wrapped = sealer.new_key(kit.patient.id, kit.clock())
            await store.add_data_key(wrapped)
    # the rotation runs as the CLI would: its own key file reader and store connection
    cli_keys = KeyFile(kit.keys.path)
    cli_keys.load()
    cli_store = await open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'r.db'}", database=""))
    custody = KeyCustody(cli_store, Sealer(cli_keys))
    rotating = asyncio.Event()
    batches = 0

    def progress(done: int, total: int) -> None:
        nonlocal batches
        batches += 1
        rotating.set()

    written: list[str] = []
    wrote = asyncio.Event()

    async def keep_writing() -> None:
        while True:  # until cancelled: save notes through the "server's" office
            visit_id = visits[len(written) % len(visits)]
            await kit.office.save_note(doctor, visit_id, note_from_json(NOTE))
            written.append(visit_id)
            wrote.set()
            await asyncio.sleep(0)

    # Once the rotation is under way, its next batch waits for a note saved meanwhile:
    # the writes land in the middle of it however fast or slow the machine is.
    real_batch = cli_store.data_keys_under

    async def batch_after_a_write(*args: Any, **kwargs: Any) -> Any:
        if batches:
            async with asyncio.timeout(60):  # a writer that fails ends the test, not hangs it
                await wrote.wait()
        return await real_batch(*args, **kwargs)

    cli_store.data_keys_under = batch_after_a_write  # type: ignore[method-assign]

    writer = asyncio.create_task(keep_writing())
    try:
        rotation = await custody.rotate(
            add=True, now_key=lambda: cli_keys.add_primary(kit.clock()), progress=progress
        )
    finally:
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        await cli_store.close()
    assert batches > 3
    assert len(written) > 0
    assert rotation.added
    assert rotation.primary != old
    counts = await store.count_data_keys()
    assert counts.get(old, 0) == 0
    # every key made is under the new key, plus perhaps one of a save the cancel cut short
    assert counts[rotation.primary] - (6 * 3 + 3000 + len(written)) in (0, 1)
    await _all_open(kit, visits)
    # the old key can go now, and everything still opens without it
    await KeyCustody(store, Sealer(kit.keys)).remove(old, forget=kit.keys.remove)
    assert kit.keys.key_ids() == [rotation.primary]
    await _all_open(kit, visits)


async def test_an_interrupted_rotation_resumes_where_it_stopped(kit: Kit, store: Store) -> None:
    old = kit.keys.primary_id()
    doctor = kit.actor(kit.doctor)
    visits = [await kit.visit() for _ in range(3)]
    for visit_id in visits:
        await kit.office.save_note(doctor, visit_id, note_from_json(NOTE))
    sealer = Sealer(kit.keys)
    for _ in range(2500):
        _, wrapped = sealer.new_key(kit.patient.id, kit.clock())
        await store.add_data_key(wrapped)
    custody = KeyCustody(store, sealer)

    class Interrupted(Exception):
        pass

    def stop_after_first_batch(done: int, total: int) -> None:
        if done >= 1000:
            raise Interrupted

    with pytest.raises(Interrupted):
        await custody.rotate(
            add=True,
            now_key=lambda: kit.keys.add_primary(kit.clock()),
            progress=stop_after_first_batch,
        )
    new = kit.keys.primary_id()
    counts = await store.count_data_keys()
    assert counts[new] == 1000
    assert counts[old] == 1503
    await _all_open(kit, visits)  # half-way, every record opens (both keys held)
    with pytest.raises(KeyringError, match="still wraps 1503"):
        await custody.remove(old, forget=kit.keys.remove)
    resumed = await custody.rotate(add=False)
    assert not resumed.added
    assert resumed.primary == new
    assert resumed.rewrapped == 1503
    assert await store.count_data_keys() == {new: 2503}
    await custody.remove(old, forget=kit.keys.remove)
    with pytest.raises(KeyringError, match="primary"):
        await custody.remove(new, forget=kit.keys.remove)
    await _all_open(kit, visits)


async def test_a_version_moved_to_another_record_does_not_open(kit: Kit, store: Store) -> None:
    doctor = kit.actor(kit.doctor)
    first, second = await kit.visit(), await kit.visit()
    await kit.office.save_note(doctor, first, note_from_json(NOTE))
    await kit.office.save_note(doctor, second, note_from_json({**NOTE, "plan": "other"}))
    a, b = await store.get_record(first), await store.get_record(second)
    assert a is not None
    assert b is not None
    # an attacker with write access to the store lists A's version under record B
    forged = dataclasses.replace(b, rev=b.rev + 1, versions=a.versions)
    assert await store.replace_record(forged)
    with pytest.raises(Exception, match="does not open"):
        await kit.office.chart(doctor, second)


async def test_a_missing_key_refuses_the_read_with_a_clear_message(
    kit: Kit, store: Store, tmp_path: Path
) -> None:
    visit_id = await kit.signed_record()
    stranger = KeyFile(tmp_path / "other" / "k.json")
    stranger.create(kit.clock())
    office = RecordsOffice(kit.clinic, Sealer(stranger), POLICY)
    with pytest.raises(Exception, match="is not in key file"):
        await office.chart(kit.actor(kit.doctor), visit_id)


async def test_the_history_is_the_care_teams(kit: Kit) -> None:
    visit_id = await kit.signed_record()
    with pytest.raises(Forbidden, match="history"):
        await kit.office.chart(kit.actor(kit.patient), visit_id, history=True)
    entries = [r.event async for r in kit.store.audit_records(patient_id=kit.patient.id)]
    assert any(e.action == "record.history" and e.outcome is Outcome.DENIED for e in entries)


async def test_nothing_is_written_for_an_erased_patient(kit: Kit, store: Store) -> None:
    visit_id = await kit.signed_record()
    fresh = await kit.visit()
    await kit.office.erase_patient(kit.actor(kit.admin), kit.patient.id, "request REQ-7")
    doctor = kit.actor(kit.doctor)
    for write in (
        kit.office.save_note(doctor, fresh, note_from_json(NOTE)),
        kit.office.add_addendum(doctor, visit_id, "more"),
        kit.office.attach(doctor, fresh, "a.png", "image/png", PNG),
        kit.office.check_write(doctor, fresh, "attachment.write"),
    ):
        with pytest.raises(RecordUnreadable, match="erased") as refused:
            await write
        assert refused.value.erased
    assert await store.count_data_keys() == {}
    assert await store.get_record(fresh) is None
    with pytest.raises(RecordUnreadable, match="erased"):
        await kit.office.charts_of_patient(doctor, kit.patient.id)


async def test_a_writer_that_missed_the_erasure_destroys_its_own_key(
    kit: Kit, store: Store
) -> None:
    """The erasure lands between a writer's check and its data key: the writer finds the
    mark after storing its key, destroys it, and refuses."""
    fresh = await kit.visit()
    real_add = store.add_data_key

    async def add_then_erase(key: WrappedKey) -> None:
        await real_add(key)
        await store.put_setting("erased:" + kit.patient.id, "2026-11-29T09:00:00.000Z")

    store.add_data_key = add_then_erase  # type: ignore[method-assign]
    with pytest.raises(RecordUnreadable, match="erased"):
        await kit.office.save_note(kit.actor(kit.doctor), fresh, note_from_json(NOTE))
    assert await store.count_data_keys() == {}


def test_a_note_that_does_not_follow_its_layout_is_refused_without_quoting_it() -> None:
    from telemed.records import NOTE_FIELD, NoteLayoutError, _pack, note_from_fields

    # a note laid out otherwise (a newer server's, say): its text where a count belongs
    blob = _pack(["a", "b", "c", "d", "Zebracough chief complaint"])
    with pytest.raises(NoteLayoutError) as refused:
        note_from_fields({NOTE_FIELD: blob})
    assert "Zebracough" not in str(refused.value)


async def test_a_key_wrapped_while_a_rotation_switched_keys_is_rewrapped_at_once(
    kit: Kit, store: Store
) -> None:
    """A rotation (another process) makes a new key primary between this server's wrap
    and its store: the server re-wraps its own key, so the old key still wraps nothing
    once the rotation has passed it by."""
    old = kit.keys.primary_id()
    rotation = KeyFile(kit.keys.path)
    rotation.load()
    real_add = store.add_data_key
    switched: list[str] = []

    async def add_while_rotating(key: WrappedKey) -> None:
        await real_add(key)  # wrapped under the old primary
        if not switched:
            switched.append(rotation.add_primary(kit.clock()))

    store.add_data_key = add_while_rotating  # type: ignore[method-assign]
    visit_id = await kit.visit()
    await kit.office.save_note(kit.actor(kit.doctor), visit_id, note_from_json(NOTE))
    assert switched
    assert await store.count_data_keys() == {switched[0]: 1}
    assert old not in await store.count_data_keys()
    await _all_open(kit, [visit_id])


async def test_a_call_recording_is_sealed_and_attached_under_its_own_limit(kit: Kit) -> None:
    doctor = kit.actor(kit.doctor)
    visit_id = await kit.visit()
    webm = b"\x1a\x45\xdf\xa3" + b"a recorded call, cluster after cluster" * 4000  # > 64 KiB
    with pytest.raises(ValidationError, match="not video/webm"):
        await kit.office.attach_recording(doctor, visit_id, "patient.webm", PNG)
    with pytest.raises(Forbidden):
        await kit.office.attach_recording(kit.actor(kit.patient), visit_id, "p.webm", webm)
    made = await kit.office.attach_recording(doctor, visit_id, "recording-patient.webm", webm)
    assert made.content_type == "video/webm"
    meta, body = await kit.office.attachment(doctor, made.id)
    assert body == webm
    stored = await kit.store.get_attachment(made.id)
    assert stored is not None
    assert b"recorded call" not in stored.body
    small = dataclasses.replace(kit.office.policy, recording_max_bytes=1024)
    kit.office.policy = small
    with pytest.raises(ValidationError, match="larger than 1 KiB"):
        await kit.office.attach_recording(doctor, visit_id, "p.webm", webm)
