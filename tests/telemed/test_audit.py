"""The audit log: append-only in SQLite, tamper-evident by its hash chain, and complete.

Tampering is done as an attacker with write access to the database file would: through
a plain sqlite3 connection, after dropping the append-only triggers. `telemed audit
verify` (a real subprocess) must then fail and name the first bad entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from telemed.audit import GENESIS, AuditEvent, AuditRecord, Outcome, seal, verify
from telemed.clinic import OPERATOR
from telemed.settings import Settings
from telemed.store.sqlite import SqliteStore
from telemed.web.keys import CLINIC, STORE
from tests.conftest import PASSWORD, FakeClock, People, login
from tests.telemed.test_cli import cli_env, run_cli, run_main

Client = TestClient  # type: ignore[type-arg]

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
ACTIONS = ("login", "patient.read", "user.create", "care_team.add", "patient.read", "logout")
COLUMNS = (
    "at",
    "actor_id",
    "actor_role",
    "action",
    "outcome",
    "source",
    "patient_id",
    "entity",
    "detail",
    "prev_hash",
    "hash",
)
EVENT_COLUMNS = COLUMNS[:-2]


def events() -> list[AuditEvent]:
    return [
        AuditEvent(
            at=T0 + timedelta(minutes=i),
            actor_id=f"user-{i}",
            actor_role="doctor",
            action=action,
            outcome=Outcome.SUCCESS,
            source="192.0.2.7",
            patient_id="patient-1" if action.startswith("patient") else "",
            entity="Patient/patient-1" if action.startswith("patient") else "",
        )
        for i, action in enumerate(ACTIONS, start=1)
    ]


def chain() -> list[AuditRecord]:
    records: list[AuditRecord] = []
    for event in events():
        records.append(seal(event, records[-1] if records else None))
    return records


# the chain, in memory ---------------------------------------------------------------
def test_an_intact_chain_verifies() -> None:
    records = chain()
    verdict = verify(records)
    assert verdict.ok
    assert (verdict.count, verdict.head_seq, verdict.head_hash) == (6, 6, records[-1].hash)
    assert verdict.first_bad_seq is None
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:], strict=False))


def test_an_empty_chain_verifies() -> None:
    verdict = verify([])
    assert verdict.ok
    assert (verdict.count, verdict.head_seq, verdict.head_hash) == (0, 0, GENESIS)


@pytest.mark.parametrize("seq", [1, 3, 6])
@pytest.mark.parametrize(
    "change",
    [{"action": "patient.export"}, {"actor_id": "someone-else"}, {"outcome": Outcome.DENIED}],
)
def test_an_edited_entry_breaks_the_chain_there(seq: int, change: dict[str, Any]) -> None:
    records = chain()
    old = records[seq - 1]
    records[seq - 1] = dataclasses.replace(old, event=dataclasses.replace(old.event, **change))
    verdict = verify(records)
    assert not verdict.ok
    assert verdict.first_bad_seq == seq
    assert "altered" in verdict.reason
    assert verdict.count == 6


def test_a_deleted_entry_breaks_the_chain_at_the_next_stored_entry() -> None:
    records = chain()
    del records[2]
    verdict = verify(records)
    assert not verdict.ok
    assert verdict.first_bad_seq == 4
    assert "expected entry 3" in verdict.reason
    assert verdict.count == 5


def test_swapped_entry_contents_break_the_chain_at_the_first() -> None:
    records = chain()
    third, fourth = records[2], records[3]
    records[2] = dataclasses.replace(fourth, seq=3)
    records[3] = dataclasses.replace(third, seq=4)
    verdict = verify(records)
    assert not verdict.ok
    assert verdict.first_bad_seq == 3


def test_reordered_entries_break_the_chain() -> None:
    records = chain()
    records[2], records[3] = records[3], records[2]
    verdict = verify(records)
    assert not verdict.ok
    assert verdict.first_bad_seq == 4  # the stored entry found where entry 3 belongs
    assert "expected entry 3" in verdict.reason


def test_a_dropped_tail_is_seen_only_by_its_head() -> None:
    """As documented: a shorter valid chain; the head hash is what an operator compares."""
    records = chain()
    verdict = verify(records[:-1])
    assert verdict.ok
    assert verdict.head_seq == 5
    assert verdict.head_hash != verify(records).head_hash


# the chain, stored in SQLite --------------------------------------------------------
@pytest.fixture
def audit_db(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Six entries appended through the SQLite adapter; the file and a CLI environment."""
    env = cli_env(tmp_path / "var")

    async def append() -> Path:
        store = await SqliteStore.open(env["TELEMED_STORE_URL"])
        try:
            for event in events():
                await store.append_audit(event)
            return store.path
        finally:
            await store.close()

    return asyncio.run(append()), env


def stored(db: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT * FROM audit_log ORDER BY seq").fetchall()


def test_the_triggers_refuse_update_and_delete(audit_db: tuple[Path, dict[str, str]]) -> None:
    db, _ = audit_db
    before = stored(db)
    assert len(before) == 6
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        triggers = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
        assert {"audit_log_no_update", "audit_log_no_delete"} <= triggers
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit_log SET action = 'patient.export' WHERE seq = 3")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit_log SET seq = 99 WHERE seq = 6")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit_log WHERE seq = 3")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit_log")
    assert stored(db) == before


Tamper = Callable[[sqlite3.Connection], object]


def swap(columns: tuple[str, ...]) -> Tamper:
    def tamper(conn: sqlite3.Connection) -> None:
        names = ", ".join(columns)
        sets = ", ".join(f"{c} = ?" for c in columns)
        third = conn.execute(f"SELECT {names} FROM audit_log WHERE seq = 3").fetchone()  # noqa: S608
        fourth = conn.execute(f"SELECT {names} FROM audit_log WHERE seq = 4").fetchone()  # noqa: S608
        conn.execute(f"UPDATE audit_log SET {sets} WHERE seq = 3", fourth)  # noqa: S608
        conn.execute(f"UPDATE audit_log SET {sets} WHERE seq = 4", third)  # noqa: S608

    return tamper


def swap_seqs(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE audit_log SET seq = -1 WHERE seq = 3")
    conn.execute("UPDATE audit_log SET seq = 3 WHERE seq = 4")
    conn.execute("UPDATE audit_log SET seq = 4 WHERE seq = -1")


TAMPERING: dict[str, tuple[Tamper, int, str]] = {
    "edited-action": (
        lambda c: c.execute("UPDATE audit_log SET action = 'patient.export' WHERE seq = 3"),
        3,
        "altered",
    ),
    "edited-actor": (
        lambda c: c.execute("UPDATE audit_log SET actor_id = 'someone-else' WHERE seq = 3"),
        3,
        "altered",
    ),
    "deleted": (
        lambda c: c.execute("DELETE FROM audit_log WHERE seq = 3"),
        4,
        "expected entry 3 here, found 4",
    ),
    "swapped-contents": (swap(COLUMNS), 3, "previous hash"),
    "swapped-seqs": (swap_seqs, 3, "previous hash"),
    "swapped-events-kept-hashes": (swap(EVENT_COLUMNS), 3, "altered"),
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_verify_names_the_first_bad_entry_after_tampering(
    audit_db: tuple[Path, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:
    db, env = audit_db
    tamper, first_bad, reason = TAMPERING[how]
    intact = run_main(monkeypatch, capsys, env, "audit", "verify", "--json")
    assert intact.code == 0
    assert intact.json()["ok"] is True

    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("DROP TRIGGER audit_log_no_update")
        conn.execute("DROP TRIGGER audit_log_no_delete")
        tamper(conn)

    text = run_cli(env, "audit", "verify")
    assert text.code == 1, text.err
    assert f"BROKEN at entry {first_bad}" in text.out
    assert reason in text.out

    data = run_main(monkeypatch, capsys, env, "audit", "verify", "--json")
    assert data.code == 1
    verdict = data.json()
    assert verdict["ok"] is False
    assert verdict["first_bad_seq"] == first_bad
    assert reason in verdict["reason"]
    assert verdict["count"] == (5 if how == "deleted" else 6)


# what the running app writes --------------------------------------------------------
async def entries(client: Client) -> list[AuditRecord]:
    return [r async for r in client.app[STORE].audit_records()]


async def attempt(
    client: Client, clock: FakeClock, email: str, password: str, status: int, after: float = 5
) -> AuditEvent:
    """One sign-in through the form `after` seconds, which must add one entry; returns it."""
    client.session.cookie_jar.clear()
    clock.advance(seconds=after)
    before = len(await entries(client))
    response = await login(client, email, password)
    assert response.status == status
    new = (await entries(client))[before:]
    assert len(new) == 1, [r.event for r in new]
    assert new[0].event.at == clock.now
    assert new[0].event.at.utcoffset() == timedelta(0)
    return new[0].event


def stored_times(settings: Settings) -> list[str]:
    path = settings.store.url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        return [r[0] for r in conn.execute("SELECT at FROM audit_log ORDER BY seq")]


async def test_every_login_attempt_is_audited(
    client: Client, people: People, clock: FakeClock, settings: Settings
) -> None:
    doctor = people.doctor_a
    wrong = await attempt(client, clock, doctor.email, "not the password at all", 401)
    assert wrong == AuditEvent(
        at=clock.now,
        actor_id=doctor.id,
        actor_role="doctor",
        action="login",
        outcome=Outcome.FAILURE,
        source="127.0.0.1",
        detail="wrong e-mail or password",
    )

    unknown = await attempt(client, clock, "nobody@example.org", PASSWORD, 401)
    assert (unknown.actor_id, unknown.actor_role) == ("anonymous", "anonymous")
    assert (unknown.action, unknown.outcome, unknown.source) == (
        "login",
        Outcome.FAILURE,
        "127.0.0.1",
    )

    success = await attempt(client, clock, doctor.email, PASSWORD, 302)
    assert success == AuditEvent(
        at=clock.now,
        actor_id=doctor.id,
        actor_role="doctor",
        action="login",
        outcome=Outcome.SUCCESS,
        source="127.0.0.1",
        detail="password",
    )

    nurse = people.nurse_a
    for _ in range(3):
        failed = await attempt(client, clock, nurse.email, "wrong again, nurse", 401)
        assert (failed.actor_id, failed.outcome) == (nurse.id, Outcome.FAILURE)
    throttled = await attempt(client, clock, nurse.email, PASSWORD, 429, after=0)
    assert (throttled.action, throttled.outcome, throttled.source) == (
        "login",
        Outcome.DENIED,
        "127.0.0.1",
    )
    assert throttled.detail == "throttled"

    assert all(at.endswith("+00:00") for at in stored_times(settings))
    assert verify(await entries(client)).ok


@pytest.mark.parametrize("path", ["/patients/{id}", "/api/patients/{id}", "/fhir/Patient/{id}"])
async def test_each_patient_read_is_audited(
    client: Client, people: People, clock: FakeClock, path: str
) -> None:
    assert (await login(client, people.doctor_a.email)).status == 302
    for patient, status, outcome, detail in [
        (people.patient_1, 200, Outcome.SUCCESS, ""),
        (people.patient_2, 403, Outcome.DENIED, "not on the care team"),
    ]:
        clock.advance(seconds=3)
        before = len(await entries(client))
        response = await client.get(path.format(id=patient.id))
        assert response.status == status
        new = [r.event for r in (await entries(client))[before:]]
        if path == "/patients/{id}" and status == 200:
            # the page also shows the care team vitals, devices, alerts, NEWS2 and the
            # monitoring plan: each read audited
            assert [(e.action, e.patient_id) for e in new[1:]] == [
                ("observation.read", patient.id),
                ("device.list", patient.id),
                ("alert.list", patient.id),
                ("news2.read", patient.id),
                ("monitoring.read", patient.id),
            ]
            new = new[:1]
        assert new == [
            AuditEvent(
                at=clock.now,
                actor_id=people.doctor_a.id,
                actor_role="doctor",
                action="patient.read",
                outcome=outcome,
                source="127.0.0.1",
                patient_id=patient.id,
                entity=f"Patient/{patient.id}",
                detail=detail,
            )
        ]


async def test_a_patient_reading_their_own_page_is_audited(
    client: Client, people: People, clock: FakeClock
) -> None:
    me = people.patient_1
    assert (await login(client, me.email)).status == 302
    clock.advance(seconds=3)
    before = len(await entries(client))
    assert (await client.get("/me")).status == 200
    new = [r.event for r in (await entries(client))[before:]]
    # the page shows their record and their signed visit summaries: two reads, two entries
    assert [(e.actor_id, e.actor_role, e.action, e.patient_id, e.at) for e in new] == [
        (me.id, "patient", "patient.read", me.id, clock.now),
        (me.id, "patient", "record.list", me.id, clock.now),
    ]


async def test_a_patient_list_audits_each_patient_shown(client: Client, people: People) -> None:
    assert (await login(client, people.doctor_a.email)).status == 302
    before = len(await entries(client))
    response = await client.get("/api/patients")
    assert response.status == 200
    new = [r.event for r in (await entries(client))[before:]]
    assert [(e.action, e.patient_id, e.entity) for e in new] == [
        ("patient.list", people.patient_1.id, f"Patient/{people.patient_1.id}")
    ]


async def test_entries_never_contain_a_password(
    client: Client, people: People, clock: FakeClock, settings: Settings
) -> None:
    wrong = "Tr0ub4dor&3 is not it"
    new_password = "a brand new passphrase"
    await attempt(client, clock, people.doctor_a.email, wrong, 401)
    await attempt(client, clock, people.doctor_a.email, PASSWORD, 302)
    await attempt(client, clock, PASSWORD, wrong, 401)  # the password typed as the e-mail
    await attempt(client, clock, people.patient_1.email, PASSWORD, 302)
    await client.app[CLINIC].add_user(
        OPERATOR, role="nurse", email="nell@example.org", name="Nell", password=new_password
    )
    await attempt(client, clock, "nell@example.org", new_password, 302)

    records = await entries(client)
    assert len(records) > 10
    secrets = (PASSWORD, wrong, new_password)
    for record in records:
        fields = [str(getattr(record.event, f.name)) for f in dataclasses.fields(record.event)]
        for value in [*fields, record.prev_hash, record.hash]:
            assert not any(secret in value for secret in secrets), record
    path = settings.store.url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT * FROM audit_log").fetchall()
    assert len(rows) == len(records)
    assert not any(secret in str(value) for row in rows for value in row for secret in secrets)
