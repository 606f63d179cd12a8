"""The embedded store: one SQLite file in WAL mode, synced to disk at every commit.

All SQLite calls run on one dedicated thread that owns the connection, so the event loop
never blocks and statements never interleave. Other processes (the CLI while the server
runs) share the file through WAL and a busy timeout. The schema is versioned: the
migrations below run in order at open, each in its own transaction, recorded in
`PRAGMA user_version`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import json
import os
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from telemed.accounts import Patient, Role, User
from telemed.audit import AuditEvent, AuditRecord, Outcome, seal
from telemed.clock import epoch_ms, from_epoch_ms
from telemed.errors import Conflict, NotFound, StoreUnavailable
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

T = TypeVar("T")

PAGE_CACHE_KIB = 64 * 1024  # per connection

MIGRATIONS: tuple[str, ...] = (
    # 1: accounts, care teams, tokens, sessions, throttling, settings, audit
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        active INTEGER NOT NULL,
        totp_secret TEXT NOT NULL,
        totp_last_step INTEGER NOT NULL,
        recovery_codes TEXT NOT NULL
    );
    CREATE TABLE patients (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        birth_date TEXT,
        language TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE care_team_members (
        patient_id TEXT NOT NULL,
        clinician_id TEXT NOT NULL,
        PRIMARY KEY (patient_id, clinician_id)
    );
    CREATE INDEX care_team_members_by_clinician ON care_team_members (clinician_id);
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE sessions (
        key TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_seen_at TEXT NOT NULL,
        csrf_token TEXT NOT NULL,
        mfa_pending INTEGER NOT NULL,
        source TEXT NOT NULL
    );
    CREATE INDEX sessions_by_user ON sessions (user_id);
    CREATE TABLE login_throttle (
        key TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        last_failure_at TEXT NOT NULL
    );
    CREATE TABLE clinic_settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor_id TEXT NOT NULL,
        actor_role TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        source TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        entity TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_log_by_patient ON audit_log (patient_id, seq);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """,
    # 2: wearables and their observations
    """
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE INDEX devices_by_patient ON devices (patient_id, created_at, id);
    CREATE TABLE observations (
        patient_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        code TEXT NOT NULL,
        value REAL NOT NULL,
        unit TEXT NOT NULL,
        taken_at TEXT NOT NULL,
        received_at TEXT NOT NULL,
        PRIMARY KEY (device_id, code, taken_at)
    ) WITHOUT ROWID;
    CREATE INDEX observations_by_patient
        ON observations (patient_id, code, taken_at, device_id);
    """,
    # 3: alerting: device presence, monitoring plans, check-ins, alerts
    """
    CREATE TABLE device_presence (
        device_id TEXT PRIMARY KEY,
        online INTEGER,
        status_at TEXT,
        last_seen_at TEXT
    ) WITHOUT ROWID;
    CREATE TABLE monitoring_plans (
        patient_id TEXT PRIMARY KEY,
        thresholds TEXT NOT NULL,
        spo2_scale INTEGER NOT NULL CHECK (spo2_scale IN (1, 2)),
        offline_after_ms INTEGER NOT NULL,
        quiet_period_ms INTEGER NOT NULL,
        updated_by TEXT NOT NULL,
        updated_at TEXT
    );
    CREATE TABLE check_ins (
        id TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL,
        taken_at TEXT NOT NULL,
        entered_by TEXT NOT NULL,
        entered_by_role TEXT NOT NULL,
        consciousness TEXT,
        on_oxygen INTEGER
    );
    CREATE INDEX check_ins_by_patient ON check_ins (patient_id, taken_at, id);
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL,
        rule TEXT NOT NULL,
        severity TEXT NOT NULL,
        state TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        last_breach_at TEXT NOT NULL,
        detail TEXT NOT NULL,
        value REAL,
        score INTEGER,
        acknowledged_by TEXT NOT NULL,
        acknowledged_at TEXT,
        resolved_at TEXT,
        resolved_by TEXT NOT NULL
    );
    -- the rule "at most one active alert per patient and rule", kept by the store
    CREATE UNIQUE INDEX alerts_one_active ON alerts (patient_id, rule)
        WHERE state != 'resolved';
    CREATE INDEX alerts_by_patient ON alerts (patient_id, opened_at, id);
    CREATE INDEX alerts_active ON alerts (opened_at, id) WHERE state != 'resolved';
    """,
    # 4: video visits, each kept whole as a JSON document beside the columns it is found by
    """
    CREATE TABLE visits (
        id TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL,
        clinician_id TEXT NOT NULL,
        state TEXT NOT NULL,
        scheduled_at TEXT NOT NULL,
        link_hash TEXT NOT NULL UNIQUE,
        version INTEGER NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX visits_by_clinician ON visits (clinician_id, scheduled_at, id);
    CREATE INDEX visits_by_patient ON visits (patient_id, scheduled_at, id);
    """,
    # 5: consultation records, sealed; their data keys, wrapped; break-glass grants
    """
    CREATE TABLE data_keys (
        id TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL,
        kek_id TEXT NOT NULL,
        wrapped BLOB NOT NULL,
        created_at TEXT NOT NULL,
        format INTEGER NOT NULL
    ) WITHOUT ROWID;  -- kept in id order: a rotation re-wraps runs of neighbouring rows
    CREATE INDEX data_keys_by_kek ON data_keys (kek_id, id);
    CREATE INDEX data_keys_by_patient ON data_keys (patient_id);
    CREATE TABLE key_checks (kek_id TEXT PRIMARY KEY, check_value BLOB NOT NULL);
    CREATE TABLE records (
        id TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        rev INTEGER NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX records_by_patient ON records (patient_id, created_at, id);
    CREATE TABLE record_versions (
        id TEXT PRIMARY KEY,
        record_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        patient_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        author_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        key_id TEXT NOT NULL,
        attachment_ids TEXT NOT NULL
    );
    CREATE TABLE record_fields (
        version_id TEXT NOT NULL REFERENCES record_versions (id),
        name TEXT NOT NULL,
        sealed BLOB NOT NULL,
        PRIMARY KEY (version_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE attachments (
        id TEXT PRIMARY KEY,
        record_id TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        author_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        name BLOB NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX attachments_by_record ON attachments (record_id, created_at, id);
    CREATE TABLE break_glass (
        id TEXT PRIMARY KEY,
        admin_id TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE INDEX break_glass_by_patient ON break_glass (patient_id, opened_at);
    """,
    # 6: the join links of a visit's guests (the guests themselves are in the visit's doc)
    """
    CREATE TABLE visit_guest_links (
        link_hash TEXT PRIMARY KEY,
        visit_id TEXT NOT NULL REFERENCES visits (id)
    ) WITHOUT ROWID;
    CREATE INDEX visit_guest_links_by_visit ON visit_guest_links (visit_id);
    """,
    # 7: readings filed by device, then time: a batch of readings from many devices lands
    # on one B-tree region per device instead of one per (device, code) in two indexes.
    # Times are integer milliseconds; a device (with its patient) is a small integer, its
    # "source". A device's readings under two patients (a restored backup may hold some)
    # are two sources, each patient's readings staying theirs.
    """
    CREATE TABLE observation_sources (
        num INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        UNIQUE (device_id, patient_id)
    );
    CREATE INDEX observation_sources_by_patient ON observation_sources (patient_id, device_id);
    CREATE TABLE observation_readings (
        source INTEGER NOT NULL,
        taken_ms INTEGER NOT NULL,
        code TEXT NOT NULL,
        value REAL NOT NULL,
        unit TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (source, taken_ms, code)
    ) WITHOUT ROWID;
    CREATE TABLE observation_series (
        source INTEGER NOT NULL,
        code TEXT NOT NULL,
        oldest_ms INTEGER NOT NULL,
        newest_ms INTEGER NOT NULL,
        PRIMARY KEY (source, code)
    ) WITHOUT ROWID;
    INSERT INTO observation_sources (device_id, patient_id)
        SELECT DISTINCT device_id, patient_id FROM observations ORDER BY device_id, patient_id;
    INSERT INTO observation_readings
        SELECT s.num, CAST(round((julianday(o.taken_at) - 2440587.5) * 86400000.0) AS INTEGER),
            o.code, o.value, o.unit,
            CAST(round((julianday(o.received_at) - 2440587.5) * 86400000.0) AS INTEGER)
        FROM observations AS o JOIN observation_sources AS s USING (device_id, patient_id);
    INSERT INTO observation_series
        SELECT source, code, min(taken_ms), max(taken_ms) FROM observation_readings
        GROUP BY source, code;
    DROP TABLE observations;
    CREATE VIEW observations AS
        SELECT s.patient_id, s.device_id, r.code, r.value, r.unit,
            strftime('%Y-%m-%dT%H:%M:%fZ', r.taken_ms / 1000.0, 'unixepoch') AS taken_at,
            strftime('%Y-%m-%dT%H:%M:%fZ', r.received_ms / 1000.0, 'unixepoch') AS received_at,
            r.source, r.taken_ms, r.received_ms
        FROM observation_readings AS r JOIN observation_sources AS s ON s.num = r.source;
    """,
)


def _t(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _t_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else _t(moment)


def _dt_or_none(text: str | None) -> datetime | None:
    return None if text is None else _dt(text)


def _ms(delta: timedelta) -> int:
    return delta // timedelta(milliseconds=1)


def _path_from_url(url: str, base_dir: str) -> Path:
    path = Path(url.removeprefix("sqlite:///"))
    return path if path.is_absolute() else Path(base_dir) / path


class SqliteStore:
    kind = "sqlite"

    def __init__(self, path: Path, executor: ThreadPoolExecutor) -> None:
        self.path = path
        self._executor = executor
        self._conn: sqlite3.Connection | None = None
        self._source_cache: dict[tuple[str, str], int] = {}  # (device, patient): source

    @classmethod
    async def open(cls, url: str, *, base_dir: str = ".") -> SqliteStore:
        path = _path_from_url(url, base_dir)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        store = cls(path, executor)
        try:
            await store._run(store._connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return store

    # plumbing -------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:  # the executor was shut down by close()
            raise StoreUnavailable("the SQLite store is closed") from exc

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
            # the file holds password hashes and patient data: its owner only (the WAL
            # and shared-memory files SQLite creates beside it take the same mode)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self.path.chmod(0o600)
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is synced at every commit, so what a call acknowledged survives
            # a power loss (NORMAL can lose the last commits then), as readings acknowledged
            # to the broker must; one sync per commit, so write in batches
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            # vitals land on every (device, code) series at once: each batch touches the
            # last page of each series in two indexes, which SQLite's default 2 MB page
            # cache cannot hold for a clinic's devices (the pages are then read back and
            # rewritten from the OS each batch)
            conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
            # a destroyed data key (crypto-shredding) is overwritten in the file, not just
            # unlinked from the b-tree
            conn.execute("PRAGMA secure_delete = ON")
            # a batch of readings lands here first (`_add_observations`), in memory
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute(_INCOMING_READINGS)
            self._conn = conn
            self._migrate(conn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from exc

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreUnavailable(
                    f"the database is at schema version {version}, newer than this "
                    f"server ({len(MIGRATIONS)}): upgrade the server"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("the SQLite store is closed")
        return self._conn

    def _write(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int:
        try:
            return self.conn.execute(sql, params).rowcount
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def write(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int:
        return await self._run(self._write, sql, params)

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return await self._run(self._rows, sql, params)

    async def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await self._run(_close)
        except StoreUnavailable:
            return  # closed already
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self.rows("SELECT 1")

    async def is_empty(self) -> bool:
        return not await self.rows("SELECT 1 FROM users LIMIT 1")

    # users ------------------------------------------------------------------
    @staticmethod
    def _user_params(user: User) -> dict[str, Any]:
        return {
            "id": user.id,
            "email": user.email,
            "name": user.name,
            "role": user.role.value,
            "password_hash": user.password_hash,
            "created_at": _t(user.created_at),
            "active": int(user.active),
            "totp_secret": user.totp_secret,
            "totp_last_step": user.totp_last_step,
            "recovery_codes": json.dumps(list(user.recovery_codes)),
        }

    @staticmethod
    def _user(row: sqlite3.Row) -> User:
        return User(
            id=row["id"],
            email=row["email"],
            name=row["name"],
            role=Role(row["role"]),
            password_hash=row["password_hash"],
            created_at=_dt(row["created_at"]),
            active=bool(row["active"]),
            totp_secret=row["totp_secret"],
            totp_last_step=row["totp_last_step"],
            recovery_codes=tuple(json.loads(row["recovery_codes"])),
        )

    async def add_user(self, user: User) -> None:
        await self.write(
            "INSERT INTO users VALUES (:id, :email, :name, :role, :password_hash, :created_at,"
            " :active, :totp_secret, :totp_last_step, :recovery_codes)",
            self._user_params(user),
        )

    async def get_user(self, user_id: str) -> User | None:
        rows = await self.rows("SELECT * FROM users WHERE id = ?", (user_id,))
        return self._user(rows[0]) if rows else None

    async def find_user_by_email(self, email: str) -> User | None:
        rows = await self.rows("SELECT * FROM users WHERE email = ?", (email,))
        return self._user(rows[0]) if rows else None

    async def list_users(self, role: Role | None = None) -> list[User]:
        if role is None:
            rows = await self.rows("SELECT * FROM users ORDER BY name, id")
        else:
            rows = await self.rows(
                "SELECT * FROM users WHERE role = ? ORDER BY name, id", (role.value,)
            )
        return [self._user(r) for r in rows]

    async def update_user(self, user: User) -> None:
        changed = await self.write(
            "UPDATE users SET email = :email, name = :name, role = :role,"
            " password_hash = :password_hash, created_at = :created_at, active = :active,"
            " totp_secret = :totp_secret, totp_last_step = :totp_last_step,"
            " recovery_codes = :recovery_codes WHERE id = :id",
            self._user_params(user),
        )
        if not changed:
            raise NotFound(f"user {user.id}")

    # patients ---------------------------------------------------------------
    @staticmethod
    def _patient(row: sqlite3.Row) -> Patient:
        birth = row["birth_date"]
        return Patient(
            id=row["id"],
            name=row["name"],
            birth_date=date.fromisoformat(birth) if birth else None,
            language=row["language"],
            created_at=_dt(row["created_at"]),
        )

    async def add_patient(self, patient: Patient) -> None:
        await self.write(
            "INSERT INTO patients VALUES (?, ?, ?, ?, ?)",
            (
                patient.id,
                patient.name,
                patient.birth_date.isoformat() if patient.birth_date else None,
                patient.language,
                _t(patient.created_at),
            ),
        )

    async def get_patient(self, patient_id: str) -> Patient | None:
        rows = await self.rows("SELECT * FROM patients WHERE id = ?", (patient_id,))
        return self._patient(rows[0]) if rows else None

    async def list_patients(self, ids: list[str] | None = None) -> list[Patient]:
        if ids is None:
            rows = await self.rows("SELECT * FROM patients ORDER BY name, id")
        elif not ids:
            return []
        else:
            marks = ",".join("?" * len(ids))
            rows = await self.rows(
                f"SELECT * FROM patients WHERE id IN ({marks}) ORDER BY name, id",  # noqa: S608
                tuple(ids),
            )
        return [self._patient(r) for r in rows]

    # care teams -------------------------------------------------------------
    async def add_care_team_member(self, patient_id: str, clinician_id: str) -> bool:
        return bool(
            await self.write(
                "INSERT OR IGNORE INTO care_team_members VALUES (?, ?)",
                (patient_id, clinician_id),
            )
        )

    async def remove_care_team_member(self, patient_id: str, clinician_id: str) -> bool:
        return bool(
            await self.write(
                "DELETE FROM care_team_members WHERE patient_id = ? AND clinician_id = ?",
                (patient_id, clinician_id),
            )
        )

    async def care_team(self, patient_id: str) -> frozenset[str]:
        rows = await self.rows(
            "SELECT clinician_id FROM care_team_members WHERE patient_id = ?", (patient_id,)
        )
        return frozenset(r[0] for r in rows)

    async def patients_of(self, clinician_id: str) -> frozenset[str]:
        rows = await self.rows(
            "SELECT patient_id FROM care_team_members WHERE clinician_id = ?", (clinician_id,)
        )
        return frozenset(r[0] for r in rows)

    # API tokens -------------------------------------------------------------
    @staticmethod
    def _token(row: sqlite3.Row) -> ApiToken:
        return ApiToken(
            id=row["id"],
            user_id=row["user_id"],
            name=row["name"],
            token_hash=row["token_hash"],
            created_at=_dt(row["created_at"]),
            revoked_at=_dt(row["revoked_at"]) if row["revoked_at"] else None,
        )

    async def add_token(self, token: ApiToken) -> None:
        await self.write(
            "INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, ?)",
            (
                token.id,
                token.user_id,
                token.name,
                token.token_hash,
                _t(token.created_at),
                _t(token.revoked_at) if token.revoked_at else None,
            ),
        )

    async def get_token(self, token_id: str) -> ApiToken | None:
        rows = await self.rows("SELECT * FROM api_tokens WHERE id = ?", (token_id,))
        return self._token(rows[0]) if rows else None

    async def find_token(self, token_hash: str) -> ApiToken | None:
        rows = await self.rows("SELECT * FROM api_tokens WHERE token_hash = ?", (token_hash,))
        return self._token(rows[0]) if rows else None

    async def list_tokens(self, user_id: str | None = None) -> list[ApiToken]:
        if user_id is None:
            rows = await self.rows("SELECT * FROM api_tokens ORDER BY created_at, id")
        else:
            rows = await self.rows(
                "SELECT * FROM api_tokens WHERE user_id = ? ORDER BY created_at, id", (user_id,)
            )
        return [self._token(r) for r in rows]

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        return bool(
            await self.write(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_t(at), token_id),
            )
        )

    # sessions ---------------------------------------------------------------
    @staticmethod
    def _session(row: sqlite3.Row) -> Session:
        return Session(
            key=row["key"],
            user_id=row["user_id"],
            created_at=_dt(row["created_at"]),
            last_seen_at=_dt(row["last_seen_at"]),
            csrf_token=row["csrf_token"],
            mfa_pending=bool(row["mfa_pending"]),
            source=row["source"],
        )

    async def put_session(self, session: Session) -> None:
        await self.write(
            "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                session.key,
                session.user_id,
                _t(session.created_at),
                _t(session.last_seen_at),
                session.csrf_token,
                int(session.mfa_pending),
                session.source,
            ),
        )

    async def get_session(self, key: str) -> Session | None:
        rows = await self.rows("SELECT * FROM sessions WHERE key = ?", (key,))
        return self._session(rows[0]) if rows else None

    async def delete_session(self, key: str) -> None:
        await self.write("DELETE FROM sessions WHERE key = ?", (key,))

    async def delete_user_sessions(self, user_id: str) -> int:
        return await self.write("DELETE FROM sessions WHERE user_id = ?", (user_id,))

    # login throttling -------------------------------------------------------
    async def get_throttle(self, key: str) -> Throttle | None:
        rows = await self.rows("SELECT * FROM login_throttle WHERE key = ?", (key,))
        if not rows:
            return None
        return Throttle(rows[0]["key"], rows[0]["failures"], _dt(rows[0]["last_failure_at"]))

    async def put_throttle(self, throttle: Throttle) -> None:
        await self.write(
            "INSERT OR REPLACE INTO login_throttle VALUES (?, ?, ?)",
            (throttle.key, throttle.failures, _t(throttle.last_failure_at)),
        )

    async def delete_throttle(self, key: str) -> None:
        await self.write("DELETE FROM login_throttle WHERE key = ?", (key,))

    # clinic settings --------------------------------------------------------
    async def get_setting(self, key: str) -> str | None:
        rows = await self.rows("SELECT value FROM clinic_settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    async def put_setting(self, key: str, value: str) -> None:
        await self.write("INSERT OR REPLACE INTO clinic_settings VALUES (?, ?)", (key, value))

    # wearables --------------------------------------------------------------
    @staticmethod
    def _device(row: sqlite3.Row) -> Device:
        return Device(
            id=row["id"],
            patient_id=row["patient_id"],
            kind=row["kind"],
            created_at=_dt(row["created_at"]),
            revoked_at=_dt(row["revoked_at"]) if row["revoked_at"] else None,
        )

    async def add_device(self, device: Device) -> None:
        await self.write(
            "INSERT INTO devices VALUES (?, ?, ?, ?, ?)",
            (
                device.id,
                device.patient_id,
                device.kind,
                _t(device.created_at),
                _t(device.revoked_at) if device.revoked_at else None,
            ),
        )

    async def get_device(self, device_id: str) -> Device | None:
        rows = await self.rows("SELECT * FROM devices WHERE id = ?", (device_id,))
        return self._device(rows[0]) if rows else None

    async def list_devices(self, patient_id: str | None = None) -> list[Device]:
        if patient_id is None:
            rows = await self.rows("SELECT * FROM devices ORDER BY created_at, id")
        else:
            rows = await self.rows(
                "SELECT * FROM devices WHERE patient_id = ? ORDER BY created_at, id", (patient_id,)
            )
        return [self._device(r) for r in rows]

    async def revoke_device(self, device_id: str, at: datetime) -> bool:
        return bool(
            await self.write(
                "UPDATE devices SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_t(at), device_id),
            )
        )

    # observations -----------------------------------------------------------
    # Readings are filed by (source, taken_ms, code): `source` numbers a device (its row
    # in observation_sources, which also names its patient), times are integer UTC
    # milliseconds. A batch from many devices then writes one run of B-tree pages per
    # device, not one per (device, code) series and again per (patient, code) in a second
    # index: about a sixth of the pages, and the cost of a commit is the pages it writes.
    # The key is still the dedupe key (device, code, time), in another column order.
    # observation_series keeps each (source, code)'s newest time, for the latest values.
    @staticmethod
    def _observation(row: sqlite3.Row | tuple[Any, ...]) -> Observation:
        patient_id, device_id, code, value, unit, taken_ms, received_ms = row[:7]
        return Observation(
            patient_id=patient_id,
            device_id=device_id,
            code=code,
            value=value,
            unit=unit,
            taken_at=from_epoch_ms(taken_ms),
            received_at=from_epoch_ms(received_ms),
        )

    def _sources(self, observations: Sequence[Observation]) -> dict[tuple[str, str], int]:
        """Each (device, patient)'s source number, filing the new ones (inside the caller's
        transaction: a rollback takes them back, so they are cached only after commit)."""
        known = self._source_cache
        numbers: dict[tuple[str, str], int] = {}
        for pair in {(o.device_id, o.patient_id) for o in observations}:
            num = known.get(pair)
            if num is None:
                self.conn.execute(
                    "INSERT INTO observation_sources (device_id, patient_id) VALUES (?, ?)"
                    " ON CONFLICT (device_id, patient_id) DO NOTHING",
                    pair,
                )
                (num,) = self.conn.execute(
                    "SELECT num FROM observation_sources WHERE device_id = ? AND patient_id = ?",
                    pair,
                ).fetchone()
            numbers[pair] = num
        return numbers

    def _add_observations(self, observations: Sequence[Observation]) -> int:
        # a batch mostly shares one arrival time: convert it once
        received = {moment: epoch_ms(moment) for moment in {o.received_at for o in observations}}
        conn = self.conn
        # The batch goes into a temporary table in memory, in arrival order, with
        # multi-row statements; SQLite then files it, in key order (each B-tree page
        # written once per batch; of two readings with one key the first to arrive is
        # kept), and updates each series' span from it. The sqlite3 module lets go of
        # the GIL while SQLite works on a statement: sorting and grouping there rather
        # than in Python leaves the interpreter to the event loop that decodes the next
        # batch meanwhile (a quarter of the GIL's time went to this thread before,
        # measured with py-spy --gil in bench/ingest.py).
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                sources = self._sources(observations)
                self._insert_rows(
                    _INSERT_INCOMING,
                    [
                        (
                            sources[o.device_id, o.patient_id],
                            o.taken_ms,
                            o.code,
                            o.value,
                            o.unit,
                            received[o.received_at],
                        )
                        for o in observations
                    ],
                )
                before = conn.total_changes
                conn.execute(_FILE_INCOMING)
                inserted = conn.total_changes - before
                conn.execute(_SPAN_INCOMING)
                conn.execute("DELETE FROM temp.incoming_readings")
                conn.execute("COMMIT")  # synchronous=FULL: durable once this returns
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # the temporary rows go with the rest
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"observations not stored: {exc}") from exc
        self._source_cache.update(sources)  # committed: they stay filed
        return inserted

    def _insert_rows(
        self, statement: tuple[str, str, int], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Many rows per statement: the sqlite3 module lets go of the GIL once per
        statement it steps, then must take it back, and `executemany` steps once per row.
        Taking it back from a busy event loop thread can wait the interpreter's whole
        switch interval; here it happens about once per 1,024 rows. Statements of 1,024,
        128, 16 and 1 rows: four texts, each prepared once and then cached (preparing one
        costs as much as running it), no wider than the connection's variable limit.
        Within one statement the rows go in in order."""
        head, tail, width = statement
        conn = self.conn
        most = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
        done = 0
        for size in (1024, 128, 16, 1):
            if size > most:
                continue
            sql = _multi_row(head, tail, width, size)
            while len(rows) - done >= size:
                chunk = rows[done : done + size]
                done += size
                conn.execute(sql, list(itertools.chain.from_iterable(chunk)))

    async def add_observations(self, observations: Sequence[Observation]) -> int:
        if not observations:
            return 0
        return await self._run(self._add_observations, observations)

    def _observations(
        self,
        patient_id: str,
        code: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int | None,
        newest_first: bool,
    ) -> list[Observation]:
        # One query per device of the patient, each in key order (time, then code) and
        # within the times its series span (a device that never sent the code is not
        # read at all), merged by (time, device, code): a limit stops each query early,
        # with no sort. One read transaction: every query sees the same commits.
        lo = -(2**63) if since is None else epoch_ms(since)
        hi = 2**63 - 1 if until is None else epoch_ms(until)
        order = "DESC" if newest_first else "ASC"
        sql = (
            "SELECT ?, ?, code, value, unit, taken_ms, received_ms"  # noqa: S608 (placeholders)
            " FROM observation_readings WHERE source = ? AND taken_ms BETWEEN ? AND ?"
            + ("" if code is None else " AND code = ?")
            + f" ORDER BY taken_ms {order}, code {order}"
            + ("" if limit is None else " LIMIT ?")
        )
        extra = ([] if code is None else [code]) + ([] if limit is None else [limit])
        conn = self.conn
        try:
            own = not conn.in_transaction  # (a restore may hold one open across calls)
            if own:
                conn.execute("BEGIN")
            try:
                spans = conn.execute(
                    "SELECT s.num, s.device_id, min(z.oldest_ms), max(z.newest_ms)"  # noqa: S608
                    " FROM observation_sources AS s"
                    " JOIN observation_series AS z ON z.source = s.num"
                    " WHERE s.patient_id = ?"
                    + ("" if code is None else " AND z.code = ?")
                    + " GROUP BY s.num",
                    (patient_id,) if code is None else (patient_id, code),
                ).fetchall()
                per_device = [
                    conn.execute(
                        sql,
                        (patient_id, device_id, num, max(lo, oldest), min(hi, newest), *extra),
                    ).fetchall()
                    for num, device_id, oldest, newest in spans
                    if max(lo, oldest) <= min(hi, newest)
                ]
            finally:
                if own:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc
        merged = heapq.merge(
            *per_device, key=lambda row: (row[5], row[1], row[2]), reverse=newest_first
        )
        return [self._observation(row) for row in itertools.islice(merged, limit)]

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
            return []
        return await self._run(
            self._observations, patient_id, code, since, until, limit, newest_first
        )

    async def latest_observations(self, patient_id: str) -> list[Observation]:
        rows = await self.rows(
            """
            SELECT s.patient_id, s.device_id, r.code, r.value, r.unit, r.taken_ms,
                r.received_ms
            FROM observation_sources AS s
            JOIN observation_series AS z ON z.source = s.num
            JOIN observation_readings AS r
                ON (r.source, r.taken_ms, r.code) = (z.source, z.newest_ms, z.code)
            WHERE s.patient_id = ?
            """,
            (patient_id,),
        )
        # of each code, the newest; of a tie, the greater device (newest_first's order)
        latest: dict[str, sqlite3.Row] = {}
        for row in rows:
            seen = latest.get(row["code"])
            if seen is None or (row["taken_ms"], row["device_id"]) > (
                seen["taken_ms"],
                seen["device_id"],
            ):
                latest[row["code"]] = row
        return [self._observation(latest[code]) for code in sorted(latest)]

    # device presence --------------------------------------------------------
    @staticmethod
    def _presence(row: sqlite3.Row) -> DevicePresence:
        online = row["online"]
        return DevicePresence(
            device_id=row["device_id"],
            online=None if online is None else bool(online),
            status_at=_dt_or_none(row["status_at"]),
            last_seen_at=_dt_or_none(row["last_seen_at"]),
        )

    async def set_device_presence(self, device_id: str, online: bool, at: datetime) -> bool:
        return bool(
            await self.write(
                "INSERT INTO device_presence (device_id, online, status_at) VALUES (?, ?, ?)"
                " ON CONFLICT (device_id) DO UPDATE"
                " SET online = excluded.online, status_at = excluded.status_at"
                " WHERE online IS NOT excluded.online",
                (device_id, int(online), _t(at)),
            )
        )

    def _record_device_activity(self, latest: Mapping[str, datetime]) -> None:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # ISO 8601 UTC text to the ms sorts as the instants do
                conn.executemany(
                    "INSERT INTO device_presence (device_id, last_seen_at) VALUES (?, ?)"
                    " ON CONFLICT (device_id) DO UPDATE SET last_seen_at = excluded.last_seen_at"
                    " WHERE last_seen_at IS NULL OR last_seen_at < excluded.last_seen_at",
                    ((device_id, _t(at)) for device_id, at in latest.items()),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"device activity not recorded: {exc}") from exc

    async def record_device_activity(self, latest: Mapping[str, datetime]) -> None:
        if latest:
            await self._run(self._record_device_activity, dict(latest))

    async def get_device_presence(self, device_id: str) -> DevicePresence | None:
        rows = await self.rows("SELECT * FROM device_presence WHERE device_id = ?", (device_id,))
        return self._presence(rows[0]) if rows else None

    async def list_device_presence(
        self, device_ids: Collection[str] | None = None
    ) -> list[DevicePresence]:
        if device_ids is None:
            rows = await self.rows("SELECT * FROM device_presence ORDER BY device_id")
        elif not device_ids:
            return []
        else:
            ids = sorted(set(device_ids))
            marks = ",".join("?" * len(ids))
            rows = await self.rows(
                f"SELECT * FROM device_presence WHERE device_id IN ({marks})"  # noqa: S608
                " ORDER BY device_id",
                tuple(ids),
            )
        return [self._presence(r) for r in rows]

    # monitoring plans -------------------------------------------------------
    @staticmethod
    def _plan(row: sqlite3.Row) -> MonitoringPlan:
        thresholds = {
            item["code"]: Threshold(item["low"], item["high"])
            for item in json.loads(row["thresholds"])
        }
        return MonitoringPlan(
            patient_id=row["patient_id"],
            thresholds=thresholds,
            spo2_scale=row["spo2_scale"],
            offline_after=timedelta(milliseconds=row["offline_after_ms"]),
            quiet_period=timedelta(milliseconds=row["quiet_period_ms"]),
            updated_by=row["updated_by"],
            updated_at=_dt_or_none(row["updated_at"]),
        )

    async def get_monitoring_plan(self, patient_id: str) -> MonitoringPlan | None:
        rows = await self.rows("SELECT * FROM monitoring_plans WHERE patient_id = ?", (patient_id,))
        return self._plan(rows[0]) if rows else None

    async def put_monitoring_plan(self, plan: MonitoringPlan) -> None:
        # JSON writes a float as its shortest repr, which reads back as the same float
        thresholds = json.dumps(
            [
                {"code": code, "low": t.low, "high": t.high}
                for code, t in sorted(plan.thresholds.items())
            ],
            allow_nan=False,
        )
        await self.write(
            "INSERT OR REPLACE INTO monitoring_plans VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                plan.patient_id,
                thresholds,
                plan.spo2_scale,
                _ms(plan.offline_after),
                _ms(plan.quiet_period),
                plan.updated_by,
                _t_or_none(plan.updated_at),
            ),
        )

    # check-ins --------------------------------------------------------------
    @staticmethod
    def _check_in(row: sqlite3.Row) -> CheckIn:
        oxygen = row["on_oxygen"]
        return CheckIn(
            id=row["id"],
            patient_id=row["patient_id"],
            taken_at=_dt(row["taken_at"]),
            entered_by=row["entered_by"],
            entered_by_role=row["entered_by_role"],
            consciousness=row["consciousness"],
            on_oxygen=None if oxygen is None else bool(oxygen),
        )

    async def add_check_in(self, check_in: CheckIn) -> None:
        c = check_in
        await self.write(
            "INSERT INTO check_ins VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                c.id,
                c.patient_id,
                _t(c.taken_at),
                c.entered_by,
                c.entered_by_role,
                c.consciousness,
                None if c.on_oxygen is None else int(c.on_oxygen),
            ),
        )

    async def latest_check_ins(self, patient_id: str) -> LatestCheckIns:
        newest = (
            "SELECT * FROM check_ins WHERE patient_id = ? AND {} IS NOT NULL"
            " ORDER BY taken_at DESC, id DESC LIMIT 1"
        )
        consciousness = await self.rows(newest.format("consciousness"), (patient_id,))
        oxygen = await self.rows(newest.format("on_oxygen"), (patient_id,))
        return LatestCheckIns(
            consciousness=self._check_in(consciousness[0]) if consciousness else None,
            on_oxygen=self._check_in(oxygen[0]) if oxygen else None,
        )

    async def check_ins(self, patient_id: str, *, limit: int | None = None) -> list[CheckIn]:
        if limit is not None and limit <= 0:
            return []
        rows = await self.rows(
            "SELECT * FROM check_ins WHERE patient_id = ? ORDER BY taken_at DESC, id DESC LIMIT ?",
            (patient_id, -1 if limit is None else limit),
        )
        return [self._check_in(r) for r in rows]

    # alerts -----------------------------------------------------------------
    @staticmethod
    def _alert(row: sqlite3.Row) -> Alert:
        return Alert(
            id=row["id"],
            patient_id=row["patient_id"],
            rule=row["rule"],
            severity=Severity(row["severity"]),
            state=AlertState(row["state"]),
            opened_at=_dt(row["opened_at"]),
            last_breach_at=_dt(row["last_breach_at"]),
            detail=row["detail"],
            value=row["value"],
            score=row["score"],
            acknowledged_by=row["acknowledged_by"],
            acknowledged_at=_dt_or_none(row["acknowledged_at"]),
            resolved_at=_dt_or_none(row["resolved_at"]),
            resolved_by=row["resolved_by"],
        )

    async def add_alert(self, alert: Alert) -> None:
        a = alert
        await self.write(
            "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                a.id,
                a.patient_id,
                a.rule,
                a.severity.value,
                a.state.value,
                _t(a.opened_at),
                _t(a.last_breach_at),
                a.detail,
                a.value,
                a.score,
                a.acknowledged_by,
                _t_or_none(a.acknowledged_at),
                _t_or_none(a.resolved_at),
                a.resolved_by,
            ),
        )

    async def get_alert(self, alert_id: str) -> Alert | None:
        rows = await self.rows("SELECT * FROM alerts WHERE id = ?", (alert_id,))
        return self._alert(rows[0]) if rows else None

    async def active_alert(self, patient_id: str, rule: str) -> Alert | None:
        rows = await self.rows(
            "SELECT * FROM alerts WHERE patient_id = ? AND rule = ? AND state != 'resolved'",
            (patient_id, rule),
        )
        return self._alert(rows[0]) if rows else None

    async def alerts(
        self,
        patient_id: str | None = None,
        *,
        states: Collection[AlertState] | None = None,
        limit: int | None = None,
    ) -> list[Alert]:
        if (limit is not None and limit <= 0) or (states is not None and not states):
            return []
        where: list[str] = []
        params: list[Any] = []
        if patient_id is not None:
            where.append("patient_id = ?")
            params.append(patient_id)
        if states is not None:
            wanted = sorted({AlertState(s).value for s in states})
            if set(wanted) == {AlertState.OPEN.value, AlertState.ACKNOWLEDGED.value}:
                where.append("state != 'resolved'")  # the partial indexes' own condition
            else:
                where.append(f"state IN ({','.join('?' * len(wanted))})")
                params.extend(wanted)
        sql = "SELECT * FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY opened_at DESC, id DESC LIMIT ?"
        params.append(-1 if limit is None else limit)
        rows = await self.rows(sql, tuple(params))
        return [self._alert(r) for r in rows]

    async def _update_alert(self, sql: str, params: tuple[Any, ...]) -> Alert | None:
        rows = await self.rows(sql + " RETURNING *", params)
        return self._alert(rows[0]) if rows else None

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
            "UPDATE alerts SET last_breach_at = ?, severity = ?, detail = ?, value = ?,"
            " score = ? WHERE id = ? AND state != 'resolved' AND last_breach_at < ?",
            (_t(at), Severity(severity).value, detail, value, score, alert_id, _t(at)),
        )

    async def acknowledge_alert(self, alert_id: str, by: str, at: datetime) -> Alert | None:
        return await self._update_alert(
            "UPDATE alerts SET state = 'acknowledged', acknowledged_by = ?, acknowledged_at = ?"
            " WHERE id = ? AND state = 'open'",
            (by, _t(at), alert_id),
        )

    async def resolve_alert(self, alert_id: str, by: str, at: datetime) -> Alert | None:
        return await self._update_alert(
            "UPDATE alerts SET state = 'resolved', resolved_by = ?, resolved_at = ?"
            " WHERE id = ? AND state != 'resolved'",
            (by, _t(at), alert_id),
        )

    # audit log --------------------------------------------------------------
    @staticmethod
    def _audit(row: sqlite3.Row) -> AuditRecord:
        event = AuditEvent(
            at=_dt(row["at"]),
            actor_id=row["actor_id"],
            actor_role=row["actor_role"],
            action=row["action"],
            outcome=Outcome(row["outcome"]),
            source=row["source"],
            patient_id=row["patient_id"],
            entity=row["entity"],
            detail=row["detail"],
        )
        return AuditRecord(row["seq"], event, row["prev_hash"], row["hash"])

    def _append_audit(self, event: AuditEvent) -> AuditRecord:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")  # takes the write lock: one appender at a time
            try:
                row = conn.execute("SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
                record = seal(event, self._audit(row) if row else None)
                e = record.event
                conn.execute(
                    "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.seq,
                        _t(e.at),
                        e.actor_id,
                        e.actor_role,
                        e.action,
                        e.outcome.value,
                        e.source,
                        e.patient_id,
                        e.entity,
                        e.detail,
                        record.prev_hash,
                        record.hash,
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"audit append failed: {exc}") from exc
        return record

    async def append_audit(self, event: AuditEvent) -> AuditRecord:
        return await self._run(self._append_audit, event)

    async def audit_records(
        self, *, patient_id: str | None = None, limit: int | None = None
    ) -> AsyncGenerator[AuditRecord, None]:
        page = 500
        after = 0
        remaining = limit
        while remaining is None or remaining > 0:
            size = page if remaining is None else min(page, remaining)
            if patient_id is None:
                rows = await self.rows(
                    "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (after, size)
                )
            else:
                rows = await self.rows(
                    "SELECT * FROM audit_log WHERE patient_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (patient_id, after, size),
                )
            for row in rows:
                yield self._audit(row)
            if len(rows) < size:
                return
            after = rows[-1]["seq"]
            if remaining is not None:
                remaining -= len(rows)

    # visits ----------------------------------------------------------------------
    async def add_visit(self, visit: Visit) -> None:
        await self._run(self._put_visit, visit, True)

    async def get_visit(self, visit_id: str) -> Visit | None:
        rows = await self.rows("SELECT doc FROM visits WHERE id = ?", (visit_id,))
        return visit_from_doc(json.loads(rows[0]["doc"])) if rows else None

    async def find_visit_by_link(self, link_hash: str) -> Visit | None:
        rows = await self.rows("SELECT doc FROM visits WHERE link_hash = ?", (link_hash,))
        return visit_from_doc(json.loads(rows[0]["doc"])) if rows else None

    async def find_visit_by_guest_link(self, link_hash: str) -> Visit | None:
        rows = await self.rows(
            "SELECT v.doc FROM visit_guest_links g JOIN visits v ON v.id = g.visit_id"
            " WHERE g.link_hash = ?",
            (link_hash,),
        )
        return visit_from_doc(json.loads(rows[0]["doc"])) if rows else None

    async def replace_visit(self, visit: Visit) -> bool:
        try:
            return await self._run(self._put_visit, visit, False)
        except Conflict:  # a new link's hash is taken: never, for a 256-bit token
            return False

    def _put_visit(self, visit: Visit, insert: bool) -> bool:
        """Insert the visit, or replace it at `visit.version - 1`, with its guests' links,
        in one transaction (or within the caller's: a restore loads in one)."""
        conn = self.conn
        own = not conn.in_transaction
        try:
            if own:
                conn.execute("BEGIN IMMEDIATE")
            try:
                row = (
                    visit.patient_id,
                    visit.clinician_id,
                    visit.state.value,
                    _t(visit.scheduled_at),
                    visit.link_hash,
                    visit.version,
                    json.dumps(visit_to_doc(visit)),
                )
                if insert:
                    conn.execute(
                        "INSERT INTO visits VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (visit.id, *row)
                    )
                else:
                    changed = conn.execute(
                        "UPDATE visits SET patient_id = ?, clinician_id = ?, state = ?,"
                        " scheduled_at = ?, link_hash = ?, version = ?, doc = ?"
                        " WHERE id = ? AND version = ?",
                        (*row, visit.id, visit.version - 1),
                    ).rowcount
                    if not changed:
                        if own:
                            conn.execute("ROLLBACK")
                        return False
                    conn.execute("DELETE FROM visit_guest_links WHERE visit_id = ?", (visit.id,))
                conn.executemany(
                    "INSERT INTO visit_guest_links VALUES (?, ?)",
                    [(g.link_hash, visit.id) for g in visit.guests],
                )
                if own:
                    conn.execute("COMMIT")
                return True
            except BaseException:
                if own and conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def list_visits(
        self,
        *,
        clinician_id: str | None = None,
        patient_id: str | None = None,
        states: Collection[VisitState] | None = None,
    ) -> list[Visit]:
        where, params = ["1 = 1"], []
        if clinician_id is not None:
            where.append("clinician_id = ?")
            params.append(clinician_id)
        if patient_id is not None:
            where.append("patient_id = ?")
            params.append(patient_id)
        if states is not None:
            if not states:
                return []
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            params.extend(s.value for s in states)
        rows = await self.rows(
            f"SELECT doc FROM visits WHERE {' AND '.join(where)} ORDER BY scheduled_at, id",  # noqa: S608
            tuple(params),
        )
        return [visit_from_doc(json.loads(r["doc"])) for r in rows]

    # consultation records -------------------------------------------------------
    @staticmethod
    def _header_doc(h: RecordHeader) -> str:
        return json.dumps(
            {
                "clinician_id": h.clinician_id,
                "versions": list(h.versions),
                "signed_version": h.signed_version,
                "signed_by": h.signed_by,
                "signed_at": _t_or_none(h.signed_at),
            }
        )

    @staticmethod
    def _header(row: sqlite3.Row) -> RecordHeader:
        doc = json.loads(row["doc"])
        return RecordHeader(
            id=row["id"],
            patient_id=row["patient_id"],
            clinician_id=doc["clinician_id"],
            created_at=_dt(row["created_at"]),
            rev=row["rev"],
            versions=tuple(doc["versions"]),
            signed_version=doc["signed_version"],
            signed_by=doc["signed_by"],
            signed_at=_dt_or_none(doc["signed_at"]),
        )

    async def add_record(self, header: RecordHeader) -> None:
        await self.write(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?)",
            (
                header.id,
                header.patient_id,
                _t(header.created_at),
                header.rev,
                self._header_doc(header),
            ),
        )

    async def get_record(self, record_id: str) -> RecordHeader | None:
        rows = await self.rows("SELECT * FROM records WHERE id = ?", (record_id,))
        return self._header(rows[0]) if rows else None

    async def replace_record(self, header: RecordHeader) -> bool:
        changed = await self.write(
            "UPDATE records SET patient_id = ?, created_at = ?, rev = ?, doc = ?"
            " WHERE id = ? AND rev = ?",
            (
                header.patient_id,
                _t(header.created_at),
                header.rev,
                self._header_doc(header),
                header.id,
                header.rev - 1,
            ),
        )
        return bool(changed)

    async def list_records(self, patient_id: str) -> list[RecordHeader]:
        rows = await self.rows(
            "SELECT * FROM records WHERE patient_id = ? ORDER BY created_at, id", (patient_id,)
        )
        return [self._header(r) for r in rows]

    def _add_record_versions(self, versions: Sequence[SealedVersion]) -> None:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO record_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            v.id,
                            v.record_id,
                            v.number,
                            v.patient_id,
                            v.kind.value,
                            v.author_id,
                            _t(v.created_at),
                            v.key_id,
                            json.dumps(list(v.attachment_ids)),
                        )
                        for v in versions
                    ],
                )
                conn.executemany(
                    "INSERT INTO record_fields VALUES (?, ?, ?)",
                    [(v.id, name, sealed) for v in versions for name, sealed in v.fields.items()],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def add_record_version(self, version: SealedVersion) -> None:
        await self._run(self._add_record_versions, [version])

    async def record_versions(self, version_ids: Sequence[str]) -> list[SealedVersion]:
        if not version_ids:
            return []
        marks = ", ".join("?" for _ in version_ids)
        rows = await self.rows(
            f"SELECT * FROM record_versions WHERE id IN ({marks})",  # noqa: S608
            tuple(version_ids),
        )
        fields = await self.rows(
            f"SELECT * FROM record_fields WHERE version_id IN ({marks})",  # noqa: S608
            tuple(version_ids),
        )
        sealed: dict[str, dict[str, bytes]] = {}
        for f in fields:
            sealed.setdefault(f["version_id"], {})[f["name"]] = bytes(f["sealed"])
        found = {
            r["id"]: SealedVersion(
                id=r["id"],
                record_id=r["record_id"],
                number=r["number"],
                patient_id=r["patient_id"],
                kind=VersionKind(r["kind"]),
                author_id=r["author_id"],
                created_at=_dt(r["created_at"]),
                key_id=r["key_id"],
                fields=sealed.get(r["id"], {}),
                attachment_ids=tuple(json.loads(r["attachment_ids"])),
            )
            for r in rows
        }
        return [found[i] for i in version_ids if i in found]

    @staticmethod
    def _attachment(r: sqlite3.Row) -> SealedAttachment:
        return SealedAttachment(
            id=r["id"],
            record_id=r["record_id"],
            patient_id=r["patient_id"],
            author_id=r["author_id"],
            created_at=_dt(r["created_at"]),
            content_type=r["content_type"],
            size=r["size"],
            key_id=r["key_id"],
            name=bytes(r["name"]),
            body=bytes(r["body"]),
        )

    async def add_attachment(self, attachment: SealedAttachment) -> None:
        a = attachment
        await self.write(
            "INSERT INTO attachments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                a.id,
                a.record_id,
                a.patient_id,
                a.author_id,
                _t(a.created_at),
                a.content_type,
                a.size,
                a.key_id,
                a.name,
                a.body,
            ),
        )

    async def get_attachment(self, attachment_id: str) -> SealedAttachment | None:
        rows = await self.rows("SELECT * FROM attachments WHERE id = ?", (attachment_id,))
        return self._attachment(rows[0]) if rows else None

    async def list_attachments(self, record_id: str) -> list[SealedAttachment]:
        rows = await self.rows(
            "SELECT * FROM attachments WHERE record_id = ? ORDER BY created_at, id", (record_id,)
        )
        return [self._attachment(r) for r in rows]

    # data keys ----------------------------------------------------------------------
    @staticmethod
    def _data_key(r: sqlite3.Row) -> WrappedKey:
        return WrappedKey(
            id=r["id"],
            patient_id=r["patient_id"],
            kek_id=r["kek_id"],
            wrapped=bytes(r["wrapped"]),
            created_at=_dt(r["created_at"]),
            format=r["format"],
        )

    async def add_data_key(self, key: WrappedKey) -> None:
        await self.write(
            "INSERT INTO data_keys VALUES (?, ?, ?, ?, ?, ?)",
            (key.id, key.patient_id, key.kek_id, key.wrapped, _t(key.created_at), key.format),
        )

    async def get_data_keys(self, key_ids: Collection[str]) -> dict[str, WrappedKey]:
        ids = list(key_ids)
        if not ids:
            return {}
        rows = await self.rows(
            f"SELECT * FROM data_keys WHERE id IN ({', '.join('?' for _ in ids)})",  # noqa: S608
            tuple(ids),
        )
        return {r["id"]: self._data_key(r) for r in rows}

    async def data_keys_under(
        self, kek_id: str, *, after: str = "", limit: int = 1000
    ) -> list[WrappedKey]:
        rows = await self.rows(
            "SELECT * FROM data_keys WHERE kek_id = ? AND id > ? ORDER BY id LIMIT ?",
            (kek_id, after, limit),
        )
        return [self._data_key(r) for r in rows]

    def _rewrap(self, changes: Sequence[tuple[WrappedKey, WrappedKey]]) -> int:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                changed = 0
                for old, new in changes:
                    changed += conn.execute(
                        "UPDATE data_keys SET kek_id = ?, wrapped = ?, format = ?"
                        " WHERE id = ? AND kek_id = ? AND wrapped = ?",
                        (new.kek_id, new.wrapped, new.format, old.id, old.kek_id, old.wrapped),
                    ).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc
        return changed

    async def rewrap_data_keys(self, changes: Sequence[tuple[WrappedKey, WrappedKey]]) -> int:
        return await self._run(self._rewrap, changes) if changes else 0

    async def count_data_keys(self) -> dict[str, int]:
        rows = await self.rows("SELECT kek_id, COUNT(*) AS n FROM data_keys GROUP BY kek_id")
        return {r["kek_id"]: r["n"] for r in rows}

    def _delete_data_keys(self, patient_id: str) -> int:
        deleted = self._write("DELETE FROM data_keys WHERE patient_id = ?", (patient_id,))
        # the WAL still holds the pages that carried the keys: copy it back into the
        # file (where secure_delete zeroed them) and truncate it
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc
        return deleted

    async def delete_data_keys(self, patient_id: str) -> int:
        return await self._run(self._delete_data_keys, patient_id)

    async def put_key_check(self, kek_id: str, check: bytes) -> bool:
        changed = await self.write(
            "INSERT OR IGNORE INTO key_checks VALUES (?, ?)", (kek_id, check)
        )
        return bool(changed)

    async def key_checks(self) -> dict[str, bytes]:
        rows = await self.rows("SELECT * FROM key_checks")
        return {r["kek_id"]: bytes(r["check_value"]) for r in rows}

    async def delete_key_check(self, kek_id: str) -> None:
        await self.write("DELETE FROM key_checks WHERE kek_id = ?", (kek_id,))

    # break-glass ----------------------------------------------------------------------
    async def add_break_glass(self, grant: BreakGlass) -> None:
        await self.write(
            "INSERT INTO break_glass VALUES (?, ?, ?, ?, ?, ?)",
            (
                grant.id,
                grant.admin_id,
                grant.patient_id,
                grant.reason,
                _t(grant.opened_at),
                _t(grant.expires_at),
            ),
        )

    async def break_glass_grants(
        self, *, patient_id: str | None = None, admin_id: str | None = None
    ) -> list[BreakGlass]:
        where, params = ["1 = 1"], []
        if patient_id is not None:
            where.append("patient_id = ?")
            params.append(patient_id)
        if admin_id is not None:
            where.append("admin_id = ?")
            params.append(admin_id)
        rows = await self.rows(
            f"SELECT * FROM break_glass WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY opened_at DESC, id DESC",
            tuple(params),
        )
        return [self._break_glass(r) for r in rows]

    @staticmethod
    def _break_glass(r: sqlite3.Row) -> BreakGlass:
        return BreakGlass(
            id=r["id"],
            admin_id=r["admin_id"],
            patient_id=r["patient_id"],
            reason=r["reason"],
            opened_at=_dt(r["opened_at"]),
            expires_at=_dt(r["expires_at"]),
        )

    # backup and restore -------------------------------------------------------------
    def _row_object(self, collection: str, r: sqlite3.Row) -> Any:
        match collection:
            case "users":
                return self._user(r)
            case "patients":
                return self._patient(r)
            case "care_team_members":
                return CareTeamMember(r["patient_id"], r["clinician_id"])
            case "api_tokens":
                return self._token(r)
            case "clinic_settings":
                return Setting(r["key"], r["value"])
            case "devices":
                return self._device(r)
            case "device_presence":
                return self._presence(r)
            case "monitoring_plans":
                return self._plan(r)
            case "check_ins":
                return self._check_in(r)
            case "alerts":
                return self._alert(r)
            case "visits":
                return visit_from_doc(json.loads(r["doc"]))
            case "observations":
                return self._observation(
                    tuple(r[k] for k in ("patient_id", "device_id", "code", "value", "unit"))
                    + (r["taken_ms"], r["received_ms"])
                )
            case "break_glass":
                return self._break_glass(r)
            case "records":
                return self._header(r)
            case "attachments":
                return self._attachment(r)
            case "data_keys":
                return self._data_key(r)
            case "key_checks":
                return KeyCheck(r["kek_id"], bytes(r["check_value"]))
            case "audit_log":
                return self._audit(r)
        raise ValueError(f"no collection {collection}")  # pragma: no cover

    async def backup_counts(self) -> dict[str, int]:
        def count() -> dict[str, int]:
            return {
                name: self.conn.execute(
                    f"SELECT COUNT(*) FROM {_BACKUP_KEYS[name][0]}"  # noqa: S608
                ).fetchone()[0]
                for name in COLLECTIONS
            }

        return await self._run(count)

    async def backup_dump(self, collection: str, *, batch: int = 1000) -> AsyncIterator[list[Any]]:
        table, key = _BACKUP_KEYS[collection]
        columns = ", ".join(key)
        marks = ", ".join("?" for _ in key)
        after: tuple[Any, ...] | None = None
        while True:
            where = "" if after is None else f"WHERE ({columns}) > ({marks})"
            rows = await self.rows(
                f"SELECT * FROM {table} {where} ORDER BY {columns} LIMIT ?",  # noqa: S608
                (*(after or ()), batch),
            )
            if not rows:
                return
            after = tuple(rows[-1][k] for k in key)
            if collection == "record_versions":
                yield await self.record_versions([r["id"] for r in rows])
            else:
                yield [self._row_object(collection, r) for r in rows]

    async def backup_load(self, collection: str, items: Sequence[Any]) -> None:
        if not items:
            return
        match collection:
            case "observations":
                if await self.add_observations(items) != len(items):
                    raise Conflict("observations: some were stored already")
                return
            case "record_versions":
                await self._run(self._add_record_versions, items)
                return
            case "audit_log":
                await self._run(self._load_audit, items)
                return
        await self.write("BEGIN IMMEDIATE")
        try:
            for item in items:
                await self._load_one(collection, item)
            await self.write("COMMIT")
        except BaseException:
            await self.write("ROLLBACK")
            raise

    async def _load_one(self, collection: str, item: Any) -> None:
        match collection:
            case "users":
                await self.add_user(item)
            case "patients":
                await self.add_patient(item)
            case "care_team_members":
                if not await self.add_care_team_member(item.patient_id, item.clinician_id):
                    raise Conflict(f"care team member {item} is stored already")
            case "api_tokens":
                await self.add_token(item)
            case "clinic_settings":
                await self.write(
                    "INSERT INTO clinic_settings VALUES (?, ?)", (item.key, item.value)
                )
            case "devices":
                await self.add_device(item)
            case "device_presence":
                await self.write(
                    "INSERT INTO device_presence VALUES (?, ?, ?, ?)",
                    (
                        item.device_id,
                        None if item.online is None else int(item.online),
                        _t_or_none(item.status_at),
                        _t_or_none(item.last_seen_at),
                    ),
                )
            case "monitoring_plans":
                # put_monitoring_plan replaces: a plan stored already must not be
                if await self.get_monitoring_plan(item.patient_id) is not None:
                    raise Conflict(
                        f"monitoring plan of patient {item.patient_id} is stored already"
                    )
                await self.put_monitoring_plan(item)
            case "check_ins":
                await self.add_check_in(item)
            case "alerts":
                await self.add_alert(item)
            case "visits":
                await self.add_visit(item)
            case "break_glass":
                await self.add_break_glass(item)
            case "records":
                await self.add_record(item)
            case "attachments":
                await self.add_attachment(item)
            case "data_keys":
                await self.add_data_key(item)
            case "key_checks":
                if not await self.put_key_check(item.kek_id, item.check):
                    raise Conflict(f"key check {item.kek_id} is stored already")
            case _:
                raise ValueError(f"no collection {collection}")

    def _load_audit(self, records: Sequence[AuditRecord]) -> None:
        """Entries as they were sealed: their numbers and hashes are kept, so the chain
        verifies after a restore exactly as before."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.seq,
                            _t(r.event.at),
                            r.event.actor_id,
                            r.event.actor_role,
                            r.event.action,
                            r.event.outcome.value,
                            r.event.source,
                            r.event.patient_id,
                            r.event.entity,
                            r.event.detail,
                            r.prev_hash,
                            r.hash,
                        )
                        for r in records
                    ],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[bool]:
        """One read transaction: in WAL mode it sees the file as it was when it began,
        while other connections (the running server) go on writing."""

        def begin() -> None:
            self.conn.execute("BEGIN")
            self.conn.execute("SELECT COUNT(*) FROM users").fetchone()  # the snapshot starts

        await self._run(begin)
        try:
            yield True
        finally:
            await self._run(lambda: self.conn.execute("COMMIT"))


@functools.cache
def _multi_row(head: str, tail: str, width: int, rows: int) -> str:
    return head + ", ".join([f"({', '.join('?' * width)})"] * rows) + tail


_INCOMING_READINGS = """
CREATE TEMP TABLE incoming_readings (
    source INTEGER NOT NULL,
    taken_ms INTEGER NOT NULL,
    code TEXT NOT NULL,
    value REAL,
    unit TEXT NOT NULL,
    received_ms INTEGER NOT NULL
)"""
# (start, end, columns per row) of the multi-row statement `_insert_rows` writes
_INSERT_INCOMING = (
    "INSERT INTO temp.incoming_readings (source, taken_ms, code, value, unit, received_ms) VALUES ",
    "",
    6,
)
# Only the dedupe key may conflict silently: `INSERT OR IGNORE` would also skip (and count
# as a duplicate) a row that breaks NOT NULL, such as a NaN value, which SQLite stores as
# NULL. `WHERE true` tells SQLite's parser that ON CONFLICT is the upsert's, not a join's.
_FILE_INCOMING = (
    "INSERT INTO observation_readings (source, taken_ms, code, value, unit, received_ms)"
    " SELECT source, taken_ms, code, value, unit, received_ms FROM temp.incoming_readings"
    " WHERE true ORDER BY source, taken_ms, code, rowid"
    " ON CONFLICT (source, taken_ms, code) DO NOTHING"
)
_SPAN_INCOMING = (
    "INSERT INTO observation_series (source, code, oldest_ms, newest_ms)"
    " SELECT source, code, min(taken_ms), max(taken_ms) FROM temp.incoming_readings"
    " WHERE true GROUP BY source, code"
    " ON CONFLICT (source, code) DO UPDATE SET"
    " oldest_ms = min(oldest_ms, excluded.oldest_ms),"
    " newest_ms = max(newest_ms, excluded.newest_ms)"
)

# each collection's table and the key it is read in order of
_BACKUP_KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "users": ("users", ("id",)),
    "patients": ("patients", ("id",)),
    "care_team_members": ("care_team_members", ("patient_id", "clinician_id")),
    "api_tokens": ("api_tokens", ("id",)),
    "clinic_settings": ("clinic_settings", ("key",)),
    "devices": ("devices", ("id",)),
    "device_presence": ("device_presence", ("device_id",)),
    "monitoring_plans": ("monitoring_plans", ("patient_id",)),
    "check_ins": ("check_ins", ("id",)),
    "alerts": ("alerts", ("id",)),
    "visits": ("visits", ("id",)),
    "observations": ("observations", ("source", "taken_ms", "code")),
    "break_glass": ("break_glass", ("id",)),
    "records": ("records", ("id",)),
    "record_versions": ("record_versions", ("id",)),
    "attachments": ("attachments", ("id",)),
    "data_keys": ("data_keys", ("id",)),
    "key_checks": ("key_checks", ("kek_id",)),
    "audit_log": ("audit_log", ("seq",)),
}
assert set(_BACKUP_KEYS) == set(COLLECTIONS)


def _statements(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
