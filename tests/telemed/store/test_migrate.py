"""`telemed migrate`: a SQLite installation with sealed records copied into MongoDB (the
wire-protocol stand-in, or a real MongoDB when TELEMED_TEST_MONGODB_URI is set),
everything equal afterwards and every record opening there; and a backup made on one
restoring into the other."""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from telemed.archive import new_backup_key
from telemed.backup import Manifest, check_store, restore, write_backup
from telemed.clinic import Clinic
from telemed.key_custody import KeyCustody
from telemed.records_office import RecordsOffice
from telemed.sealing import Sealer
from telemed.settings import StoreSettings
from telemed.snapshot import from_plain
from telemed.store import Store, open_store
from tests.telemed.records_kit import POLICY, Kit, make_kit
from tests.telemed.store.conftest import MONGODB_URI_ENV
from tests.telemed.test_cli import cli_env, run_main

pytestmark = pytest.mark.mongo


@pytest.fixture
def mongo_uri(request: pytest.FixtureRequest) -> str:
    uri = os.environ.get(MONGODB_URI_ENV, "")
    return uri or str(request.getfixturevalue("nx_uri"))


@pytest.fixture
def database(mongo_uri: str) -> Iterator[str]:
    name = f"telemed_migrate_{uuid.uuid4().hex}"
    yield name
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5_000) as client:
        client.drop_database(name)


async def populated(path: Path, tmp_path: Path) -> tuple[Store, Kit, list[str]]:
    store = await open_store(StoreSettings(url=f"sqlite:///{path}", database=""))
    kit = await make_kit(store, tmp_path / "var" / "keys" / "record-keys.json")
    await KeyCustody(store, Sealer(kit.keys)).verify()
    visits = [await kit.signed_record(), await kit.signed_record(kit.other_patient)]
    return store, kit, visits


async def all_open(store: Store, kit: Kit, visits: list[str]) -> None:
    office = RecordsOffice(Clinic(store, kit.clock), Sealer(kit.keys), POLICY)
    for visit_id in visits:
        chart = await office.chart(kit.actor(kit.doctor), visit_id, history=True)
        assert chart.signed_note is not None
        assert chart.signed_note.note is not None
        assert chart.signed_note.note.prescriptions[0].medication == "Capybaracillin"
        _, body = await office.attachment(kit.actor(kit.doctor), chart.attachments[0].id)
        assert body.startswith(b"%PDF-")


def test_migrate_copies_sqlite_into_mongodb_with_everything_equal(
    tmp_path: Path,
    mongo_uri: str,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command runs its own event loop, as an operator's shell would."""
    env = cli_env(tmp_path / "var")

    async def prepare() -> tuple[Kit, list[str]]:
        source, kit, visits = await populated(tmp_path / "var" / "telemed.db", tmp_path)
        await source.close()
        return kit, visits

    kit, visits = asyncio.run(prepare())
    done = run_main(
        monkeypatch, capsys, env, "migrate", "--to", mongo_uri, "--database", database, "--json"
    )
    assert done.code == 0, done.err
    copied = done.json()
    assert copied["database"] == database
    assert copied["counts"]["record_versions"] == 6
    manifest = from_plain(Manifest, {k: copied[k] for k in Manifest.__dataclass_fields__})

    async def check() -> None:
        target = await open_store(StoreSettings(url=mongo_uri, database=database))
        try:
            await check_store(target, manifest, "MongoDB")
            await all_open(target, kit, visits)
        finally:
            await target.close()

    asyncio.run(check())
    again = run_main(monkeypatch, capsys, env, "migrate", "--to", mongo_uri, "--database", database)
    assert again.code == 2
    assert "not empty" in again.err


async def test_a_backup_of_either_store_restores_into_the_other(
    tmp_path: Path, mongo_uri: str, database: str
) -> None:
    key = new_backup_key()
    sqlite, kit, visits = await populated(tmp_path / "a.db", tmp_path)
    out = io.BytesIO()
    try:
        manifest = await write_backup(sqlite, out, key, now=kit.clock())
    finally:
        await sqlite.close()
    mongo = await open_store(StoreSettings(url=mongo_uri, database=database))
    try:
        out.seek(0)
        await restore(out, key, mongo)
        back = io.BytesIO()
        from_mongo = await write_backup(mongo, back, key, now=kit.clock())
        await all_open(mongo, kit, visits)  # (each read is audited: after the backup)
    finally:
        await mongo.close()
    assert from_mongo.counts == manifest.counts
    assert from_mongo.digests == manifest.digests
    again = await open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'b.db'}", database=""))
    try:
        back.seek(0)
        await restore(back, key, again)
        await all_open(again, kit, visits)
    finally:
        await again.close()
