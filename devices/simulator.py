"""Simulated wearables: realistic vitals, published over MQTT exactly as a device would.

Two halves:

- A pure model of each simulated person (`SimulatedPatient`): a baseline drawn once
  (heart rate 60-90 /min, SpO2 95-99 %, respiration 12-18 /min, temperature 36.3-37.2 Cel,
  blood pressure about 110-135/70-85 mm[Hg], for some a weight or a glucose), slow drift
  around it (a mean-reverting Ornstein-Uhlenbeck process per vital, sampled exactly for
  any time step), sensor noise per reading, and rounded as devices round (whole numbers
  for HR, SpO2, RR and BP, one decimal for temperature). Some people go through a
  deterioration episode: over minutes their heart and respiration rates climb, SpO2 and
  systolic pressure fall and temperature rises, far enough for NEWS2 to reach medium or
  high, then they recover. All of it is drawn from `random.Random` seeded per run and
  per device, so a seed gives the same people and, for the same sampling times, the
  same values.
- The device side (`simulate`): one task per device, each an MQTT client with the
  device's enrolled credentials, a retained `online` on its status topic at connect and a
  retained `offline` as its last will (and sent explicitly on a clean exit), a QoS 1
  subscription to its own errors topic, and QoS 1 publishes of SenML packs (two devices
  in three) or the compact JSON form (the third). Times are absolute Unix seconds with
  milliseconds, so a message resent after a reconnect is a duplicate the store absorbs.

`enroll_or_reuse` enrolls the demo devices once and keeps their credentials in a private
file under var/, so later runs publish as the same devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from devices.dynsec import Dynsec, DynsecError, topic
from devices.enrollment import Enrolled, Enrollment
from devices.inbox import client_with_inbox
from telemed.accounts import Patient
from telemed.clinic import OPERATOR, Clinic

log = logging.getLogger(__name__)

CREDENTIALS_FILE = "simulator-devices.json"  # under var/, mode 0600: it holds secrets
DEVICE_KIND = "simulator"
MAX_RATE_HZ = 100.0  # per device; readings are keyed by the millisecond
CONNECT_TIMEOUT = 10.0
PUBLISH_TIMEOUT = 10.0
OFFLINE_TIMEOUT = 2.0  # for the explicit `offline` on the way out
MAX_BACKOFF = 10.0
PROGRESS_INTERVAL = 0.5  # seconds between progress reports
RATE_WINDOW = 5.0  # seconds of history behind the live rate
WEIGHT_EVERY = 60  # messages between two weights (from a device that has a scale)
GLUCOSE_EVERY = 30  # messages between two glucose readings
# CONNACK codes that no retry will change: the credential is wrong or revoked.
_REFUSED = {4, 5, 134, 135, 138}  # bad user name or password, not authorized (3.1.1, 5), banned
_DEMO_PATIENTS = (
    ("Sam Sample", "sam.sample@demo.clinic", "1952-06-21"),
    ("Alex Example", "alex.example@demo.clinic", "1967-09-03"),
    ("Jo Demo", "jo.demo@demo.clinic", "1944-01-30"),
)


# the model ------------------------------------------------------------------------------
class PayloadForm(StrEnum):
    """How a device writes its messages (docs/device-payloads.md)."""

    SENML = "senml"
    COMPACT = "compact"


@dataclass(frozen=True, slots=True)
class Baseline:
    """One person's resting values, in the canonical units."""

    hr: float  # /min
    spo2: float  # %
    rr: float  # /min
    temp: float  # Cel
    sys: float  # mm[Hg]
    dia: float  # mm[Hg]
    weight: float | None  # kg, for people who weigh themselves
    glucose: float | None  # mg/dL, for people who check their blood sugar

    @classmethod
    def draw(cls, rng: random.Random) -> Baseline:
        sys = rng.uniform(110, 135)
        return cls(
            hr=rng.uniform(60, 90),
            spo2=rng.uniform(95.5, 98.5),
            rr=rng.uniform(12, 18),
            temp=rng.uniform(36.3, 37.2),
            sys=sys,
            dia=min(rng.uniform(70, 85), sys - 30),
            weight=rng.uniform(52, 110) if rng.random() < 0.3 else None,
            glucose=rng.uniform(85, 130) if rng.random() < 0.2 else None,
        )


@dataclass(frozen=True, slots=True)
class Episode:
    """A deterioration: a smooth rise to `depth`, a plateau, a smooth recovery.

    Times are seconds from the start of the run. At full severity the heart rate is
    about 45 /min higher, respiration 12 /min higher, SpO2 9 % lower, temperature
    1.8 Cel higher and systolic pressure 32 mm[Hg] lower than the person's baseline.
    """

    start: float
    onset: float
    plateau: float
    recovery: float
    depth: float  # severity at the plateau, 0..1

    @property
    def peak(self) -> float:
        """When the plateau begins."""
        return self.start + self.onset

    @property
    def end(self) -> float:
        return self.start + self.onset + self.plateau + self.recovery

    def severity(self, elapsed: float) -> float:
        t = elapsed - self.start
        if t <= 0 or elapsed >= self.end:
            return 0.0
        if t < self.onset:
            return self.depth * _smoothstep(t / self.onset)
        t -= self.onset
        if t < self.plateau:
            return self.depth
        return self.depth * (1.0 - _smoothstep((t - self.plateau) / self.recovery))

    @classmethod
    def draw(cls, rng: random.Random, *, earliest: float, within: float | None) -> Episode:
        """An episode starting at or after `earliest`; in a run of `within` seconds, one
        that fits (it starts in the first third and is squeezed to end before the run)."""
        onset, plateau, recovery = (
            rng.uniform(180, 360),
            rng.uniform(120, 300),
            rng.uniform(240, 480),
        )
        depth = rng.uniform(0.85, 1.0)
        if within is None:
            return cls(earliest + rng.uniform(60, 300), onset, plateau, recovery, depth)
        start = rng.uniform(0.1, 0.35) * within
        scale = min(1.0, (0.95 * within - start) / (onset + plateau + recovery))
        return cls(start, onset * scale, plateau * scale, recovery * scale, depth)


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


@dataclass(slots=True)
class _Drift:
    """A mean-reverting random walk around 0: stationary s.d. `sd`, time constant `tau`."""

    sd: float
    tau: float  # seconds
    x: float = 0.0

    def step(self, rng: random.Random, dt: float) -> float:
        a = math.exp(-dt / self.tau)  # the exact OU transition, stable for any dt
        self.x = self.x * a + self.sd * math.sqrt(1.0 - a * a) * rng.gauss(0.0, 1.0)
        return self.x


# (drift s.d., drift time constant in s, sensor noise s.d.) per vital
_VARIABILITY: Mapping[str, tuple[float, float, float]] = {
    "hr": (4.0, 900.0, 1.5),
    "spo2": (0.7, 1200.0, 0.5),
    "rr": (1.2, 600.0, 0.7),
    "temp": (0.15, 3600.0, 0.04),
    "sys": (5.0, 1800.0, 3.0),
    "dia": (3.0, 1800.0, 2.0),
    "weight": (0.3, 86400.0, 0.1),
    "glucose": (10.0, 1800.0, 4.0),
}
# change at full severity of an episode
_EPISODE: Mapping[str, float] = {
    "hr": 45.0,
    "spo2": -9.0,
    "rr": 12.0,
    "temp": 1.8,
    "sys": -32.0,
    "dia": -15.0,
    "glucose": 25.0,
}
# what a person can plausibly show here (well inside devices/vitals.py's ranges)
_BOUNDS: Mapping[str, tuple[float, float]] = {
    "hr": (35, 180),
    "spo2": (70, 100),
    "rr": (6, 40),
    "temp": (34.5, 41.0),
    "sys": (70, 200),
    "dia": (40, 130),
    "weight": (30, 250),
    "glucose": (40, 400),
}
_DECIMALS: Mapping[str, int] = {"temp": 1, "weight": 1}  # the others are whole numbers


@dataclass(frozen=True, slots=True)
class Sample:
    """One message's worth of readings, taken together."""

    at: float  # Unix seconds, whole milliseconds
    values: Mapping[str, float]  # by compact key, canonical unit, rounded as devices do


class SimulatedPatient:
    """One person's vitals over a run: baseline, drift, noise and episodes.

    `sample(elapsed, at)` is called with non-decreasing `elapsed` (seconds since the start
    of the run); the same seed and the same `elapsed` sequence give the same values.
    """

    def __init__(
        self,
        rng: random.Random,
        baseline: Baseline,
        form: PayloadForm,
        episode: Episode | None = None,
        *,
        recurring: bool = False,
    ) -> None:
        self.rng = rng
        self.baseline = baseline
        self.form = form
        self.episode = episode
        self.recurring = recurring  # an unbounded run: another episode after each one
        self.episodes = 0 if episode is None else 1
        self._drift = {key: _Drift(sd, tau) for key, (sd, tau, _) in _VARIABILITY.items()}
        self._elapsed = 0.0
        self._count = 0

    def severity(self, elapsed: float) -> float:
        return 0.0 if self.episode is None else self.episode.severity(elapsed)

    def sample(self, elapsed: float, at: float) -> Sample:
        dt = max(0.0, elapsed - self._elapsed)
        self._elapsed = max(self._elapsed, elapsed)
        episode = self.episode
        if self.recurring and episode is not None and elapsed >= episode.end:
            gap = self.rng.uniform(1200, 2400)
            self.episode = Episode.draw(self.rng, earliest=episode.end + gap, within=None)
            self.episodes += 1
        s = self.severity(elapsed)
        b = self.baseline
        centre: dict[str, float | None] = {
            "hr": b.hr,
            "spo2": b.spo2,
            "rr": b.rr,
            "temp": b.temp,
            "sys": b.sys,
            "dia": b.dia,
            "weight": b.weight if self._count % WEIGHT_EVERY == 0 else None,
            "glucose": b.glucose if self._count % GLUCOSE_EVERY == 0 else None,
        }
        self._count += 1
        values: dict[str, float] = {}
        for key, mean in centre.items():
            drift = self._drift[key].step(self.rng, dt)  # every vital drifts, sent or not
            if mean is None:
                continue
            noise = _VARIABILITY[key][2] * (1.0 + s)  # an unwell patient varies more
            value = mean + drift + _EPISODE.get(key, 0.0) * s + self.rng.gauss(0.0, noise)
            low, high = _BOUNDS[key]
            if key == "dia":
                high = min(high, values["sys"] - 15)
            values[key] = _rounded(key, min(high, max(low, value)))
        return Sample(at, values)


def _rounded(key: str, value: float) -> float:
    decimals = _DECIMALS.get(key)
    return round(value, decimals) if decimals else int(round(value))


def simulated_patients(
    n: int, *, duration: float | None, deteriorate: float, seed: int
) -> list[SimulatedPatient]:
    """The people behind `n` devices, reproducible from `seed`.

    Of the devices, a fraction `deteriorate` goes through an episode during the run
    (`n * deteriorate` of them, rounded up or down at random so that the expected number
    is exact). Every third device, from the second, writes the compact form.
    """
    if not 0.0 <= deteriorate <= 1.0:
        raise ValueError("deteriorate must be a fraction between 0 and 1")
    run = random.Random(f"telemed-simulator:{seed}")
    expected = n * deteriorate
    count = min(n, math.floor(expected) + (run.random() < expected - math.floor(expected)))
    unwell = set(run.sample(range(n), count))
    people = []
    for index in range(n):
        rng = random.Random(f"telemed-simulator:{seed}:{index}")
        baseline = Baseline.draw(rng)
        episode = Episode.draw(rng, earliest=0.0, within=duration) if index in unwell else None
        form = PayloadForm.COMPACT if index % 3 == 1 else PayloadForm.SENML
        people.append(SimulatedPatient(rng, baseline, form, episode, recurring=duration is None))
    return people


# payloads -------------------------------------------------------------------------------
_SENML_UNITS: Mapping[str, str] = {
    "hr": "beat/min",
    "spo2": "%",
    "rr": "/min",
    "temp": "Cel",
    "sys": "mm[Hg]",
    "dia": "mm[Hg]",
    "weight": "kg",
    "glucose": "mg/dL",
}


def senml_pack(device_id: str, sample: Sample) -> list[dict[str, Any]]:
    """A SenML pack: base name and time on the first record, one record per vital."""
    records: list[dict[str, Any]] = []
    for key, value in sample.values.items():
        record: dict[str, Any] = {"n": key, "u": _SENML_UNITS[key], "v": value}
        if not records:
            record = {"bn": f"urn:dev:telemed:{device_id}:", "bt": sample.at, **record}
        records.append(record)
    return records


def compact_object(sample: Sample) -> dict[str, Any]:
    """The compact form: one time, canonical units (so no `u`)."""
    return {"t": sample.at, **sample.values}


def encode(device_id: str, sample: Sample, form: PayloadForm) -> bytes:
    body: object = (
        senml_pack(device_id, sample) if form is PayloadForm.SENML else compact_object(sample)
    )
    return json.dumps(body, separators=(",", ":")).encode()


# credentials ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """What a device needs to connect: the `telemed device enroll --json` fields."""

    device_id: str
    username: str
    password: str = field(repr=False)
    host: str
    port: int
    tls: bool = False
    patient_id: str = ""

    @classmethod
    def from_enrolled(cls, enrolled: Enrolled) -> DeviceCredentials:
        return cls.from_json(enrolled.as_json())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceCredentials:
        """From an enrollment's JSON; raises ValueError naming a missing or bad field."""
        fields: dict[str, Any] = {}
        for name, kind in (("device_id", str), ("username", str), ("password", str)):
            value = data.get(name)
            if not isinstance(value, kind) or not value:
                raise ValueError(f"{name}: missing or not a string")
            fields[name] = value
        port = data.get("port")
        if isinstance(port, bool) or not isinstance(port, int):
            raise ValueError("port: missing or not an integer")
        return cls(
            **fields,
            host=str(data.get("host", "127.0.0.1")),
            port=port,
            tls=bool(data.get("tls", False)),
            patient_id=str(data.get("patient_id", "")),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "username": self.username,
            "password": self.password,
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "patient_id": self.patient_id,
            "topic": topic(self.device_id, "vitals"),
        }


def credentials_path(var_dir: Path) -> Path:
    return var_dir / CREDENTIALS_FILE


async def enroll_or_reuse(
    enrollment: Enrollment, clinic: Clinic, n: int, credentials_file: Path
) -> list[DeviceCredentials]:
    """`n` demo devices: those saved in `credentials_file` that are still enrolled, and
    new ones for the rest, spread over the clinic's patients (demo patients are created
    when there are none). The file is rewritten, mode 0600, when anything changed."""
    if n < 1:
        raise ValueError("n must be at least 1")
    saved = await asyncio.to_thread(_load, credentials_file)
    b = enrollment.broker
    candidates: list[DeviceCredentials] = []
    for creds in saved:
        device = await clinic.store.get_device(creds.device_id)
        if device is None or not device.active:
            log.info("simulator: device %s is revoked or unknown; replacing it", creds.device_id)
            continue
        candidates.append(
            replace(creds, host=b.host, port=b.port, tls=b.tls, patient_id=device.patient_id)
        )
    kept = await _known_to_broker(enrollment, candidates)
    for creds in candidates:
        if creds not in kept:  # enrolled, but the broker forgot it (its state was reset)
            log.info("simulator: device %s is unknown to the broker; replacing it", creds.device_id)
            await enrollment.revoke(OPERATOR, creds.device_id)
    if len(kept) < n:
        patients = await _patients(clinic)
        load = {p.id: sum(c.patient_id == p.id for c in kept) for p in patients}
        for _ in range(n - len(kept)):
            patient = min(patients, key=lambda p: load[p.id])  # the first of the least served
            enrolled = await enrollment.enroll(OPERATOR, patient.id, DEVICE_KIND)
            kept.append(DeviceCredentials.from_enrolled(enrolled))
            load[patient.id] += 1
    if kept != saved:
        await asyncio.to_thread(_save, credentials_file, kept)
    return kept[:n]


async def _known_to_broker(
    enrollment: Enrollment, candidates: list[DeviceCredentials]
) -> list[DeviceCredentials]:
    if not candidates:
        return []
    b = enrollment.broker
    known = []
    async with Dynsec.connect(b.host, b.port, b.username, b.password, tls=b.tls) as dynsec:
        for creds in candidates:
            try:
                await dynsec.command("getClient", username=creds.username)
            except DynsecError as exc:
                if "not found" not in str(exc).lower():
                    raise
                continue
            known.append(creds)
    return known


async def _patients(clinic: Clinic) -> list[Patient]:
    """Every patient (reads audited), or new demo patients in the care of every clinician."""
    patients = await clinic.patients_for(OPERATOR)
    if patients:
        return sorted(patients, key=lambda p: p.created_at)
    clinicians = [u for u in await clinic.list_users(OPERATOR) if u.role.is_clinician and u.active]
    for name, email, born in _DEMO_PATIENTS:
        user = await clinic.add_user(
            OPERATOR, role="patient", email=email, name=name, password=None, birth_date=born
        )
        for clinician in clinicians:
            await clinic.add_care_team_member(OPERATOR, user.id, clinician.id)
        log.info("simulator: demo patient %s created", user.id)
    return await clinic.patients_for(OPERATOR)


def _load(path: Path) -> list[DeviceCredentials]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("simulator: %s cannot be read (%s); enrolling new devices", path, exc)
        return []
    out: list[DeviceCredentials] = []
    for item in data.get("devices", []) if isinstance(data, dict) else []:
        try:
            out.append(DeviceCredentials.from_json(item))
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("simulator: a saved device in %s is skipped (%s)", path, exc)
    return out


def _save(path: Path, devices: Sequence[DeviceCredentials]) -> None:
    """Write a new file beside the old one (0600 from the start), then swap it in."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = {
        "about": "Devices of `telemed simulate`, reused by the next run. Holds their "
        "secrets: keep it private.",
        "devices": [d.as_json() for d in devices],
    }
    new = path.with_name(path.name + ".new")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1)
        f.write("\n")
    os.replace(new, path)


# the run --------------------------------------------------------------------------------
@dataclass
class SimStats:
    """A run's figures so far; `simulate` updates them as it goes."""

    devices: int
    duration: float | None  # seconds, None until stopped
    messages: int = 0  # published and acknowledged by the broker (QoS 1 PUBACK)
    readings: int = 0  # measurements in those messages
    errors: int = 0  # refusals received on the devices' errors topics
    connected: int = 0  # devices connected now
    reconnects: int = 0
    failed: int = 0  # devices the broker refused (revoked or wrong secret)
    elapsed: float = 0.0  # seconds since the start
    rate: float = 0.0  # messages/s over the last few seconds
    episodes: int = 0  # deterioration episodes begun so far
    deteriorating: int = 0  # devices in an episode now
    last_error: str = ""  # the last refusal's reason, for the operator's eyes (not logged)
    finished: bool = False  # the run is over (ended, or cancelled)
    _history: deque[tuple[float, int]] = field(default_factory=deque, init=False, repr=False)

    def tick(self, elapsed: float) -> None:
        """Move the clock and the live rate on."""
        self.elapsed = elapsed
        history = self._history
        history.append((elapsed, self.messages))
        while len(history) > 2 and history[1][0] <= elapsed - RATE_WINDOW:
            history.popleft()
        (t0, m0), (t1, m1) = history[0], history[-1]
        self.rate = (m1 - m0) / (t1 - t0) if t1 > t0 else 0.0


Progress = Callable[[SimStats], None]


async def simulate(
    devices: Sequence[DeviceCredentials],
    *,
    rate_hz: float,
    duration: float | None,
    deteriorate: float,
    seed: int,
    progress: Progress | None = None,
) -> SimStats:
    """Publish as `devices`, each `rate_hz` messages a second, for `duration` seconds (None:
    until cancelled). `progress` is called every PROGRESS_INTERVAL and once at the end,
    also when cancelled."""
    if not devices:
        raise ValueError("devices: at least one device is needed")
    if not 0 < rate_hz <= MAX_RATE_HZ:
        raise ValueError(f"rate_hz: must be above 0 and at most {MAX_RATE_HZ:g} per device")
    if duration is not None and not duration > 0:
        raise ValueError("duration: must be above 0 seconds, or None")
    people = simulated_patients(len(devices), duration=duration, deteriorate=deteriorate, seed=seed)
    stats = SimStats(devices=len(devices), duration=duration)
    loop = asyncio.get_running_loop()
    start = loop.time()
    runners = [
        _Device(creds, person, stats, rate_hz, duration, start, phase=i / len(devices) / rate_hz)
        for i, (creds, person) in enumerate(zip(devices, people, strict=True))
    ]
    tasks = [
        asyncio.create_task(r.run(), name=f"simulated-device-{i}") for i, r in enumerate(runners)
    ]
    reporter = (
        asyncio.create_task(_report(stats, people, start, progress), name="simulator-progress")
        if progress is not None
        else None
    )
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if reporter is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        _update(stats, people, loop.time() - start)
        stats.finished = True
        if progress is not None:
            progress(stats)
    log.info(
        "simulator: %d devices sent %d messages (%d readings) in %.1f s; %d refusals",
        stats.devices,
        stats.messages,
        stats.readings,
        stats.elapsed,
        stats.errors,
    )
    return stats


def _update(stats: SimStats, people: Sequence[SimulatedPatient], elapsed: float) -> None:
    stats.episodes = sum(
        p.episodes - (p.episode is not None and p.episode.start > elapsed) for p in people
    )
    stats.deteriorating = sum(p.severity(elapsed) > 0 for p in people)
    stats.tick(elapsed)


async def _report(
    stats: SimStats, people: Sequence[SimulatedPatient], start: float, progress: Progress
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        _update(stats, people, loop.time() - start)
        progress(stats)
        await asyncio.sleep(PROGRESS_INTERVAL)


class _Device:
    """One simulated device: connects, publishes on its schedule, reconnects on loss."""

    def __init__(
        self,
        creds: DeviceCredentials,
        person: SimulatedPatient,
        stats: SimStats,
        rate_hz: float,
        duration: float | None,
        start: float,
        *,
        phase: float,
    ) -> None:
        self.creds = creds
        self.person = person
        self.stats = stats
        self.period = 1.0 / rate_hz
        self.duration = duration
        self.start = start  # loop time of the run's start
        self.phase = phase  # devices spread their messages over one period
        self.topic = topic(creds.device_id, "vitals")
        self.status = topic(creds.device_id, "status")
        self._tick = 0
        self._last_ms = 0
        self._pending: tuple[bytes, int] | None = None  # (payload, readings) not yet acked

    def _due(self, tick: int) -> float:
        """Seconds from the start at which message `tick` is due."""
        return self.phase + tick * self.period

    def _over(self) -> bool:
        return self.duration is not None and self._due(self._tick) >= self.duration

    async def run(self) -> None:
        backoff = 0.5
        loop = asyncio.get_running_loop()
        while not self._over() or self._pending is not None:
            try:
                await self._session()
                return
            except MqttConnectError as exc:
                if exc.rc is not None and _code(exc.rc) in _REFUSED:
                    self.stats.failed += 1
                    log.error(
                        "simulator: the broker refuses device %s (%s): revoked or wrong "
                        "secret; it stops",
                        self.creds.device_id,
                        exc,
                    )
                    return
                log.warning("simulator: device %s lost the broker (%s)", self.creds.device_id, exc)
            except aiomqtt.MqttError as exc:
                log.warning("simulator: device %s lost the broker (%s)", self.creds.device_id, exc)
            self.stats.reconnects += 1
            if self.duration is not None:
                left = self.start + self.duration - loop.time()
                if left <= 0:
                    return  # the run is over; an unsent message stays unsent
                backoff = min(backoff, left)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _session(self) -> None:
        client, inbox = device_client(self.creds)
        async with client:
            self.stats.connected += 1
            reader: asyncio.Task[None] | None = None
            try:
                await client.subscribe(topic(self.creds.device_id, "errors"), qos=1)
                reader = asyncio.create_task(self._read_errors(inbox), name="simulated-errors")
                await client.publish(self.status, b"online", qos=1, retain=True)
                await self._publish(client)
            finally:
                self.stats.connected -= 1
                if reader is not None:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
                # A clean exit says so itself; on a lost connection the will says it.
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(OFFLINE_TIMEOUT):
                        await client.publish(self.status, b"offline", qos=1, retain=True)

    async def _publish(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._pending is None:
                if self._over():
                    return
                wait = self.start + self._due(self._tick) - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._pending = self._next_message(loop.time() - self.start)
            payload, readings = self._pending
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT):
                    await client.publish(self.topic, payload, qos=1, timeout=math.inf)
            except TimeoutError:
                raise aiomqtt.MqttError(
                    f"no acknowledgement within {PUBLISH_TIMEOUT:g} s"
                ) from None
            self._pending = None
            self.stats.messages += 1
            self.stats.readings += readings
            self._tick += 1
            behind = loop.time() - self.start - self._due(self._tick)
            if behind > self.period:  # stalled: skip the missed ticks rather than burst
                self._tick += math.ceil(behind / self.period)

    def _next_message(self, elapsed: float) -> tuple[bytes, int]:
        at_ms = max(int(time.time() * 1000), self._last_ms + 1)  # one instant per message
        self._last_ms = at_ms
        sample = self.person.sample(elapsed, at_ms / 1000)
        return encode(self.creds.device_id, sample, self.person.form), len(sample.values)

    async def _read_errors(self, inbox: asyncio.Queue[aiomqtt.Message]) -> None:
        while True:
            message = await inbox.get()
            self.stats.errors += 1
            try:
                body = json.loads(bytes(message.payload))
            except (TypeError, ValueError):
                body = {}
            if not isinstance(body, dict):
                body = {}
            self.stats.last_error = str(body.get("reason", ""))
            log.warning(
                "simulator: device %s: the server refused record %s (field %s)",
                self.creds.device_id,
                body.get("record"),
                body.get("field"),
            )


def device_client(
    creds: DeviceCredentials,
) -> tuple[aiomqtt.Client, asyncio.Queue[aiomqtt.Message]]:
    """An MQTT 5 client as the device: its credentials, and `offline` as its last will."""
    return client_with_inbox(
        creds.host,
        creds.port,
        username=creds.username,
        password=creds.password,
        identifier=creds.device_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=aiomqtt.Will(topic(creds.device_id, "status"), b"offline", qos=1, retain=True),
        tls_params=aiomqtt.TLSParameters() if creds.tls else None,
        timeout=CONNECT_TIMEOUT,
    )


def _code(rc: int | ReasonCode) -> int:
    return rc.value if isinstance(rc, ReasonCode) else int(rc)


# progress -------------------------------------------------------------------------------
def format_progress(stats: SimStats) -> str:
    """e.g. " 12 devices · 3.0 msg/s · 1,234 readings · 00:41 / 01:00"."""
    parts = [
        f" {stats.devices} device{'s' if stats.devices != 1 else ''}",
        f"{stats.rate:.1f} msg/s",
        f"{stats.readings:,} readings",
        _clock(stats.elapsed)
        + (f" / {_clock(stats.duration)}" if stats.duration is not None else ""),
    ]
    if stats.deteriorating:
        parts.append(f"{stats.deteriorating} deteriorating")
    if stats.errors:
        parts.append(f"{stats.errors:,} refused")
    if stats.failed:
        parts.append(f"{stats.failed} refused by the broker")
    elif stats.connected < stats.devices and stats.elapsed > 1 and not stats.finished:
        parts.append(f"{stats.devices - stats.connected} offline")
    return " · ".join(parts)


def _clock(seconds: float) -> str:
    whole = int(min(seconds, 359_999))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes:02}:{secs:02}"


class ProgressLine:
    """A `progress` callback that keeps one live line on a terminal (rewritten with "\\r"),
    or, on anything else (a log file, `make run`'s output), writes a line every
    `every` seconds. Call `close()` at the end to finish the line."""

    def __init__(self, stream: TextIO, *, every: float = 10.0) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.every = every
        self._width = 0
        self._last: float | None = None
        self._unwritten = ""  # the latest line, when it was not written (not live)

    def __call__(self, stats: SimStats) -> None:
        line = format_progress(stats)
        if self.live:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        elif self._last is None or stats.elapsed - self._last >= self.every:
            self.stream.write(line + "\n")
            self._last = stats.elapsed
            self._unwritten = ""
        else:
            self._unwritten = line
            return
        self.stream.flush()

    def close(self) -> None:
        """End the live line, or write the last figures if they were not written."""
        if self.live and self._width:
            self.stream.write("\n")
            self._width = 0
        elif self._unwritten:
            self.stream.write(self._unwritten + "\n")
            self._unwritten = ""
        self.stream.flush()
