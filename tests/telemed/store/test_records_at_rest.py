"""Records at rest, on every store adapter: a raw dump holds none of a record's
plaintext, and erasing a patient (crypto-shredding) leaves nothing anyone can open."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from bson import BSON

from telemed.audit import Outcome
from telemed.errors import Forbidden
from telemed.records_office import RecordUnreadable
from telemed.store import Store
from telemed.store.mongo import MongoStore
from telemed.store.sqlite import SqliteStore
from tests.telemed.records_kit import SECRET_WORDS, make_kit


def _file_bytes(path: Path) -> bytes:
    parts = [path.read_bytes()]
    for suffix in ("-wal", "-journal"):
        extra = Path(f"{path}{suffix}")
        if extra.exists():
            parts.append(extra.read_bytes())
    return b"".join(parts)


async def raw_dump(store: Store) -> bytes:
    """Every byte the store keeps: the SQLite file and its WAL, or every document of
    every collection as BSON."""
    if isinstance(store, SqliteStore):
        return await asyncio.to_thread(_file_bytes, store.path)
    assert isinstance(store, MongoStore)
    db: Any = store._db  # the test reads what the adapter wrote, as an attacker would
    chunks: list[bytes] = []
    for name in await db.list_collection_names():
        async for doc in db[name].find({}):
            chunks.append(BSON.encode(doc))
    return b"".join(chunks)


async def test_a_raw_dump_holds_no_plaintext_of_a_record(store: Store, tmp_path: Path) -> None:
    kit = await make_kit(store, tmp_path / "keys" / "k.json")
    visit_id = await kit.signed_record()
    # the record is really there: opened, it holds every word the dump must not
    chart = await kit.office.chart(kit.actor(kit.doctor), visit_id, history=True)
    assert chart.signed_note is not None
    assert chart.signed_note.note is not None
    assert chart.signed_note.note.prescriptions[0].medication == "Capybaracillin"
    _, body = await kit.office.attachment(kit.actor(kit.doctor), chart.attachments[0].id)
    assert b"Tapirscan" in body
    dump = await raw_dump(store)
    assert len(dump) > 10_000
    for word in SECRET_WORDS:
        assert word not in dump, word
        assert word.lower() not in dump.lower(), word


async def test_erasing_a_patient_leaves_nothing_that_opens(store: Store, tmp_path: Path) -> None:
    kit = await make_kit(store, tmp_path / "keys" / "k.json")
    erased = await kit.signed_record()
    kept = await kit.signed_record(kit.other_patient)
    doctor = kit.actor(kit.doctor)
    attachment_id = (await kit.office.chart(doctor, erased)).attachments[0].id
    wrapped = [k.wrapped for k in (await store.data_keys_under(kit.keys.primary_id()))]

    with pytest.raises(Forbidden):  # a clinician cannot erase
        await kit.office.erase_patient(doctor, kit.patient.id, "request REQ-1")
    destroyed = await kit.office.erase_patient(
        kit.actor(kit.admin), kit.patient.id, "erasure request REQ-2026-118"
    )
    assert destroyed == 4  # two note versions, an addendum, an attachment

    for reader in (doctor, kit.actor(kit.patient)):
        with pytest.raises(RecordUnreadable) as refused:
            await kit.office.chart(reader, erased)
        assert refused.value.erased
        assert "erased" in str(refused.value)
    with pytest.raises(RecordUnreadable):
        await kit.office.attachment(doctor, attachment_id)
    # the other patient's record still opens
    assert (await kit.office.chart(doctor, kept)).header.signed
    assert await store.count_data_keys() == {kit.keys.primary_id(): 4}
    # audited, with the request named
    entries = [r.event async for r in store.audit_records(patient_id=kit.patient.id)]
    erase = [e for e in entries if e.action == "patient.erase"]
    assert [e.outcome for e in erase] == [Outcome.DENIED, Outcome.SUCCESS]
    assert "REQ-2026-118" in erase[1].detail
    # the destroyed keys' bytes are gone from the store's files as well (SQLite:
    # secure_delete and a WAL checkpoint; MongoDB keeps deleted bytes until compaction,
    # which README says)
    if isinstance(store, SqliteStore):
        dump = await raw_dump(store)
        kept_keys = {k.wrapped for k in await store.data_keys_under(kit.keys.primary_id())}
        for blob in wrapped:
            if blob not in kept_keys:
                assert blob not in dump
