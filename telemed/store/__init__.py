"""The store: one interface, two adapters (SQLite embedded, MongoDB in production).

Every adapter passes the same contract suite (tests/telemed/store/test_contract.py).
Later features add their collections here, as methods on `Store`, in both adapters.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from telemed.accounts import Patient, Role, User
from telemed.audit import AuditEvent, AuditRecord
from telemed.monitoring import (
    Alert,
    AlertState,
    CheckIn,
    Device,
    DevicePresence,
    LatestCheckIns,
    MonitoringPlan,
    Observation,
    Severity,
)
from telemed.records import BreakGlass, RecordHeader, SealedAttachment, SealedVersion
from telemed.sealing import WrappedKey
from telemed.sessions import Session
from telemed.settings import StoreSettings
from telemed.throttle import Throttle
from telemed.tokens import ApiToken
from telemed.visits import Visit, VisitState


class Store(Protocol):
    """What the rest of the server may ask of storage. Datetimes are UTC, to the ms."""

    kind: str  # "sqlite" or "mongodb"

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers now."""

    async def is_empty(self) -> bool:
        """True when no user exists yet (a new installation)."""

    # users ---------------------------------------------------------------
    async def add_user(self, user: User) -> None:
        """Raise `Conflict` if the e-mail address or id is taken."""

    async def get_user(self, user_id: str) -> User | None: ...

    async def find_user_by_email(self, email: str) -> User | None: ...

    async def list_users(self, role: Role | None = None) -> list[User]:
        """Ordered by name, then id."""

    async def update_user(self, user: User) -> None:
        """Replace the user with the same id; raise `NotFound` if there is none."""

    # patients ------------------------------------------------------------
    async def add_patient(self, patient: Patient) -> None:
        """Raise `Conflict` if the id is taken."""

    async def get_patient(self, patient_id: str) -> Patient | None: ...

    async def list_patients(self, ids: list[str] | None = None) -> list[Patient]:
        """All patients, or those with these ids; ordered by name, then id."""

    # care teams ----------------------------------------------------------
    async def add_care_team_member(self, patient_id: str, clinician_id: str) -> bool:
        """False if the clinician already was on the patient's team."""

    async def remove_care_team_member(self, patient_id: str, clinician_id: str) -> bool:
        """False if the clinician was not on the patient's team."""

    async def care_team(self, patient_id: str) -> frozenset[str]:
        """The clinician ids on the patient's care team."""

    async def patients_of(self, clinician_id: str) -> frozenset[str]:
        """The patient ids whose care team includes the clinician."""

    # API tokens ----------------------------------------------------------
    async def add_token(self, token: ApiToken) -> None: ...

    async def get_token(self, token_id: str) -> ApiToken | None: ...

    async def find_token(self, token_hash: str) -> ApiToken | None: ...

    async def list_tokens(self, user_id: str | None = None) -> list[ApiToken]:
        """Ordered by creation time."""

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        """Mark revoked. False if unknown or already revoked."""

    # sessions ------------------------------------------------------------
    async def put_session(self, session: Session) -> None:
        """Insert or replace by key."""

    async def get_session(self, key: str) -> Session | None: ...

    async def delete_session(self, key: str) -> None: ...

    async def delete_user_sessions(self, user_id: str) -> int: ...

    # login throttling ----------------------------------------------------
    async def get_throttle(self, key: str) -> Throttle | None: ...

    async def put_throttle(self, throttle: Throttle) -> None: ...

    async def delete_throttle(self, key: str) -> None: ...

    # clinic settings that admins change at run time ------------------------
    async def get_setting(self, key: str) -> str | None: ...

    async def put_setting(self, key: str, value: str) -> None: ...

    # wearables -----------------------------------------------------------
    async def add_device(self, device: Device) -> None:
        """Raise `Conflict` if the id is taken."""

    async def get_device(self, device_id: str) -> Device | None: ...

    async def list_devices(self, patient_id: str | None = None) -> list[Device]:
        """All devices, or one patient's; ordered by creation time, then id."""

    async def revoke_device(self, device_id: str, at: datetime) -> bool:
        """Mark revoked. False if unknown or already revoked."""

    # observations (vital signs) --------------------------------------------
    async def add_observations(self, observations: Sequence[Observation]) -> int:
        """Store a batch durably; return how many were new. Values must be finite.

        An observation whose (device_id, code, taken_at) is already stored, or repeated in
        the batch, is skipped (the stored one is kept): redelivered readings are absorbed,
        never stored twice. When this returns, the whole batch survives a crash. When it
        raises, any part of it may or may not be stored (SQLite commits all or nothing;
        MongoDB's unordered insert may have stored some): the caller retries the whole
        batch, and the dedupe key makes that safe.
        """

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
        """One patient's observations with since <= taken_at <= until, ordered by taken_at
        then device_id then code; `newest_first` reverses that whole order."""

    async def latest_observations(self, patient_id: str) -> list[Observation]:
        """The newest observation of each code for the patient, ordered by code; on a tie
        (two devices, same instant) the one `newest_first` would list first."""

    # device presence -------------------------------------------------------
    async def set_device_presence(self, device_id: str, online: bool, at: datetime) -> bool:
        """Record a device's retained status. True if it changed (or is the first one);
        False if it was already `online`, which keeps the time it first became so."""

    async def record_device_activity(self, latest: Mapping[str, datetime]) -> None:
        """For each device id, its newest reading time in a batch: `last_seen_at` becomes
        the later of the stored one and this (a late batch never moves it back). One write
        for the whole mapping: ingestion calls it once per committed batch."""

    async def get_device_presence(self, device_id: str) -> DevicePresence | None: ...

    async def list_device_presence(
        self, device_ids: Collection[str] | None = None
    ) -> list[DevicePresence]:
        """All known presences, or those of these devices; ordered by device id."""

    # monitoring plans ------------------------------------------------------
    async def get_monitoring_plan(self, patient_id: str) -> MonitoringPlan | None:
        """None while the patient's care team changed nothing (the defaults apply)."""

    async def put_monitoring_plan(self, plan: MonitoringPlan) -> None:
        """Insert or replace the patient's plan."""

    # check-ins (consciousness, supplemental oxygen) --------------------------
    async def add_check_in(self, check_in: CheckIn) -> None:
        """Raise `Conflict` if the id is taken."""

    async def latest_check_ins(self, patient_id: str) -> LatestCheckIns:
        """The newest check-in that gave consciousness, and the newest that gave oxygen;
        on a tie in time, the greater id."""

    async def check_ins(self, patient_id: str, *, limit: int | None = None) -> list[CheckIn]:
        """Newest first (taken_at, then id, descending)."""

    # alerts ----------------------------------------------------------------
    async def add_alert(self, alert: Alert) -> None:
        """Raise `Conflict` if the id is taken, or if `alert` is not resolved while another
        alert of the same (patient_id, rule) is not resolved either: the store itself keeps
        at most one active alert per patient and rule, across processes."""

    async def get_alert(self, alert_id: str) -> Alert | None: ...

    async def active_alert(self, patient_id: str, rule: str) -> Alert | None:
        """The patient's alert for `rule` that is not resolved, if there is one."""

    async def alerts(
        self,
        patient_id: str | None = None,
        *,
        states: Collection[AlertState] | None = None,
        limit: int | None = None,
    ) -> list[Alert]:
        """One patient's alerts (or every patient's), optionally in these states; newest
        opened first (opened_at, then id, descending)."""

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
        """The condition held again at `at`: if the alert is active and `at` is after its
        `last_breach_at`, set those fields atomically and return the alert as updated;
        otherwise (resolved, unknown, or an older breach arriving late) change nothing and
        return None. The state and acknowledgement are kept."""

    async def acknowledge_alert(self, alert_id: str, by: str, at: datetime) -> Alert | None:
        """Open -> acknowledged, by whom and when; None (nothing changed) unless open."""

    async def resolve_alert(self, alert_id: str, by: str, at: datetime) -> Alert | None:
        """Open or acknowledged -> resolved; None (nothing changed) unless active."""

    # audit log -----------------------------------------------------------
    async def append_audit(self, event: AuditEvent) -> AuditRecord:
        """Seal `event` after the current head, atomically, even across processes."""

    def audit_records(
        self, *, patient_id: str | None = None, limit: int | None = None
    ) -> AsyncGenerator[AuditRecord, None]:
        """Stored entries in sequence order (oldest first), optionally for one patient."""

    # video visits ----------------------------------------------------------
    async def add_visit(self, visit: Visit) -> None:
        """Raise `Conflict` if the id or the link's hash is taken."""

    async def get_visit(self, visit_id: str) -> Visit | None: ...

    async def find_visit_by_link(self, link_hash: str) -> Visit | None: ...

    async def find_visit_by_guest_link(self, link_hash: str) -> Visit | None:
        """The visit one of whose guests' join links has this hash."""

    async def replace_visit(self, visit: Visit) -> bool:
        """Store `visit` in place of the stored one if that is at `visit.version - 1`
        (compare and set, across processes); False, changing nothing, otherwise."""

    async def list_visits(
        self,
        *,
        clinician_id: str | None = None,
        patient_id: str | None = None,
        states: Collection[VisitState] | None = None,
    ) -> list[Visit]:
        """Visits matching every filter given, ordered by scheduled time, then id."""

    # consultation records (sealed; see telemed.records and telemed.sealing) --------
    async def add_record(self, header: RecordHeader) -> None:
        """Raise `Conflict` if a record with this id exists."""

    async def get_record(self, record_id: str) -> RecordHeader | None: ...

    async def replace_record(self, header: RecordHeader) -> bool:
        """Store `header` in place of the stored one if that is at `header.rev - 1`
        (compare and set, across processes); False, changing nothing, otherwise."""

    async def list_records(self, patient_id: str) -> list[RecordHeader]:
        """The patient's records, ordered by creation time, then id."""

    async def add_record_version(self, version: SealedVersion) -> None:
        """Raise `Conflict` if the id is taken. A version counts only once a header lists
        it: one that lost its header's compare and set is never read."""

    async def record_versions(self, version_ids: Sequence[str]) -> list[SealedVersion]:
        """The stored versions with these ids, in the order given (unknown ids skipped)."""

    async def add_attachment(self, attachment: SealedAttachment) -> None:
        """Raise `Conflict` if the id is taken."""

    async def get_attachment(self, attachment_id: str) -> SealedAttachment | None: ...

    async def list_attachments(self, record_id: str) -> list[SealedAttachment]:
        """A record's attachments, ordered by creation time, then id."""

    # data keys, wrapped by key-encryption keys --------------------------------------
    async def add_data_key(self, key: WrappedKey) -> None:
        """Raise `Conflict` if the id is taken."""

    async def get_data_keys(self, key_ids: Collection[str]) -> dict[str, WrappedKey]:
        """The stored keys among these ids, by id (a destroyed key is simply absent)."""

    async def data_keys_under(
        self, kek_id: str, *, after: str = "", limit: int = 1000
    ) -> list[WrappedKey]:
        """Keys wrapped by `kek_id` whose id sorts after `after`, ordered by id."""

    async def rewrap_data_keys(self, changes: Sequence[tuple[WrappedKey, WrappedKey]]) -> int:
        """For each (old, new): replace the stored key with `new` if it still is `old`
        (same KEK and wrapped bytes); return how many changed. One durable write."""

    async def count_data_keys(self) -> dict[str, int]:
        """How many data keys each KEK id wraps (ids that wrap none are absent)."""

    async def delete_data_keys(self, patient_id: str) -> int:
        """Destroy every data key of the patient (crypto-shredding), so that the bytes are
        gone from the store's files too, as far as the store can ensure; return how many."""

    async def put_key_check(self, kek_id: str, check: bytes) -> bool:
        """Keep the KEK's check value unless one is kept already; True if this one was."""

    async def key_checks(self) -> dict[str, bytes]: ...

    async def delete_key_check(self, kek_id: str) -> None: ...

    # break-glass access -------------------------------------------------------------
    async def add_break_glass(self, grant: BreakGlass) -> None:
        """Raise `Conflict` if the id is taken."""

    async def break_glass_grants(
        self, *, patient_id: str | None = None, admin_id: str | None = None
    ) -> list[BreakGlass]:
        """Grants matching every filter given, newest opened first (then id, descending)."""

    # backup and restore (see telemed.snapshot for the collections and their order) --
    async def backup_counts(self) -> dict[str, int]:
        """How many documents each collection of `snapshot.COLLECTIONS` holds now."""

    def backup_dump(self, collection: str, *, batch: int = 1000) -> AsyncIterator[list[Any]]:
        """Every domain object of the collection, in batches of at most `batch`."""

    async def backup_load(self, collection: str, items: Sequence[Any]) -> None:
        """Add these objects as they are (ids, times, hashes and all) to a store that
        does not hold them yet; raise `Conflict` if one is there already."""

    def snapshot(self) -> AbstractAsyncContextManager[bool]:
        """Reads made inside see the store at one point in time, where the store can do
        that (SQLite: one read transaction); yields whether it could."""


async def open_store(settings: StoreSettings, *, base_dir: str = ".") -> Store:
    """Open (and migrate, or index) the store named by `settings.url`."""
    if settings.url.startswith("sqlite:///"):
        from telemed.store.sqlite import SqliteStore

        return await SqliteStore.open(settings.url, base_dir=base_dir)
    from telemed.store.mongo import MongoStore

    return await MongoStore.open(
        settings.url, settings.database, observation_layout=settings.observation_layout
    )
