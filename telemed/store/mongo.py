"""The production store: MongoDB through PyMongo's async API (`AsyncMongoClient`).

One document per domain value, keyed by `_id` where the value has a natural key (user,
patient, token and device ids, session and throttle keys, setting keys, audit sequence
numbers). Observations keep a generated `_id`; a unique (device_id, code, taken_at) index
absorbs redelivered readings, and their writes are journaled before they are acknowledged.
Writes wait for a majority of the replica set and are retried once on a transient
error. Datetimes are BSON dates: UTC, to the millisecond, as the domain keeps them.
Indexes are created at open; creating an index that already exists is a no-op.

The audit log needs no transaction: an entry's `_id` is its sequence number (repeated as
`seq` for the per-patient index), so of two writers, in any processes, that read the
same head only one can insert the next entry; the other gets a duplicate key, reads the
new head and seals again. Nothing in MongoDB itself forbids updating or deleting an
entry: give the server's database user only the `find` and `insert` actions on
`audit_log` (a custom role) to make the log append-only there too.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
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
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from telemed.accounts import Patient, Role, User
from telemed.audit import AuditEvent, AuditRecord, Outcome, seal
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
from telemed.sessions import Session
from telemed.throttle import Throttle
from telemed.tokens import ApiToken

log = logging.getLogger(__name__)

Document = dict[str, Any]

SERVER_SELECTION_TIMEOUT_MS = 5_000
AUDIT_APPEND_ATTEMPTS = 64  # each lost race means another writer's entry went in
AUDIT_PAGE = 500
DUPLICATE_KEY = 11000  # the server's error code for a unique index violation

USERS = "users"
PATIENTS = "patients"
CARE_TEAM_MEMBERS = "care_team_members"
API_TOKENS = "api_tokens"
SESSIONS = "sessions"
LOGIN_THROTTLE = "login_throttle"
CLINIC_SETTINGS = "clinic_settings"
DEVICES = "devices"
# A regular collection, not a time-series one: a time-series collection cannot have a
# unique index, and the (device_id, code, taken_at) key is what absorbs redeliveries.
OBSERVATIONS = "observations"
AUDIT_LOG = "audit_log"
DEVICE_PRESENCE = "device_presence"
MONITORING_PLANS = "monitoring_plans"
CHECK_INS = "check_ins"
# `active` repeats "state is not resolved": a partial index can filter on equality only
ALERTS = "alerts"

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
    OBSERVATIONS: [
        IndexModel(
            [("device_id", ASCENDING), ("code", ASCENDING), ("taken_at", ASCENDING)],
            name="device_code_taken_at_unique",
            unique=True,
        ),
        # serves `observations` for one code (in either direction) and, read backwards,
        # `latest_observations`; `device_id` last keeps the tie order without a sort
        IndexModel(
            [
                ("patient_id", ASCENDING),
                ("code", ASCENDING),
                ("taken_at", ASCENDING),
                ("device_id", ASCENDING),
            ],
            name="by_patient_code_taken_at",
        ),
    ],
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
    AUDIT_LOG: [
        # `seq` repeats `_id` so that the per-patient index can end with it
        IndexModel([("seq", ASCENDING)], name="seq_unique", unique=True),
        IndexModel([("patient_id", ASCENDING), ("seq", ASCENDING)], name="by_patient_seq"),
    ],
}


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
    details = exc.details
    codes = {error.get("code") for error in details.get("writeErrors", [])}
    concern = [error.get("errmsg", "") for error in details.get("writeConcernErrors", [])]
    if concern or codes - {DUPLICATE_KEY}:
        # the codes and messages only: a write error carries the document (vitals)
        raise StoreUnavailable(
            f"observations: write errors {sorted(map(str, codes))}, write concern {concern}"
        ) from exc
    return int(details.get("nInserted", 0))


def _dt(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise StoreUnavailable(f"expected a stored date, found {type(value).__name__}")
    return value.astimezone(UTC)


def _dt_or_none(value: Any) -> datetime | None:
    return None if value is None else _dt(value)


class MongoStore:
    kind = "mongodb"

    def __init__(self, client: AsyncMongoClient[Document], database: str) -> None:
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
        self._audit: AsyncCollection[Document] = self._db[AUDIT_LOG]
        self._presence: AsyncCollection[Document] = self._db[DEVICE_PRESENCE]
        self._plans: AsyncCollection[Document] = self._db[MONITORING_PLANS]
        self._check_ins: AsyncCollection[Document] = self._db[CHECK_INS]
        self._alerts: AsyncCollection[Document] = self._db[ALERTS]
        self._closed = False

    @contextmanager
    def _op(self, what: str) -> Iterator[None]:
        """One driver call: refused once closed (the driver would silently reconnect)."""
        if self._closed:
            raise StoreUnavailable(f"{what}: the MongoDB store is closed")
        with _translated(what):
            yield

    @classmethod
    async def open(cls, url: str, database: str) -> MongoStore:
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
        store = cls(client, database)
        try:
            await store.ping()
            await store._create_indexes()
        except BaseException:
            await client.close()
            raise
        return store

    async def _create_indexes(self) -> None:
        with self._op("creating indexes"):
            for name, indexes in INDEXES.items():
                await self._db[name].create_indexes(indexes)

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

    async def add_patient(self, patient: Patient) -> None:
        doc: Document = {
            "_id": patient.id,
            "name": patient.name,
            # BSON has no calendar date; ISO 8601 keeps it exact and sortable
            "birth_date": patient.birth_date.isoformat() if patient.birth_date else None,
            "language": patient.language,
            "created_at": patient.created_at,
        }
        with self._op(f"patient {patient.id}"):
            await self._patients.insert_one(doc)

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
    async def add_care_team_member(self, patient_id: str, clinician_id: str) -> bool:
        try:
            with self._op(f"care team of patient {patient_id}"):
                await self._care_teams.insert_one(
                    {"patient_id": patient_id, "clinician_id": clinician_id}
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

    async def add_token(self, token: ApiToken) -> None:
        doc: Document = {
            "_id": token.id,
            "user_id": token.user_id,
            "name": token.name,
            "token_hash": token.token_hash,
            "created_at": token.created_at,
            "revoked_at": token.revoked_at,
        }
        with self._op(f"API token {token.id}"):
            await self._tokens.insert_one(doc)

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

    async def put_setting(self, key: str, value: str) -> None:
        with self._op(f"setting {key}"):
            await self._settings.replace_one(
                {"_id": key}, {"_id": key, "value": value}, upsert=True
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

    async def add_device(self, device: Device) -> None:
        doc: Document = {
            "_id": device.id,
            "patient_id": device.patient_id,
            "kind": device.kind,
            "created_at": device.created_at,
            "revoked_at": device.revoked_at,
        }
        with self._op(f"device {device.id}"):
            await self._devices.insert_one(doc)

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
    @staticmethod
    def _observation(doc: Document) -> Observation:
        return Observation(
            patient_id=doc["patient_id"],
            device_id=doc["device_id"],
            code=doc["code"],
            value=float(doc["value"]),
            unit=doc["unit"],
            taken_at=_dt(doc["taken_at"]),
            received_at=_dt(doc["received_at"]),
        )

    async def add_observations(self, observations: Sequence[Observation]) -> int:
        if not observations:
            return 0  # insert_many refuses an empty list
        docs: list[Document] = [
            {
                "patient_id": o.patient_id,
                "device_id": o.device_id,
                "code": o.code,
                "value": float(o.value),
                "unit": o.unit,
                "taken_at": o.taken_at,
                "received_at": o.received_at,
            }
            for o in observations
        ]
        with self._op("observations"):
            try:
                # unordered: one duplicate does not stop the rest of the batch
                result = await self._observations.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                return _inserted_besides_duplicates(exc)
        return len(result.inserted_ids)

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
        query: Document = {"patient_id": patient_id}
        if code is not None:
            query["code"] = code
        taken_at: Document = {}
        if since is not None:
            taken_at["$gte"] = since
        if until is not None:
            taken_at["$lte"] = until
        if taken_at:
            query["taken_at"] = taken_at
        direction = DESCENDING if newest_first else ASCENDING
        sort = [("taken_at", direction), ("device_id", direction), ("code", direction)]
        with self._op(f"observations of patient {patient_id}"):
            cursor = self._observations.find(query, sort=sort, limit=limit or 0)
            docs = await cursor.to_list()
        return [self._observation(d) for d in docs]

    async def latest_observations(self, patient_id: str) -> list[Observation]:
        pipeline: list[Document] = [
            {"$match": {"patient_id": patient_id}},
            # the index read backwards: each code's newest reading comes first
            {"$sort": {"code": DESCENDING, "taken_at": DESCENDING, "device_id": DESCENDING}},
            {"$group": {"_id": "$code", "latest": {"$first": "$$ROOT"}}},
            {"$sort": {"_id": ASCENDING}},
        ]
        with self._op(f"latest observations of patient {patient_id}"):
            cursor = await self._observations.aggregate(pipeline)
            docs = await cursor.to_list()
        return [self._observation(d["latest"]) for d in docs]

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
        doc: Document = {
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
        with self._op(f"monitoring plan of patient {plan.patient_id}"):
            await self._plans.replace_one({"_id": plan.patient_id}, doc, upsert=True)

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

    async def add_check_in(self, check_in: CheckIn) -> None:
        c = check_in
        doc: Document = {
            "_id": c.id,
            "patient_id": c.patient_id,
            "taken_at": c.taken_at,
            "entered_by": c.entered_by,
            "entered_by_role": c.entered_by_role,
            "consciousness": c.consciousness,
            "on_oxygen": c.on_oxygen,
        }
        with self._op(f"check-in of patient {c.patient_id}"):
            await self._check_ins.insert_one(doc)

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
