"""Backups on SQLite: a restore drill while writes go on, and every way a bad archive is
refused. The same drill on every adapter, and across them, is in
tests/telemed/store/test_backup_drill.py."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from telemed.archive import NewerFormat, Tampered, Truncated, WrongKey, new_backup_key
from telemed.audit import AuditEvent, Outcome
from telemed.backup import BackupError, check_store, restore, verify_archive, write_backup
from telemed.key_custody import KeyCustody
from telemed.monitoring import (
    Alert,
    AlertState,
    CheckIn,
    Device,
    MonitoringPlan,
    Observation,
    Severity,
    Threshold,
)
from telemed.records import note_from_json
from telemed.sealing import Sealer
from telemed.settings import StoreSettings
from telemed.snapshot import COLLECTIONS
from telemed.store import Store, open_store
from telemed.tokens import ApiToken
from tests.telemed.records_kit import NOTE, Kit, make_kit

KEY = new_backup_key()


async def sqlite_store(path: Path) -> Store:
    return await open_store(StoreSettings(url=f"sqlite:///{path}", database=""))


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await sqlite_store(tmp_path / "source.db")
    yield store
    await store.close()


@pytest_asyncio.fixture
async def kit(store: Store, tmp_path: Path) -> Kit:
    return await populate(store, tmp_path / "keys" / "k.json")


async def populate(store: Store, key_path: Path) -> Kit:
    """A clinic with something in every collection a backup holds."""
    kit = await make_kit(store, key_path)
    await KeyCustody(store, Sealer(kit.keys)).verify()  # as start-up does: the key checks
    await kit.signed_record()
    await kit.signed_record(kit.other_patient)
    await kit.office.break_glass(
        kit.actor(kit.admin), kit.patient.id, "Unconscious in the ER, team unreachable"
    )
    start = kit.clock()
    pid = kit.patient.id
    await store.add_token(ApiToken("tok-1", kit.doctor.id, "EHR bridge", "h" * 64, start))
    await store.put_setting("waiting_message", "Back in five minutes")
    await store.add_device(Device("dev-0", pid, "pulse-oximeter", start))
    await store.add_device(Device("dev-9", pid, "bp-cuff", start, revoked_at=start))
    await store.set_device_presence("dev-0", True, start)
    await store.put_monitoring_plan(
        MonitoringPlan(
            pid,
            {"8867-4": Threshold(low=40.0, high=130.0)},
            2,
            timedelta(minutes=15),
            timedelta(minutes=10),
            kit.doctor.id,
            start,
        )
    )
    await store.add_check_in(CheckIn("ci-1", pid, start, kit.nurse.id, "nurse", "A", False))
    await store.add_alert(
        Alert(
            "al-1",
            pid,
            "news2",
            Severity.HIGH,
            AlertState.OPEN,
            start,
            start,
            "NEWS2 7",
            score=7,
        )
    )
    await store.add_observations(
        [
            Observation(
                kit.patient.id,
                f"dev-{d}",
                code,
                60.0 + i,
                "/min",
                start + timedelta(seconds=i),
                start,
            )
            for d in range(3)
            for code in ("8867-4", "59408-5")
            for i in range(200)
        ]
    )
    return kit


async def backup_bytes(store: Store, kit: Kit) -> bytes:
    out = io.BytesIO()
    await write_backup(store, out, KEY, now=kit.clock())
    return out.getvalue()


async def test_a_restore_drill_while_the_server_keeps_writing(
    kit: Kit, store: Store, tmp_path: Path
) -> None:
    before = await store.backup_counts()
    assert [name for name in COLLECTIONS if not before[name]] == []
    # the server goes on writing while the backup reads its own connection's snapshot
    writer_store = await sqlite_store(tmp_path / "source.db")
    stop = asyncio.Event()
    written = 0

    async def keep_writing() -> None:
        nonlocal written
        while not stop.is_set():
            await writer_store.append_audit(
                AuditEvent(kit.clock(), "system", "system", "test.write", Outcome.SUCCESS, "test")
            )
            written += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(keep_writing())
    try:
        out = io.BytesIO()
        manifest = await write_backup(store, out, KEY, now=kit.clock())
    finally:
        stop.set()
        await task
        await writer_store.close()
    assert written > 0
    # the snapshot: what the manifest counts is one point in time, the audit chain whole
    assert manifest.point_in_time
    assert manifest.counts["observations"] == 1200
    assert manifest.counts["audit_log"] >= before["audit_log"]
    # wipe: restore into a new, empty store
    out.seek(0)
    assert verify_archive(out, KEY) == manifest
    target = await sqlite_store(tmp_path / "restored.db")
    try:
        out.seek(0)
        restored = await restore(out, KEY, target, progress=lambda done, total: None)
        assert restored == manifest
        await check_store(target, manifest, "again")
        # every record opens with the key-encryption keys, restored apart
        from telemed.clinic import Clinic
        from telemed.records_office import RecordsOffice
        from telemed.sealing import Sealer
        from tests.telemed.records_kit import POLICY

        office = RecordsOffice(Clinic(target, kit.clock), Sealer(kit.keys), POLICY)
        for header in [
            *await target.list_records(kit.patient.id),
            *await target.list_records(kit.other_patient.id),
        ]:
            chart = await office.chart(kit.actor(kit.doctor), header.id, history=True)
            assert chart.signed_note is not None
            assert chart.signed_note.note is not None
            assert chart.signed_note.note.prescriptions[0].medication == "Capybaracillin"
            for attachment in chart.attachments:
                _, body = await office.attachment(kit.actor(kit.doctor), attachment.id)
                assert body.startswith(b"%PDF-")
        # a restored store is not empty: a second restore is refused
        out.seek(0)
        with pytest.raises(BackupError, match="not empty"):
            await restore(out, KEY, target)
    finally:
        await target.close()


async def test_a_wrong_key_a_tampered_or_cut_archive_is_refused(
    kit: Kit, store: Store, tmp_path: Path
) -> None:
    good = await backup_bytes(store, kit)
    with pytest.raises(WrongKey):
        verify_archive(io.BytesIO(good), new_backup_key())
    middle = len(good) // 2
    flipped = good[:middle] + bytes([good[middle] ^ 0x01]) + good[middle + 1 :]
    with pytest.raises((Tampered, WrongKey)):
        verify_archive(io.BytesIO(flipped), KEY)
    for cut in (len(good) - 1, middle, 200):
        with pytest.raises((Truncated, Tampered)):
            verify_archive(io.BytesIO(good[:cut]), KEY)
    newer = good.replace(b'"format":1', b'"format":2', 1)
    assert newer != good
    with pytest.raises(NewerFormat):
        verify_archive(io.BytesIO(newer), KEY)
    # nothing is half-restored silently: a cut archive fails the restore loudly
    target = await sqlite_store(tmp_path / "cut.db")
    try:
        with pytest.raises((Truncated, Tampered)):
            await restore(io.BytesIO(good[:middle]), KEY, target)
    finally:
        await target.close()


async def test_a_store_changed_after_restore_no_longer_matches(
    kit: Kit, store: Store, tmp_path: Path
) -> None:
    out = io.BytesIO()
    manifest = await write_backup(store, out, KEY, now=kit.clock())
    await kit.office.save_note(kit.actor(kit.doctor), await kit.visit(), note_from_json(NOTE))
    with pytest.raises(BackupError, match="visits holds 3 documents, the manifest 2"):
        await check_store(store, manifest, "the store")
