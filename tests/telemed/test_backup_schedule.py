"""Scheduled backups: when they run, what they keep, how a failure shows (admin page,
/metrics), and that the server refuses to start without the backup key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from telemed.app import create_app
from telemed.archive import BackupKeyError, encode_key, new_backup_key
from telemed.backup import verify_archive
from telemed.backup_schedule import LAST_ERROR, LAST_FAILURE, RETRY, BackupSchedule, backup_status
from telemed.errors import StoreUnavailable
from telemed.settings import Settings, StoreSettings
from telemed.store import Store, open_store
from telemed.web.keys import STORE
from tests.conftest import FakeClock, People, login, make_settings
from tests.devices.test_reliability import until

KEY = new_backup_key()


def write_key(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(encode_key(KEY) + "\n")
    path.chmod(0o600)
    return path


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(StoreSettings(url=f"sqlite:///{tmp_path / 's.db'}", database=""))
    yield store
    await store.close()


def schedule(store: Store, clock: FakeClock, tmp_path: Path, key: Path) -> BackupSchedule:
    return BackupSchedule(
        store,
        clock,
        folder=tmp_path / "backups",
        key_file=key,
        interval=timedelta(hours=6),
        keep=2,
    )


async def test_the_newest_backups_are_kept_and_others_files_untouched(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    key = write_key(tmp_path / "backup.key")
    plan = schedule(store, clock, tmp_path, key)
    assert plan.due(await backup_status(store)) == clock()  # none yet: at once
    (tmp_path / "backups").mkdir()
    unrelated = tmp_path / "backups" / "notes.txt"
    unrelated.write_text("the operator's own file")
    made = []
    for _ in range(3):
        path = await plan.run_once()
        assert path is not None
        made.append(path)
        clock.advance(hours=6)
    kept = sorted(p.name for p in (tmp_path / "backups").iterdir())
    assert kept == sorted([made[1].name, made[2].name, "notes.txt"])
    status = await backup_status(store)
    assert status.last_file == made[2].name
    assert not status.failing
    assert plan.due(status) == status.last_success + timedelta(hours=6)  # type: ignore[operator]
    with made[2].open("rb") as file:
        assert verify_archive(file, KEY).counts["users"] == 0


async def test_a_failure_is_recorded_retried_and_leaves_no_file(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    plan = schedule(store, clock, tmp_path, tmp_path / "missing.key")
    assert await plan.run_once() is None
    status = await backup_status(store)
    assert status.failing
    assert "missing.key" in status.last_error
    assert plan.due(status) == clock() + RETRY
    assert not (tmp_path / "backups").exists() or not list((tmp_path / "backups").iterdir())
    # a good one afterwards clears the alarm
    plan.key_file = write_key(tmp_path / "backup.key")
    clock.advance(minutes=20)
    assert await plan.run_once() is not None
    assert not (await backup_status(store)).failing


def backup_settings(tmp_path: Path, mosquitto: int, **env: str) -> Settings:
    return make_settings(tmp_path, mosquitto, TELEMED_BACKUP_INTERVAL_HOURS="24", **env)


async def test_without_its_key_the_server_does_not_start(tmp_path: Path, mosquitto: int) -> None:
    runner = web.AppRunner(create_app(backup_settings(tmp_path, mosquitto)))
    try:
        with pytest.raises(BackupKeyError, match="telemed backup new-key"):
            await runner.setup()
    finally:
        await runner.cleanup()


@pytest.fixture
def settings(tmp_path: Path, mosquitto: int) -> Settings:
    settings = backup_settings(tmp_path, mosquitto)
    write_key(settings.backup_key_file)
    return settings


async def test_the_server_backs_up_on_schedule_and_shows_it(
    client: TestClient,  # type: ignore[type-arg]
    people: People,
    settings: Settings,
) -> None:
    store = client.app[STORE]

    async def backed_up() -> bool:
        return (await backup_status(store)).last_success is not None

    assert await until(backed_up, 30)  # the first backup is due at once
    archives = list(settings.backup_folder.glob("telemed-*.tmbk"))
    assert len(archives) == 1
    metrics = ""

    async def shown() -> bool:  # the schedule puts it on /metrics
        nonlocal metrics
        metrics = await (await client.get("/metrics")).text()
        return "telemed_backup_last_success_timestamp_seconds 0.0" not in metrics

    assert await until(shown, 30)
    assert "telemed_backup_failing 0.0" in metrics
    assert (await login(client, people.admin.email)).status == 302
    page = await (await client.get("/admin")).text()
    assert archives[0].name in page
    assert 'data-testid="backup-failing"' not in page
    with archives[0].open("rb") as file:
        assert set(verify_archive(file, KEY).counts) >= {"users", "audit_log"}


async def test_a_failing_backup_is_shown_to_admins(
    client: TestClient,  # type: ignore[type-arg]
    people: People,
) -> None:
    store = client.app[STORE]

    async def backed_up() -> bool:
        return (await backup_status(store)).last_success is not None

    assert await until(backed_up, 30)
    await store.put_setting(LAST_FAILURE, "2099-01-01T00:00:00.000Z")  # newer than the success
    await store.put_setting(LAST_ERROR, "OSError: [Errno 28] No space left on device")
    assert (await login(client, people.admin.email)).status == 302
    page = await (await client.get("/admin")).text()
    assert 'data-testid="backup-failing"' in page
    assert "No space left on device" in page


async def test_a_store_that_cannot_record_the_failure_does_not_stop_the_schedule(
    store: Store, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = schedule(store, clock, tmp_path, tmp_path / "missing.key")

    async def away(key: str, value: str) -> None:
        raise StoreUnavailable("the store is away")

    monkeypatch.setattr(store, "put_setting", away)
    assert await plan.run_once() is None  # logged, not raised
    assert plan.due(await backup_status(store)) == clock() + RETRY
