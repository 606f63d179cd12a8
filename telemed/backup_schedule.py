"""Scheduled backups: every `backup.interval_hours`, an archive into `backup.folder`,
keeping the newest `backup.keep`. The outcome of each run is kept in the store (clinic
settings), so the admin page and /metrics show the last good backup and the last
failure, whichever process made them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from telemed.archive import load_key_file
from telemed.backup import Manifest, Progress, write_backup
from telemed.clock import Clock, iso, parse_iso
from telemed.errors import TelemedError
from telemed.private_file import publish
from telemed.store import Store

log = logging.getLogger(__name__)

LAST_SUCCESS = "backup.last_success"  # ISO time of the last good backup
LAST_FILE = "backup.last_file"
LAST_FAILURE = "backup.last_failure"  # ISO time of the last failed one
LAST_ERROR = "backup.last_error"  # what went wrong, in one line (never data)
PREFIX = "telemed-"
SUFFIX = ".tmbk"
RETRY = timedelta(minutes=15)  # after a failure, try again this soon


@dataclass(frozen=True, slots=True)
class BackupStatus:
    last_success: datetime | None
    last_file: str
    last_failure: datetime | None
    last_error: str

    @property
    def failing(self) -> bool:
        """The newest attempt failed."""
        return self.last_failure is not None and (
            self.last_success is None or self.last_failure > self.last_success
        )


async def backup_status(store: Store) -> BackupStatus:
    success, failure = await store.get_setting(LAST_SUCCESS), await store.get_setting(LAST_FAILURE)
    return BackupStatus(
        parse_iso(success) if success else None,
        await store.get_setting(LAST_FILE) or "",
        parse_iso(failure) if failure else None,
        await store.get_setting(LAST_ERROR) or "",
    )


def archive_name(now: datetime) -> str:
    return f"{PREFIX}{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z{SUFFIX}"


async def backup_to_file(
    store: Store, path: Path, key: bytes, *, now: datetime, progress: Progress | None = None
) -> Manifest:
    """Write a backup to `path` (mode 0600): to a partial file first, synced, then renamed,
    so a file with the archive's name is always a whole archive. Refuses to replace one."""
    partial = path.parent / f".{path.name}.{secrets.token_hex(4)}.partial"
    fd = await asyncio.to_thread(os.open, partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            manifest = await write_backup(store, out, key, now=now, progress=progress)
            await asyncio.to_thread(out.flush)
            await asyncio.to_thread(os.fsync, out.fileno())
        await asyncio.to_thread(publish, partial, path)
    finally:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
    return manifest


async def record_success(store: Store, now: datetime, path: Path) -> None:
    await store.put_setting(LAST_SUCCESS, iso(now))
    await store.put_setting(LAST_FILE, path.name)


class BackupSchedule:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        folder: Path,
        key_file: Path,
        interval: timedelta,
        keep: int,
        on_status: Callable[[BackupStatus], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.folder = folder
        self.key_file = key_file
        self.interval = interval
        self.keep = keep
        self.on_status = on_status
        self.failed_at: datetime | None = None  # a failure the store could not record

    async def run(self) -> None:
        """Back up whenever one is due, until cancelled."""
        while True:
            try:
                status = await backup_status(self.store)
            except TelemedError as exc:  # the store is away: say so, and look again soon
                log.error("scheduled backups: cannot read their status: %s", exc)
                await asyncio.sleep(RETRY.total_seconds())
                continue
            if self.on_status:
                self.on_status(status)
            due = self.due(status)
            wait = (due - self.clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, 3600))  # wake hourly: another process may back up
                continue
            await self.run_once()

    def due(self, status: BackupStatus) -> datetime:
        if self.failed_at is not None and (
            status.last_success is None or self.failed_at > status.last_success
        ):
            return self.failed_at + RETRY
        if status.failing and status.last_failure is not None:
            return status.last_failure + RETRY
        if status.last_success is None:
            return self.clock()
        return status.last_success + self.interval

    async def run_once(self) -> Path | None:
        """One backup now; its outcome is recorded. Returns the archive, or None."""
        now = self.clock()
        try:
            path = await self._write(now)
            removed = await asyncio.to_thread(self._prune)
        except Exception as exc:  # noqa: BLE001 - any failure is recorded and shown, then retried
            message = f"{type(exc).__name__}: {exc}"[:500]
            log.error("scheduled backup failed: %s", message)
            try:
                await self.store.put_setting(LAST_FAILURE, iso(now))
                await self.store.put_setting(LAST_ERROR, message)
            except TelemedError as store_error:  # logged above; the loop goes on
                log.error("scheduled backup: cannot record the failure: %s", store_error)
                self.failed_at = now
            return None
        try:
            await record_success(self.store, now, path)
        except TelemedError as exc:
            log.error("scheduled backup written but not recorded: %s", exc)
        log.info("scheduled backup written file=%s removed=%d", path.name, removed)
        return path

    async def _write(self, now: datetime) -> Path:
        key = await asyncio.to_thread(load_key_file, self.key_file)
        await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True, mode=0o700)
        final = self.folder / archive_name(now)
        await backup_to_file(self.store, final, key, now=now)
        return final

    def _prune(self) -> int:
        """Keep the newest `keep` archives of this schedule (by their time-stamped names);
        never touch other files."""
        archives = sorted(
            p
            for p in self.folder.iterdir()
            if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX)
        )
        old = archives[: max(0, len(archives) - self.keep)]
        for path in old:
            path.unlink()
        return len(old)
