"""The monitoring service against a real SQLite store: alerts from stored vitals, their
lifecycle, NEWS2, device presence, access and audit. No MQTT: batches are handed to
`observations_stored` as ingestion hands them after each commit."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from devices.alerts import HEART_RATE, RESPIRATORY_RATE, SPO2, SYSTOLIC, TEMPERATURE
from devices.monitor import Monitor
from telemed.accounts import User
from telemed.audit import AuditRecord, Outcome
from telemed.clinic import OPERATOR, Actor, Clinic
from telemed.errors import Forbidden, NotFound, ValidationError
from telemed.monitoring import (
    ACTIVE_STATES,
    Alert,
    AlertState,
    Device,
    Observation,
    Severity,
    Threshold,
)
from telemed.store.sqlite import SqliteStore
from tests.conftest import FakeClock

HR_HIGH = f"threshold:{HEART_RATE}:high"
UNITS = {HEART_RATE: "/min", SPO2: "%", RESPIRATORY_RATE: "/min", TEMPERATURE: "Cel"}
UNITS[SYSTOLIC] = "mm[Hg]"


@dataclass
class RecordingLive:
    """A LiveFeed (the Protocol) that remembers what it was told."""

    alerts: list[Alert] = field(default_factory=list)
    batches: list[tuple[str, int]] = field(default_factory=list)
    presence: list[tuple[str, str, bool]] = field(default_factory=list)

    async def observations_stored(
        self, patient_id: str, observations: Sequence[Observation]
    ) -> None:
        self.batches.append((patient_id, len(observations)))

    async def alert_changed(self, alert: Alert) -> None:
        self.alerts.append(alert)

    async def device_presence(
        self, patient_id: str, device_id: str, online: bool, at: datetime
    ) -> None:
        self.presence.append((patient_id, device_id, online))


@dataclass
class Ward:
    store: SqliteStore
    clock: FakeClock
    clinic: Clinic
    live: RecordingLive
    monitor: Monitor
    doctor: Actor
    nurse: Actor
    other_doctor: Actor  # on another patient's team only
    admin: Actor
    patient: Actor
    other_patient: Actor

    @property
    def patient_id(self) -> str:
        return self.patient.id

    def reading(
        self,
        code: str,
        value: float,
        *,
        ago: timedelta = timedelta(0),
        device_id: str = "d1",
        patient_id: str | None = None,
    ) -> Observation:
        taken = self.clock() - ago
        return Observation(
            patient_id or self.patient_id, device_id, code, value, UNITS[code], taken, self.clock()
        )

    async def store_readings(self, *observations: Observation) -> None:
        """As ingestion does: commit the batch, then tell the monitor."""
        await self.store.add_observations(observations)
        await self.monitor.observations_stored(observations)

    async def active(self, rule: str | None = None) -> list[Alert]:
        """The patient's active alerts (of one rule). A heart rate above 130 /min also
        scores 3 on NEWS2, so it opens a `news2` alert beside its threshold one."""
        found = await self.store.alerts(self.patient_id, states=ACTIVE_STATES)
        return [a for a in found if rule is None or a.rule == rule]

    async def audit(self, action: str) -> list[AuditRecord]:
        return [r async for r in self.store.audit_records() if r.event.action == action]


@pytest_asyncio.fixture
async def ward(tmp_path: Path) -> AsyncIterator[Ward]:
    store = await SqliteStore.open(f"sqlite:///{tmp_path / 'telemed.db'}")
    try:
        clock = FakeClock()
        clinic = Clinic(store, clock)
        live = RecordingLive()

        async def add(role: str, email: str) -> User:
            return await clinic.add_user(
                OPERATOR, role=role, email=email, name=email.split("@")[0], password=None
            )

        doctor, nurse, other_doctor = (
            await add("doctor", "alice@example.org"),
            await add("nurse", "ann@example.org"),
            await add("doctor", "bob@example.org"),
        )
        admin = await add("admin", "ada@example.org")
        patient, other_patient = (
            await add("patient", "paula@example.org"),
            await add("patient", "peter@example.org"),
        )
        for clinician in (doctor, nurse):
            await clinic.add_care_team_member(OPERATOR, patient.id, clinician.id)
        await clinic.add_care_team_member(OPERATOR, other_patient.id, other_doctor.id)
        await store.add_device(Device("d1", patient.id, "pulse-oximeter", clock()))
        yield Ward(
            store,
            clock,
            clinic,
            live,
            Monitor(store, clock, clinic, live),
            *(
                Actor.of(u, "203.0.113.7")
                for u in (doctor, nurse, other_doctor, admin, patient, other_patient)
            ),
        )
    finally:
        await store.close()


# one alert per patient and rule -----------------------------------------------------------


async def test_a_storm_of_breaching_readings_opens_one_alert(ward: Ward) -> None:
    batches = [
        [
            ward.reading(HEART_RATE, 131 + n % 5, ago=timedelta(seconds=200 - b * 10 - n))
            for n in range(10)
        ]
        for b in range(20)
    ]
    for batch in batches:
        await ward.store.add_observations(batch)
    async with asyncio.timeout(30):
        await asyncio.gather(*(ward.monitor.observations_stored(b) for b in batches))
    every = await ward.store.alerts(ward.patient_id)
    assert sorted(a.rule for a in every) == ["news2", HR_HIGH]  # one per rule
    [alert] = [a for a in every if a.rule == HR_HIGH]
    assert (alert.state, alert.severity) == (AlertState.OPEN, Severity.MEDIUM)
    newest = max((o for b in batches for o in b), key=lambda o: o.taken_at)
    assert (alert.last_breach_at, alert.value) == (newest.taken_at, newest.value)
    assert len(await ward.audit("alert.open")) == 2
    assert alert.id in {a.id for a in ward.live.alerts}


async def test_two_processes_open_one_alert(ward: Ward, tmp_path: Path) -> None:
    """Another server process (its own store connection and monitor) sees the same breach."""
    other_store = await SqliteStore.open(f"sqlite:///{tmp_path / 'telemed.db'}")
    try:
        other = Monitor(other_store, ward.clock, Clinic(other_store, ward.clock), RecordingLive())
        batch = [ward.reading(HEART_RATE, 150)]
        await ward.store.add_observations(batch)
        async with asyncio.timeout(30):
            await asyncio.gather(*(m.observations_stored(batch) for m in [ward.monitor, other] * 5))
        every = await ward.store.alerts(ward.patient_id)
        assert sorted(a.rule for a in every) == ["news2", HR_HIGH]
    finally:
        await other_store.close()


async def test_a_continuing_breach_updates_the_alert(ward: Ward) -> None:
    await ward.store_readings(ward.reading(HEART_RATE, 135))
    [opened] = await ward.active(HR_HIGH)
    first_breach = ward.clock()
    ward.clock.advance(minutes=1)
    await ward.store_readings(ward.reading(HEART_RATE, 150))
    [updated] = await ward.active(HR_HIGH)
    assert updated.id == opened.id
    assert (updated.opened_at, updated.last_breach_at) == (first_breach, ward.clock())
    assert (updated.value, updated.severity) == (150, Severity.HIGH)
    assert "critical" in updated.detail
    [change] = await ward.audit("alert.update")
    assert change.event.actor_id == "system"
    assert change.event.detail == f"rule={HR_HIGH} severity=medium->high"
    # a late reading, older than the last breach, changes nothing
    await ward.store_readings(ward.reading(HEART_RATE, 133, ago=timedelta(seconds=30)))
    assert await ward.active(HR_HIGH) == [updated]
    assert updated in ward.live.alerts


# resolving by itself -------------------------------------------------------------------------


async def test_auto_resolve_after_the_quiet_period_not_before(ward: Ward) -> None:
    await ward.store_readings(ward.reading(HEART_RATE, 140))
    [alert] = await ward.active(HR_HIGH)
    breach_at = ward.clock()
    ward.clock.advance(minutes=14, seconds=59, milliseconds=999)
    await ward.store_readings(ward.reading(HEART_RATE, 80))
    assert await ward.active(HR_HIGH) == [alert]
    ward.clock.advance(milliseconds=1)
    await ward.store_readings(ward.reading(HEART_RATE, 82))
    assert await ward.active() == []
    resolved = await ward.store.get_alert(alert.id)
    assert resolved is not None
    assert (resolved.state, resolved.resolved_by, resolved.resolved_at) == (
        AlertState.RESOLVED,
        "system",
        breach_at + timedelta(minutes=15),
    )
    [entry] = [
        r for r in await ward.audit("alert.resolve") if r.event.entity == f"Alert/{alert.id}"
    ]
    assert (entry.event.actor_id, entry.event.patient_id) == ("system", ward.patient_id)
    assert entry.event.detail == f"rule={HR_HIGH}: heart rate back in range"
    assert resolved in ward.live.alerts
    # a new breach opens a new alert
    await ward.store_readings(ward.reading(HEART_RATE, 140))
    [again] = await ward.active(HR_HIGH)
    assert again.id != alert.id


async def test_the_quiet_period_is_per_patient(ward: Ward) -> None:
    await ward.monitor.update_plan(ward.doctor, ward.patient_id, quiet_period=timedelta(minutes=2))
    await ward.store_readings(ward.reading(HEART_RATE, 140))
    ward.clock.advance(minutes=2)
    await ward.store_readings(ward.reading(HEART_RATE, 80))
    assert await ward.active() == []


async def test_a_backlog_of_old_readings_opens_no_alert(ward: Ward) -> None:
    await ward.store_readings(ward.reading(HEART_RATE, 150, ago=timedelta(hours=1, seconds=1)))
    assert await ward.active() == []


# NEWS2 --------------------------------------------------------------------------------------


async def test_an_incomplete_news2_alert_says_what_is_missing(ward: Ward) -> None:
    await ward.store_readings(
        ward.reading(RESPIRATORY_RATE, 25),  # 3
        ward.reading(HEART_RATE, 115),  # 2
        ward.reading(SPO2, 97),
        ward.reading(SYSTOLIC, 120),
        ward.reading(TEMPERATURE, 37.0),
    )
    news2 = await ward.store.active_alert(ward.patient_id, "news2")
    assert news2 is not None
    assert (news2.score, news2.severity, news2.value) == (5, Severity.MEDIUM, None)
    assert "incomplete" in news2.detail
    assert "missing air_or_oxygen, consciousness" in news2.detail
    body = await ward.monitor.news2(ward.doctor, ward.patient_id)
    assert body["complete"] is False
    assert body["risk"] is None
    assert body["risk_at_least"] == "medium"
    assert body["missing"] == ["air_or_oxygen", "consciousness"]
    assert body["sub_scores"] == {
        "respiration_rate": 3,
        "spo2": 0,
        "systolic_bp": 0,
        "pulse": 2,
        "temperature": 0,
    }
    assert body["values"]["pulse"]["value"] == 115
    [read] = await ward.audit("news2.read")
    assert read.event.actor_id == ward.doctor.id


async def test_a_check_in_completes_the_score_and_can_raise_it(ward: Ward) -> None:
    await ward.store_readings(
        ward.reading(RESPIRATORY_RATE, 16),
        ward.reading(HEART_RATE, 70),
        ward.reading(SPO2, 97),
        ward.reading(SYSTOLIC, 120),
        ward.reading(TEMPERATURE, 37.0),
    )
    assert await ward.active() == []
    entry = await ward.monitor.check_in(ward.patient, ward.patient_id, "A", on_oxygen=False)
    assert (entry.entered_by, entry.entered_by_role) == (ward.patient.id, "patient")
    body = await ward.monitor.news2(ward.nurse, ward.patient_id)
    assert (body["complete"], body["score"], body["risk"]) == (True, 0, "low")
    # new confusion, entered by the nurse a minute later: a red flag
    ward.clock.advance(minutes=1)
    await ward.monitor.check_in(ward.nurse, ward.patient_id, consciousness="C")
    [alert] = await ward.active()
    assert (alert.rule, alert.score, alert.severity) == ("news2", 3, Severity.LOW)
    assert alert.detail.startswith("NEWS2 3 (low-medium)")
    assert [r.event.actor_id for r in await ward.audit("check_in.create")] == [
        ward.patient.id,
        ward.nurse.id,
    ]


async def test_news2_scale_2_only_when_a_clinician_sets_it(ward: Ward) -> None:
    await ward.monitor.check_in(ward.nurse, ward.patient_id, "A", on_oxygen=False)
    vitals = [
        ward.reading(RESPIRATORY_RATE, 16),
        ward.reading(HEART_RATE, 70),
        ward.reading(SYSTOLIC, 120),
        ward.reading(TEMPERATURE, 37.0),
    ]
    await ward.store_readings(*vitals, ward.reading(SPO2, 89))
    scale_1 = await ward.monitor.news2(ward.doctor, ward.patient_id)
    assert (scale_1["scale"], scale_1["sub_scores"]["spo2"]) == (1, 3)
    assert {a.rule for a in await ward.active()} == {"news2", f"threshold:{SPO2}:low"}

    with pytest.raises(Forbidden):
        await ward.monitor.set_scale(ward.patient, ward.patient_id, 2)
    plan = await ward.monitor.set_scale(ward.doctor, ward.patient_id, 2)
    assert (plan.spo2_scale, plan.updated_by) == (2, ward.doctor.id)
    assert plan.thresholds[SPO2] == Threshold(low=88.0)
    scale_2 = await ward.monitor.news2(ward.doctor, ward.patient_id)
    assert (scale_2["scale"], scale_2["sub_scores"]["spo2"], scale_2["score"]) == (2, 0, 0)
    refused, update = await ward.audit("monitoring.update")
    assert (refused.event.actor_id, refused.event.outcome) == (ward.patient.id, Outcome.DENIED)
    assert (update.event.actor_id, update.event.detail) == (ward.doctor.id, "spo2_scale=2")


async def test_a_news2_alert_does_not_resolve_on_stale_values(ward: Ward) -> None:
    await ward.monitor.update_plan(
        ward.doctor, ward.patient_id, thresholds={RESPIRATORY_RATE: Threshold()}
    )
    await ward.monitor.check_in(ward.nurse, ward.patient_id, "A", on_oxygen=False)
    await ward.store_readings(ward.reading(RESPIRATORY_RATE, 26), ward.reading(HEART_RATE, 70))
    [alert] = await ward.active()
    assert alert.rule == "news2"
    ward.clock.advance(minutes=61)  # the respiration rate ages out: the score drops to 0
    await ward.store_readings(ward.reading(HEART_RATE, 72))
    assert await ward.active() == [alert]
    await ward.store_readings(ward.reading(RESPIRATORY_RATE, 16))  # current, normal
    assert await ward.active() == []


# acknowledging and resolving by people ---------------------------------------------------------


async def test_acknowledge_then_resolve_by_clinicians_are_recorded_and_audited(ward: Ward) -> None:
    await ward.store_readings(ward.reading(HEART_RATE, 135))
    [alert] = await ward.active(HR_HIGH)
    ward.clock.advance(minutes=3)
    acknowledged = await ward.monitor.acknowledge(ward.doctor, alert.id)
    assert (acknowledged.state, acknowledged.acknowledged_by, acknowledged.acknowledged_at) == (
        AlertState.ACKNOWLEDGED,
        ward.doctor.id,
        ward.clock(),
    )
    assert await ward.monitor.acknowledge(ward.nurse, alert.id) == acknowledged  # no change
    # the condition keeps holding: the acknowledged alert is updated, not reopened
    await ward.store_readings(ward.reading(HEART_RATE, 136))
    [still] = await ward.active(HR_HIGH)
    assert (still.id, still.state, still.value) == (alert.id, AlertState.ACKNOWLEDGED, 136)
    ward.clock.advance(minutes=1)
    resolved = await ward.monitor.resolve(ward.nurse, alert.id)
    assert (resolved.state, resolved.resolved_by, resolved.resolved_at) == (
        AlertState.RESOLVED,
        ward.nurse.id,
        ward.clock(),
    )
    assert resolved.acknowledged_by == ward.doctor.id
    with pytest.raises(ValidationError, match="alert"):
        await ward.monitor.acknowledge(ward.doctor, alert.id)
    assert await ward.monitor.resolve(ward.doctor, alert.id) == resolved
    acks = await ward.audit("alert.acknowledge")
    assert [(r.event.actor_id, r.event.outcome) for r in acks] == [
        (ward.doctor.id, Outcome.SUCCESS),
        (ward.nurse.id, Outcome.SUCCESS),
        (ward.doctor.id, Outcome.FAILURE),
    ]
    assert acks[0].event.entity == f"Alert/{alert.id}"
    assert acks[0].event.patient_id == ward.patient_id
    resolves = await ward.audit("alert.resolve")
    assert [r.event.actor_id for r in resolves] == [ward.nurse.id, ward.doctor.id]
    assert [a.state for a in ward.live.alerts if a.id == alert.id] == [
        AlertState.OPEN,
        AlertState.ACKNOWLEDGED,
        AlertState.ACKNOWLEDGED,
        AlertState.RESOLVED,
    ]


async def test_a_clinician_of_another_team_is_refused_and_audited(ward: Ward) -> None:
    await ward.store_readings(ward.reading(HEART_RATE, 135))
    [alert] = await ward.active(HR_HIGH)
    with pytest.raises(Forbidden):
        await ward.monitor.acknowledge(ward.other_doctor, alert.id)
    with pytest.raises(Forbidden):
        await ward.monitor.alerts(ward.other_doctor, ward.patient_id)
    with pytest.raises(Forbidden):
        await ward.monitor.news2(ward.other_doctor, ward.patient_id)
    with pytest.raises(Forbidden):
        await ward.monitor.check_in(ward.other_doctor, ward.patient_id, "A")
    assert await ward.active(HR_HIGH) == [alert]  # unchanged
    denied = [
        r.event
        async for r in ward.store.audit_records(patient_id=ward.patient_id)
        if r.event.outcome is Outcome.DENIED
    ]
    assert [(e.action, e.actor_id, e.detail) for e in denied] == [
        ("alert.acknowledge", ward.other_doctor.id, "not on the care team"),
        ("alert.list", ward.other_doctor.id, "not on the care team"),
        ("news2.read", ward.other_doctor.id, "not on the care team"),
        ("check_in.create", ward.other_doctor.id, "not on the care team"),
    ]
    assert denied[0].entity == f"Alert/{alert.id}"


async def test_admins_see_no_clinical_data_and_patients_only_check_in(ward: Ward) -> None:
    for call in (
        ward.monitor.alerts(ward.admin, ward.patient_id),
        ward.monitor.news2(ward.admin, ward.patient_id),
        ward.monitor.plan(ward.admin, ward.patient_id),
        ward.monitor.alerts(ward.patient, ward.patient_id),
        ward.monitor.check_in(ward.other_patient, ward.patient_id, "A"),
    ):
        with pytest.raises(Forbidden):
            await call
    details = [
        r.event.detail
        async for r in ward.store.audit_records(patient_id=ward.patient_id)
        if r.event.outcome is Outcome.DENIED
    ]
    assert (
        details
        == ["admins see no clinical data"] * 3 + ["patients may only enter their own check-ins"] * 2
    )


async def test_unknown_alerts_and_patients_are_not_found(ward: Ward) -> None:
    with pytest.raises(NotFound):
        await ward.monitor.acknowledge(ward.doctor, "a" * 32)
    with pytest.raises(NotFound):
        await ward.monitor.alerts(OPERATOR, "p" * 32)


async def test_alerts_listing_by_state(ward: Ward) -> None:
    await ward.store_readings(ward.reading(HEART_RATE, 135), ward.reading(SPO2, 91))
    listed = await ward.monitor.alerts(ward.doctor, ward.patient_id)
    assert {a.rule for a in listed} == {HR_HIGH, f"threshold:{SPO2}:low", "news2"}
    await ward.monitor.acknowledge(ward.doctor, listed[0].id)
    open_ones = await ward.monitor.alerts(ward.doctor, ward.patient_id, {AlertState.OPEN})
    assert [a.id for a in open_ones] == [a.id for a in listed[1:]]
    [entry, *_] = await ward.audit("alert.list")
    assert entry.event.detail == "count=3"


async def test_plan_changes_are_checked(ward: Ward) -> None:
    with pytest.raises(ValidationError) as refused:
        await ward.monitor.set_thresholds(
            ward.doctor, ward.patient_id, {HEART_RATE: Threshold(130.0, 40.0)}
        )
    assert refused.value.field == f"thresholds.{HEART_RATE}"
    with pytest.raises(ValidationError, match="offline_after_minutes"):
        await ward.monitor.update_plan(
            ward.doctor, ward.patient_id, offline_after=timedelta(minutes=1)
        )
    plan = await ward.monitor.set_thresholds(
        ward.nurse, ward.patient_id, {HEART_RATE: Threshold(45.0, 120.0)}
    )
    assert plan.thresholds[HEART_RATE] == Threshold(45.0, 120.0)
    await ward.store_readings(ward.reading(HEART_RATE, 125))
    assert [a.rule for a in await ward.active()] == [HR_HIGH]
    back = await ward.monitor.set_thresholds(ward.nurse, ward.patient_id, {HEART_RATE: None})
    assert back.thresholds[HEART_RATE] == Threshold(41.0, 130.0)
    assert (await ward.monitor.plan(ward.doctor, ward.patient_id)) == back


# devices -------------------------------------------------------------------------------------


async def test_device_offline_after_the_interval_and_back_when_data_returns(ward: Ward) -> None:
    await ward.store_readings(ward.reading(HEART_RATE, 70))
    ward.clock.advance(minutes=30)
    await ward.monitor.check_offline()
    assert await ward.active() == []
    ward.clock.advance(seconds=1)
    await ward.monitor.check_offline()
    [alert] = await ward.active()
    assert (alert.rule, alert.severity) == ("device-offline:d1", Severity.LOW)
    assert "no data from pulse-oximeter d1 for 30 min" in alert.detail
    ward.clock.advance(minutes=5)
    await ward.monitor.check_offline()
    assert await ward.active() == [alert]  # not refreshed every minute
    await ward.store_readings(ward.reading(HEART_RATE, 71))
    assert await ward.active() == []
    resolved = await ward.store.get_alert(alert.id)
    assert resolved is not None
    assert (resolved.resolved_by, resolved.resolved_at) == ("system", ward.clock())
    presence = await ward.store.get_device_presence("d1")
    assert presence is not None
    assert presence.last_seen_at == ward.clock()


async def test_a_backlog_does_not_bring_a_device_back(ward: Ward) -> None:
    await ward.store_readings(ward.reading(HEART_RATE, 70))
    ward.clock.advance(minutes=45)
    await ward.monitor.check_offline()
    [alert] = await ward.active()
    await ward.store_readings(ward.reading(HEART_RATE, 70, ago=timedelta(minutes=40)))
    assert await ward.active() == [alert]
    await ward.monitor.check_offline()
    assert await ward.active() == [alert]


async def test_offline_interval_per_patient_and_revoked_devices(ward: Ward) -> None:
    await ward.monitor.update_plan(
        ward.doctor, ward.patient_id, offline_after=timedelta(minutes=90)
    )
    await ward.store_readings(ward.reading(HEART_RATE, 70))
    ward.clock.advance(minutes=60)
    await ward.monitor.check_offline()
    assert await ward.active() == []
    ward.clock.advance(minutes=31)
    await ward.monitor.check_offline()
    [alert] = await ward.active()
    await ward.store.revoke_device("d1", ward.clock())
    await ward.monitor.check_offline()
    assert await ward.active() == []
    [entry] = [
        r for r in await ward.audit("alert.resolve") if r.event.entity == f"Alert/{alert.id}"
    ]
    assert entry.event.detail == "rule=device-offline:d1: the device was revoked"


async def test_device_status_is_stored_and_told_once_per_change(ward: Ward) -> None:
    await ward.monitor.device_status("d1", True, ward.clock())
    ward.clock.advance(seconds=5)
    await ward.monitor.device_status("d1", True, ward.clock())  # retained, replayed
    await ward.monitor.device_status("d9", True, ward.clock())  # unknown: ignored
    ward.clock.advance(seconds=5)
    device = await ward.store.get_device("d1")
    assert device is not None
    await ward.monitor.on_device_status(device, False, ward.clock())  # as ingestion calls it
    assert ward.live.presence == [(ward.patient_id, "d1", True), (ward.patient_id, "d1", False)]
    presence = await ward.store.get_device_presence("d1")
    assert presence is not None
    assert (presence.online, presence.status_at) == (False, ward.clock())
    assert await ward.store.get_device_presence("d9") is None


# live feed -------------------------------------------------------------------------------------


class BrokenLive(RecordingLive):
    async def alert_changed(self, alert: Alert) -> None:
        raise RuntimeError("socket gone")


async def test_a_failing_live_feed_never_stops_alerting(
    ward: Ward, caplog: pytest.LogCaptureFixture
) -> None:
    ward.monitor.live = BrokenLive()
    await ward.store_readings(ward.reading(HEART_RATE, 135))
    assert len(await ward.active(HR_HIGH)) == 1
    assert "live feed failed" in caplog.text


async def test_readings_reach_the_live_feed_per_patient(ward: Ward) -> None:
    await ward.store.add_device(Device("d2", ward.other_patient.id, "bp-cuff", ward.clock()))
    await ward.store_readings(
        ward.reading(HEART_RATE, 70),
        ward.reading(SPO2, 97),
        ward.reading(HEART_RATE, 60, device_id="d2", patient_id=ward.other_patient.id),
    )
    assert ward.live.batches == [(ward.patient_id, 2), (ward.other_patient.id, 1)]


async def test_an_empty_batch_does_nothing(ward: Ward) -> None:
    await ward.monitor.observations_stored([])
    assert ward.live.batches == []
    assert dataclasses.asdict(ward.live) == dataclasses.asdict(RecordingLive())
