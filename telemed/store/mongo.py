"""The production store: MongoDB through PyMongo's async API (`AsyncMongoClient`).

One document per domain value, keyed by `_id` where the value has a natural key (user,
patient, token and device ids, session and throttle keys, setting keys, audit sequence
numbers). Observations keep a generated `_id`, in one of two layouts (`ObservationLayout`,
chosen at open): a time-series collection whose redeliveries are absorbed by a key log
(`observation_keys`, see `add_observations`), or a plain collection whose unique
(device_id, code, taken_at) index absorbs them. Either way their writes are journaled
before they are acknowledged. Writes wait for a majority of the replica set and are
retried once on a transient error. Datetimes are BSON dates: UTC, to the millisecond, as
the domain keeps them. Indexes are created at open; creating an index that already
exists is a no-op.

The audit log needs no transaction: an entry's `_id` is its sequence number (repeated as
`seq` for the per-patient index), so of two writers, in any processes, that read the
same head only one can insert the next entry; the other gets a duplicate key, reads the
new head and seals again. Nothing in MongoDB itself forbids updating or deleting an
entry: give the server's database user only the `find` and `insert` actions on
`audit_log` (a custom role) to make the log append-only there too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from pymongo import (
    ASCENDING,
    DESCENDING,
    AsyncMongoClient,
    IndexModel,
    ReturnDocument,
    UpdateOne,
    WriteConcern,
)
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from telemed.accounts import Patient, Role, User
from telemed.audit import AuditEvent, AuditRecord, Outcome, seal
from telemed.clock import Clock, epoch_ms, utcnow
from telemed.errors import Conflict, NotFound, StoreUnavailable
from telemed.monitoring import (
    ACTIVE_STATES,
    Alert,
    AlertState,
    CheckIn,
    Device,
    DevicePresence,
    LatestCheckIns,
    MonitoringPlan,
    Observation,
    Severity,
    Threshold,
)
from telemed.records import (
    BreakGlass,
    RecordHeader,
    SealedAttachment,
    SealedVersion,
    VersionKind,
)
from telemed.sealing import WrappedKey
from telemed.sessions import Session
from telemed.snapshot import COLLECTIONS, CareTeamMember, KeyCheck, Setting
from telemed.throttle import Throttle
from telemed.tokens import ApiToken
from telemed.visits import Visit, VisitState, visit_from_doc, visit_to_doc

log = logging.getLogger(__name__)

# The snapshot session of the task inside `MongoStore.snapshot`, with its store: only
# that task's backup reads use it (the server's other tasks go on reading and writing).
# A context variable lives at module level: contexts hold theirs for good.
_SNAPSHOT: ContextVar[tuple[MongoStore, AsyncClientSession] | None] = ContextVar(
    "telemed_mongo_snapshot", default=None
)

Document = dict[str, Any]

SERVER_SELECTION_TIMEOUT_MS = 5_000
AUDIT_APPEND_ATTEMPTS = 64  # each lost race means another writer's entry went in
AUDIT_PAGE = 500
DUPLICATE_KEY = 11000  # the server's error code for a unique index violation
NAMESPACE_EXISTS = 48  # the server's error code for creating a collection that exists
SNAPSHOT_READS_WIRE_VERSION = 13  # MongoDB 5.0: snapshot reads outside transactions

USERS = "users"
PATIENTS = "patients"
CARE_TEAM_MEMBERS = "care_team_members"
API_TOKENS = "api_tokens"
SESSIONS = "sessions"
LOGIN_THROTTLE = "login_throttle"
CLINIC_SETTINGS = "clinic_settings"
DEVICES = "devices"
# Time-series where the server makes one (see `ObservationLayout`); a time-series
# collection cannot have a unique index, so `observation_keys` then holds the
# (device_id, code, taken_at) keys that absorb redeliveries.
OBSERVATIONS = "observations"
OBSERVATION_KEYS = "observation_keys"
AUDIT_LOG = "audit_log"
DEVICE_PRESENCE = "device_presence"
MONITORING_PLANS = "monitoring_plans"
CHECK_INS = "check_ins"
# `active` repeats "state is not resolved": a partial index can filter on equality only
ALERTS = "alerts"
# A visit is kept whole under `doc`, beside the fields it is found and sorted by
VISITS = "visits"
# Consultation records (`telemed.records`): a header per record (`_id` = the record's id,
# compare and set on `rev`), its sealed versions and attachments (sealed values as BSON
# binary), the data keys they are sealed under, wrapped by key-encryption keys, one check
# value per KEK (`_id` = the KEK's id), and break-glass grants.
RECORDS = "records"
RECORD_VERSIONS = "record_versions"
ATTACHMENTS = "attachments"
DATA_KEYS = "data_keys"
KEY_CHECKS = "key_checks"
BREAK_GLASS = "break_glass"

# Acknowledged means durable: journaled on a majority of the replica set.
DURABLE = WriteConcern(w="majority", j=True)

# Only indexes that serve a query or guard a rule. The lists ordered by name (users,
# patients) or creation (tokens) are clinic-sized and sorted by the server in memory.
INDEXES: dict[str, list[IndexModel]] = {
    USERS: [
        IndexModel([("email", ASCENDING)], name="email_unique", unique=True),
    ],
    CARE_TEAM_MEMBERS: [
        IndexModel(
            [("patient_id", ASCENDING), ("clinician_id", ASCENDING)],
            name="patient_clinician_unique",
            unique=True,
        ),
        IndexModel([("clinician_id", ASCENDING)], name="by_clinician"),
    ],
    API_TOKENS: [
        IndexModel([("token_hash", ASCENDING)], name="token_hash_unique", unique=True),
        IndexModel([("user_id", ASCENDING)], name="by_user"),
    ],
    SESSIONS: [
        IndexModel([("user_id", ASCENDING)], name="by_user"),
    ],
    DEVICES: [
        IndexModel([("patient_id", ASCENDING)], name="by_patient"),
    ],
    # OBSERVATIONS: by layout, see `_Layout.indexes`
    CHECK_INS: [
        IndexModel(
            [("patient_id", ASCENDING), ("taken_at", ASCENDING)], name="by_patient_taken_at"
        ),
    ],
    ALERTS: [
        # at most one active alert per (patient, rule), even across processes
        IndexModel(
            [("patient_id", ASCENDING), ("rule", ASCENDING)],
            name="one_active_per_patient_rule",
            unique=True,
            partialFilterExpression={"active": True},
        ),
        IndexModel(
            [("patient_id", ASCENDING), ("opened_at", ASCENDING)], name="by_patient_opened_at"
        ),
        IndexModel([("active", ASCENDING), ("opened_at", ASCENDING)], name="by_active"),
    ],
    VISITS: [
        IndexModel([("link_hash", ASCENDING)], name="link_hash_unique", unique=True),
        IndexModel([("guest_link_hashes", ASCENDING)], name="by_guest_link_hash"),
        IndexModel(
            [("clinician_id", ASCENDING), ("scheduled_at", ASCENDING)],
            name="by_clinician_scheduled_at",
        ),
        IndexModel(
            [("patient_id", ASCENDING), ("scheduled_at", ASCENDING)],
            name="by_patient_scheduled_at",
        ),
    ],
    RECORDS: [
        IndexModel(
            [("patient_id", ASCENDING), ("created_at", ASCENDING)],
            name="by_patient_created_at",
        ),
    ],
    ATTACHMENTS: [
        IndexModel(
            [("record_id", ASCENDING), ("created_at", ASCENDING)],
            name="by_record_created_at",
        ),
    ],
    DATA_KEYS: [
        # serves `data_keys_under` (rotation pages through a KEK's keys by id); `key_id`
        # repeats `_id` so that the index can end with it, as `seq` does in the audit log
        IndexModel([("kek_id", ASCENDING), ("key_id", ASCENDING)], name="by_kek_key_id"),
        IndexModel([("patient_id", ASCENDING)], name="by_patient"),
    ],
    BREAK_GLASS: [
        IndexModel(
            [("patient_id", ASCENDING), ("opened_at", ASCENDING)], name="by_patient_opened_at"
        ),
    ],
    AUDIT_LOG: [
        # `seq` repeats `_id` so that the per-patient index can end with it
        IndexModel([("seq", ASCENDING)], name="seq_unique", unique=True),
        IndexModel([("patient_id", ASCENDING), ("seq", ASCENDING)], name="by_patient_seq"),
    ],
}


class ObservationLayout(StrEnum):
    """How observations are kept: `store.observation_layout`."""

    AUTO = "auto"  # time-series when the server makes one; an existing collection stays
    TIMESERIES = "timeseries"  # time-series or nothing: open fails if the server can't
    PLAIN = "plain"  # one regular collection with a unique (device, code, time) index


# The time field is a BSON date; the meta field holds what names a series, and every
# query filters on it. A wearable sends each code every few seconds: "seconds" buckets.
TIMESERIES_OPTIONS: Document = {
    "timeField": "taken_at",
    "metaField": "meta",
    "granularity": "seconds",
}
# How long a writer holds the observation keys it is storing. Only after that may another
# writer take a pending key over, so it must far exceed the writes of one batch, and the
# clocks of the server's processes must agree to well within it.
OBSERVATION_LEASE = timedelta(seconds=30)
# Pauses (seconds, about 10 in all) before looking again at keys another writer holds.
KEY_WAITS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
PENDING = "pending"
COMMITTED = "committed"


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where an observation document keeps what names its series (at the top level, or
    under the time-series meta field) and what absorbs redeliveries (a unique index, or
    the key log)."""

    name: ObservationLayout
    meta: str | None

    @property
    def key_log(self) -> bool:
        return self.meta is not None

    def path(self, field: str) -> str:
        return field if self.meta is None else f"{self.meta}.{field}"

    def document(self, o: Observation) -> Document:
        series: Document = {"patient_id": o.patient_id, "device_id": o.device_id, "code": o.code}
        reading: Document = {
            "value": float(o.value),
            "unit": o.unit,
            "taken_at": o.taken_at,
            "received_at": o.received_at,
        }
        return {**series, **reading} if self.meta is None else {self.meta: series, **reading}

    def observation(self, doc: Document) -> Observation:
        series: Document = doc if self.meta is None else doc[self.meta]
        return Observation(
            patient_id=series["patient_id"],
            device_id=series["device_id"],
            code=series["code"],
            value=float(doc["value"]),
            unit=doc["unit"],
            taken_at=_dt(doc["taken_at"]),
            received_at=_dt(doc["received_at"]),
        )

    def indexes(self) -> list[IndexModel]:
        # serves `observations` for one code (in either direction) and, read backwards,
        # `latest_observations`; `device_id` last keeps the tie order without a sort
        by_patient = IndexModel(
            [
                (self.path("patient_id"), ASCENDING),
                (self.path("code"), ASCENDING),
                ("taken_at", ASCENDING),
                (self.path("device_id"), ASCENDING),
            ],
            name="by_patient_code_taken_at",
        )
        if self.key_log:
            return [by_patient]
        unique = IndexModel(
            [("device_id", ASCENDING), ("code", ASCENDING), ("taken_at", ASCENDING)],
            name="device_code_taken_at_unique",
            unique=True,
        )
        return [unique, by_patient]


PLAIN_LAYOUT = _Layout(ObservationLayout.PLAIN, meta=None)
TIMESERIES_LAYOUT = _Layout(ObservationLayout.TIMESERIES, meta=TIMESERIES_OPTIONS["metaField"])


def _key(o: Observation) -> str:
    """The `_id` of an observation's entry in the key log: device, code and time (ms), as
    JSON text so that no device id or code can run into the next field."""
    return json.dumps([o.device_id, o.code, o.taken_ms], separators=(",", ":"))


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn driver errors into the domain's: a duplicate key is a `Conflict`."""
    try:
        yield
    except DuplicateKeyError as exc:
        raise Conflict(f"{what}: {_duplicate_fields(exc)} already taken") from exc
    except PyMongoError as exc:
        raise StoreUnavailable(f"{what}: {exc}") from exc


def _duplicate_fields(exc: DuplicateKeyError) -> str:
    """The fields of the violated unique index, never their values (they may be PII)."""
    details = exc.details or {}
    pattern = details.get("keyPattern")
    if isinstance(pattern, Mapping) and pattern:
        return "+".join("id" if key == "_id" else str(key) for key in pattern)
    return "a unique key"


def _inserted_besides_duplicates(exc: BulkWriteError) -> int:
    """How many documents an unordered insert stored, if it failed only on duplicates.

    A duplicate key is a redelivery, already stored: success. Any other write error, or
    a write concern error (the rest may not be durable), raises `StoreUnavailable`.
    """
    _duplicates_only(exc, "observations")
    return int(exc.details.get("nInserted", 0))


def _duplicates_only(exc: BulkWriteError, what: str) -> set[int]:
    """The positions an unordered insert refused, if it refused duplicate keys only;
    otherwise (another write error, or a write concern error) `StoreUnavailable`."""
    details = exc.details
    errors = details.get("writeErrors", [])
    codes = {error.get("code") for error in errors}
    concern = [error.get("errmsg", "") for error in details.get("writeConcernErrors", [])]
    if concern or codes - {DUPLICATE_KEY}:
        # the codes and messages only: a write error carries the document (vitals)
        raise StoreUnavailable(
            f"{what}: write errors {sorted(map(str, codes))}, write concern {concern}"
        ) from exc
    return {int(error["index"]) for error in errors}


def _dt(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise StoreUnavailable(f"expected a stored date, found {type(value).__name__}")
    return value.astimezone(UTC)


def _dt_or_none(value: Any) -> datetime | None:
    return None if value is None else _dt(value)


class MongoStore:
    kind = "mongodb"

    def __init__(
        self, client: AsyncMongoClient[Document], database: str, *, clock: Clock = utcnow
    ) -> None:
        self._client = client
        self._db: AsyncDatabase[Document] = client[database]
        self._users: AsyncCollection[Document] = self._db[USERS]
        self._patients: AsyncCollection[Document] = self._db[PATIENTS]
        self._care_teams: AsyncCollection[Document] = self._db[CARE_TEAM_MEMBERS]
        self._tokens: AsyncCollection[Document] = self._db[API_TOKENS]
        self._sessions: AsyncCollection[Document] = self._db[SESSIONS]
        self._throttle: AsyncCollection[Document] = self._db[LOGIN_THROTTLE]
        self._settings: AsyncCollection[Document] = self._db[CLINIC_SETTINGS]
        self._devices: AsyncCollection[Document] = self._db[DEVICES]
        self._observations: AsyncCollection[Document] = self._db.get_collection(
            OBSERVATIONS, write_concern=DURABLE
        )
        self._observation_keys: AsyncCollection[Document] = self._db.get_collection(
            OBSERVATION_KEYS, write_concern=DURABLE
        )
        self._layout = PLAIN_LAYOUT  # until `open` has looked at the database
        self._clock = clock  # for leases on observation keys only
        self._writer = uuid.uuid4().hex  # the owner of this store's leases
        self._keys_in_flight: set[str] = set()  # held by a call of this store, now
        self._key_waits: Sequence[float] = KEY_WAITS
        self._audit: AsyncCollection[Document] = self._db[AUDIT_LOG]
        self._presence: AsyncCollection[Document] = self._db[DEVICE_PRESENCE]
        self._plans: AsyncCollection[Document] = self._db[MONITORING_PLANS]
        self._check_ins: AsyncCollection[Document] = self._db[CHECK_INS]
        self._alerts: AsyncCollection[Document] = self._db[ALERTS]
        self._visits: AsyncCollection[Document] = self._db[VISITS]
        # journaled too: a note, or the data key it is sealed under, acknowledged and then
        # lost would leave the records unreadable
        self._records: AsyncCollection[Document] = self._db.get_collection(
            RECORDS, write_concern=DURABLE
        )
        self._record_versions: AsyncCollection[Document] = self._db.get_collection(
            RECORD_VERSIONS, write_concern=DURABLE
        )
        self._attachments: AsyncCollection[Document] = self._db.get_collection(
            ATTACHMENTS, write_concern=DURABLE
        )
        self._data_keys: AsyncCollection[Document] = self._db.get_collection(
            DATA_KEYS, write_concern=DURABLE
        )
        self._key_checks: AsyncCollection[Document] = self._db.get_collection(
            KEY_CHECKS, write_concern=DURABLE
        )
        self._break_glass: AsyncCollection[Document] = self._db.get_collection(
            BREAK_GLASS, write_concern=DURABLE
        )
        # what a backup holds, by its names in `snapshot.COLLECTIONS`
        self._backup_collections: dict[str, AsyncCollection[Document]] = {
            "users": self._users,
            "patients": self._patients,
            "care_team_members": self._care_teams,
            "api_tokens": self._tokens,
            "clinic_settings": self._settings,
            "devices": self._devices,
            "device_presence": self._presence,
            "monitoring_plans": self._plans,
            "check_ins": self._check_ins,
            "alerts": self._alerts,
            "visits": self._visits,
            "observations": self._observations,
            "break_glass": self._break_glass,
            "records": self._records,
            "record_versions": self._record_versions,
            "attachments": self._attachments,
            "data_keys": self._data_keys,
            "key_checks": self._key_checks,
            "audit_log": self._audit,
        }
        assert self._backup_collections.keys() == COLLECTIONS.keys()
        self._closed = False

    @contextmanager
    def _op(self, what: str) -> Iterator[None]:
        """One driver call: refused once closed (the driver would silently reconnect)."""
        if self._closed:
            raise StoreUnavailable(f"{what}: the MongoDB store is closed")
        with _translated(what):
            yield

    @classmethod
    async def open(
        cls,
        url: str,
        database: str,
        *,
        observation_layout: str = ObservationLayout.AUTO,
        clock: Clock = utcnow,
        key_waits: Sequence[float] = KEY_WAITS,
        timeseries_over_plain: bool = False,
    ) -> MongoStore:
        """Connect, choose the observation layout and create the indexes.

        `clock` dates the leases on observation keys; `key_waits` are the pauses (seconds)
        between looks at keys that another writer holds (see `add_observations`).
        `timeseries_over_plain` is for tests: nx-27017 accepts the time-series option but
        makes a plain collection, and with it "auto" and "timeseries" run the time-series
        code path (key log, no unique index) over whatever collection the server made.
        """
        try:
            layout = ObservationLayout(observation_layout)
        except ValueError:
            choices = ", ".join(ObservationLayout)
            raise StoreUnavailable(
                f"store.observation_layout: expected one of {choices}, got {observation_layout!r}"
            ) from None
        if not database:
            raise StoreUnavailable("store.database: a MongoDB database name is required")
        try:
            client: AsyncMongoClient[Document] = AsyncMongoClient(
                url,
                tz_aware=True,
                tzinfo=UTC,
                retryWrites=True,
                w="majority",
                serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
                appname="telemed",
            )
        except PyMongoError as exc:
            raise StoreUnavailable(f"store.url is not a usable MongoDB URL: {exc}") from exc
        store = cls(client, database, clock=clock)
        store._key_waits = key_waits
        try:
            await store.ping()
            store._layout = await store._choose_layout(layout, over_plain=timeseries_over_plain)
            await store._create_indexes()
        except BaseException:
            await client.close()
            raise
        return store

    async def _create_indexes(self) -> None:
        with self._op("creating indexes"):
            for name, indexes in INDEXES.items():
                await self._db[name].create_indexes(indexes)
            await self._observations.create_indexes(self._layout.indexes())

    @property
    def observation_layout(self) -> ObservationLayout:
        """The layout in use: "timeseries" (with the key log) or "plain"."""
        return self._layout.name

    async def _choose_layout(self, wanted: ObservationLayout, *, over_plain: bool) -> _Layout:
        """The layout of the existing observations collection, or of the one made now.

        An existing collection keeps its layout: readings are never split across two.
        """
        found = await self._collection_type(OBSERVATIONS)
        created = False
        if found is None and wanted is not ObservationLayout.PLAIN:
            required = wanted is ObservationLayout.TIMESERIES and not over_plain
            created = await self._create_timeseries(required=required)
            found = await self._collection_type(OBSERVATIONS)
        if found == "timeseries":
            if wanted is ObservationLayout.PLAIN:
                raise StoreUnavailable(
                    "store.observation_layout: 'plain', but the database's observations "
                    "collection is a time-series one; set 'auto' or 'timeseries'"
                )
            log.info("observations: time-series collection, deduplicated by %s", OBSERVATION_KEYS)
            return TIMESERIES_LAYOUT
        if over_plain and wanted is not ObservationLayout.PLAIN:
            log.info("observations: the time-series layout over a %s collection", found)
            return TIMESERIES_LAYOUT
        if wanted is ObservationLayout.TIMESERIES:
            if created:
                raise StoreUnavailable(
                    "store.observation_layout: 'timeseries', but this server made a plain "
                    "collection when asked for a time-series one (MongoDB 5.0 or newer makes "
                    "them); set 'auto' or 'plain', or drop the empty observations collection "
                    "once the server can"
                )
            raise StoreUnavailable(
                "store.observation_layout: 'timeseries', but the database already holds a "
                "plain observations collection; set 'auto' to keep using it (its readings "
                "would have to be moved to a time-series one)"
            )
        if wanted is ObservationLayout.AUTO and found is not None:
            if created:
                log.info("observations: this server makes no time-series collection; plain")
            else:
                log.info("observations: keeping the existing plain collection (unique key)")
        return PLAIN_LAYOUT

    async def _collection_type(self, name: str) -> str | None:
        """listCollections' `type` of `name` ("collection", "timeseries"...), None if absent."""
        with self._op(f"collection {name}"):
            cursor = await self._db.list_collections(filter={"name": name})
            infos = await cursor.to_list()
        # nx-27017 ignores the filter: match the name here too
        types = [str(info.get("type", "collection")) for info in infos if info.get("name") == name]
        return types[0] if types else None

    async def _create_timeseries(self, *, required: bool) -> bool:
        """Ask for a time-series observations collection; True if this call created one
        (of whatever type the server made: check it)."""
        try:
            await self._db.create_collection(
                OBSERVATIONS, timeseries=TIMESERIES_OPTIONS, check_exists=False
            )
        except OperationFailure as exc:
            if exc.code == NAMESPACE_EXISTS:
                return False  # another process made it first: its type decides
            if required:
                raise StoreUnavailable(
                    "store.observation_layout: 'timeseries', but the server refused a "
                    f"time-series collection (error {exc.code}): {exc}"
                ) from exc
            log.info(
                "observations: the server refused a time-series collection (error %s)", exc.code
            )
            return False
        except PyMongoError as exc:
            raise StoreUnavailable(f"creating observations: {exc}") from exc
        return True

    async def close(self) -> None:
        self._closed = True
        await self._client.close()

    async def ping(self) -> None:
        with self._op("ping"):
            await self._client.admin.command("ping")

    async def is_empty(self) -> bool:
        with self._op("is_empty"):
            return await self._users.find_one({}, {"_id": 1}) is None

    # users ------------------------------------------------------------------
    @staticmethod
    def _user_doc(user: User) -> Document:
        return {
            "_id": user.id,
            "email": user.email,
            "name": user.name,
            "role": user.role.value,
            "password_hash": user.password_hash,
            "created_at": user.created_at,
            "active": user.active,
            "totp_secret": user.totp_secret,
            "totp_last_step": user.totp_last_step,
            "recovery_codes": list(user.recovery_codes),
        }

    @staticmethod
    def _user(doc: Document) -> User:
        return User(
            id=doc["_id"],
            email=doc["email"],
            name=doc["name"],
            role=Role(doc["role"]),
            password_hash=doc["password_hash"],
            created_at=_dt(doc["created_at"]),
            active=bool(doc["active"]),
            totp_secret=doc["totp_secret"],
            totp_last_step=int(doc["totp_last_step"]),
            recovery_codes=tuple(doc["recovery_codes"]),
        )

    async def add_user(self, user: User) -> None:
        with self._op(f"user {user.id}"):
            await self._users.insert_one(self._user_doc(user))

    async def get_user(self, user_id: str) -> User | None:
        with self._op(f"user {user_id}"):
            doc = await self._users.find_one({"_id": user_id})
        return self._user(doc) if doc else None

    async def find_user_by_email(self, email: str) -> User | None:
        with self._op("user by e-mail"):
            doc = await self._users.find_one({"email": email})
        return self._user(doc) if doc else None

    async def list_users(self, role: Role | None = None) -> list[User]:
        query: Document = {} if role is None else {"role": role.value}
        with self._op("users"):
            cursor = self._users.find(query, sort=[("name", ASCENDING), ("_id", ASCENDING)])
            docs = await cursor.to_list()
        return [self._user(d) for d in docs]

    async def update_user(self, user: User) -> None:
        with self._op(f"user {user.id}"):
            result = await self._users.replace_one({"_id": user.id}, self._user_doc(user))
        if not result.matched_count:
            raise NotFound(f"user {user.id}")

    # patients ---------------------------------------------------------------
    @staticmethod
    def _patient(doc: Document) -> Patient:
        birth = doc["birth_date"]
        return Patient(
            id=doc["_id"],
            name=doc["name"],
            birth_date=date.fromisoformat(birth) if birth else None,
            language=doc["language"],
            created_at=_dt(doc["created_at"]),
        )

    @staticmethod
    def _patient_doc(patient: Patient) -> Document:
        return {
            "_id": patient.id,
            "name": patient.name,
            # BSON has no calendar date; ISO 8601 keeps it exact and sortable
            "birth_date": patient.birth_date.isoformat() if patient.birth_date else None,
            "language": patient.language,
            "created_at": patient.created_at,
        }

    async def add_patient(self, patient: Patient) -> None:
        with self._op(f"patient {patient.id}"):
            await self._patients.insert_one(self._patient_doc(patient))

    async def get_patient(self, patient_id: str) -> Patient | None:
        with self._op(f"patient {patient_id}"):
            doc = await self._patients.find_one({"_id": patient_id})
        return self._patient(doc) if doc else None

    async def list_patients(self, ids: list[str] | None = None) -> list[Patient]:
        if ids is not None and not ids:
            return []
        query: Document = {} if ids is None else {"_id": {"$in": list(ids)}}
        with self._op("patients"):
            cursor = self._patients.find(query, sort=[("name", ASCENDING), ("_id", ASCENDING)])
            docs = await cursor.to_list()
        return [self._patient(d) for d in docs]

    # care teams -------------------------------------------------------------
    @staticmethod
    def _care_team_doc(member: CareTeamMember) -> Document:
        return {"patient_id": member.patient_id, "clinician_id": member.clinician_id}

    async def add_care_team_member(self, patient_id: str, clinician_id: str) -> bool:
        try:
            with self._op(f"care team of patient {patient_id}"):
                await self._care_teams.insert_one(
                    self._care_team_doc(CareTeamMember(patient_id, clinician_id))
                )
        except Conflict:
            return False
        return True

    async def remove_care_team_member(self, patient_id: str, clinician_id: str) -> bool:
        with self._op(f"care team of patient {patient_id}"):
            result = await self._care_teams.delete_one(
                {"patient_id": patient_id, "clinician_id": clinician_id}
            )
        return bool(result.deleted_count)

    async def care_team(self, patient_id: str) -> frozenset[str]:
        with self._op(f"care team of patient {patient_id}"):
            cursor = self._care_teams.find({"patient_id": patient_id}, {"clinician_id": 1})
            docs = await cursor.to_list()
        return frozenset(d["clinician_id"] for d in docs)

    async def patients_of(self, clinician_id: str) -> frozenset[str]:
        with self._op(f"patients of clinician {clinician_id}"):
            cursor = self._care_teams.find({"clinician_id": clinician_id}, {"patient_id": 1})
            docs = await cursor.to_list()
        return frozenset(d["patient_id"] for d in docs)

    # API tokens -------------------------------------------------------------
    @staticmethod
    def _token(doc: Document) -> ApiToken:
        return ApiToken(
            id=doc["_id"],
            user_id=doc["user_id"],
            name=doc["name"],
            token_hash=doc["token_hash"],
            created_at=_dt(doc["created_at"]),
            revoked_at=_dt_or_none(doc.get("revoked_at")),
        )

    @staticmethod
    def _token_doc(token: ApiToken) -> Document:
        return {
            "_id": token.id,
            "user_id": token.user_id,
            "name": token.name,
            "token_hash": token.token_hash,
            "created_at": token.created_at,
            "revoked_at": token.revoked_at,
        }

    async def add_token(self, token: ApiToken) -> None:
        with self._op(f"API token {token.id}"):
            await self._tokens.insert_one(self._token_doc(token))

    async def get_token(self, token_id: str) -> ApiToken | None:
        with self._op(f"API token {token_id}"):
            doc = await self._tokens.find_one({"_id": token_id})
        return self._token(doc) if doc else None

    async def find_token(self, token_hash: str) -> ApiToken | None:
        with self._op("API token by hash"):
            doc = await self._tokens.find_one({"token_hash": token_hash})
        return self._token(doc) if doc else None

    async def list_tokens(self, user_id: str | None = None) -> list[ApiToken]:
        query: Document = {} if user_id is None else {"user_id": user_id}
        with self._op("API tokens"):
            cursor = self._tokens.find(query, sort=[("created_at", ASCENDING), ("_id", ASCENDING)])
            docs = await cursor.to_list()
        return [self._token(d) for d in docs]

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        with self._op(f"API token {token_id}"):
            result = await self._tokens.update_one(
                {"_id": token_id, "revoked_at": None}, {"$set": {"revoked_at": at}}
            )
        return bool(result.modified_count)

    # sessions ---------------------------------------------------------------
    @staticmethod
    def _session(doc: Document) -> Session:
        return Session(
            key=doc["_id"],
            user_id=doc["user_id"],
            created_at=_dt(doc["created_at"]),
            last_seen_at=_dt(doc["last_seen_at"]),
            csrf_token=doc["csrf_token"],
            mfa_pending=bool(doc["mfa_pending"]),
            source=doc["source"],
        )

    async def put_session(self, session: Session) -> None:
        doc: Document = {
            "_id": session.key,
            "user_id": session.user_id,
            "created_at": session.created_at,
            "last_seen_at": session.last_seen_at,
            "csrf_token": session.csrf_token,
            "mfa_pending": session.mfa_pending,
            "source": session.source,
        }
        with self._op("session"):
            await self._sessions.replace_one({"_id": session.key}, doc, upsert=True)

    async def get_session(self, key: str) -> Session | None:
        with self._op("session"):
            doc = await self._sessions.find_one({"_id": key})
        return self._session(doc) if doc else None

    async def delete_session(self, key: str) -> None:
        with self._op("session"):
            await self._sessions.delete_one({"_id": key})

    async def delete_user_sessions(self, user_id: str) -> int:
        with self._op(f"sessions of user {user_id}"):
            result = await self._sessions.delete_many({"user_id": user_id})
        return result.deleted_count

    # login throttling -------------------------------------------------------
    async def get_throttle(self, key: str) -> Throttle | None:
        with self._op("login throttle"):
            doc = await self._throttle.find_one({"_id": key})
        if doc is None:
            return None
        return Throttle(doc["_id"], int(doc["failures"]), _dt(doc["last_failure_at"]))

    async def put_throttle(self, throttle: Throttle) -> None:
        doc: Document = {
            "_id": throttle.key,
            "failures": throttle.failures,
            "last_failure_at": throttle.last_failure_at,
        }
        with self._op("login throttle"):
            await self._throttle.replace_one({"_id": throttle.key}, doc, upsert=True)

    async def delete_throttle(self, key: str) -> None:
        with self._op("login throttle"):
            await self._throttle.delete_one({"_id": key})

    # clinic settings --------------------------------------------------------
    async def get_setting(self, key: str) -> str | None:
        with self._op(f"setting {key}"):
            doc = await self._settings.find_one({"_id": key})
        return None if doc is None else str(doc["value"])

    @staticmethod
    def _setting_doc(setting: Setting) -> Document:
        return {"_id": setting.key, "value": setting.value}

    async def put_setting(self, key: str, value: str) -> None:
        with self._op(f"setting {key}"):
            await self._settings.replace_one(
                {"_id": key}, self._setting_doc(Setting(key, value)), upsert=True
            )

    # wearables --------------------------------------------------------------
    @staticmethod
    def _device(doc: Document) -> Device:
        return Device(
            id=doc["_id"],
            patient_id=doc["patient_id"],
            kind=doc["kind"],
            created_at=_dt(doc["created_at"]),
            revoked_at=_dt_or_none(doc.get("revoked_at")),
        )

    @staticmethod
    def _device_doc(device: Device) -> Document:
        return {
            "_id": device.id,
            "patient_id": device.patient_id,
            "kind": device.kind,
            "created_at": device.created_at,
            "revoked_at": device.revoked_at,
        }

    async def add_device(self, device: Device) -> None:
        with self._op(f"device {device.id}"):
            await self._devices.insert_one(self._device_doc(device))

    async def get_device(self, device_id: str) -> Device | None:
        with self._op(f"device {device_id}"):
            doc = await self._devices.find_one({"_id": device_id})
        return self._device(doc) if doc else None

    async def list_devices(self, patient_id: str | None = None) -> list[Device]:
        query: Document = {} if patient_id is None else {"patient_id": patient_id}
        with self._op("devices"):
            cursor = self._devices.find(query, sort=[("created_at", ASCENDING), ("_id", ASCENDING)])
            docs = await cursor.to_list()
        return [self._device(d) for d in docs]

    async def revoke_device(self, device_id: str, at: datetime) -> bool:
        with self._op(f"device {device_id}"):
            result = await self._devices.update_one(
                {"_id": device_id, "revoked_at": None}, {"$set": {"revoked_at": at}}
            )
        return bool(result.modified_count)

    # observations -----------------------------------------------------------
    async def add_observations(self, observations: Sequence[Observation]) -> int:
        if not observations:
            return 0  # insert_many refuses an empty list
        if self._layout.key_log:
            return await self._add_through_key_log(observations)
        docs = [self._layout.document(o) for o in observations]
        with self._op("observations"):
            try:
                # unordered: one duplicate does not stop the rest of the batch
                result = await self._observations.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                return _inserted_besides_duplicates(exc)
        return len(result.inserted_ids)

    async def _add_through_key_log(self, observations: Sequence[Observation]) -> int:
        """Store a batch where no unique index can absorb redeliveries (time-series).

        Three steps, each durable before the next: each reading's key goes into
        `observation_keys` (`_id` = the key, so only one insert of it can succeed) as
        "pending", under this store's lease; the readings whose keys were new go into
        `observations`; their keys become "committed". A key that was already logged is
        - committed: its reading is stored (a redelivery), and is skipped;
        - pending under an expired lease, or under this store's own lease while no call
          of this store holds it (an earlier attempt failed): claimed by compare-and-set
          on the lease, its reading looked up and inserted only if absent, then committed;
        - pending under another writer's live lease, or held by a concurrent call of this
          store: left alone while the rest is stored, then looked at again after each
          pause of `key_waits` (overlapping redeliveries in two processes are normal, and
          the other writer commits within a batch's writes). Still held after the last
          pause, the call raises `StoreUnavailable`: the batch is not acknowledged and
          comes back later (after the lease, a crashed writer's keys are taken over).

        A crash between the steps leaves pending keys whose readings are absent, or some
        or all present; the redelivery takes the keys over and looks before it inserts,
        so nothing is lost or doubled. The claim is acknowledged by a majority before the
        look-up, so the look-up sees every write the server applied before the claim.
        What remains, where a unique index had no window at all:
        - a reading insert that the server applies only after another writer claimed and
          looked up its keys (its writer stalled past its lease, or gave up on the call
          while the request was still queued): the look-up misses it, and the reading is
          stored twice (the stalled writer's commit then fails: it lost the lease). A
          claim by another writer waits for the lease (30 s); the owner's own retry does
          not, so for it a request stuck past the ingestor's back-off (0.1 s and up) is
          enough. That retry exists so that one failed write does not stall ingestion
          for a whole lease.
        - leases compare the clocks of different processes: one whose clock runs more
          than the lease ahead takes live keys over, with the same effect.
        Either way the cost is a duplicate reading, never a lost one: a key is committed
        only after its reading was inserted (acknowledged by a majority) or found.
        """
        todo: dict[str, Observation] = {}
        for o in observations:
            todo.setdefault(_key(o), o)  # the first of a repeated key wins, as with the index
        new = 0
        pauses = iter(self._key_waits)
        while True:
            mine = {k: o for k, o in todo.items() if k not in self._keys_in_flight}
            self._keys_in_flight.update(mine)
            try:
                stored, busy = await self._store_logged(mine)
            finally:
                self._keys_in_flight.difference_update(mine)
            new += stored
            todo = {k: o for k, o in todo.items() if k in busy or k not in mine}
            if not todo:
                return new
            pause = next(pauses, None)
            if pause is None:
                raise StoreUnavailable(
                    f"observations: {len(todo)} of the batch's readings are still being "
                    "stored by another writer; the rest is stored, retry the batch later"
                )
            await asyncio.sleep(pause)

    async def _store_logged(self, batch: Mapping[str, Observation]) -> tuple[int, set[str]]:
        """The three steps for keys that no call of this store holds: how many readings
        were new, and the keys that another writer holds."""
        if not batch:
            return 0, set()
        now = epoch_ms(self._clock())
        lease = now + OBSERVATION_LEASE // timedelta(milliseconds=1)
        keys = list(batch)
        logged = await self._log_keys(keys, lease)
        fresh = [k for i, k in enumerate(keys) if i not in logged]
        claimed, busy = await self._claim_keys([keys[i] for i in sorted(logged)], now, lease)
        present = await self._stored_keys([batch[k] for k in claimed])
        new = fresh + [k for k in claimed if k not in present]
        if new:
            with self._op("observations"):
                await self._observations.insert_many(
                    [self._layout.document(batch[k]) for k in new], ordered=False
                )
        await self._commit_keys(fresh + claimed, lease)
        return len(new), busy

    async def _log_keys(self, keys: list[str], lease: int) -> set[int]:
        """Log `keys` as pending under this store's lease; the positions already logged."""
        docs = [
            {"_id": key, "state": PENDING, "owner": self._writer, "lease_until": lease}
            for key in keys
        ]
        with self._op("observation keys"):
            try:
                await self._observation_keys.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                return _duplicates_only(exc, "observation keys")
        return set()

    async def _claim_keys(
        self, keys: list[str], now: int, lease: int
    ) -> tuple[list[str], set[str]]:
        """Of keys already logged, those this store now holds (the pending ones it may
        take over), and those another writer holds; the committed ones are neither."""
        if not keys:
            return [], set()
        with self._op("observation keys"):
            cursor = self._observation_keys.find({"_id": {"$in": keys}})
            entries = {entry["_id"]: entry for entry in await cursor.to_list()}
        claimed: list[str] = []
        busy: set[str] = set()
        for key in keys:
            entry = entries.get(key)
            if entry is not None and entry["state"] == COMMITTED:
                continue
            if entry is None or (entry["owner"] != self._writer and entry["lease_until"] > now):
                busy.add(key)
                continue
            with self._op("observation keys"):
                result = await self._observation_keys.update_one(
                    {
                        "_id": key,
                        "state": PENDING,
                        "owner": entry["owner"],
                        "lease_until": entry["lease_until"],
                    },
                    {"$set": {"owner": self._writer, "lease_until": lease}},
                )
            if result.matched_count:
                claimed.append(key)
            else:
                busy.add(key)  # committed or claimed by someone else since we read it
        taken_over = sum(1 for key in claimed if entries[key]["owner"] != self._writer)
        if taken_over:
            log.warning("observations: took over %d pending keys of a stopped writer", taken_over)
        return claimed, busy

    async def _stored_keys(self, observations: list[Observation]) -> set[str]:
        """The keys of these observations that `observations` already holds."""
        if not observations:
            return set()
        path = self._layout.path
        query: Document = {
            "$or": [
                {path("device_id"): o.device_id, path("code"): o.code, "taken_at": o.taken_at}
                for o in observations
            ]
        }
        with self._op("observations"):
            docs = await self._observations.find(query).to_list()
        return {_key(self._layout.observation(doc)) for doc in docs}

    async def _commit_keys(self, keys: list[str], lease: int) -> None:
        """Mark committed the keys whose readings this call stored or found."""
        if not keys:
            return
        with self._op("observation keys"):
            result = await self._observation_keys.update_many(
                {
                    "_id": {"$in": keys},
                    "state": PENDING,
                    "owner": self._writer,
                    "lease_until": lease,
                },
                {"$set": {"state": COMMITTED}},
            )
        lost = len(keys) - result.matched_count
        if lost:
            # another writer took them over after our lease ran out; it commits them
            raise StoreUnavailable(f"observations: lost the lease on {lost} keys; retry the batch")

    async def observations(
        self,
        patient_id: str,
        *,
        code: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Observation]:
        if limit is not None and limit <= 0:
            return []  # a MongoDB limit of 0 would mean "no limit"
        path = self._layout.path
        query: Document = {path("patient_id"): patient_id}
        if code is not None:
            query[path("code")] = code
        taken_at: Document = {}
        if since is not None:
            taken_at["$gte"] = since
        if until is not None:
            taken_at["$lte"] = until
        if taken_at:
            query["taken_at"] = taken_at
        direction = DESCENDING if newest_first else ASCENDING
        sort = [
            ("taken_at", direction),
            (path("device_id"), direction),
            (path("code"), direction),
        ]
        with self._op(f"observations of patient {patient_id}"):
            cursor = self._observations.find(query, sort=sort, limit=limit or 0)
            docs = await cursor.to_list()
        return [self._layout.observation(d) for d in docs]

    async def latest_observations(self, patient_id: str) -> list[Observation]:
        path = self._layout.path
        pipeline: list[Document] = [
            {"$match": {path("patient_id"): patient_id}},
            # the index read backwards: each code's newest reading comes first
            {
                "$sort": {
                    path("code"): DESCENDING,
                    "taken_at": DESCENDING,
                    path("device_id"): DESCENDING,
                }
            },
            {"$group": {"_id": f"${path('code')}", "latest": {"$first": "$$ROOT"}}},
            {"$sort": {"_id": ASCENDING}},
        ]
        with self._op(f"latest observations of patient {patient_id}"):
            cursor = await self._observations.aggregate(pipeline)
            docs = await cursor.to_list()
        return [self._layout.observation(d["latest"]) for d in docs]

    # device presence --------------------------------------------------------
    @staticmethod
    def _presence_of(doc: Document) -> DevicePresence:
        online = doc.get("online")
        return DevicePresence(
            device_id=doc["_id"],
            online=None if online is None else bool(online),
            status_at=_dt_or_none(doc.get("status_at")),
            last_seen_at=_dt_or_none(doc.get("last_seen_at")),
        )

    @staticmethod
    def _presence_doc(presence: DevicePresence) -> Document:
        """The fields a presence's writes have set: a status (`set_device_presence`)
        and a reading time (`record_device_activity`) each come with their own write."""
        p = presence
        fields = {"online": p.online, "status_at": p.status_at, "last_seen_at": p.last_seen_at}
        return {"_id": p.device_id, **{k: v for k, v in fields.items() if v is not None}}

    async def set_device_presence(self, device_id: str, online: bool, at: datetime) -> bool:
        try:
            with self._op(f"presence of device {device_id}"):
                # no match when the status is unchanged: the upsert then collides on _id
                await self._presence.update_one(
                    {"_id": device_id, "online": {"$ne": online}},
                    {"$set": {"online": online, "status_at": at}},
                    upsert=True,
                )
        except Conflict:
            return False
        return True

    async def record_device_activity(self, latest: Mapping[str, datetime]) -> None:
        if not latest:
            return
        # $max compares BSON dates: a late batch never moves last_seen_at back
        ops = [
            UpdateOne({"_id": device_id}, {"$max": {"last_seen_at": at}}, upsert=True)
            for device_id, at in latest.items()
        ]
        with self._op("device activity"):
            try:
                await self._presence.bulk_write(ops, ordered=False)
            except BulkWriteError as exc:
                # two processes upserting a new device at once: one insert loses on _id,
                # and the winner's document holds a time from the same stream; retry the
                # losers once, now as plain updates
                if {e.get("code") for e in exc.details.get("writeErrors", [])} != {DUPLICATE_KEY}:
                    raise
                retry = [ops[e["index"]] for e in exc.details["writeErrors"]]
                await self._presence.bulk_write(retry, ordered=False)

    async def get_device_presence(self, device_id: str) -> DevicePresence | None:
        with self._op(f"presence of device {device_id}"):
            doc = await self._presence.find_one({"_id": device_id})
        return self._presence_of(doc) if doc else None

    async def list_device_presence(
        self, device_ids: Collection[str] | None = None
    ) -> list[DevicePresence]:
        if device_ids is not None and not device_ids:
            return []
        query: Document = {} if device_ids is None else {"_id": {"$in": sorted(set(device_ids))}}
        with self._op("device presence"):
            docs = await self._presence.find(query, sort=[("_id", ASCENDING)]).to_list()
        return [self._presence_of(d) for d in docs]

    # monitoring plans -------------------------------------------------------
    @staticmethod
    def _plan(doc: Document) -> MonitoringPlan:
        return MonitoringPlan(
            patient_id=doc["_id"],
            thresholds={
                t["code"]: Threshold(
                    None if t["low"] is None else float(t["low"]),
                    None if t["high"] is None else float(t["high"]),
                )
                for t in doc["thresholds"]
            },
            spo2_scale=int(doc["spo2_scale"]),
            offline_after=timedelta(milliseconds=int(doc["offline_after_ms"])),
            quiet_period=timedelta(milliseconds=int(doc["quiet_period_ms"])),
            updated_by=doc["updated_by"],
            updated_at=_dt_or_none(doc.get("updated_at")),
        )

    async def get_monitoring_plan(self, patient_id: str) -> MonitoringPlan | None:
        with self._op(f"monitoring plan of patient {patient_id}"):
            doc = await self._plans.find_one({"_id": patient_id})
        return self._plan(doc) if doc else None

    async def put_monitoring_plan(self, plan: MonitoringPlan) -> None:
        with self._op(f"monitoring plan of patient {plan.patient_id}"):
            await self._plans.replace_one(
                {"_id": plan.patient_id}, self._plan_doc(plan), upsert=True
            )

    @staticmethod
    def _plan_doc(plan: MonitoringPlan) -> Document:
        return {
            "_id": plan.patient_id,
            # a list, not a document keyed by code: codes are data, not field names
            "thresholds": [
                {"code": code, "low": t.low, "high": t.high}
                for code, t in sorted(plan.thresholds.items())
            ],
            "spo2_scale": plan.spo2_scale,
            "offline_after_ms": plan.offline_after // timedelta(milliseconds=1),
            "quiet_period_ms": plan.quiet_period // timedelta(milliseconds=1),
            "updated_by": plan.updated_by,
            "updated_at": plan.updated_at,
        }

    # check-ins --------------------------------------------------------------
    @staticmethod
    def _check_in(doc: Document) -> CheckIn:
        oxygen = doc.get("on_oxygen")
        return CheckIn(
            id=doc["_id"],
            patient_id=doc["patient_id"],
            taken_at=_dt(doc["taken_at"]),
            entered_by=doc["entered_by"],
            entered_by_role=doc["entered_by_role"],
            consciousness=doc.get("consciousness"),
            on_oxygen=None if oxygen is None else bool(oxygen),
        )

    @staticmethod
    def _check_in_doc(c: CheckIn) -> Document:
        return {
            "_id": c.id,
            "patient_id": c.patient_id,
            "taken_at": c.taken_at,
            "entered_by": c.entered_by,
            "entered_by_role": c.entered_by_role,
            "consciousness": c.consciousness,
            "on_oxygen": c.on_oxygen,
        }

    async def add_check_in(self, check_in: CheckIn) -> None:
        with self._op(f"check-in of patient {check_in.patient_id}"):
            await self._check_ins.insert_one(self._check_in_doc(check_in))

    async def latest_check_ins(self, patient_id: str) -> LatestCheckIns:
        newest = [("taken_at", DESCENDING), ("_id", DESCENDING)]
        with self._op(f"check-ins of patient {patient_id}"):
            consciousness = await self._check_ins.find_one(
                {"patient_id": patient_id, "consciousness": {"$ne": None}}, sort=newest
            )
            oxygen = await self._check_ins.find_one(
                {"patient_id": patient_id, "on_oxygen": {"$ne": None}}, sort=newest
            )
        return LatestCheckIns(
            consciousness=self._check_in(consciousness) if consciousness else None,
            on_oxygen=self._check_in(oxygen) if oxygen else None,
        )

    async def check_ins(self, patient_id: str, *, limit: int | None = None) -> list[CheckIn]:
        if limit is not None and limit <= 0:
            return []  # a MongoDB limit of 0 would mean "no limit"
        with self._op(f"check-ins of patient {patient_id}"):
            cursor = self._check_ins.find(
                {"patient_id": patient_id},
                sort=[("taken_at", DESCENDING), ("_id", DESCENDING)],
                limit=limit or 0,
            )
            docs = await cursor.to_list()
        return [self._check_in(d) for d in docs]

    # alerts -----------------------------------------------------------------
    @staticmethod
    def _alert_doc(alert: Alert) -> Document:
        a = alert
        return {
            "_id": a.id,
            "patient_id": a.patient_id,
            "rule": a.rule,
            "severity": a.severity.value,
            "state": a.state.value,
            "active": a.active,
            "opened_at": a.opened_at,
            "last_breach_at": a.last_breach_at,
            "detail": a.detail,
            "value": None if a.value is None else float(a.value),
            "score": a.score,
            "acknowledged_by": a.acknowledged_by,
            "acknowledged_at": a.acknowledged_at,
            "resolved_at": a.resolved_at,
            "resolved_by": a.resolved_by,
        }

    @staticmethod
    def _alert(doc: Document) -> Alert:
        value, score = doc.get("value"), doc.get("score")
        return Alert(
            id=doc["_id"],
            patient_id=doc["patient_id"],
            rule=doc["rule"],
            severity=Severity(doc["severity"]),
            state=AlertState(doc["state"]),
            opened_at=_dt(doc["opened_at"]),
            last_breach_at=_dt(doc["last_breach_at"]),
            detail=doc["detail"],
            value=None if value is None else float(value),
            score=None if score is None else int(score),
            acknowledged_by=doc["acknowledged_by"],
            acknowledged_at=_dt_or_none(doc.get("acknowledged_at")),
            resolved_at=_dt_or_none(doc.get("resolved_at")),
            resolved_by=doc["resolved_by"],
        )

    async def add_alert(self, alert: Alert) -> None:
        with self._op(f"alert {alert.id}"):
            await self._alerts.insert_one(self._alert_doc(alert))

    async def get_alert(self, alert_id: str) -> Alert | None:
        with self._op(f"alert {alert_id}"):
            doc = await self._alerts.find_one({"_id": alert_id})
        return self._alert(doc) if doc else None

    async def active_alert(self, patient_id: str, rule: str) -> Alert | None:
        with self._op(f"alerts of patient {patient_id}"):
            doc = await self._alerts.find_one(
                {"patient_id": patient_id, "rule": rule, "active": True}
            )
        return self._alert(doc) if doc else None

    async def alerts(
        self,
        patient_id: str | None = None,
        *,
        states: Collection[AlertState] | None = None,
        limit: int | None = None,
    ) -> list[Alert]:
        if (limit is not None and limit <= 0) or (states is not None and not states):
            return []  # a MongoDB limit of 0 would mean "no limit"
        query: Document = {} if patient_id is None else {"patient_id": patient_id}
        if states is not None:
            wanted = {AlertState(s) for s in states}
            if wanted == ACTIVE_STATES:
                query["active"] = True
            else:
                query["state"] = {"$in": sorted(s.value for s in wanted)}
        with self._op("alerts"):
            cursor = self._alerts.find(
                query, sort=[("opened_at", DESCENDING), ("_id", DESCENDING)], limit=limit or 0
            )
            docs = await cursor.to_list()
        return [self._alert(d) for d in docs]

    async def _update_alert(
        self, alert_id: str, match: Document, changes: Document
    ) -> Alert | None:
        with self._op(f"alert {alert_id}"):
            doc = await self._alerts.find_one_and_update(
                {"_id": alert_id, **match},
                {"$set": changes},
                return_document=ReturnDocument.AFTER,
            )
        return self._alert(doc) if doc else None

    async def record_breach(
        self,
        alert_id: str,
        *,
        at: datetime,
        severity: Severity,
        detail: str,
        value: float | None = None,
        score: int | None = None,
    ) -> Alert | None:
        return await self._update_alert(
            alert_id,
            {"active": True, "last_breach_at": {"$lt": at}},
            {
                "last_breach_at": at,
                "severity": Severity(severity).value,
                "detail": detail,
                "value": None if value is None else float(value),
                "score": score,
            },
        )

    async def acknowledge_alert(self, alert_id: str, by: str, at: datetime) -> Alert | None:
        return await self._update_alert(
            alert_id,
            {"state": AlertState.OPEN.value},
            {"state": AlertState.ACKNOWLEDGED.value, "acknowledged_by": by, "acknowledged_at": at},
        )

    async def resolve_alert(self, alert_id: str, by: str, at: datetime) -> Alert | None:
        return await self._update_alert(
            alert_id,
            {"active": True},
            {
                "state": AlertState.RESOLVED.value,
                "active": False,
                "resolved_by": by,
                "resolved_at": at,
            },
        )

    # audit log --------------------------------------------------------------
    @staticmethod
    def _audit_doc(record: AuditRecord) -> Document:
        e = record.event
        return {
            "_id": record.seq,
            "seq": record.seq,
            "at": e.at,
            "actor_id": e.actor_id,
            "actor_role": e.actor_role,
            "action": e.action,
            "outcome": e.outcome.value,
            "source": e.source,
            "patient_id": e.patient_id,
            "entity": e.entity,
            "detail": e.detail,
            "prev_hash": record.prev_hash,
            "hash": record.hash,
        }

    @staticmethod
    def _audit_record(doc: Document) -> AuditRecord:
        event = AuditEvent(
            at=_dt(doc["at"]),
            actor_id=doc["actor_id"],
            actor_role=doc["actor_role"],
            action=doc["action"],
            outcome=Outcome(doc["outcome"]),
            source=doc["source"],
            patient_id=doc["patient_id"],
            entity=doc["entity"],
            detail=doc["detail"],
        )
        return AuditRecord(int(doc["seq"]), event, doc["prev_hash"], doc["hash"])

    async def append_audit(self, event: AuditEvent) -> AuditRecord:
        for attempt in range(AUDIT_APPEND_ATTEMPTS):
            with self._op("audit append"):
                head = await self._audit.find_one({}, sort=[("seq", DESCENDING)])
            record = seal(event, self._audit_record(head) if head else None)
            try:
                with self._op("audit append"):
                    await self._audit.insert_one(self._audit_doc(record))
            except Conflict:
                # another writer took this sequence number first: seal after its entry
                await asyncio.sleep(random.uniform(0, min(0.001 * 2**attempt, 0.05)))
                continue
            return record
        log.warning("audit append lost the race %d times in a row", AUDIT_APPEND_ATTEMPTS)
        raise StoreUnavailable(
            f"audit append: lost the race for the next entry {AUDIT_APPEND_ATTEMPTS} times"
        )

    async def audit_records(
        self, *, patient_id: str | None = None, limit: int | None = None
    ) -> AsyncGenerator[AuditRecord, None]:
        if limit is not None and limit <= 0:
            return  # a MongoDB limit of 0 would mean "no limit"
        query: Document = {} if patient_id is None else {"patient_id": patient_id}
        cursor = self._audit.find(
            query, sort=[("seq", ASCENDING)], limit=limit or 0, batch_size=AUDIT_PAGE
        )
        async with cursor:
            while True:
                with self._op("audit records"):
                    doc = await anext(cursor, None)
                if doc is None:
                    return
                yield self._audit_record(doc)

    # visits ----------------------------------------------------------------------
    @staticmethod
    def _visit_doc(visit: Visit) -> Document:
        return {
            "_id": visit.id,
            "patient_id": visit.patient_id,
            "clinician_id": visit.clinician_id,
            "state": visit.state.value,
            "scheduled_at": visit.scheduled_at,
            "link_hash": visit.link_hash,
            "guest_link_hashes": [g.link_hash for g in visit.guests],
            "version": visit.version,
            "doc": visit_to_doc(visit),
        }

    async def add_visit(self, visit: Visit) -> None:
        with self._op(f"visit {visit.id}"):
            await self._visits.insert_one(self._visit_doc(visit))

    async def get_visit(self, visit_id: str) -> Visit | None:
        with self._op(f"visit {visit_id}"):
            doc = await self._visits.find_one({"_id": visit_id})
        return visit_from_doc(doc["doc"]) if doc else None

    async def find_visit_by_link(self, link_hash: str) -> Visit | None:
        with self._op("visit by link"):
            doc = await self._visits.find_one({"link_hash": link_hash})
        return visit_from_doc(doc["doc"]) if doc else None

    async def find_visit_by_guest_link(self, link_hash: str) -> Visit | None:
        with self._op("visit by guest link"):
            # `$in` rather than a plain equality: both use the multikey index on a real
            # MongoDB, and the wire-protocol stand-in the tests use answers only `$in`
            # through an index on an array field
            doc = await self._visits.find_one({"guest_link_hashes": {"$in": [link_hash]}})
        return visit_from_doc(doc["doc"]) if doc else None

    async def replace_visit(self, visit: Visit) -> bool:
        try:
            with self._op(f"visit {visit.id}"):
                result = await self._visits.replace_one(
                    {"_id": visit.id, "version": visit.version - 1}, self._visit_doc(visit)
                )
        except Conflict:  # the new link's hash is taken: never, for a 256-bit token
            return False
        return result.modified_count == 1

    async def list_visits(
        self,
        *,
        clinician_id: str | None = None,
        patient_id: str | None = None,
        states: Collection[VisitState] | None = None,
    ) -> list[Visit]:
        query: Document = {}
        if clinician_id is not None:
            query["clinician_id"] = clinician_id
        if patient_id is not None:
            query["patient_id"] = patient_id
        if states is not None:
            query["state"] = {"$in": [s.value for s in states]}
        with self._op("visits"):
            cursor = self._visits.find(
                query, sort=[("scheduled_at", ASCENDING), ("_id", ASCENDING)]
            )
            docs = await cursor.to_list()
        return [visit_from_doc(d["doc"]) for d in docs]

    # consultation records -------------------------------------------------------
    @staticmethod
    def _header_doc(h: RecordHeader) -> Document:
        return {
            "_id": h.id,
            "patient_id": h.patient_id,
            "clinician_id": h.clinician_id,
            "created_at": h.created_at,
            "rev": h.rev,
            "versions": list(h.versions),
            "signed_version": h.signed_version,
            "signed_by": h.signed_by,
            "signed_at": h.signed_at,
        }

    @staticmethod
    def _header(doc: Document) -> RecordHeader:
        return RecordHeader(
            id=doc["_id"],
            patient_id=doc["patient_id"],
            clinician_id=doc["clinician_id"],
            created_at=_dt(doc["created_at"]),
            rev=int(doc["rev"]),
            versions=tuple(doc["versions"]),
            signed_version=int(doc["signed_version"]),
            signed_by=doc["signed_by"],
            signed_at=_dt_or_none(doc.get("signed_at")),
        )

    async def add_record(self, header: RecordHeader) -> None:
        with self._op(f"record {header.id}"):
            await self._records.insert_one(self._header_doc(header))

    async def get_record(self, record_id: str) -> RecordHeader | None:
        with self._op(f"record {record_id}"):
            doc = await self._records.find_one({"_id": record_id})
        return self._header(doc) if doc else None

    async def replace_record(self, header: RecordHeader) -> bool:
        # the whole document, not $set: one write that matches only at the previous rev
        with self._op(f"record {header.id}"):
            result = await self._records.replace_one(
                {"_id": header.id, "rev": header.rev - 1}, self._header_doc(header)
            )
        return result.matched_count == 1

    async def list_records(self, patient_id: str) -> list[RecordHeader]:
        with self._op(f"records of patient {patient_id}"):
            cursor = self._records.find(
                {"patient_id": patient_id}, sort=[("created_at", ASCENDING), ("_id", ASCENDING)]
            )
            docs = await cursor.to_list()
        return [self._header(d) for d in docs]

    @staticmethod
    def _version_doc(v: SealedVersion) -> Document:
        return {
            "_id": v.id,
            "record_id": v.record_id,
            "number": v.number,
            "patient_id": v.patient_id,
            "kind": v.kind.value,
            "author_id": v.author_id,
            "created_at": v.created_at,
            "key_id": v.key_id,
            # a list, not a document keyed by name: names are data, not field names
            "fields": [{"name": name, "sealed": sealed} for name, sealed in v.fields.items()],
            "attachment_ids": list(v.attachment_ids),
        }

    @staticmethod
    def _version(doc: Document) -> SealedVersion:
        return SealedVersion(
            id=doc["_id"],
            record_id=doc["record_id"],
            number=int(doc["number"]),
            patient_id=doc["patient_id"],
            kind=VersionKind(doc["kind"]),
            author_id=doc["author_id"],
            created_at=_dt(doc["created_at"]),
            key_id=doc["key_id"],
            fields={f["name"]: bytes(f["sealed"]) for f in doc["fields"]},
            attachment_ids=tuple(doc["attachment_ids"]),
        )

    async def add_record_version(self, version: SealedVersion) -> None:
        # one document: the version and its fields are stored together or not at all
        with self._op(f"version {version.id} of record {version.record_id}"):
            await self._record_versions.insert_one(self._version_doc(version))

    async def record_versions(self, version_ids: Sequence[str]) -> list[SealedVersion]:
        if not version_ids:
            return []
        with self._op("record versions"):
            cursor = self._record_versions.find({"_id": {"$in": sorted(set(version_ids))}})
            docs = await cursor.to_list()
        found = {d["_id"]: self._version(d) for d in docs}
        return [found[i] for i in version_ids if i in found]

    @staticmethod
    def _attachment(doc: Document) -> SealedAttachment:
        return SealedAttachment(
            id=doc["_id"],
            record_id=doc["record_id"],
            patient_id=doc["patient_id"],
            author_id=doc["author_id"],
            created_at=_dt(doc["created_at"]),
            content_type=doc["content_type"],
            size=int(doc["size"]),
            key_id=doc["key_id"],
            name=bytes(doc["name"]),
            body=bytes(doc["body"]),
        )

    @staticmethod
    def _attachment_doc(a: SealedAttachment) -> Document:
        return {
            "_id": a.id,
            "record_id": a.record_id,
            "patient_id": a.patient_id,
            "author_id": a.author_id,
            "created_at": a.created_at,
            "content_type": a.content_type,
            "size": a.size,
            "key_id": a.key_id,
            "name": a.name,
            "body": a.body,
        }

    async def add_attachment(self, attachment: SealedAttachment) -> None:
        a = attachment
        with self._op(f"attachment {a.id} of record {a.record_id}"):
            await self._attachments.insert_one(self._attachment_doc(a))

    async def get_attachment(self, attachment_id: str) -> SealedAttachment | None:
        with self._op(f"attachment {attachment_id}"):
            doc = await self._attachments.find_one({"_id": attachment_id})
        return self._attachment(doc) if doc else None

    async def list_attachments(self, record_id: str) -> list[SealedAttachment]:
        with self._op(f"attachments of record {record_id}"):
            cursor = self._attachments.find(
                {"record_id": record_id}, sort=[("created_at", ASCENDING), ("_id", ASCENDING)]
            )
            docs = await cursor.to_list()
        return [self._attachment(d) for d in docs]

    # data keys ----------------------------------------------------------------------
    @staticmethod
    def _data_key(doc: Document) -> WrappedKey:
        return WrappedKey(
            id=doc["_id"],
            patient_id=doc["patient_id"],
            kek_id=doc["kek_id"],
            wrapped=bytes(doc["wrapped"]),
            created_at=_dt(doc["created_at"]),
            format=int(doc["format"]),
        )

    @staticmethod
    def _data_key_doc(key: WrappedKey) -> Document:
        return {
            "_id": key.id,
            "key_id": key.id,
            "patient_id": key.patient_id,
            "kek_id": key.kek_id,
            "wrapped": key.wrapped,
            "created_at": key.created_at,
            "format": key.format,
        }

    async def add_data_key(self, key: WrappedKey) -> None:
        with self._op(f"data key {key.id}"):
            await self._data_keys.insert_one(self._data_key_doc(key))

    async def get_data_keys(self, key_ids: Collection[str]) -> dict[str, WrappedKey]:
        if not key_ids:
            return {}
        with self._op("data keys"):
            cursor = self._data_keys.find({"_id": {"$in": sorted(set(key_ids))}})
            docs = await cursor.to_list()
        return {d["_id"]: self._data_key(d) for d in docs}

    async def data_keys_under(
        self, kek_id: str, *, after: str = "", limit: int = 1000
    ) -> list[WrappedKey]:
        if limit <= 0:
            return []  # a MongoDB limit of 0 would mean "no limit"
        with self._op(f"data keys under {kek_id}"):
            cursor = self._data_keys.find(
                {"kek_id": kek_id, "key_id": {"$gt": after}},
                sort=[("key_id", ASCENDING)],
                limit=limit,
            )
            docs = await cursor.to_list()
        return [self._data_key(d) for d in docs]

    async def rewrap_data_keys(self, changes: Sequence[tuple[WrappedKey, WrappedKey]]) -> int:
        if not changes:
            return 0  # bulk_write refuses an empty list
        # each update matches only a key still wrapped as `old`: one that another rotation
        # (or an erasure) changed since it was read is left alone and not counted
        ops = [
            UpdateOne(
                {"_id": old.id, "kek_id": old.kek_id, "wrapped": old.wrapped},
                {"$set": {"kek_id": new.kek_id, "wrapped": new.wrapped, "format": new.format}},
            )
            for old, new in changes
        ]
        with self._op("re-wrapping data keys"):
            result = await self._data_keys.bulk_write(ops, ordered=False)
        return result.modified_count

    async def count_data_keys(self) -> dict[str, int]:
        pipeline: list[Document] = [{"$group": {"_id": "$kek_id", "n": {"$sum": 1}}}]
        with self._op("counting data keys"):
            cursor = await self._data_keys.aggregate(pipeline)
            docs = await cursor.to_list()
        return {d["_id"]: int(d["n"]) for d in docs}

    async def delete_data_keys(self, patient_id: str) -> int:
        # Unlike SQLite's secure_delete, MongoDB may keep a deleted document's bytes in its
        # data files (WiredTiger reuses the space later; it does not overwrite it), as in
        # the journal, the oplog and any backup, until the collection is compacted or the
        # member resynced (the README tells operators so). Those bytes are a wrapped key:
        # they open nothing without the KEK that wrapped them.
        with self._op(f"data keys of patient {patient_id}"):
            result = await self._data_keys.delete_many({"patient_id": patient_id})
        return result.deleted_count

    @staticmethod
    def _key_check_doc(key_check: KeyCheck) -> Document:
        return {"_id": key_check.kek_id, "check": key_check.check}

    async def put_key_check(self, kek_id: str, check: bytes) -> bool:
        try:
            with self._op(f"check value of key {kek_id}"):
                await self._key_checks.insert_one(self._key_check_doc(KeyCheck(kek_id, check)))
        except Conflict:  # one is kept already: it stays
            return False
        return True

    @staticmethod
    def _key_check(doc: Document) -> KeyCheck:
        return KeyCheck(doc["_id"], bytes(doc["check"]))

    async def key_checks(self) -> dict[str, bytes]:
        with self._op("key check values"):
            docs = await self._key_checks.find({}).to_list()
        return {c.kek_id: c.check for c in map(self._key_check, docs)}

    async def delete_key_check(self, kek_id: str) -> None:
        with self._op(f"check value of key {kek_id}"):
            await self._key_checks.delete_one({"_id": kek_id})

    # break-glass ----------------------------------------------------------------------
    @staticmethod
    def _break_glass_doc(grant: BreakGlass) -> Document:
        return {
            "_id": grant.id,
            "admin_id": grant.admin_id,
            "patient_id": grant.patient_id,
            "reason": grant.reason,
            "opened_at": grant.opened_at,
            "expires_at": grant.expires_at,
        }

    @staticmethod
    def _grant(doc: Document) -> BreakGlass:
        return BreakGlass(
            id=doc["_id"],
            admin_id=doc["admin_id"],
            patient_id=doc["patient_id"],
            reason=doc["reason"],
            opened_at=_dt(doc["opened_at"]),
            expires_at=_dt(doc["expires_at"]),
        )

    async def add_break_glass(self, grant: BreakGlass) -> None:
        with self._op(f"break-glass grant {grant.id}"):
            await self._break_glass.insert_one(self._break_glass_doc(grant))

    async def break_glass_grants(
        self, *, patient_id: str | None = None, admin_id: str | None = None
    ) -> list[BreakGlass]:
        query: Document = {}
        if patient_id is not None:
            query["patient_id"] = patient_id
        if admin_id is not None:
            query["admin_id"] = admin_id
        with self._op("break-glass grants"):
            cursor = self._break_glass.find(
                query, sort=[("opened_at", DESCENDING), ("_id", DESCENDING)]
            )
            docs = await cursor.to_list()
        return [self._grant(d) for d in docs]

    # backup and restore -------------------------------------------------------------
    def _backup_collection(self, collection: str) -> AsyncCollection[Document]:
        try:
            return self._backup_collections[collection]
        except KeyError:
            raise ValueError(f"no collection {collection}") from None

    def _backup_reader(self, collection: str) -> Callable[[Document], Any]:
        """The domain object of a stored document, as the collection's reads make it."""
        match collection:
            case "users":
                return self._user
            case "patients":
                return self._patient
            case "care_team_members":
                return lambda d: CareTeamMember(d["patient_id"], d["clinician_id"])
            case "api_tokens":
                return self._token
            case "clinic_settings":
                return lambda d: Setting(d["_id"], str(d["value"]))
            case "devices":
                return self._device
            case "device_presence":
                return self._presence_of
            case "monitoring_plans":
                return self._plan
            case "check_ins":
                return self._check_in
            case "alerts":
                return self._alert
            case "visits":
                return lambda d: visit_from_doc(d["doc"])
            case "observations":
                return self._layout.observation
            case "break_glass":
                return self._grant
            case "records":
                return self._header
            case "record_versions":
                return self._version
            case "attachments":
                return self._attachment
            case "data_keys":
                return self._data_key
            case "key_checks":
                return self._key_check
            case "audit_log":
                return self._audit_record
        raise ValueError(f"no collection {collection}")

    def _backup_doc(self, collection: str, item: Any) -> Document:
        """The document the collection's writes store for a domain object."""
        match collection:
            case "users":
                return self._user_doc(item)
            case "patients":
                return self._patient_doc(item)
            case "care_team_members":
                return self._care_team_doc(item)
            case "api_tokens":
                return self._token_doc(item)
            case "clinic_settings":
                return self._setting_doc(item)
            case "devices":
                return self._device_doc(item)
            case "device_presence":
                return self._presence_doc(item)
            case "monitoring_plans":
                return self._plan_doc(item)
            case "check_ins":
                return self._check_in_doc(item)
            case "alerts":
                return self._alert_doc(item)
            case "visits":
                return self._visit_doc(item)
            case "break_glass":
                return self._break_glass_doc(item)
            case "records":
                return self._header_doc(item)
            case "record_versions":
                return self._version_doc(item)
            case "attachments":
                return self._attachment_doc(item)
            case "data_keys":
                return self._data_key_doc(item)
            case "key_checks":
                return self._key_check_doc(item)
            case "audit_log":
                # as sealed: its number and hashes are kept, so the chain verifies after
                # a restore exactly as before
                return self._audit_doc(item)
        raise ValueError(f"no collection {collection}")

    def _read_session(self) -> AsyncClientSession | None:
        """The snapshot session, when the current task reads inside this store's
        `snapshot`; None otherwise (each read then sees the store as it is)."""
        active = _SNAPSHOT.get()
        return active[1] if active is not None and active[0] is self else None

    async def backup_counts(self) -> dict[str, int]:
        session = self._read_session()
        counts: dict[str, int] = {}
        with self._op("backup counts"):
            for name in COLLECTIONS:
                source = self._backup_collection(name)
                counts[name] = await source.count_documents({}, session=session)
        return counts

    async def backup_dump(self, collection: str, *, batch: int = 1000) -> AsyncIterator[list[Any]]:
        """Pages in `_id` order, each one query after the last `_id` of the one before
        (no cursor stays open while the caller writes a page out).

        `_id` is the natural key where there is one (the audit log's is its sequence
        number), else the ObjectId the driver gave the document when it was inserted
        (care team members, observations). In a time-series collection that ObjectId is
        the only field that tells two documents apart: MongoDB enforces no unique key
        there, and a reading stored twice (see `_add_through_key_log`) is read twice, as
        `backup_counts` counts it. A time-series collection has no index on `_id`, so
        each page there sorts the readings after the last one read (the first `batch`).
        """
        if batch <= 0:
            raise ValueError(f"batch: expected a positive size, got {batch}")
        source = self._backup_collection(collection)
        read = self._backup_reader(collection)
        # the audit log in the order its readers use (seq, which its _id repeats)
        key = "seq" if collection == "audit_log" else "_id"
        after: Any = None
        while True:
            query: Document = {} if after is None else {key: {"$gt": after}}
            with self._op(f"backup of {collection}"):
                cursor = source.find(
                    query, sort=[(key, ASCENDING)], limit=batch, session=self._read_session()
                )
                docs = await cursor.to_list()
            if not docs:
                return
            after = docs[-1][key]
            yield [read(d) for d in docs]
            if len(docs) < batch:
                return

    async def backup_load(self, collection: str, items: Sequence[Any]) -> None:
        """One ordered insert of the documents the collection's writes store: on a key
        that is taken it stops there, and raises `Conflict`; the documents before it stay
        (MongoDB has no all-or-nothing insert outside a transaction). Observations go
        through `add_observations`, which also logs their keys where the layout has a
        key log."""
        if not items:
            return
        if collection == "observations":
            if await self.add_observations(items) != len(items):
                raise Conflict("observations: some were stored already")
            return
        target = self._backup_collection(collection)
        docs = [self._backup_doc(collection, item) for item in items]
        what = f"restoring {collection}"
        with self._op(what):
            try:
                await target.insert_many(docs, ordered=True)
            except BulkWriteError as exc:
                _duplicates_only(exc, what)  # anything else: StoreUnavailable
                first = exc.details["writeErrors"][0]
                # a duplicate key: `_op` makes it a `Conflict` naming the key's fields
                raise DuplicateKeyError(
                    "duplicate key", DUPLICATE_KEY, {"keyPattern": first.get("keyPattern")}
                ) from exc

    async def _snapshot_reads(self) -> bool:
        """Whether the server keeps the history a snapshot read needs: a replica set or a
        sharded cluster (`hello`'s setName, or "isdbgrid" from a mongos) of MongoDB 5.0 or
        newer. A standalone server has no snapshot reads (they need a replica set)."""
        with self._op("hello"):
            hello = await self._client.admin.command("hello")
        clustered = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
        return clustered and int(hello.get("maxWireVersion", 0)) >= SNAPSHOT_READS_WIRE_VERSION

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[bool]:
        """On a replica set or sharded cluster, a snapshot session that this task's
        `backup_counts` and `backup_dump` read in: every read sees the majority-committed
        data of the time of the first one. The server keeps that time readable for
        `minSnapshotHistoryWindowInSeconds` (300 s by default): a backup that reads for
        longer may fail with SnapshotTooOld, never mixing times. Any other server (a
        standalone one, or one older than 5.0) reads no snapshot: each read then sees the
        store as it is, and this yields False.
        """
        if not await self._snapshot_reads():
            log.warning(
                "backup: this MongoDB server reads no snapshot (standalone, or older than "
                "5.0); the backup is not of one point in time (the order of its collections "
                "keeps references whole)"
            )
            yield False
            return
        with self._op("snapshot session"):
            session = self._client.start_session(snapshot=True)
        token = _SNAPSHOT.set((self, session))
        try:
            yield True
        finally:
            _SNAPSHOT.reset(token)
            await session.end_session()  # returns the session to the pool: no I/O
