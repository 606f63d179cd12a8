"""The simulator: realistic, reproducible vitals that the server keeps without a refusal,
published through a real Mosquitto as an enrolled device would."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import stat
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devices.dynsec import Dynsec
from devices.enrollment import Enrollment
from devices.inbox import client_with_inbox
from devices.ingest import Ingestor
from devices.manual_ack import paho_client
from devices.news2 import Consciousness, News2Inputs, Observed, Risk, score
from devices.payloads import decode
from devices.simulator import (
    DeviceCredentials,
    PayloadForm,
    ProgressLine,
    SimStats,
    device_client,
    encode,
    enroll_or_reuse,
    format_progress,
    simulate,
    simulated_patients,
)
from devices.vitals import BY_KEY, lookup
from telemed.clinic import OPERATOR, Clinic
from telemed.clock import utcnow
from telemed.store.sqlite import SqliteStore
from tests.devices.conftest import Rig, Stored

MAX_AGE, MAX_SKEW = timedelta(hours=24), timedelta(minutes=2)  # the server's defaults


def run_of(seed: int, n: int = 4, steps: int = 60) -> list[list[dict[str, float]]]:
    people = simulated_patients(n, duration=600, deteriorate=0.5, seed=seed)
    return [[dict(p.sample(10.0 * i, 1.8e9 + i).values) for i in range(steps)] for p in people]


def test_a_seed_gives_the_same_people_and_vitals() -> None:
    assert run_of(1) == run_of(1)
    assert run_of(1) != run_of(2)
    first = simulated_patients(6, duration=None, deteriorate=0.5, seed=3)
    again = simulated_patients(6, duration=None, deteriorate=0.5, seed=3)
    assert [(p.baseline, p.form, p.episode) for p in first] == [
        (p.baseline, p.form, p.episode) for p in again
    ]


@pytest.mark.parametrize(("n", "fraction", "expected"), [(10, 0.0, 0), (10, 0.3, 3), (7, 1.0, 7)])
def test_the_deteriorate_fraction_is_the_share_of_devices_with_an_episode(
    n: int, fraction: float, expected: int
) -> None:
    people = simulated_patients(n, duration=900, deteriorate=fraction, seed=5)
    episodes = [p.episode for p in people if p.episode is not None]
    assert len(episodes) == expected
    assert all(0 < e.start < e.peak < e.end <= 900 for e in episodes)  # within the run
    # one device in three writes the compact form, the others SenML
    assert [p.form for p in people[:3]] == [
        PayloadForm.SENML,
        PayloadForm.COMPACT,
        PayloadForm.SENML,
    ]


def test_vitals_stay_in_range_and_decode_without_refusals_in_both_forms() -> None:
    people = simulated_patients(12, duration=3600, deteriorate=1.0, seed=11)
    now = datetime.now(UTC)
    seen: set[str] = set()
    for index, person in enumerate(people):
        device_id = f"sim{index:02}"
        for step in range(0, 3600, 20):
            at = round(now.timestamp() - 3600 + step, 3)
            sample = person.sample(step, at)
            for key, value in sample.values.items():
                vital = lookup(key)
                assert vital is BY_KEY[key]
                assert vital.low <= value <= vital.high, (key, value)
                decimals = 1 if key in ("temp", "weight") else 0
                assert round(value, decimals) == value, (key, value)  # rounded as devices do
            assert sample.values["dia"] < sample.values["sys"]
            seen.update(sample.values)
            for form in PayloadForm:
                decoded = decode(
                    encode(device_id, sample, form),
                    device_id,
                    now=now,
                    max_age=MAX_AGE,
                    max_skew=MAX_SKEW,
                )
                assert decoded.refusals == ()
                got = {(r.code, r.value) for r in decoded.readings}
                assert got == {(BY_KEY[k].code, float(v)) for k, v in sample.values.items()}
                assert {r.taken_at.timestamp() for r in decoded.readings} == {at}
    assert seen == set(BY_KEY)  # weight and glucose too, now and then


def news2_of(values: dict[str, float], now: datetime) -> tuple[int, Risk | None]:
    def at(value: float) -> Observed[float]:
        return Observed(float(value), now)

    result = score(
        News2Inputs(
            respiration_rate=at(values["rr"]),
            spo2=at(values["spo2"]),
            on_oxygen=Observed(False, now),
            systolic_bp=at(values["sys"]),
            pulse=at(values["hr"]),
            consciousness=Observed(Consciousness.ALERT, now),
            temperature=at(values["temp"]),
        ),
        now=now,
    )
    return result.total, result.risk


def test_a_deterioration_episode_raises_news2_to_medium_or_high_then_recovers() -> None:
    now = datetime.now(UTC)
    for person in simulated_patients(8, duration=3600, deteriorate=1.0, seed=21):
        episode = person.episode
        assert episode is not None
        before = [
            news2_of(dict(person.sample(t, 0).values), now)
            for t in range(0, int(episode.start), 10)
        ]
        plateau = [
            news2_of(dict(person.sample(t, 0).values), now)
            for t in range(int(episode.peak) + 1, int(episode.end - episode.recovery), 10)
        ]
        after = [
            news2_of(dict(person.sample(t, 0).values), now)
            for t in range(int(episode.end) + 60, 3600, 10)
        ]
        baseline = max(total for total, _ in before)
        assert baseline <= 4
        assert min(total for total, _ in plateau) >= 5 > baseline
        assert {risk for _, risk in plateau} <= {Risk.MEDIUM, Risk.HIGH}
        assert max(total for total, _ in after) <= 4


def test_the_progress_line() -> None:
    stats = SimStats(
        devices=12, duration=60, messages=90, readings=1234, connected=12, elapsed=41.2, rate=3.0
    )
    assert format_progress(stats) == " 12 devices · 3.0 msg/s · 1,234 readings · 00:41 / 01:00"
    stats.errors, stats.deteriorating, stats.duration = 2, 1, None
    stats.elapsed = 3725
    assert format_progress(stats) == (
        " 12 devices · 3.0 msg/s · 1,234 readings · 1:02:05 · 1 deteriorating · 2 refused"
    )
    out = io.StringIO()  # not a terminal: a line now and then, and the last one at close
    line = ProgressLine(out, every=10)
    for elapsed in (0.0, 4.0, 11.0, 12.0):
        line(SimStats(devices=1, duration=None, connected=1, elapsed=elapsed))
    line.close()
    assert [row.split(" · ")[-1] for row in out.getvalue().splitlines()] == [
        "00:00",
        "00:11",
        "00:12",
    ]


# over MQTT ----------------------------------------------------------------------------
async def enrolled_devices(rig: Rig, n: int) -> list[DeviceCredentials]:
    return [DeviceCredentials.from_enrolled(await rig.enroll("simulator")) for _ in range(n)]


async def statuses(rig: Rig, device_ids: Sequence[str]) -> dict[str, tuple[str, bool]]:
    """The status each device left retained, read by a new subscriber: (payload, retain)."""
    a = rig.access
    client, inbox = client_with_inbox(
        a.host, a.port, username=a.username, password=a.password, timeout=5.0
    )
    found: dict[str, tuple[str, bool]] = {}
    async with client:
        await client.subscribe("telemed/v1/devices/+/status", qos=1)
        async with asyncio.timeout(5):
            while not set(device_ids) <= set(found):
                message = await inbox.get()
                payload = message.payload
                assert isinstance(payload, bytes)
                found[message.topic.value.split("/")[3]] = (payload.decode(), message.retain)
    return found


async def test_simulate_publishes_what_its_stats_say_and_the_server_keeps_all_of_it(
    rig: Rig, ingesting: tuple[Ingestor, Stored]
) -> None:
    ingestor, stored = ingesting
    devices = await enrolled_devices(rig, 2)  # the second writes the compact form
    reports: list[SimStats] = []
    stats = await simulate(
        devices, rate_hz=10, duration=0.5, deteriorate=0.5, seed=1, progress=reports.append
    )
    assert stats.messages >= 4  # about 5 per device
    assert stats.readings >= 6 * stats.messages
    assert (stats.errors, stats.failed, stats.connected) == (0, 0, 0)
    assert reports[-1] is stats
    assert stats.finished
    assert 0.4 < stats.elapsed < 5
    await stored.until(lambda: ingestor.stats.stored >= stats.readings)
    assert (ingestor.stats.stored, ingestor.stats.duplicates) == (stats.readings, 0)
    assert ingestor.stats.refused == 0
    rows = await rig.store.observations(rig.patient_id)
    assert len(rows) == stats.readings
    assert {o.device_id for o in rows} == {d.device_id for d in devices}
    after = await statuses(rig, [d.device_id for d in devices])
    assert after == {d.device_id: ("offline", True) for d in devices}


async def test_a_device_is_online_while_it_runs_and_offline_when_stopped(
    rig: Rig, ingesting: tuple[Ingestor, Stored]
) -> None:
    _, stored = ingesting
    devices = await enrolled_devices(rig, 2)
    ids = {d.device_id for d in devices}
    run = asyncio.create_task(
        simulate(devices, rate_hz=20, duration=None, deteriorate=0.0, seed=2, progress=None)
    )
    try:
        await stored.until(lambda: {o.device_id for o in stored.observations} == ids)
        assert await statuses(rig, sorted(ids)) == {i: ("online", True) for i in ids}
    finally:
        run.cancel()  # as Ctrl-C does
        await asyncio.gather(run, return_exceptions=True)
    assert run.cancelled()
    assert await statuses(rig, sorted(ids)) == {i: ("offline", True) for i in ids}


async def test_a_device_that_drops_off_leaves_offline_as_its_will(rig: Rig) -> None:
    (creds,) = await enrolled_devices(rig, 1)
    status = f"telemed/v1/devices/{creds.device_id}/status"
    a = rig.access
    watcher, seen = client_with_inbox(
        a.host, a.port, username=a.username, password=a.password, timeout=5.0
    )
    async with watcher:
        await watcher.subscribe(status, qos=1)
        device, _ = device_client(creds)
        async with device:
            await device.publish(status, b"online", qos=1, retain=True)
            async with asyncio.timeout(5):
                assert (await seen.get()).payload == b"online"
            sock = paho_client(device).socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)  # gone without a DISCONNECT
            async with asyncio.timeout(5):
                assert (await seen.get()).payload == b"offline"  # the broker sent the will
    assert await statuses(rig, [creds.device_id]) == {creds.device_id: ("offline", True)}


async def test_a_revoked_device_is_refused_and_stops(rig: Rig) -> None:
    (creds,) = await enrolled_devices(rig, 1)
    await rig.enrollment.revoke(OPERATOR, creds.device_id)
    async with asyncio.timeout(10):
        stats = await simulate(
            [creds], rate_hz=5, duration=30, deteriorate=0, seed=0, progress=None
        )
    assert (stats.failed, stats.messages) == (1, 0)


# enrollment ---------------------------------------------------------------------------
async def test_enroll_or_reuse_keeps_its_devices_and_replaces_the_lost_ones(
    rig: Rig, tmp_path: Path
) -> None:
    second = await rig.clinic.add_user(
        OPERATOR, role="patient", email="rosa@example.org", name="Rosa", password=None
    )
    path = tmp_path / "var" / "simulator-devices.json"
    first = await enroll_or_reuse(rig.enrollment, rig.clinic, 4, path)
    assert len({d.device_id for d in first}) == 4
    assert sorted(d.patient_id for d in first) == sorted([rig.patient_id, second.id] * 2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [d["device_id"] for d in json.loads(path.read_text())["devices"]] == [
        d.device_id for d in first
    ]

    assert await enroll_or_reuse(rig.enrollment, rig.clinic, 4, path) == first
    assert await enroll_or_reuse(rig.enrollment, rig.clinic, 2, path) == first[:2]

    revoked, forgotten = first[0], first[1]
    await rig.enrollment.revoke(OPERATOR, revoked.device_id)
    a = rig.access
    async with Dynsec.connect(a.host, a.port, a.username, a.password) as dynsec:
        await dynsec.delete_device(forgotten.device_id)  # as if the broker's state were reset
    third = await enroll_or_reuse(rig.enrollment, rig.clinic, 4, path)
    assert third[:2] == first[2:]
    assert {d.device_id for d in third[2:]}.isdisjoint(d.device_id for d in first)
    assert sorted(d.patient_id for d in third) == sorted([rig.patient_id, second.id] * 2)
    gone = await rig.store.get_device(forgotten.device_id)
    assert gone is not None
    assert not gone.active  # the store follows the broker
    assert [d["device_id"] for d in json.loads(path.read_text())["devices"]] == [
        d.device_id for d in third
    ]

    stats = await simulate(third, rate_hz=10, duration=0.2, deteriorate=0, seed=0, progress=None)
    assert stats.failed == 0
    assert stats.messages >= len(third)  # the saved secrets still work


async def test_enroll_or_reuse_creates_demo_patients_in_an_empty_clinic(
    rig: Rig, tmp_path: Path
) -> None:
    store = await SqliteStore.open(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        clinic = Clinic(store, utcnow)
        doctor = await clinic.add_user(
            OPERATOR, role="doctor", email="doc@example.org", name="Doc", password=None
        )
        devices = await enroll_or_reuse(
            Enrollment(clinic, rig.access), clinic, 2, tmp_path / "devices.json"
        )
        patients = await store.list_patients()
        assert len(patients) == 3
        assert len({d.patient_id for d in devices}) == 2
        assert {d.patient_id for d in devices} <= {p.id for p in patients}
        assert await store.patients_of(doctor.id) == {p.id for p in patients}
    finally:
        await store.close()
