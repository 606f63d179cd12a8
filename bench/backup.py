"""Backup benchmark: write, verify and restore an encrypted archive of a full SQLite store.

    .venv/bin/python bench/backup.py [--observations 1000000] [--records 10000]
    .venv/bin/python bench/backup.py --observations 100000 --records 1000 --profile

The store (a SQLite file in a temp folder, removed at the end) is filled as a clinic
fills it, through the server's own code:

- `--patients` patients and a few clinicians, made with `Clinic.add_user` (each audited),
  every patient on a doctor's and a nurse's care team; each patient has a pulse oximeter
  (heart rate and SpO2 every minute), every second one a blood-pressure cuff (systolic,
  diastolic and heart rate every 15 minutes), every fifth one a thermometer (every 4
  hours); their presence is recorded as the ingestor records it;
- `--observations` readings, minute by minute across all devices as they would arrive,
  stored with `Store.add_observations` (the ingestor's call) `--batch` at a time;
- `--records` consultation records, each a visit booked with `Reception.book` and a
  note (~2.2 KB of SOAP text, diagnoses, prescriptions, chat) sealed with
  `RecordsOffice.save_note`; two in three are signed with `RecordsOffice.sign`, and one in
  `--attach-every` gets a 32 KiB PDF with `RecordsOffice.attach` first. Every one goes
  through the office (a fresh data key, sealed fields, audit entries): none is copied.

Then, in the same run, on the same file:

1. `telemed.backup.write_backup(store, file, key, now=...)`, the key from
   `telemed.archive.new_backup_key()`, into a new file (opened, flushed and fsynced as
   `backup_schedule.backup_to_file` does): seconds, MB/s of the database, archive size;
2. `telemed.backup.verify_archive(file, key)`: seconds;
3. `telemed.backup.restore(file, key, store)` into a new, empty SQLite store: seconds,
   which include its final check (the whole store read back, re-digested, the audit
   chain replayed);
4. the baseline: SQLite's own online backup (`sqlite3.Connection.backup`) of the same
   database file into a new file, `--baseline-rounds` times spread over the run (before
   the backup, between verify and restore, after the restore); its median is the
   baseline. `backup_ratio` = backup_s / sqlite_backup_s, `restore_ratio` =
   restore_s / sqlite_backup_s (and `verify_ratio`).

`--profile` then writes, verifies and restores once more, each under cProfile in every
thread (the event loop, the store's SQLite thread, the `to_thread` workers), and prints
where the time goes: the profile's run is slower than the measured one, so read its
shares, not its seconds.

The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import cProfile
import itertools
import json
import os
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(1, str(ROOT))  # measure the tree this script lives in

from devices import vitals  # noqa: E402
from telemed.accounts import User, new_id  # noqa: E402
from telemed.archive import new_backup_key  # noqa: E402
from telemed.backup import Manifest, Progress, restore, verify_archive, write_backup  # noqa: E402
from telemed.clinic import OPERATOR, Actor, Clinic  # noqa: E402
from telemed.clock import utcnow  # noqa: E402
from telemed.key_custody import KeyCustody  # noqa: E402
from telemed.keyring import KeyFile  # noqa: E402
from telemed.monitoring import Device, Observation  # noqa: E402
from telemed.reception import Reception, VisitPolicy  # noqa: E402
from telemed.records import ChatLine, Diagnosis, Note, Prescription  # noqa: E402
from telemed.records_office import RecordPolicy, RecordsOffice  # noqa: E402
from telemed.sealing import Sealer  # noqa: E402
from telemed.settings import ATTACHMENT_TYPES, StoreSettings  # noqa: E402
from telemed.snapshot import COLLECTIONS  # noqa: E402
from telemed.store import Store, open_store  # noqa: E402

START = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)  # the first reading
MB = 1_000_000
# config.toml's [records] and [visits] values
POLICY = RecordPolicy(
    attachment_max_bytes=10240 * 1024,
    attachment_types=frozenset(ATTACHMENT_TYPES),
    break_glass=timedelta(minutes=60),
)
VISITS = VisitPolicy(link_valid_for=timedelta(hours=24))
PDF_BYTES = 32 * 1024
SEALED = ("records", "record_versions", "attachments", "data_keys")  # a record's collections
# what each kind of device sends: (vital, mean, spread, decimals), and every how many minutes
DEVICE_KINDS: dict[str, tuple[int, tuple[tuple[vitals.Vital, float, float, int], ...]]] = {
    "pulse-oximeter": (1, ((vitals.HEART_RATE, 74, 9, 0), (vitals.SPO2, 96.5, 1.4, 0))),
    "bp-cuff": (
        15,
        (
            (vitals.SYSTOLIC, 132, 12, 0),
            (vitals.DIASTOLIC, 82, 8, 0),
            (vitals.HEART_RATE, 72, 8, 0),
        ),
    ),
    "thermometer": (240, ((vitals.BODY_TEMPERATURE, 36.8, 0.4, 1),)),
}
# thread waits that cProfile counts as time spent: left out of the "own time" tables
WAITS = (
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'get' of '_queue.SimpleQueue' objects>",
    "<method 'poll' of 'select.epoll' objects>",
    "<method 'control' of 'select.kqueue' objects>",
)


# the clinic -------------------------------------------------------------------------------
@dataclass
class People:
    doctors: list[User]
    nurses: list[User]
    patients: list[User]
    devices: list[Device]

    def doctor_of(self, i: int) -> User:
        return self.doctors[i % len(self.doctors)]


async def add_people(clinic: Clinic, store: Store, patients: int) -> People:
    async def user(role: str, name: str, n: int) -> User:
        email = f"{role}{n}@clinic.test"
        return await clinic.add_user(OPERATOR, role=role, email=email, name=name, password=None)

    doctors = [await user("doctor", f"Doctor {n}", n) for n in range(max(1, patients // 30))]
    nurses = [await user("nurse", f"Nurse {n}", n) for n in range(max(1, patients // 60))]
    people = People(doctors, nurses, [], [])
    for n in range(patients):
        patient = await clinic.add_user(
            OPERATOR,
            role="patient",
            email=f"patient{n}@example.test",
            name=f"Patient {n}",
            password=None,
            birth_date=f"{1940 + n % 60}-{1 + n % 12:02d}-{1 + n % 28:02d}",
        )
        people.patients.append(patient)
        await clinic.add_care_team_member(OPERATOR, patient.id, people.doctor_of(n).id)
        await clinic.add_care_team_member(OPERATOR, patient.id, nurses[n % len(nurses)].id)
        kinds = ["pulse-oximeter"]
        if n % 2 == 0:
            kinds.append("bp-cuff")
        if n % 5 == 0:
            kinds.append("thermometer")
        for kind in kinds:
            device = Device(new_id(), patient.id, kind, START - timedelta(days=1))
            await store.add_device(device)
            people.devices.append(device)
    return people


def readings(devices: list[Device], total: int, seed: int) -> Iterator[list[Observation]]:
    """`total` readings, minute by minute across all devices (each minute's list in
    turn), values wandering around each vital's mean."""
    rng = random.Random(seed)
    level = {
        (d.id, v.code, i): rng.gauss(0, 1)
        for d in devices
        for i, (v, *_) in enumerate(DEVICE_KINDS[d.kind][1])
    }
    offsets = {d.id: timedelta(milliseconds=rng.randrange(60_000)) for d in devices}
    made = 0
    for minute in itertools.count():
        batch = []
        at_minute = START + timedelta(minutes=minute)
        for d in devices:
            every, sends = DEVICE_KINDS[d.kind]
            if minute % every:
                continue
            taken = at_minute + offsets[d.id]
            for i, (vital, mean, spread, decimals) in enumerate(sends):
                key = (d.id, vital.code, i)
                level[key] = 0.95 * level[key] + 0.3 * rng.gauss(0, 1)
                value = round(min(max(mean + spread * level[key], vital.low), vital.high), decimals)
                batch.append((d, vital, value, taken + timedelta(milliseconds=i)))
                made += 1
                if made == total:
                    break
            if made == total:
                break
        received = at_minute + timedelta(minutes=1, seconds=2)
        yield [
            Observation(d.patient_id, d.id, v.code, float(x), v.unit, taken, received)
            for d, v, x, taken in batch
        ]
        if made == total:
            return


async def add_observations(store: Store, people: People, total: int, batch: int) -> None:
    pending: list[Observation] = []
    latest: dict[str, datetime] = {}
    for minute in readings(people.devices, total, seed=1):
        pending += minute
        for o in minute:
            latest[o.device_id] = o.taken_at
        if len(pending) >= batch:
            stored = await store.add_observations(pending)
            assert stored == len(pending), (stored, len(pending))
            pending = []
    if pending:
        assert await store.add_observations(pending) == len(pending)
    for device_id in latest:  # as the ingestor records them
        await store.set_device_presence(device_id, True, START)
    await store.record_device_activity(latest)


def note_for(n: int, patient: User, rng: random.Random) -> Note:
    """A follow-up by video, about 2.2 KB of SOAP text, different in each record."""
    sys_bp, dia_bp = rng.randint(118, 162), rng.randint(70, 98)
    hr, spo2 = rng.randint(58, 96), rng.randint(92, 99)
    hba1c, egfr, weight = rng.randint(44, 78), rng.randint(38, 96), rng.randint(52, 118)
    said = utcnow()
    return Note(
        subjective=(
            f"{patient.name} seen by video for visit {n}: follow-up of hypertension and type 2 "
            "diabetes with remote monitoring. Reports good adherence to medication, using a "
            "weekly pill organiser; no missed doses in the last fortnight. No chest pain, no "
            "breathlessness on exertion, no palpitations, no ankle swelling, no orthopnoea. "
            "Occasional light-headedness on standing quickly in the morning, brief, no falls, "
            "no loss of consciousness. Sleeping six to seven hours, wakes once to pass urine. "
            "Walking thirty minutes most days; diet reviewed with the practice dietitian last "
            "month, cutting down on salt and sugary drinks. Mood reported as good, some worry "
            "about work. No cough on ramipril. Home glucose readings before breakfast mostly "
            f"between 6 and 9 mmol/L. Weight on the home scale {weight} kg. Asks whether the "
            "evening dose could move to the morning because of nocturia."
        ),
        objective=(
            "Video consultation, good connection, patient at home, alert, speaking full "
            "sentences, no distress, colour normal. Remote readings over the last seven days "
            f"from the enrolled devices: blood pressure mean {sys_bp}/{dia_bp} mmHg, resting "
            f"heart rate {hr}/min, SpO2 {spo2}% on room air, temperature normal on every "
            "reading. Feet shown to the camera: skin intact, no ulcers, nails trimmed. "
            f"Laboratory results from the clinic lab this month: HbA1c {hba1c} mmol/mol, eGFR "
            f"{egfr} mL/min/1.73m2, potassium 4.4 mmol/L, sodium 139 mmol/L, urine albumin to "
            "creatinine ratio 2.4 mg/mmol, LDL cholesterol 2.6 mmol/L, ALT 22 U/L."
        ),
        assessment=(
            f"1. Hypertension, {'above' if sys_bp >= 135 else 'at'} target on the current "
            "treatment; postural symptoms mild, no red flags. 2. Type 2 diabetes, "
            f"{'improving' if hba1c < 58 else 'suboptimal'} control, no hypoglycaemia. "
            f"3. Kidney function {'reduced, monitor' if egfr < 60 else 'stable'}, no "
            "albuminuria. 4. Cardiovascular risk high: statin continued, lifestyle changes "
            "ongoing and encouraged."
        ),
        plan=(
            "Continue the current medication; move the evening dose to the morning as "
            "discussed. Repeat renal function and potassium in two weeks at the clinic lab "
            "(request sent). Keep sending home blood pressure readings twice a day through "
            "the connected cuff; alert thresholds unchanged. Book the annual diabetic foot "
            "check and retinal screening. Safety-netting: seek care the same day for chest "
            "pain, breathlessness, fainting, or a foot wound. Follow-up video visit in six "
            "weeks with the results."
        ),
        diagnoses=(
            Diagnosis("I10", "Essential (primary) hypertension"),
            Diagnosis("E11.9", "Type 2 diabetes mellitus without complications"),
        ),
        prescriptions=(
            Prescription(
                "Ramipril", f"{rng.choice((2.5, 5, 10))} mg", "oral", "once daily", "3 months"
            ),
            Prescription(
                "Metformin", "1 g", "oral", "twice daily", "3 months", "with breakfast and dinner"
            ),
        ),
        chat=(
            ChatLine("patient", said, "Can you see the cuff readings from this week?"),
            ChatLine("doctor", said + timedelta(seconds=30), "Yes, they are here."),
        ),
    )


async def seal_records(
    reception: Reception,
    office: RecordsOffice,
    people: People,
    total: int,
    *,
    every: int,
    concurrency: int,
) -> int:
    """`total` records through the records office, `concurrency` writers at a time;
    returns the number signed."""
    rng = random.Random(2)
    pdf = b"%PDF-1.7\n" + random.Random(3).randbytes(PDF_BYTES - 9)  # a scan: incompressible
    numbers = iter(range(total))
    signed = 0

    async def writer() -> None:
        nonlocal signed
        for n in numbers:
            patient = people.patients[n % len(people.patients)]
            doctor = Actor.of(people.doctor_of(n % len(people.patients)), "bench")
            booking = await reception.book(OPERATOR, patient_id=patient.id, clinician_id=doctor.id)
            visit_id = booking.visit.id
            if every and n % every == every - 1:
                await office.attach(doctor, visit_id, f"scan-{n}.pdf", "application/pdf", pdf)
            chart = await office.save_note(doctor, visit_id, note_for(n, patient, rng))
            if n % 3 != 2:
                await office.sign(doctor, visit_id, chart.versions[-1].number)
                signed += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(writer())
    return signed


async def build(db: Path, key_path: Path, a: argparse.Namespace) -> dict[str, Any]:
    store = await open_store(StoreSettings(url=f"sqlite:///{db}", database="bench"))
    try:
        clinic = Clinic(store, utcnow)
        keys = KeyFile(key_path)
        keys.create(utcnow())
        sealer = Sealer(keys)
        await KeyCustody(store, sealer).verify()  # as the server starts: keeps the KEK's check
        office = RecordsOffice(clinic, sealer, POLICY)
        reception = Reception(clinic, VISITS)
        start = time.perf_counter()
        people = await add_people(clinic, store, a.patients)
        people_s = time.perf_counter() - start
        print(
            f"  {len(people.patients)} patients, {len(people.doctors)} doctors, "
            f"{len(people.nurses)} nurses, {len(people.devices)} devices: {people_s:.1f} s",
            flush=True,
        )
        start = time.perf_counter()
        await add_observations(store, people, a.observations, a.batch)
        observations_s = time.perf_counter() - start
        print(
            f"  {a.observations:,} observations with Store.add_observations, {a.batch:,} a "
            f"call: {observations_s:.1f} s",
            flush=True,
        )
        start = time.perf_counter()
        signed = await seal_records(
            reception, office, people, a.records, every=a.attach_every, concurrency=a.writers
        )
        records_s = time.perf_counter() - start
        print(
            f"  {a.records:,} records with RecordsOffice ({signed:,} signed, "
            f"{a.records // a.attach_every if a.attach_every else 0} with an attachment): "
            f"{records_s:.1f} s",
            flush=True,
        )
        counts = await store.backup_counts()
    finally:
        await store.close()  # checkpoints the WAL into the file
    assert counts["observations"] == a.observations, counts
    assert counts["records"] == a.records, counts
    return {
        "counts": counts,
        "signed": signed,
        "fill_people_s": round(people_s, 1),
        "fill_observations_s": round(observations_s, 1),
        "fill_records_s": round(records_s, 1),
    }


# the measurements ---------------------------------------------------------------------------
def sqlite_backup(db: Path, target: Path) -> float:
    """SQLite's online backup of `db` into a new file, all pages in one step."""
    target.unlink(missing_ok=True)
    start = time.perf_counter()
    source = sqlite3.connect(db)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()
    return time.perf_counter() - start


class Split:
    """Where an operation's time goes, from its progress callback (called once per batch
    of one collection): the time since the previous call goes to that batch's collection;
    what comes after the last batch (the manifest, fsync; a restore's check) is `end`."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.names = list(COLLECTIONS)
        self.ends = list(itertools.accumulate(counts[name] for name in self.names))
        self.seconds = dict.fromkeys(self.names, 0.0)
        self.start = self.last = self.stop = 0.0

    def begin(self) -> None:
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        self.seconds[self.names[bisect.bisect_left(self.ends, done)]] += now - self.last
        self.last = now

    def finish(self) -> None:
        self.stop = time.perf_counter()

    def groups(self) -> dict[str, float]:
        grouped = {"observations": self.seconds["observations"]}
        grouped["sealed records"] = sum(self.seconds[name] for name in SEALED)
        grouped["audit_log"] = self.seconds["audit_log"]
        grouped["the rest"] = sum(self.seconds.values()) - sum(grouped.values())
        grouped["end"] = self.stop - self.last
        return {name: round(seconds, 2) for name, seconds in grouped.items()}


async def backup_to(
    store: Store, path: Path, key: bytes, progress: Progress | None = None
) -> Manifest:
    """As `backup_schedule.backup_to_file` writes it: a new 0600 file, flushed, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        manifest = await write_backup(store, out, key, now=utcnow(), progress=progress)
        await asyncio.to_thread(out.flush)
        await asyncio.to_thread(os.fsync, out.fileno())
    return manifest


def verify(path: Path, key: bytes, progress: Progress | None = None) -> Manifest:
    with path.open("rb") as file:
        return verify_archive(file, key, progress)


async def restore_into(
    path: Path, key: bytes, db: Path, progress: Progress | None = None
) -> tuple[Manifest, dict[str, int]]:
    store = await open_store(StoreSettings(url=f"sqlite:///{db}", database="bench"))
    try:
        with path.open("rb") as file:  # noqa: ASYNC230 - restore reads it off the loop
            manifest = await restore(file, key, store, progress=progress)
        return manifest, await store.backup_counts()
    finally:
        await store.close()


async def timed_backup(db: Path, archive: Path, key: bytes, split: Split) -> Manifest:
    """The backup of the store at `db` (opened as the server opens it), timed."""
    store = await open_store(StoreSettings(url=f"sqlite:///{db}", database="bench"))
    try:
        split.begin()
        manifest = await backup_to(store, archive, key, split)
        split.finish()
        return manifest
    finally:
        await store.close()


def measure(tmp: Path, db: Path, counts: dict[str, int], rounds: int) -> dict[str, Any]:
    key = new_backup_key()
    archive = tmp / "backup.tmbk"
    baseline: list[float] = []

    def baseline_round() -> None:
        baseline.append(sqlite_backup(db, tmp / "sqlite-copy.db"))
        print(f"  sqlite3 backup: {baseline[-1]:.2f} s", flush=True)

    baseline_round()  # also brings the file into the page cache for everyone
    backup = Split(counts)
    manifest = asyncio.run(timed_backup(db, archive, key, backup))
    backup_s = backup.stop - backup.start
    print(f"  write_backup: {backup_s:.2f} s", flush=True)
    checked = Split(counts)
    checked.begin()
    verified = verify(archive, key, checked)
    checked.finish()
    verify_s = checked.stop - checked.start
    assert verified == manifest
    print(f"  verify_archive: {verify_s:.2f} s", flush=True)
    for _ in range(max(0, rounds - 2)):
        baseline_round()
    restored_db = tmp / "restored.db"
    loaded = Split(counts)
    loaded.begin()  # a new store (its schema made), loaded, checked, closed
    restored, restored_counts = asyncio.run(restore_into(archive, key, restored_db, loaded))
    loaded.finish()
    restore_s = loaded.stop - loaded.start
    assert restored == manifest
    assert restored_counts == manifest.counts == counts, (restored_counts, manifest.counts)
    print(f"  restore: {restore_s:.2f} s", flush=True)
    if rounds > 1:
        baseline_round()
    sqlite_s = statistics.median(baseline)
    db_bytes = db.stat().st_size
    return {
        "backup_s": round(backup_s, 2),
        "verify_s": round(verify_s, 2),
        "restore_s": round(restore_s, 2),
        "sqlite_backup_s": round(sqlite_s, 3),
        "sqlite_backup_runs_s": [round(s, 3) for s in baseline],
        "backup_ratio": round(backup_s / sqlite_s, 1),
        "verify_ratio": round(verify_s / sqlite_s, 1),
        "restore_ratio": round(restore_s / sqlite_s, 1),
        "archive_bytes": archive.stat().st_size,
        "db_bytes": db_bytes,
        "sqlite_copy_bytes": (tmp / "sqlite-copy.db").stat().st_size,
        "restored_db_bytes": restored_db.stat().st_size,
        "backup_mb_per_s": round(db_bytes / MB / backup_s, 2),
        "archive_mb_per_s": round(archive.stat().st_size / MB / backup_s, 2),
        "sqlite_backup_mb_per_s": round(db_bytes / MB / sqlite_s, 1),
        "documents": manifest.total(),
        "backup_split_s": backup.groups(),
        "verify_split_s": checked.groups(),
        "restore_split_s": loaded.groups(),
        "point_in_time": manifest.point_in_time,
    }


# profiling ----------------------------------------------------------------------------------
class ThreadProfiles:
    """A cProfile per thread, for every thread started while installed (the store's
    SQLite thread, the `to_thread` workers) and for the calling thread itself."""

    def __init__(self) -> None:
        self.main = cProfile.Profile()
        self.threads: list[tuple[str, cProfile.Profile]] = []
        self._lock = threading.Lock()

    def _start(self, frame: FrameType, event: str, arg: Any) -> None:
        profile = cProfile.Profile()
        with self._lock:
            self.threads.append((threading.current_thread().name, profile))
        profile.enable()  # replaces this hook in this thread

    def run(self, fn: Callable[[], Any]) -> Any:
        threading.setprofile(self._start)
        self.main.enable()
        try:
            return fn()
        finally:
            self.main.disable()
            threading.setprofile(None)

    def report(self, title: str, wall: float, top: int) -> list[str]:
        lines = [f"{title}: {wall:.2f} s under cProfile; own time by thread (waits left out):"]
        merged: pstats.Stats | None = None
        groups: dict[str, list[cProfile.Profile]] = {"MainThread": [self.main]}
        for name, profile in self.threads:
            kind = "sqlite (store thread)" if name.startswith("sqlite") else "to_thread workers"
            groups.setdefault(kind, []).append(profile)
        for kind, profiles in groups.items():
            stats = pstats.Stats(*profiles)
            busy = sum(own for f, (_, _, own, _, _) in _entries(stats).items() if f[2] not in WAITS)
            lines.append(f"  {kind:26s} {busy:7.2f} s busy ({100 * busy / wall:5.1f}% of the wall)")
            if merged is None:
                merged = stats
            else:
                merged.add(stats)
        assert merged is not None
        rows = [
            (own, cumulative, calls, f"{function} ({Path(file).name}:{line})" if line else function)
            for (file, line, function), (_, calls, own, cumulative, _) in _entries(merged).items()
            if function not in WAITS
        ]
        ours = [  # the project's own functions (not asyncio's, nor this script's)
            (own, cumulative, calls, f"{function} ({Path(file).relative_to(ROOT)}:{line})")
            for (file, line, function), (_, calls, own, cumulative, _) in _entries(merged).items()
            if file.startswith(str(ROOT)) and Path(file) != SCRIPT
        ]
        lines.append("  top functions, all threads, by own time (cumulative in brackets):")
        for own, cumulative, calls, name in sorted(rows, reverse=True)[:top]:
            share, inclusive = 100 * own / wall, 100 * cumulative / wall
            lines.append(f"    {share:5.1f}%  ({inclusive:5.1f}%)  {calls:9d}  {name}")
        lines.append("  the project's functions by cumulative time:")
        for own, cumulative, calls, name in sorted(ours, key=lambda r: -r[1])[:top]:
            lines.append(
                f"    {100 * cumulative / wall:5.1f}%  ({100 * own / wall:5.1f}% own)  "
                f"{calls:9d}  {name}"
            )
        return lines


def _entries(stats: pstats.Stats) -> dict[tuple[str, int, str], tuple[Any, ...]]:
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    return entries


def profile_pass(tmp: Path, db: Path, top: int) -> list[str]:
    key = new_backup_key()
    archive = tmp / "profiled.tmbk"

    async def backup() -> None:
        store = await open_store(StoreSettings(url=f"sqlite:///{db}", database="bench"))
        try:
            await backup_to(store, archive, key)
        finally:
            await store.close()

    lines: list[str] = []
    profiles = ThreadProfiles()
    start = time.perf_counter()
    profiles.run(lambda: asyncio.run(backup()))
    lines += profiles.report("profiled write_backup", time.perf_counter() - start, top)
    profiles = ThreadProfiles()
    start = time.perf_counter()
    profiles.run(lambda: verify(archive, key))
    lines += profiles.report("profiled verify_archive", time.perf_counter() - start, top)
    profiles = ThreadProfiles()
    start = time.perf_counter()
    profiles.run(lambda: asyncio.run(restore_into(archive, key, tmp / "profiled-restore.db")))
    lines += profiles.report("profiled restore", time.perf_counter() - start, top)
    return lines


# the run ------------------------------------------------------------------------------------
def split_text(split: dict[str, float], counts: dict[str, int], end: str) -> str:
    each = 1e6 * split["observations"] / max(1, counts["observations"])
    records = 1e3 * split["sealed records"] / max(1, counts["records"])
    return (
        f"            of which observations {split['observations']} s ({each:.0f} µs each), "
        f"sealed records {split['sealed records']} s ({records:.2f} ms each, with their "
        f"versions, attachments and keys), audit log {split['audit_log']} s, the rest "
        f"{split['the rest']} s, {end} {split['end']} s"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Backup, verify and restore against sqlite3 backup.")
    p.add_argument("--observations", type=int, default=1_000_000, help="readings in the store")
    p.add_argument("--records", type=int, default=10_000, help="sealed consultation records")
    p.add_argument("--patients", type=int, default=300, help="patients (devices: ~1.7 each)")
    p.add_argument("--batch", type=int, default=10_000, help="readings per add_observations")
    p.add_argument("--attach-every", type=int, default=50, help="1 record in N: a PDF (0: none)")
    p.add_argument("--writers", type=int, default=4, help="records sealed concurrently")
    p.add_argument("--baseline-rounds", type=int, default=3, help="sqlite3 backups (median)")
    p.add_argument("--profile", action="store_true", help="profile backup, verify, restore again")
    p.add_argument("--top", type=int, default=25, help="functions listed by --profile")
    a = p.parse_args(argv)
    if min(a.observations, a.records, a.patients, a.batch, a.writers, a.baseline_rounds) <= 0:
        p.error("--observations, --records, --patients, --batch, --writers, --baseline-rounds: > 0")
    if a.attach_every < 0:
        p.error("--attach-every: >= 0")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as folder:
        tmp = Path(folder)
        db = tmp / "telemed.db"
        print(f"filling {db}", flush=True)
        fill = asyncio.run(build(db, tmp / "keys" / "record-keys.json", a))
        print("measuring", flush=True)
        m = measure(tmp, db, fill["counts"], a.baseline_rounds)
        profile = profile_pass(tmp, db, a.top) if a.profile else []
    counts = fill.pop("counts")
    mb = m["db_bytes"] / MB
    lines = [
        "",
        f"== backup benchmark, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}",
        f"store       {mb:,.1f} MB: {counts['observations']:,} observations, "
        f"{counts['records']:,} records ({fill['signed']:,} signed; "
        f"{counts['record_versions']:,} versions, {counts['attachments']:,} attachments, "
        f"{counts['data_keys']:,} data keys), {counts['audit_log']:,} audit entries, "
        f"{counts['patients']:,} patients, {counts['devices']:,} devices; "
        f"{m['documents']:,} documents in all",
        f"filled in   {fill['fill_people_s']} s (people) + {fill['fill_observations_s']} s "
        f"(observations) + {fill['fill_records_s']} s (records, all through RecordsOffice)",
        f"baseline    sqlite3 online backup: {m['sqlite_backup_s']} s (median of "
        f"{m['sqlite_backup_runs_s']}), {m['sqlite_backup_mb_per_s']:,} MB/s, copy "
        f"{m['sqlite_copy_bytes'] / MB:,.1f} MB",
        f"backup      write_backup: {m['backup_s']} s, {m['backup_mb_per_s']} MB/s of the "
        f"database, archive {m['archive_bytes'] / MB:,.1f} MB ({m['archive_mb_per_s']} MB/s "
        f"written): ratio {m['backup_ratio']} x the baseline",
        split_text(m["backup_split_s"], counts, "the manifest, flush and fsync"),
        f"verify      verify_archive: {m['verify_s']} s: ratio {m['verify_ratio']}",
        split_text(m["verify_split_s"], counts, "the manifest's check"),
        f"restore     restore (load, then the whole store read back and checked): "
        f"{m['restore_s']} s, restored file {m['restored_db_bytes'] / MB:,.1f} MB: ratio "
        f"{m['restore_ratio']}",
        split_text(m["restore_split_s"], counts, "the check: the store read back"),
        *profile,
    ]
    print("\n".join(lines))
    summary = {
        "observations": counts["observations"],
        "records": counts["records"],
        **m,
        **fill,
        "counts": counts,
        "records_replicated": 0,
        "cores": os.cpu_count(),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
