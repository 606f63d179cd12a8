"""Custody of the key-encryption keys: open them at start-up, prove them, rotate, retire.

Start-up refuses to go on when a key is missing or wrong: every KEK id that wraps a data
key must be held by the provider, and each held key must open the check value the store
keeps for its id (written the first time the key is seen). A key file that disappeared
is never silently replaced by a new one while the store holds sealed records.

Rotation (`telemed keys rotate`): add a key, make it the primary (running servers pick
it up at their next seal), then re-wrap every data key still under another key, in
batches, each a compare and set. It can be interrupted at any point and resumed
(`--resume`): what was re-wrapped stays so, and the rest is found by its key id. A
server that wrapped a new data key under the old primary while the file changed re-wraps
that key itself (see `RecordsOffice`); a later pass of the rotation catches any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from telemed.clock import Clock
from telemed.keyring import EnvKeys, KeyFile, KeyProvider, KeyringError
from telemed.sealing import Sealer
from telemed.settings import Settings
from telemed.store import Store

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

REWRAP_BATCH = 1000
ENV_VARIABLE = "TELEMED_RECORDS_ENV_KEYS"


@dataclass(frozen=True, slots=True)
class KeyStatus:
    kek_id: str
    primary: bool
    held: bool  # the provider holds it
    data_keys: int  # how many data keys it wraps


@dataclass(frozen=True, slots=True)
class Rotation:
    primary: str
    added: bool
    rewrapped: int


Progress = Callable[[int, int], None]  # (done, total)


async def open_key_provider(settings: Settings, store: Store, clock: Clock) -> KeyProvider:
    """The configured provider, created on a first start and proven against the store."""
    records = settings.records
    provider: KeyProvider
    if records.key_provider == "env":
        provider = EnvKeys(records.env_keys.reveal(), ENV_VARIABLE)
    else:
        key_file = KeyFile(settings.key_file)
        if await asyncio.to_thread(key_file.exists):
            await asyncio.to_thread(key_file.load)
        else:
            # a store whose data keys are all gone (or never were) loses nothing to a new key
            in_use = sorted(await store.count_data_keys())
            if in_use:
                raise KeyringError(
                    f"key file {key_file.path} not found, and the store holds records sealed "
                    f"under key {', '.join(in_use)}: bring the keys back with `telemed keys "
                    "import EXPORT` (or restore the key file from where you keep it; see "
                    "README, Keys). A new key would open none of them."
                )
            kid = await asyncio.to_thread(key_file.create, clock())
            log.info("records: created key file with key %s", kid)
        provider = key_file
    await KeyCustody(store, Sealer(provider)).verify()
    return provider


class KeyCustody:
    def __init__(self, store: Store, sealer: Sealer) -> None:
        self.store = store
        self.sealer = sealer
        self.provider = sealer.provider

    async def verify(self) -> None:
        """Raise `KeyringError` unless every key in use is held, and is the right key.
        Nothing is written before both are known."""
        checks = await self.store.key_checks()
        held = self.provider.key_ids()
        counts = await self.store.count_data_keys()
        missing = sorted(kid for kid in counts if kid not in held)
        if missing:
            detail = ", ".join(f"{kid} ({counts[kid]} data keys)" for kid in missing)
            raise KeyringError(
                f"{self.provider.description} does not hold key {detail}, which the store's "
                "records are sealed under: restore it (see README, Keys)"
            )
        for kid in held:
            if kid in checks:
                await self._call(self.sealer.verify_check, kid, checks[kid])
        for kid in held:
            if kid not in checks:
                check = await self._call(self.sealer.make_check, kid)
                if not await self.store.put_key_check(kid, check):  # another process was first
                    stored = (await self.store.key_checks())[kid]
                    await self._call(self.sealer.verify_check, kid, stored)

    async def status(self) -> list[KeyStatus]:
        await asyncio.to_thread(self.provider.refresh)
        counts = await self.store.count_data_keys()
        held = self.provider.key_ids()
        primary = self.provider.primary_id()
        ids = held + sorted(k for k in counts if k not in held)
        return [KeyStatus(kid, kid == primary, kid in held, counts.get(kid, 0)) for kid in ids]

    async def rotate(
        self,
        *,
        add: bool,
        now_key: Callable[[], str] | None = None,
        progress: Progress | None = None,
    ) -> Rotation:
        """Add a primary key (when `add`), then re-wrap every data key under another key.

        `now_key` adds the key (the key file's `add_primary`); a provider that cannot add
        keys is rotated by the operator (a new primary in its configuration) then resumed.
        """
        added = False
        await asyncio.to_thread(self.provider.refresh)
        if add:
            if now_key is None:
                raise KeyringError(
                    f"{self.provider.description} cannot add keys: put a new key first in it, "
                    "restart the servers, then run telemed keys rotate --resume"
                )
            kid = await asyncio.to_thread(now_key)
            await self.store.put_key_check(kid, await self._call(self.sealer.make_check, kid))
            added = True
            log.info("keys: added primary key %s", kid)
        primary = self.provider.primary_id()
        done = 0
        while True:
            counts = await self.store.count_data_keys()
            old = {kid: n for kid, n in counts.items() if kid != primary}
            if not old:
                break
            total = done + sum(old.values())
            if progress:
                progress(done, total)
            for kid in old:
                after = ""
                while True:
                    batch = await self.store.data_keys_under(kid, after=after, limit=REWRAP_BATCH)
                    if not batch:
                        break
                    changes = [(k, await self._call(self.sealer.rewrap, k, primary)) for k in batch]
                    done += await self.store.rewrap_data_keys(changes)
                    after = batch[-1].id
                    if progress:
                        progress(done, total)
        log.info("keys: rotation to %s done, %d data keys re-wrapped", primary, done)
        return Rotation(primary, added, done)

    async def remove(self, kek_id: str, *, forget: Callable[[str], None] | None = None) -> None:
        """Retire a key for good: only when it is not the primary and wraps nothing."""
        await asyncio.to_thread(self.provider.refresh)
        if kek_id == self.provider.primary_id():
            raise KeyringError(f"key {kek_id} is the primary key: rotate to a new key first")
        wrapped = (await self.store.count_data_keys()).get(kek_id, 0)
        if wrapped:
            raise KeyringError(
                f"key {kek_id} still wraps {wrapped} data keys: run telemed keys rotate "
                "--resume, then remove it"
            )
        if forget is None:
            raise KeyringError(
                f"{self.provider.description} cannot remove keys: take {kek_id} out of it "
                "yourself (it wraps nothing now)"
            )
        await asyncio.to_thread(forget, kek_id)
        await self.store.delete_key_check(kek_id)
        log.info("keys: removed key %s", kek_id)

    async def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self.provider.blocking:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)
