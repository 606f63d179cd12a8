"""The monitoring service: stored vitals in, alerts out; and what the care team does
with them (acknowledge, resolve, read NEWS2, set the plan, enter a check-in).

The rules are pure (`devices/alerts.py`); this applies their findings to the store:

- One active alert per patient and rule. A condition that keeps holding updates that
  alert (`last_breach_at`, value or score, severity, detail); it never opens another. The
  store enforces this across processes too: a lost race to open becomes an update.
- Evaluations of one patient are serialized in this process (a lock per patient), so a
  storm of readings cannot interleave its reads and writes.
- Every transition is audited: opened, severity changed, and resolved-by-itself by
  "system"; acknowledged and resolved by the person who did it. A breach that only moves
  `last_breach_at` is no transition and is not audited (the audit log would otherwise
  grow with every reading of a long episode). Reads and refusals are audited as well.
- Live events go out after each change; a failing live feed never stops alerting.

Who may do what: the clinicians of the patient's care team everything; the patient only
their own check-ins; an admin nothing here (administrative records only, never clinical
content); the command-line operator everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from devices import alerts
from devices.alerts import Finding
from devices.news2 import News2Inputs, News2Score, Parameter
from telemed.accounts import Role, may_see_patient, new_id
from telemed.audit import Outcome
from telemed.clinic import Actor, Clinic
from telemed.clock import Clock, iso
from telemed.errors import Conflict, Forbidden, NotFound, StoreUnavailable, ValidationError
from telemed.live import LiveFeed
from telemed.monitoring import (
    ACTIVE_STATES,
    Alert,
    AlertState,
    CheckIn,
    Device,
    MonitoringPlan,
    Observation,
    Threshold,
)
from telemed.store import Store

log = logging.getLogger(__name__)

SYSTEM = Actor("system", "system", "monitor")
PLAN_CACHE_SECONDS = 30.0  # another process's plan change applies here within this
ALERT_LIST_LIMIT = 500
OPEN_ATTEMPTS = 3  # opening races another process at most this many times
OFFLINE_CHECK_SECONDS = 60.0


class Monitor:
    def __init__(self, store: Store, clock: Clock, clinic: Clinic, live: LiveFeed) -> None:
        self.store = store
        self.clock = clock
        self.clinic = clinic
        self.live = live
        self._locks: dict[str, asyncio.Lock] = {}
        self._plans: dict[str, tuple[float, MonitoringPlan]] = {}

    # from ingestion -----------------------------------------------------------------
    async def observations_stored(self, observations: Sequence[Observation]) -> None:
        """After each committed batch: tell the dashboards, note each device's newest
        reading (one write for the batch), and evaluate each patient's rules."""
        if not observations:
            return
        now = self.clock()
        by_patient: dict[str, list[Observation]] = {}
        for o in observations:
            by_patient.setdefault(o.patient_id, []).append(o)
        for patient_id, batch in by_patient.items():
            await self._tell_observations(patient_id, batch)
        await self.store.record_device_activity(_newest_per_device(observations))
        for patient_id, batch in by_patient.items():
            try:
                async with self._lock(patient_id):
                    await self._evaluate_batch(patient_id, batch, now)
            except StoreUnavailable:
                raise  # every other patient would fail alike: let the caller log it once
            except Exception:
                log.exception("monitor: evaluation failed for patient %s", patient_id)

    async def device_status(self, device_id: str, online: bool, at: datetime) -> None:
        """A device's `status` message (`online`, or `offline` as its will), by id."""
        device = await self.store.get_device(device_id)
        if device is None:
            log.warning("monitor: status from unknown device %s ignored", device_id)
            return
        await self.on_device_status(device, online, at)

    async def on_device_status(self, device: Device, online: bool, at: datetime) -> None:
        """The same for a device ingestion already looked up (`devices.ingest.OnStatus`).
        A retained status replayed on a reconnect changes nothing and tells nobody."""
        if await self.store.set_device_presence(device.id, online, at):
            try:
                await self.live.device_presence(device.patient_id, device.id, online, at)
            except Exception:
                log.exception("monitor: live feed failed (device presence)")

    async def check_offline(self) -> None:
        """Open device-offline alerts for devices silent longer than their patient's
        interval; resolve those whose device sends again or was revoked."""
        now = self.clock()
        devices = await self.store.list_devices()
        presence = {p.device_id: p for p in await self.store.list_device_presence()}
        active = {
            a.rule: a
            for a in await self.store.alerts(states=ACTIVE_STATES)
            if a.rule.startswith(alerts.OFFLINE_PREFIX)
        }
        for device in devices:
            rule = alerts.offline_rule(device.id)
            current = active.get(rule)
            if not device.active:
                if current is not None:
                    async with self._lock(device.patient_id):
                        await self._resolve_by_system(current, now, "the device was revoked")
                continue
            plan = await self._plan(device.patient_id)
            seen = presence.get(device.id)
            finding = alerts.offline_finding(
                device,
                seen.last_seen_at if seen else None,
                now,
                plan.offline_after,
                seen.online if seen else None,
            )
            if finding.breached == (current is not None):
                continue  # still silent and already alerted, or fine and not alerted
            async with self._lock(device.patient_id):
                fresh = await self.store.active_alert(device.patient_id, rule)
                latest = {} if fresh is None else {rule: fresh}
                # a still-silent device does not refresh its alert every minute
                await self._apply(device.patient_id, finding, latest, now, refresh=False)

    async def watch_offline(self, every: float = OFFLINE_CHECK_SECONDS) -> None:
        """Run `check_offline` every `every` seconds until cancelled; one failed round
        is logged and the next one runs."""
        while True:
            try:
                await self.check_offline()
            except StoreUnavailable as exc:
                log.warning("monitor: offline check skipped, store unavailable (%s)", exc)
            except Exception:
                log.exception("monitor: offline check failed")
            await asyncio.sleep(every)

    # for people ---------------------------------------------------------------------
    async def alerts(
        self, actor: Actor, patient_id: str, states: Collection[AlertState] | None = None
    ) -> list[Alert]:
        """The patient's alerts, newest first, optionally in these states."""
        await self._authorize(actor, patient_id, "alert.list")
        found = await self.store.alerts(patient_id, states=states, limit=ALERT_LIST_LIMIT)
        await self._audit(actor, "alert.list", patient_id, detail=f"count={len(found)}")
        return found

    async def acknowledge(self, actor: Actor, alert_id: str) -> Alert:
        """Open -> acknowledged by `actor`. Acknowledging it again changes nothing."""
        alert = await self._alert_for(actor, alert_id, "alert.acknowledge")
        updated = await self.store.acknowledge_alert(alert_id, actor.id, self.clock())
        if updated is None:
            current = await self.store.get_alert(alert_id) or alert
            if current.state is AlertState.ACKNOWLEDGED:
                await self._audit(
                    actor,
                    "alert.acknowledge",
                    current.patient_id,
                    entity=f"Alert/{alert_id}",
                    detail=f"already acknowledged by {current.acknowledged_by}",
                )
                return current
            await self._audit(
                actor,
                "alert.acknowledge",
                current.patient_id,
                Outcome.FAILURE,
                entity=f"Alert/{alert_id}",
                detail="already resolved",
            )
            raise ValidationError("alert", "is resolved: there is nothing to acknowledge")
        await self._audit(
            actor,
            "alert.acknowledge",
            updated.patient_id,
            entity=f"Alert/{alert_id}",
            detail=f"rule={updated.rule}",
        )
        await self._tell_alert(updated)
        return updated

    async def resolve(self, actor: Actor, alert_id: str) -> Alert:
        """Open or acknowledged -> resolved by `actor`. Resolving it again changes nothing."""
        alert = await self._alert_for(actor, alert_id, "alert.resolve")
        updated = await self.store.resolve_alert(alert_id, actor.id, self.clock())
        if updated is None:
            current = await self.store.get_alert(alert_id) or alert
            await self._audit(
                actor,
                "alert.resolve",
                current.patient_id,
                entity=f"Alert/{alert_id}",
                detail=f"already resolved by {current.resolved_by}",
            )
            return current
        await self._audit(
            actor,
            "alert.resolve",
            updated.patient_id,
            entity=f"Alert/{alert_id}",
            detail=f"rule={updated.rule}",
        )
        await self._tell_alert(updated)
        return updated

    async def news2(self, actor: Actor, patient_id: str) -> dict[str, Any]:
        """The patient's NEWS2 now (`News2Score.as_json()`), with the values it used."""
        await self._authorize(actor, patient_id, "news2.read")
        plan = await self._plan(patient_id)
        inputs, result = await self._score(patient_id, plan, self.clock())
        await self._audit(actor, "news2.read", patient_id, detail=f"complete={result.complete}")
        body = result.as_json()
        body["patient_id"] = patient_id
        body["values"] = _values_json(inputs)
        return body

    async def current_news2(self, patient_id: str) -> dict[str, Any] | None:
        """The patient's NEWS2 now, for a view whose care-team access was checked and
        audited when it opened (the doctor's queue); None when nothing was ever measured."""
        plan = await self._plan(patient_id)
        inputs, result = await self._score(patient_id, plan, self.clock())
        if not _values_json(inputs):
            return None
        return result.as_json()

    async def plan(self, actor: Actor, patient_id: str) -> MonitoringPlan:
        """The patient's monitoring plan (the defaults until the care team changed it)."""
        await self._authorize(actor, patient_id, "monitoring.read")
        plan = await self._plan(patient_id, fresh=True)
        await self._audit(actor, "monitoring.read", patient_id)
        return plan

    async def update_plan(
        self,
        actor: Actor,
        patient_id: str,
        *,
        thresholds: Mapping[str, Threshold | None] | None = None,
        spo2_scale: int | None = None,
        offline_after: timedelta | None = None,
        quiet_period: timedelta | None = None,
    ) -> MonitoringPlan:
        """Change what is given. A threshold of None goes back to the default (for the
        plan's scale); `Threshold()` (no limits) turns that vital's alerts off. Changing
        the scale moves an SpO2 threshold still at the old scale's default to the new's."""
        await self._authorize(actor, patient_id, "monitoring.update")
        changed: list[str] = []
        plan = await self._plan(patient_id, fresh=True)
        if spo2_scale is not None:
            plan = alerts.with_scale(plan, alerts.clean_scale(spo2_scale))
            changed.append(f"spo2_scale={plan.spo2_scale}")
        if thresholds:
            merged = dict(plan.thresholds)
            defaults = alerts.default_thresholds(plan.spo2_scale)
            for code, threshold in thresholds.items():
                if threshold is None:
                    if code not in defaults:
                        alerts.clean_threshold(code, None, None)  # refuses unknown codes
                        merged.pop(code, None)
                    else:
                        merged[code] = defaults[code]
                else:
                    merged[code] = alerts.clean_threshold(code, threshold.low, threshold.high)
            plan = replace(plan, thresholds=merged)
            changed.append("thresholds=" + ",".join(sorted(thresholds)))
        if offline_after is not None:
            plan = replace(plan, offline_after=_within("offline_after_minutes", offline_after))
            changed.append(f"offline_after={offline_after}")
        if quiet_period is not None:
            plan = replace(plan, quiet_period=_within("quiet_period_minutes", quiet_period))
            changed.append(f"quiet_period={quiet_period}")
        plan = replace(plan, updated_by=actor.id, updated_at=self.clock())
        await self.store.put_monitoring_plan(plan)
        self._plans[patient_id] = (time.monotonic(), plan)
        await self._audit(actor, "monitoring.update", patient_id, detail=" ".join(changed))
        return plan

    async def set_thresholds(
        self, actor: Actor, patient_id: str, thresholds: Mapping[str, Threshold | None]
    ) -> MonitoringPlan:
        return await self.update_plan(actor, patient_id, thresholds=thresholds)

    async def set_scale(self, actor: Actor, patient_id: str, scale: int) -> MonitoringPlan:
        """NEWS2 SpO2 scale 2 is a clinician's decision for one patient, never a default."""
        return await self.update_plan(actor, patient_id, spo2_scale=scale)

    async def check_in(
        self,
        actor: Actor,
        patient_id: str,
        consciousness: str | None = None,
        on_oxygen: bool | None = None,
    ) -> CheckIn:
        """Consciousness (ACVPU) and/or supplemental oxygen, from the patient or a
        clinician of their team; NEWS2 is evaluated again at once."""
        await self._authorize(actor, patient_id, "check_in.create", patient_self=True)
        if consciousness is None and on_oxygen is None:
            raise ValidationError("check_in", "give consciousness, on_oxygen, or both")
        level = None if consciousness is None else alerts.clean_consciousness(consciousness)
        if on_oxygen is not None and not isinstance(on_oxygen, bool):
            raise ValidationError("on_oxygen", "must be true or false")
        now = self.clock()
        entry = CheckIn(
            id=new_id(),
            patient_id=patient_id,
            taken_at=now,
            entered_by=actor.id,
            entered_by_role=actor.role,
            consciousness=level,
            on_oxygen=on_oxygen,
        )
        await self.store.add_check_in(entry)
        given = [
            name
            for name, v in (("consciousness", level), ("on_oxygen", on_oxygen))
            if v is not None
        ]
        await self._audit(
            actor,
            "check_in.create",
            patient_id,
            entity=f"CheckIn/{entry.id}",
            detail="gave " + ",".join(given),
        )
        async with self._lock(patient_id):
            plan = await self._plan(patient_id)
            _, result = await self._score(patient_id, plan, now)
            active = {a.rule: a for a in await self.store.alerts(patient_id, states=ACTIVE_STATES)}
            await self._apply(
                patient_id, alerts.news2_finding(result, plan.quiet_period), active, now
            )
        return entry

    # evaluation -----------------------------------------------------------------------
    async def _evaluate_batch(
        self, patient_id: str, batch: Sequence[Observation], now: datetime
    ) -> None:
        plan = await self._plan(patient_id)
        active = {a.rule: a for a in await self.store.alerts(patient_id, states=ACTIVE_STATES)}
        findings = alerts.threshold_findings(batch, plan)
        for device_id, newest in sorted(_newest_per_device(batch).items()):
            back = alerts.back_online_finding(device_id, newest, now, plan.offline_after)
            if back is not None:
                findings.append(back)
        if any(o.code in alerts.NEWS2_CODES for o in batch):
            _, result = await self._score(patient_id, plan, now)
            findings.append(alerts.news2_finding(result, plan.quiet_period))
            try:
                await self.live.news2_changed(patient_id, result.as_json())
            except Exception:
                log.exception("monitor: live feed failed (NEWS2 of %s)", patient_id)
        for finding in findings:
            await self._apply(patient_id, finding, active, now)

    async def _apply(
        self,
        patient_id: str,
        finding: Finding,
        active: dict[str, Alert],
        now: datetime,
        *,
        refresh: bool = True,
    ) -> None:
        """One finding against the patient's active alerts (kept up to date in `active`)."""
        current = active.get(finding.rule)
        if finding.breached:
            if current is None:
                if alerts.may_open(finding, now):
                    active[finding.rule] = await self._open(patient_id, finding, now)
            elif refresh:
                updated = await self._breach(current, finding)
                if updated is not None:
                    active[finding.rule] = updated
        elif current is not None and alerts.resolves(current, finding):
            await self._resolve_by_system(current, now, finding.detail)
            del active[finding.rule]

    async def _open(self, patient_id: str, finding: Finding, now: datetime) -> Alert:
        for _ in range(OPEN_ATTEMPTS):
            alert = Alert(
                id=new_id(),
                patient_id=patient_id,
                rule=finding.rule,
                severity=finding.severity,
                state=AlertState.OPEN,
                opened_at=now,
                last_breach_at=finding.at,
                detail=finding.detail,
                value=finding.value,
                score=finding.score,
            )
            try:
                await self.store.add_alert(alert)
            except Conflict:
                # another process opened it first: this breach updates that one
                existing = await self.store.active_alert(patient_id, finding.rule)
                if existing is None:
                    continue  # ... and it was resolved in between: open again
                return await self._breach(existing, finding) or existing
            await self._audit(
                SYSTEM,
                "alert.open",
                patient_id,
                entity=f"Alert/{alert.id}",
                detail=f"rule={alert.rule} severity={alert.severity}",
            )
            await self._tell_alert(alert)
            return alert
        raise StoreUnavailable(f"alert {finding.rule}: could not open it in {OPEN_ATTEMPTS} tries")

    async def _breach(self, current: Alert, finding: Finding) -> Alert | None:
        updated = await self.store.record_breach(
            current.id,
            at=finding.at,
            severity=finding.severity,
            detail=finding.detail,
            value=finding.value,
            score=finding.score,
        )
        if updated is None:
            return None  # an older breach arriving late, or resolved meanwhile
        if updated.severity is not current.severity:
            await self._audit(
                SYSTEM,
                "alert.update",
                updated.patient_id,
                entity=f"Alert/{updated.id}",
                detail=f"rule={updated.rule} severity={current.severity}->{updated.severity}",
            )
        await self._tell_alert(updated)
        return updated

    async def _resolve_by_system(self, alert: Alert, now: datetime, why: str) -> None:
        resolved = await self.store.resolve_alert(alert.id, SYSTEM.id, now)
        if resolved is None:
            return  # someone resolved it meanwhile
        await self._audit(
            SYSTEM,
            "alert.resolve",
            alert.patient_id,
            entity=f"Alert/{alert.id}",
            detail=f"rule={alert.rule}: {why}",
        )
        await self._tell_alert(resolved)

    async def _score(
        self, patient_id: str, plan: MonitoringPlan, now: datetime
    ) -> tuple[News2Inputs, News2Score]:
        latest = await self.store.latest_observations(patient_id)
        check_ins = await self.store.latest_check_ins(patient_id)
        inputs = alerts.news2_inputs(latest, check_ins)
        return inputs, alerts.news2_score(inputs, now=now, scale=plan.spo2_scale)

    async def _plan(self, patient_id: str, *, fresh: bool = False) -> MonitoringPlan:
        cached = self._plans.get(patient_id)
        if not fresh and cached is not None:
            if time.monotonic() - cached[0] < PLAN_CACHE_SECONDS:
                return cached[1]
        plan = await self.store.get_monitoring_plan(patient_id) or alerts.default_plan(patient_id)
        self._plans[patient_id] = (time.monotonic(), plan)
        return plan

    def _lock(self, patient_id: str) -> asyncio.Lock:
        lock = self._locks.get(patient_id)
        if lock is None:
            lock = self._locks[patient_id] = asyncio.Lock()
        return lock

    # access and audit ---------------------------------------------------------------
    async def _authorize(
        self,
        actor: Actor,
        patient_id: str,
        action: str,
        *,
        patient_self: bool = False,
        entity: str = "",
    ) -> None:
        """Refuse (audited) unless `actor` may do `action` for the patient; then refuse
        (audited) if there is no such patient."""
        entity = entity or f"Patient/{patient_id}"
        user = actor.user
        reason = ""
        if actor.is_operator:
            pass
        elif user is None or not user.active:
            reason = "inactive account"
        elif user.role is Role.ADMIN:
            reason = "admins see no clinical data"
        elif user.role is Role.PATIENT:
            if not (patient_self and user.id == patient_id):
                reason = "patients may only enter their own check-ins"
        elif not may_see_patient(user, patient_id, await self.store.care_team(patient_id)):
            reason = "not on the care team"
        if reason:
            await self._audit(
                actor, action, patient_id, Outcome.DENIED, entity=entity, detail=reason
            )
            raise Forbidden(
                "this patient is not in your care"
                if reason == "not on the care team"
                else f"not allowed: {reason}"
            )
        if await self.store.get_patient(patient_id) is None:
            await self._audit(
                actor, action, patient_id, Outcome.FAILURE, entity=entity, detail="no such patient"
            )
            raise NotFound(f"patient {patient_id} does not exist")

    async def _alert_for(self, actor: Actor, alert_id: str, action: str) -> Alert:
        alert = await self.store.get_alert(alert_id)
        if alert is None:
            await self._audit(
                actor,
                action,
                "",
                Outcome.FAILURE,
                entity=f"Alert/{alert_id}",
                detail="no such alert",
            )
            raise NotFound(f"alert {alert_id} does not exist")
        await self._authorize(actor, alert.patient_id, action, entity=f"Alert/{alert_id}")
        return alert

    async def _audit(
        self,
        actor: Actor,
        action: str,
        patient_id: str,
        outcome: Outcome = Outcome.SUCCESS,
        *,
        entity: str = "",
        detail: str = "",
    ) -> None:
        await self.clinic.audit(
            actor,
            action,
            outcome,
            patient_id=patient_id,
            entity=entity or (f"Patient/{patient_id}" if patient_id else ""),
            detail=detail,
        )

    # live events --------------------------------------------------------------------
    async def _tell_alert(self, alert: Alert) -> None:
        try:
            await self.live.alert_changed(alert)
        except Exception:
            log.exception("monitor: live feed failed (alert %s)", alert.id)

    async def _tell_observations(self, patient_id: str, batch: Sequence[Observation]) -> None:
        try:
            await self.live.observations_stored(patient_id, batch)
        except Exception:
            log.exception("monitor: live feed failed (observations of %s)", patient_id)


def _newest_per_device(observations: Sequence[Observation]) -> dict[str, datetime]:
    newest: dict[str, datetime] = {}
    for o in observations:
        seen = newest.get(o.device_id)
        if seen is None or o.taken_at > seen:
            newest[o.device_id] = o.taken_at
    return newest


def _within(field: str, value: timedelta) -> timedelta:
    bounds = (
        alerts.OFFLINE_AFTER_RANGE if field.startswith("offline") else alerts.QUIET_PERIOD_RANGE
    )
    minutes = value.total_seconds() / 60
    if not minutes.is_integer():
        raise ValidationError(field, "must be a whole number of minutes")
    return alerts.clean_duration(field, int(minutes), bounds)


def _values_json(inputs: News2Inputs) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for parameter in Parameter:
        observed = inputs.get(parameter)
        if observed is not None:
            values[parameter.value] = {"value": observed.value, "taken_at": iso(observed.taken_at)}
    return values
