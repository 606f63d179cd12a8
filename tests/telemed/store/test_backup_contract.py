"""The store contract for backup and restore, against every adapter (see conftest).

A store holding something of every collection is dumped (`backup_dump`, inside
`snapshot`), loaded into a fresh store of the same kind (`backup_load`) and dumped again:
the two must hold the same documents, collection by collection (`snapshot.Digest`). The
same backup also goes from SQLite to MongoDB and back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from telemed.accounts import Patient, Role, User
from telemed.audit import AuditEvent, Outcome, averify
from telemed.errors import Conflict
from telemed.monitoring import (
    Alert,
    AlertState,
    CheckIn,
    Device,
    DevicePresence,
    MonitoringPlan,
    Observation,
    Severity,
    Threshold,
)
from telemed.records import BreakGlass, RecordHeader, SealedAttachment, SealedVersion, VersionKind
from telemed.sealing import WrappedKey
from telemed.snapshot import COLLECTIONS, Digest, canonical, from_plain, to_plain
from telemed.store import Store
from telemed.tokens import ApiToken
from telemed.visits import (
    PreCheck,
    QualitySample,
    Recommendation,
    Transition,
    Visit,
    VisitState,
    secret_hash,
)

from .conftest import NX, NX_KEY_LOG, SQLITE, Backend, backend_of

T0 = datetime(2026, 3, 1, 9, 30, 15, 123000, tzinfo=UTC)
BATCH = 50  # small, so that the observations take several pages
ALL_BYTES = bytes(range(256))  # NULs and high bytes, as sealed values hold
DEVICES = ("d1", "d2", "d3")
CODES = ("8867-4", "2708-6", "8310-5")  # heart rate, SpO2, body temperature
READINGS_PER_SERIES = 40  # 3 devices x 3 codes x 40 = 360 observations


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def user(id: str, role: Role, name: str, **changes: Any) -> User:
    made = User(
        id=id,
        email=f"{id}@clinic.example",
        name=name,
        role=role,
        password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        created_at=at(1),
    )
    return dataclasses.replace(made, **changes)


def observation(device: str, code: str, n: int) -> Observation:
    patient = "p2" if device == "d3" else "p1"
    value = {"8867-4": 60.0 + n, "2708-6": 90.5 + n / 8, "8310-5": 36.6 + n / 10}[code]
    return Observation(
        patient_id=patient,
        device_id=device,
        code=code,
        value=value,
        unit={"8867-4": "/min", "2708-6": "%", "8310-5": "Cel"}[code],
        taken_at=at(100 + n * 5),
        received_at=at(100 + n * 5 + 0.25),
    )


async def populate(store: Store, backend: Backend) -> None:
    """Something of every collection, written the way the server writes it.

    nx-27017 stores a date given to $set as text, and applies $max to dates as text
    (test_contract's NX_SET_DATE and NX_MAX_DATE): there, what those updates make (a
    revoked token and device, a resolved alert, devices' presence) is added as it would
    end up instead, presence through `backup_load` (no other write stores it whole).
    """
    on_nx = backend.name == NX
    admin = user("admin", Role.ADMIN, "Ada Admin")
    doctor = user(
        "doc",
        Role.DOCTOR,
        "Dra. Inês Conceição",
        totp_secret="JBSWY3DPEHPK3PXP",
        totp_last_step=58_000_123,
        recovery_codes=("a" * 64, "b" * 64),
    )
    nurse = user("nurse", Role.NURSE, "Nuno Enfermeiro")
    for u in (admin, doctor, nurse, user("p1", Role.PATIENT, "Rui Costa")):
        await store.add_user(u)
    await store.add_user(user("p2", Role.PATIENT, "Zoë «Ω» Ng", active=False, password_hash=""))
    await store.update_user(dataclasses.replace(doctor, totp_last_step=58_000_124))
    await store.add_patient(Patient("p1", "Rui Costa", date(1951, 2, 28), "pt", at(2)))
    await store.add_patient(Patient("p2", "Zoë «Ω» Ng", None, "en", at(3)))
    for patient_id, clinician_id in (("p1", "doc"), ("p1", "nurse"), ("p2", "doc")):
        assert await store.add_care_team_member(patient_id, clinician_id)

    active = ApiToken("t1", "doc", "EHR bridge", "hash-t1", at(4))
    revoked = ApiToken("t2", "admin", "old script", "hash-t2", at(5))
    await store.add_token(active)
    if on_nx:
        await store.add_token(dataclasses.replace(revoked, revoked_at=at(6)))
    else:
        await store.add_token(revoked)
        assert await store.revoke_token("t2", at(6))
    await store.put_setting("clinic.name", "Clínica São João")
    await store.put_setting("clinic.phone", "+351 21 000 0000")
    await store.put_setting("clinic.phone", "+351 21 000 0001")

    for n, device_id in enumerate(DEVICES):
        patient_id = "p2" if device_id == "d3" else "p1"
        await store.add_device(Device(device_id, patient_id, "pulse-oximeter", at(10 + n)))
    if on_nx:
        await store.add_device(Device("d4", "p1", "bp-cuff", at(13), revoked_at=at(14)))
        await store.backup_load(
            "device_presence",
            [
                DevicePresence("d1", online=True, status_at=at(20), last_seen_at=at(295)),
                DevicePresence("d2", last_seen_at=at(290)),
                DevicePresence("d3", online=False, status_at=at(21)),
            ],
        )
    else:
        await store.add_device(Device("d4", "p1", "bp-cuff", at(13)))
        assert await store.revoke_device("d4", at(14))
        assert await store.set_device_presence("d1", True, at(20))
        assert await store.set_device_presence("d3", False, at(21))
        await store.record_device_activity({"d1": at(295), "d2": at(290)})

    await store.put_monitoring_plan(
        MonitoringPlan(
            patient_id="p1",
            thresholds={
                "8867-4": Threshold(41.0, 130.0),
                "2708-6": Threshold(low=92.0),
                "8310-5": Threshold(35.1, 0.1 + 0.2 + 38.7),
                "29463-7": Threshold(),
            },
            spo2_scale=2,
            offline_after=timedelta(minutes=30),
            quiet_period=timedelta(minutes=15, milliseconds=250),
            updated_by="doc",
            updated_at=at(30),
        )
    )
    await store.put_monitoring_plan(
        MonitoringPlan("p2", {}, 1, timedelta(hours=1), timedelta(minutes=10))
    )
    await store.add_check_in(CheckIn("c1", "p1", at(31), "p1", "patient", consciousness="A"))
    await store.add_check_in(CheckIn("c2", "p1", at(32), "nurse", "nurse", on_oxygen=True))
    await store.add_check_in(CheckIn("c3", "p2", at(33), "doc", "doctor", "V", False))

    def alert(id: str, rule: str, opened: float, **changes: Any) -> Alert:
        opened_alert = Alert(
            id=id,
            patient_id="p1",
            rule=rule,
            severity=Severity.MEDIUM,
            state=AlertState.OPEN,
            opened_at=at(opened),
            last_breach_at=at(opened),
            detail="heart rate 142 /min above 130",
        )
        return dataclasses.replace(opened_alert, **changes)

    await store.add_alert(alert("a1", "threshold:8867-4:high", 40, value=142.0))
    await store.add_alert(alert("a2", "news2", 41, severity=Severity.HIGH, score=7))
    resolved = alert("a3", "device-offline:d2", 42)
    if on_nx:
        resolved = dataclasses.replace(
            resolved, state=AlertState.RESOLVED, resolved_at=at(43), resolved_by="doc"
        )
        await store.add_alert(resolved)
    else:
        await store.add_alert(resolved)
        assert await store.resolve_alert("a3", "doc", at(43))

    visit = Visit(
        id="visit-1",
        patient_id="p1",
        clinician_id="doc",
        scheduled_at=at(3600),
        created_at=at(50),
        created_by="doc",
        link_hash=secret_hash("token-1"),
        link_expires_at=at(3600 + 86400),
        transitions=(Transition(VisitState.SCHEDULED, at(50), "doc"),),
    )
    await store.add_visit(visit)
    waiting = dataclasses.replace(
        visit.move(VisitState.WAITING, at(3500), "patient"),
        version=2,
        link_claimed_at=at(3490),
        pass_hash=secret_hash("pass"),
        patient_online=True,
        precheck=PreCheck(True, False, 83.5, 420.0, Recommendation.VIDEO, at(3495)),
        quality=(QualitySample(at(3510), "patient", 120.0, 1.5, 300.0, 150.0, False),),
    )
    assert await store.replace_visit(waiting)
    in_call = dataclasses.replace(waiting.move(VisitState.IN_CALL, at(3600), "doc"), version=3)
    assert await store.replace_visit(in_call)

    readings = [
        observation(device, code, n)
        for n in range(READINGS_PER_SERIES)
        for device in DEVICES
        for code in CODES
    ]
    for start in range(0, len(readings), 100):
        await store.add_observations(readings[start : start + 100])

    await store.add_break_glass(
        BreakGlass("bg1", "admin", "p2", "patient unconscious in ER", at(60), at(60 + 3600))
    )

    # a signed record whose addendum has an attachment; every sealed thing names a key
    await store.add_data_key(
        WrappedKey("k1", "p1", "kek-a", b"\x00wrapped\x00" + ALL_BYTES, at(70))
    )
    await store.add_data_key(WrappedKey("k2", "p2", "kek-b", b"\x00\x00", at(71), format=2))
    await store.add_attachment(
        SealedAttachment(
            id="att1",
            record_id="visit-1",
            patient_id="p1",
            author_id="doc",
            created_at=at(80),
            content_type="application/pdf",
            size=256,
            key_id="k1",
            name=b"\x00sealed name\xff",
            body=ALL_BYTES,
        )
    )
    header = RecordHeader("visit-1", "p1", "doc", at(75))
    await store.add_record(header)
    note = SealedVersion(
        id="ver1",
        record_id="visit-1",
        number=1,
        patient_id="p1",
        kind=VersionKind.NOTE,
        author_id="doc",
        created_at=at(76),
        key_id="k1",
        fields={"subjective": b"\x00\x01\x02", "plan": ALL_BYTES, "chat": b""},
    )
    await store.add_record_version(note)
    header = dataclasses.replace(header, rev=2, versions=("ver1",))
    assert await store.replace_record(header)
    header = dataclasses.replace(header, rev=3, signed_version=1, signed_by="doc", signed_at=at(78))
    assert await store.replace_record(header)
    addendum = SealedVersion(
        id="ver2",
        record_id="visit-1",
        number=2,
        patient_id="p1",
        kind=VersionKind.ADDENDUM,
        author_id="doc",
        created_at=at(81),
        key_id="k1",
        fields={"text": b"\x00phoned: better\x00"},
        attachment_ids=("att1",),
    )
    await store.add_record_version(addendum)
    assert await store.replace_record(dataclasses.replace(header, rev=4, versions=("ver1", "ver2")))
    assert await store.put_key_check("kek-a", b"\x00check-a\xff")
    assert await store.put_key_check("kek-b", ALL_BYTES)

    for n in range(6):
        await store.append_audit(
            AuditEvent(
                at=at(90 + n),
                actor_id="doc",
                actor_role="doctor",
                action="patient.read",
                outcome=Outcome.DENIED if n == 3 else Outcome.SUCCESS,
                source="203.0.113.7",
                patient_id="p1" if n % 2 else "",
                entity="Patient/p1" if n % 2 else "",
                detail=f'entry {n}: «ação» "quoted"',
            )
        )


@dataclass
class Dump:
    """One store's backup: each collection's batches, in the order read."""

    batches: dict[str, list[list[Any]]] = field(default_factory=dict)
    digests: dict[str, Digest] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # `backup_counts`, in the snapshot

    def summary(self) -> dict[str, tuple[int, str]]:
        return {name: (d.count, d.hex) for name, d in self.digests.items()}


async def dump(store: Store, *, batch: int = BATCH) -> Dump:
    result = Dump()
    async with store.snapshot():
        result.counts = await store.backup_counts()
        for name in COLLECTIONS:
            digest = result.digests[name] = Digest()
            batches = result.batches[name] = []
            async for items in store.backup_dump(name, batch=batch):
                assert 0 < len(items) <= batch, name
                batches.append(items)
                for item in items:
                    assert type(item) is COLLECTIONS[name], name
                    digest.add(canonical(to_plain(item)))
    return result


async def load(store: Store, backup: Dump) -> None:
    for name in COLLECTIONS:
        for items in backup.batches[name]:
            await store.backup_load(name, items)


def objects(backup: Dump, name: str) -> list[Any]:
    return [item for items in backup.batches[name] for item in items]


async def test_a_backup_restores_every_collection_as_it_was(
    backend: Backend, store: Store, other_backend: Backend
) -> None:
    await populate(store, backend)
    source = await dump(store)
    assert set(source.batches) == set(COLLECTIONS)
    empty = [name for name, d in source.digests.items() if d.count == 0]
    assert empty == [], "the store should hold something of every collection"
    assert {name: d.count for name, d in source.digests.items()} == source.counts
    assert source.counts["observations"] == len(DEVICES) * len(CODES) * READINGS_PER_SERIES
    assert len(source.batches["observations"]) > 1  # several pages

    target = await other_backend.open()
    assert set((await target.backup_counts()).values()) == {0}
    await load(target, source)
    restored = await dump(target)
    assert restored.counts == source.counts
    assert restored.summary() == source.summary()

    # and the server's own reads find what was loaded
    for patient_id in ("p1", "p2"):
        assert await target.observations(patient_id) == await store.observations(patient_id)
        assert await target.latest_observations(patient_id) == await store.latest_observations(
            patient_id
        )
        assert await target.care_team(patient_id) == await store.care_team(patient_id)
        assert await target.list_records(patient_id) == await store.list_records(patient_id)
    assert await target.patients_of("doc") == await store.patients_of("doc")
    assert await target.find_user_by_email("doc@clinic.example") == await store.get_user("doc")
    assert await target.find_token("hash-t1") == await store.get_token("t1")
    assert await target.find_visit_by_link(secret_hash("token-1")) == await store.get_visit(
        "visit-1"
    )
    assert await target.list_device_presence() == await store.list_device_presence()
    assert await target.active_alert("p1", "news2") == await store.get_alert("a2")
    assert await target.data_keys_under("kek-a") == await store.data_keys_under("kek-a")
    assert await target.count_data_keys() == {"kek-a": 1, "kek-b": 1}
    assert await target.key_checks() == await store.key_checks()
    assert await target.list_attachments("visit-1") == await store.list_attachments("visit-1")
    assert await target.record_versions(["ver2", "ver1"]) == await store.record_versions(
        ["ver2", "ver1"]
    )
    verdict = await averify(target.audit_records())
    assert verdict.ok
    assert (verdict.count, verdict.head_hash) == (6, objects(source, "audit_log")[-1].hash)


async def test_every_dumped_object_comes_back_through_the_codec(
    backend: Backend, store: Store
) -> None:
    await populate(store, backend)
    backup = await dump(store)
    for name, tp in COLLECTIONS.items():
        for item in objects(backup, name):
            plain = json.loads(canonical(to_plain(item)))
            assert from_plain(tp, plain) == item, name
            assert canonical(to_plain(from_plain(tp, plain))) == canonical(plain), name


async def test_loading_what_a_store_holds_raises_conflict(
    backend: Backend, store: Store, other_backend: Backend
) -> None:
    await populate(store, backend)
    source = await dump(store)
    target = await other_backend.open()
    for name in COLLECTIONS:
        first = objects(source, name)[:1]
        await target.backup_load(name, first)
        try:
            await target.backup_load(name, first)
        except Conflict:
            continue
        pytest.fail(f"{name}: loaded twice without a Conflict")
    assert set((await target.backup_counts()).values()) == {1}


async def test_a_backup_of_an_empty_store_is_empty(store: Store, other_backend: Backend) -> None:
    backup = await dump(store)
    assert set(backup.counts.values()) == {0}
    assert all(batches == [] for batches in backup.batches.values())
    target = await other_backend.open()
    for name in COLLECTIONS:
        await target.backup_load(name, [])
    assert set((await target.backup_counts()).values()) == {0}


async def test_dump_pages_take_every_object_once_whatever_the_batch(
    backend: Backend, store: Store
) -> None:
    await populate(store, backend)
    whole = await dump(store, batch=10_000)
    assert all(len(batches) <= 1 for batches in whole.batches.values())
    for batch in (1, 7):
        paged = await dump(store, batch=batch)
        assert paged.summary() == whole.summary()


async def test_snapshot_reads_one_point_in_time_where_the_store_can(
    backend: Backend, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await populate(store, backend)
    writer = await backend.open()  # another connection to the same database
    caplog.set_level(logging.WARNING, logger="telemed.store.mongo")
    async with store.snapshot() as point_in_time:
        before = await store.backup_counts()
        await writer.add_user(user("late", Role.NURSE, "Late Arrival"))
        await writer.add_observations([observation("d1", "8867-4", READINGS_PER_SERIES)])
        during = await store.backup_counts()
        users = [u.id for items in [b async for b in store.backup_dump("users")] for u in items]
    after = await store.backup_counts()
    if backend.name == SQLITE:
        assert point_in_time  # one read transaction
    if backend.name == NX:
        assert not point_in_time, "nx-27017 is a standalone server: no snapshot reads"
    if point_in_time:
        assert during == before
        assert "late" not in users
    else:
        assert during["users"] == before["users"] + 1
        assert "late" in users
        assert "not of one point in time" in caplog.text
    assert after["users"] == before["users"] + 1
    assert after["observations"] == before["observations"] + 1


@pytest.mark.mongo
@pytest.mark.parametrize("mongo", [NX, NX_KEY_LOG])
async def test_a_backup_moves_from_sqlite_to_mongodb_and_back(
    mongo: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with (
        backend_of(SQLITE, request, tmp_path / "source.db") as sqlite_source,
        backend_of(mongo, request, tmp_path / "unused.db") as mongodb,
        backend_of(SQLITE, request, tmp_path / "back.db") as sqlite_back,
    ):
        source = await sqlite_source.open()
        await populate(source, sqlite_source)
        original = await dump(source)

        into_mongodb = await mongodb.open()
        await load(into_mongodb, original)
        in_mongodb = await dump(into_mongodb)
        assert in_mongodb.counts == original.counts
        assert in_mongodb.summary() == original.summary()

        back = await sqlite_back.open()
        await load(back, in_mongodb)
        in_sqlite = await dump(back)
        assert in_sqlite.counts == original.counts
        assert in_sqlite.summary() == original.summary()
        assert (await averify(back.audit_records())).ok
