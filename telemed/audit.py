"""The audit log: append-only and hash-chained.

Each entry's hash covers its own fields and the previous entry's hash, so editing,
removing or reordering any stored entry breaks the chain from that entry on. Removing
the newest entries leaves a shorter valid chain: `verify` reports the head (sequence
number and hash) so that an operator can keep it elsewhere and compare.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from telemed.clock import iso

GENESIS = "0" * 64


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"  # the action was attempted and failed (e.g. a wrong password)
    DENIED = "denied"  # the caller was not allowed


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, before the log gives it a place in the chain."""

    at: datetime
    actor_id: str  # a user id, "anonymous", "system", or "cli"
    actor_role: str
    action: str  # dotted verb, e.g. "login", "patient.read", "user.create"
    outcome: Outcome
    source: str  # the client address, or "cli"
    patient_id: str = ""
    entity: str = ""  # FHIR-style reference to what was touched, e.g. "Patient/abc"
    detail: str = ""  # a short reason; never clinical content or a secret


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int  # 1, 2, 3, ... with no gaps
    event: AuditEvent
    prev_hash: str
    hash: str


def entry_hash(seq: int, event: AuditEvent, prev_hash: str) -> str:
    body = {
        "seq": seq,
        "at": iso(event.at),
        "actor_id": event.actor_id,
        "actor_role": event.actor_role,
        "action": event.action,
        "outcome": event.outcome.value,
        "source": event.source,
        "patient_id": event.patient_id,
        "entity": event.entity,
        "detail": event.detail,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal(event: AuditEvent, head: AuditRecord | None) -> AuditRecord:
    """The record that follows `head` (None for the first entry)."""
    seq = 1 if head is None else head.seq + 1
    prev = GENESIS if head is None else head.hash
    return AuditRecord(seq=seq, event=event, prev_hash=prev, hash=entry_hash(seq, event, prev))


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    count: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None  # the stored entry where the chain first breaks
    reason: str = ""


class ChainChecker:
    """Feeds entries in stored order; remembers the first break."""

    def __init__(self) -> None:
        self.count = 0
        self._prev: AuditRecord | None = None
        self.bad: tuple[int, str] | None = None

    def feed(self, record: AuditRecord) -> None:
        self.count += 1
        if self.bad is not None:
            return
        expected_seq = 1 if self._prev is None else self._prev.seq + 1
        expected_prev = GENESIS if self._prev is None else self._prev.hash
        if record.seq != expected_seq:
            self.bad = (record.seq, f"expected entry {expected_seq} here, found {record.seq}")
        elif record.prev_hash != expected_prev:
            self.bad = (record.seq, "does not follow the entry before it (previous hash differs)")
        elif entry_hash(record.seq, record.event, record.prev_hash) != record.hash:
            self.bad = (record.seq, "its content does not match its hash (entry altered)")
        self._prev = record

    def verdict(self) -> Verdict:
        head_seq = self._prev.seq if self._prev else 0
        head_hash = self._prev.hash if self._prev else GENESIS
        if self.bad is None:
            return Verdict(True, self.count, head_seq, head_hash)
        return Verdict(False, self.count, head_seq, head_hash, self.bad[0], self.bad[1])


def verify(records: Iterable[AuditRecord]) -> Verdict:
    checker = ChainChecker()
    for record in records:
        checker.feed(record)
    return checker.verdict()


async def averify(records: AsyncIterable[AuditRecord]) -> Verdict:
    checker = ChainChecker()
    async for record in records:
        checker.feed(record)
    return checker.verdict()
