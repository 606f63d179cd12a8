"""The restore drill on every store adapter: populate every collection (sealed records,
attachments and audit entries included), back up while writes go on, restore into an
empty database, compare every collection, verify the audit chain, open every record."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from telemed.archive import new_backup_key
from telemed.audit import AuditEvent, Outcome, averify
from telemed.backup import check_store, restore, verify_archive, write_backup
from telemed.clinic import Clinic
from telemed.records_office import RecordsOffice
from telemed.sealing import Sealer
from telemed.snapshot import COLLECTIONS
from tests.telemed.records_kit import POLICY
from tests.telemed.store.conftest import Backend
from tests.telemed.test_backup import populate


async def test_the_restore_drill(backend: Backend, other_backend: Backend, tmp_path: Path) -> None:
    key = new_backup_key()
    store = await backend.open()
    kit = await populate(store, tmp_path / "keys" / "k.json")
    counts = await store.backup_counts()
    assert [name for name in COLLECTIONS if not counts[name]] == []

    # the server goes on writing, through its own connection, while the backup reads
    server = await backend.open()
    stop = asyncio.Event()
    written = 0

    async def keep_writing() -> None:
        nonlocal written
        while not stop.is_set():
            event = AuditEvent(kit.clock(), "system", "system", "test.write", Outcome.SUCCESS, "t")
            await server.append_audit(event)
            written += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(keep_writing())
    out = io.BytesIO()
    try:
        manifest = await write_backup(store, out, key, now=kit.clock())
    finally:
        stop.set()
        await task
    assert written > 0
    assert manifest.counts["audit_log"] >= counts["audit_log"]
    out.seek(0)
    assert verify_archive(out, key) == manifest

    target = await other_backend.open()  # the wiped machine: an empty database
    assert not any((await target.backup_counts()).values())
    out.seek(0)
    await restore(out, key, target)
    await check_store(target, manifest, "the restored store")  # every collection compared
    verdict = await averify(target.audit_records())
    assert verdict.ok
    assert (verdict.head_seq, verdict.head_hash) == (
        manifest.audit_head_seq,
        manifest.audit_head_hash,
    )
    office = RecordsOffice(Clinic(target, kit.clock), Sealer(kit.keys), POLICY)
    opened = 0
    for patient in (kit.patient, kit.other_patient):
        for header in await target.list_records(patient.id):
            chart = await office.chart(kit.actor(kit.doctor), header.id, history=True)
            assert chart.signed_note is not None
            for attachment in chart.attachments:
                _, body = await office.attachment(kit.actor(kit.doctor), attachment.id)
                assert body.startswith(b"%PDF-")
            opened += 1
    assert opened == manifest.counts["records"] == 2
