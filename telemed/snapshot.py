"""What a backup holds: the store's collections as plain documents, and their digests.

Both store adapters dump and load the same domain objects (`Store.backup_dump`,
`Store.backup_load`), so a backup made from SQLite restores into MongoDB and back. Each
object travels as a plain JSON document made from its dataclass fields (`to_plain`) and
comes back through the same fields' types (`from_plain`): one codec for every
collection, so nothing is forgotten when a field is added.

A collection's digest is order-free: the sum, modulo 2^256, of each document's SHA-256
over its canonical JSON. Two stores hold the same documents exactly when their counts
and digests agree, whatever order each adapter reads them in.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from telemed.accounts import Patient, User
from telemed.audit import AuditRecord
from telemed.clock import iso, parse_iso
from telemed.monitoring import Alert, CheckIn, Device, DevicePresence, MonitoringPlan, Observation
from telemed.records import BreakGlass, RecordHeader, SealedAttachment, SealedVersion
from telemed.sealing import WrappedKey
from telemed.tokens import ApiToken
from telemed.visits import Visit

FORMAT = 1
_MS = timedelta(milliseconds=1)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class CareTeamMember:
    patient_id: str
    clinician_id: str


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class KeyCheck:
    kek_id: str
    check: bytes


# Every collection a backup holds, in the order it is read. A document refers only to
# documents read after it (a record lists versions stored before it; a version lists
# attachments stored before it; every sealed thing names a data key stored before it),
# so even a store that cannot read one point in time yields a backup whose references
# hold. The audit log comes last: its head is the newest act the backup covers.
# Not held: sessions and sign-in throttling (a restore signs everyone out), and
# MongoDB's observation key log (rebuilt as observations are loaded).
COLLECTIONS: dict[str, type[Any]] = {
    "users": User,
    "patients": Patient,
    "care_team_members": CareTeamMember,
    "api_tokens": ApiToken,
    "clinic_settings": Setting,
    "devices": Device,
    "device_presence": DevicePresence,
    "monitoring_plans": MonitoringPlan,
    "check_ins": CheckIn,
    "alerts": Alert,
    "visits": Visit,
    "observations": Observation,
    "break_glass": BreakGlass,
    "records": RecordHeader,
    "record_versions": SealedVersion,
    "attachments": SealedAttachment,
    "data_keys": WrappedKey,
    "key_checks": KeyCheck,
    "audit_log": AuditRecord,
}


# the codec -------------------------------------------------------------------------
def to_plain(value: Any) -> Any:
    """A JSON-ready form of a domain value: dataclasses as objects of their fields,
    datetimes as ISO text (ms), dates as ISO, durations as whole ms, bytes as base64."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value // _MS
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        return [to_plain(v) for v in value]
    return value


_HINTS: dict[type[Any], dict[str, Any]] = {}


def from_plain(tp: Any, plain: Any) -> Any:
    """The value of type `tp` that `to_plain` made `plain` from."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if plain is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return from_plain(inner[0], plain)
    if origin in (tuple, list, frozenset):
        (item, *_) = typing.get_args(tp)
        made = [from_plain(item, v) for v in plain]
        return origin(made) if origin is not list else made
    if origin in (dict, Mapping):
        _, item = typing.get_args(tp)
        return {k: from_plain(item, v) for k, v in plain.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _HINTS.get(tp)
        if hints is None:
            hints = _HINTS[tp] = typing.get_type_hints(tp)
        return tp(
            **{f.name: from_plain(hints[f.name], plain[f.name]) for f in dataclasses.fields(tp)}
        )
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(plain)
    if tp is datetime:
        return parse_iso(plain)
    if tp is date:
        return date.fromisoformat(plain)
    if tp is timedelta:
        return _MS * int(plain)
    if tp is bytes:
        return base64.b64decode(plain)
    if tp is float:
        return float(plain)
    return plain


def canonical(plain: Any) -> bytes:
    return _CANONICAL.encode(plain).encode()


# digests ---------------------------------------------------------------------------
_MOD = 1 << 256


class Digest:
    """The count and order-free digest of one collection's documents."""

    __slots__ = ("count", "_sum")

    def __init__(self) -> None:
        self.count = 0
        self._sum = 0

    def add(self, document: bytes) -> None:
        self.count += 1
        self._sum = (self._sum + int.from_bytes(hashlib.sha256(document).digest(), "big")) % _MOD

    @property
    def hex(self) -> str:
        return f"{self._sum:064x}"


def digest_of(documents: list[bytes]) -> Digest:
    d = Digest()
    for doc in documents:
        d.add(doc)
    return d
