"""Backups: write, verify and restore an encrypted archive of the whole store.

An archive (the container is `telemed.archive`: AES-256-GCM chunks under the operator's
backup key) holds, as its records, JSON lines:
- first, how many documents are coming (`{"expected": N}`, for a restore's progress);
- one batch of documents per line: `{"c": collection, "docs": [...]}`, the documents as
  `telemed.snapshot` makes them, collection after collection in `COLLECTIONS` order;
- the manifest, last: format, server version, store kind, whether the store was read at
  one point in time, counts and order-free digests per collection, and the audit
  chain's head.

Verifying reads the whole archive (every chunk's tag), recounts and re-digests every
collection against the manifest, and replays the audit chain. Restoring loads every
batch into an empty store, then reads the store back and checks the same counts,
digests and chain: a restore that does not match is reported, never left silent. The
key-encryption keys are not in a backup (they are never in the store); sealed records
and attachments travel sealed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

from telemed import __version__
from telemed.archive import ArchiveReader, ArchiveWriter
from telemed.audit import GENESIS, ChainChecker
from telemed.clock import iso
from telemed.errors import TelemedError
from telemed.snapshot import COLLECTIONS, FORMAT, Digest, canonical, from_plain, to_plain
from telemed.store import Store

log = logging.getLogger(__name__)

BATCH = 1000
Progress = Callable[[int, int], None]  # (documents done, documents in all)


class BackupError(TelemedError):
    """The archive's content is not what its manifest says, or the restore did not end
    as the backup began; the message says which collection and how."""


@dataclass(frozen=True, slots=True)
class Manifest:
    format: int
    server_version: str
    created_at: str
    store_kind: str
    point_in_time: bool
    counts: dict[str, int]
    digests: dict[str, str]
    audit_head_seq: int
    audit_head_hash: str

    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Tally:
    """Counts, digests and the audit chain of documents as they go by."""

    digests: dict[str, Digest] = field(default_factory=lambda: {c: Digest() for c in COLLECTIONS})
    chain: ChainChecker = field(default_factory=ChainChecker)
    head: tuple[int, str] = (0, GENESIS)

    def add(self, collection: str, lines: list[bytes], objects: list[Any] | None = None) -> None:
        digest = self.digests[collection]
        for line in lines:
            digest.add(line)
        if collection == "audit_log" and objects:
            for record in objects:
                self.chain.feed(record)
            self.head = (objects[-1].seq, objects[-1].hash)

    def counts(self) -> dict[str, int]:
        return {c: d.count for c, d in self.digests.items()}

    def hexes(self) -> dict[str, str]:
        return {c: d.hex for c, d in self.digests.items()}

    def compare(self, manifest: Manifest, where: str) -> None:
        """Raise `BackupError` naming the first collection that differs from `manifest`."""
        for name in COLLECTIONS:
            got, want = self.digests[name].count, manifest.counts.get(name, 0)
            if got != want:
                raise BackupError(f"{where}: {name} holds {got:,} documents, the manifest {want:,}")
            if self.digests[name].hex != manifest.digests.get(name):
                raise BackupError(f"{where}: {name} differs from the manifest (digest)")
        verdict = self.chain.verdict()
        if not verdict.ok:
            raise BackupError(
                f"{where}: the audit chain breaks at entry {verdict.first_bad_seq}: "
                f"{verdict.reason}"
            )
        if self.head != (manifest.audit_head_seq, manifest.audit_head_hash):
            raise BackupError(
                f"{where}: the audit chain ends at entry {self.head[0]}, the manifest at "
                f"{manifest.audit_head_seq}"
            )


def batch_size(collection: str) -> int:
    """Documents per archive record: attachments (up to 15 MiB each) one at a time, so a
    record, and what a backup or a restore holds in memory, stays small."""
    return 1 if collection == "attachments" else BATCH


def _encode(batch: list[Any]) -> list[bytes]:
    return [canonical(to_plain(o)) for o in batch]


def _batch_line(collection: str, lines: list[bytes]) -> bytes:
    return b'{"c":' + json.dumps(collection).encode() + b',"docs":[' + b",".join(lines) + b"]}"


async def write_backup(
    store: Store,
    out: BinaryIO,
    key: bytes,
    *,
    now: datetime,
    progress: Progress | None = None,
) -> Manifest:
    """Write the whole store to `out`, encrypted under `key`, while the server goes on
    writing (at one point in time where the store can; see `Store.snapshot`)."""
    writer = ArchiveWriter(out, key, server_version=__version__, created_at=now)
    tally = Tally()
    done = 0
    async with store.snapshot() as point_in_time:
        totals = await store.backup_counts()
        total = sum(totals.values())
        # first, how much is coming (for a restore's progress; the manifest is the truth)
        await asyncio.to_thread(writer.add, canonical({"expected": total}))
        for name in COLLECTIONS:
            async for batch in store.backup_dump(name, batch=batch_size(name)):
                lines = await asyncio.to_thread(_encode, batch)
                tally.add(name, lines, batch if name == "audit_log" else None)
                await asyncio.to_thread(writer.add, _batch_line(name, lines))
                done += len(lines)
                if progress:
                    progress(done, max(total, done))
    manifest = Manifest(
        format=FORMAT,
        server_version=__version__,
        created_at=iso(now),
        store_kind=store.kind,
        point_in_time=point_in_time,
        counts=tally.counts(),
        digests=tally.hexes(),
        audit_head_seq=tally.head[0],
        audit_head_hash=tally.head[1],
    )
    await asyncio.to_thread(writer.add, canonical({"manifest": to_plain(manifest)}))
    await asyncio.to_thread(writer.finish)
    log.info("backup written documents=%d point_in_time=%s", done, point_in_time)
    return manifest


def _manifest(plain: dict[str, Any]) -> Manifest:
    try:
        manifest: Manifest = from_plain(Manifest, plain)
    except (KeyError, TypeError, ValueError) as exc:
        raise BackupError(f"the manifest is malformed ({exc})") from None
    if manifest.format > FORMAT:
        raise BackupError(
            f"the backup's content format {manifest.format} is newer than this server reads "
            f"({FORMAT}): upgrade the server first"
        )
    return manifest


def read_batches(file: BinaryIO, key: bytes) -> Iterator[int | tuple[str, list[Any]] | Manifest]:
    """How many documents the archive expects (an int, first), its batches as
    (collection, plain documents), then its manifest. The container checks every
    chunk's tag before a record of it is yielded."""
    seen_manifest = False
    for record in ArchiveReader(file, key):
        if seen_manifest:
            raise BackupError("the archive goes on after its manifest")
        try:
            line = json.loads(record)
        except ValueError:
            raise BackupError("a record of the archive is not JSON") from None
        if "expected" in line:
            yield int(line["expected"])
            continue
        if "manifest" in line:
            seen_manifest = True
            yield _manifest(line["manifest"])
            continue
        name = line.get("c")
        if name not in COLLECTIONS or not isinstance(line.get("docs"), list):
            raise BackupError(f"the archive holds an unknown collection {name!r}")
        yield name, line["docs"]
    if not seen_manifest:
        raise BackupError("the archive has no manifest: it was not finished")


def verify_archive(file: BinaryIO, key: bytes, progress: Progress | None = None) -> Manifest:
    """Prove the archive whole, decryptable and true to its manifest, restoring nothing."""
    tally = Tally()
    done = expected = 0
    for item in read_batches(file, key):
        if isinstance(item, int):
            expected = item
            continue
        if isinstance(item, Manifest):
            tally.compare(item, "the archive")
            return item
        name, docs = item
        tp = COLLECTIONS[name]
        objects = [from_plain(tp, d) for d in docs]
        tally.add(name, [canonical(d) for d in docs], objects if name == "audit_log" else None)
        done += len(docs)
        if progress:
            progress(done, max(expected, done))
    raise BackupError("the archive has no manifest")  # read_batches raised already


async def restore(
    file: BinaryIO, key: bytes, store: Store, *, progress: Progress | None = None
) -> Manifest:
    """Load the archive into `store`, which must be empty, then check it against the
    manifest by reading the store back. Raise on any difference."""
    if any((await store.backup_counts()).values()):
        raise BackupError("the store is not empty: restore into an empty store")
    items = _threaded(read_batches(file, key))
    manifest: Manifest | None = None
    done = expected = 0
    async for item in items:
        if isinstance(item, int):
            expected = item
            continue
        if isinstance(item, Manifest):
            manifest = item
            break
        name, docs = item
        tp = COLLECTIONS[name]
        await store.backup_load(name, [from_plain(tp, d) for d in docs])
        done += len(docs)
        if progress:
            progress(done, max(expected, done))
    if manifest is None:
        raise BackupError("the archive has no manifest")
    await check_store(store, manifest, "the restored store")
    log.info("restore done documents=%d", manifest.total())
    return manifest


async def check_store(store: Store, manifest: Manifest, where: str) -> None:
    """Read every collection of `store` back and compare it with `manifest`."""
    tally = Tally()
    for name in COLLECTIONS:
        async for batch in store.backup_dump(name, batch=batch_size(name)):
            lines = await asyncio.to_thread(_encode, batch)
            tally.add(name, lines, batch if name == "audit_log" else None)
    tally.compare(manifest, where)


async def copy_store(
    source: Store, target: Store, *, now: datetime, progress: Progress | None = None
) -> Manifest:
    """Copy `source` (running) into the empty `target`, then check every count, digest
    and the audit chain on `target`: `telemed migrate`."""
    if any((await target.backup_counts()).values()):
        raise BackupError("the target store is not empty: migrate into an empty database")
    tally = Tally()
    done = 0
    async with source.snapshot() as point_in_time:
        total = sum((await source.backup_counts()).values())
        for name in COLLECTIONS:
            async for batch in source.backup_dump(name, batch=batch_size(name)):
                lines = await asyncio.to_thread(_encode, batch)
                tally.add(name, lines, batch if name == "audit_log" else None)
                await target.backup_load(name, batch)
                done += len(batch)
                if progress:
                    progress(done, max(total, done))
    manifest = Manifest(
        FORMAT,
        __version__,
        iso(now),
        source.kind,
        point_in_time,
        tally.counts(),
        tally.hexes(),
        tally.head[0],
        tally.head[1],
    )
    await check_store(target, manifest, "the target store")
    return manifest


async def _threaded(items: Iterator[Any]) -> AsyncIterator[Any]:
    """Iterate a blocking iterator (file reads, decryption) off the event loop."""
    done = object()
    while True:
        item = await asyncio.to_thread(next, items, done)
        if item is done:
            return
        yield item
