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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from telemed.accounts import Patient, User
from telemed.audit import AuditRecord
from telemed.clock import parse_iso
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
# Each dataclass gets an encoder and a decoder built once from its fields' types (a
# backup moves a million readings: nothing is inspected per value that the type says).
Encode = Callable[[Any], Any]
Decode = Callable[[Any], Any]
_ENCODERS: dict[Any, Encode] = {}
_DECODERS: dict[Any, Decode] = {}


def _same(value: Any) -> Any:
    return value


def _encode_time(value: datetime) -> str:
    """As `clock.iso` writes it ("2026-11-29T09:00:00.123Z"), five times faster."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")[:-6] + "Z"


def _encoder(tp: Any) -> Encode:
    found = _ENCODERS.get(tp)
    if found is not None:
        return found
    made: Encode
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        each = _encoder(inner)
        made = lambda v: None if v is None else each(v)  # noqa: E731
    elif origin in (tuple, list, frozenset):
        item = _encoder(typing.get_args(tp)[0])
        made = lambda v: [item(x) for x in v]  # noqa: E731
    elif origin in (dict, Mapping):
        value = _encoder(typing.get_args(tp)[1])
        made = lambda v: {str(k): value(x) for k, x in v.items()}  # noqa: E731
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        # the fields its constructor takes: one it derives (init=False) is derived again
        parts = [(f.name, _encoder(hints[f.name])) for f in dataclasses.fields(tp) if f.init]
        made = lambda v: {name: enc(getattr(v, name)) for name, enc in parts}  # noqa: E731
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        made = lambda v: v.value  # noqa: E731
    elif tp is datetime:
        made = _encode_time
    elif tp is date:
        made = lambda v: v.isoformat()  # noqa: E731
    elif tp is timedelta:
        made = lambda v: v // _MS  # noqa: E731
    elif tp is bytes:
        made = lambda v: base64.b64encode(v).decode()  # noqa: E731
    else:
        made = _same
    _ENCODERS[tp] = made
    return made


def _decoder(tp: Any) -> Decode:
    found = _DECODERS.get(tp)
    if found is not None:
        return found
    made: Decode
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        each = _decoder(inner)
        made = lambda v: None if v is None else each(v)  # noqa: E731
    elif origin in (tuple, frozenset):
        item, kind = _decoder(typing.get_args(tp)[0]), origin
        made = lambda v: kind(item(x) for x in v)  # noqa: E731
    elif origin is list:
        item = _decoder(typing.get_args(tp)[0])
        made = lambda v: [item(x) for x in v]  # noqa: E731
    elif origin in (dict, Mapping):
        value = _decoder(typing.get_args(tp)[1])
        made = lambda v: {k: value(x) for k, x in v.items()}  # noqa: E731
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        parts = [(f.name, _decoder(hints[f.name])) for f in dataclasses.fields(tp) if f.init]
        cls = tp
        made = lambda v: cls(**{name: dec(v[name]) for name, dec in parts})  # noqa: E731
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        made = tp
    elif tp is datetime:
        made = parse_iso
    elif tp is date:
        made = date.fromisoformat
    elif tp is timedelta:
        made = lambda v: _MS * int(v)  # noqa: E731
    elif tp is bytes:
        made = base64.b64decode
    elif tp is float:
        made = float
    else:
        made = _same
    _DECODERS[tp] = made
    return made


def to_plain(value: Any) -> Any:
    """A JSON-ready form of a domain value: dataclasses as objects of their fields,
    datetimes as ISO text (ms), dates as ISO, durations as whole ms, bytes as base64."""
    return _encoder(type(value))(value)


def from_plain(tp: Any, plain: Any) -> Any:
    """The value of type `tp` that `to_plain` made `plain` from."""
    return _decoder(tp)(plain)


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
