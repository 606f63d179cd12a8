"""Alerting rules, pure: readings, scores and plans in; findings out.

A `Finding` is what one rule concludes about one patient from the data at hand: the
condition holds (`breached`, with a severity and what a clinician reads), or it does not
(which may resolve an active alert of that rule once it has stayed so for the quiet
period). `devices/monitor.py` turns findings into alert transitions in the store.

Rules and their names (`Alert.rule`):

- `threshold:{LOINC}:low` / `threshold:{LOINC}:high`: a reading outside the range the
  care team accepts for that vital (`MonitoringPlan.thresholds`; defaults below). A value
  below `low` or above `high` breaches; the limits themselves are in range. Compared on
  the value as measured (NEWS2 rounds to its chart's precision first; thresholds do not).
- `news2`: the NEWS2 aggregate reaches a band that calls for a response: low-medium (a 3
  in any single parameter), medium (5-6) or high (7+), RCP Chart 4. A score with missing
  or stale parameters still alerts on the band it already reaches (its total is a lower
  bound), and its detail says it is incomplete and what it lacks.
- `device-offline:{device id}`: no reading from the device (by reading time) for longer
  than the plan's offline interval; a device that never sent any is measured from its
  enrollment. The MQTT status (online/offline) is shown, not alerted on: cuffs and
  scales disconnect between readings by design.

Severity:

- threshold: MEDIUM; HIGH when the value is also beyond the fixed critical limit of
  `CRITICAL` (the plan decides *whether* to alert, the critical limit only *how loudly*:
  a clinician who widens a range is not overridden).
- news2: by Chart 4 band, low-medium -> LOW, medium -> MEDIUM, high -> HIGH.
- device-offline: LOW (technical: the patient is unwatched, not known to be unwell).

Resolution, by itself:

- threshold: a reading back in range taken at least the quiet period after the last
  breaching reading (readings in between cannot breach, or they would be the last).
- news2: a score below the alerting bands with no stale parameter (a value that merely
  aged out is no evidence of recovery), the quiet period after the last alerting score.
- device-offline: as soon as current data arrives (no quiet period).

Readings older than `OPEN_WINDOW` when evaluated (a backlog a device uploads after being
out of reach) are charted and may extend or resolve an alert, but never open one: the
current readings decide whether someone is paged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from devices import vitals
from devices.news2 import (
    RESPONSE,
    Consciousness,
    InvalidObservation,
    News2Inputs,
    News2Score,
    Observed,
    Parameter,
    Risk,
    SpO2Scale,
    score,
)
from telemed.clock import iso
from telemed.errors import ValidationError
from telemed.monitoring import (
    Alert,
    Device,
    LatestCheckIns,
    MonitoringPlan,
    Observation,
    Severity,
    Threshold,
)

NEWS2_RULE = "news2"
OFFLINE_PREFIX = "device-offline:"
THRESHOLD_PREFIX = "threshold:"

DEFAULT_OFFLINE_AFTER = timedelta(minutes=30)
DEFAULT_QUIET_PERIOD = timedelta(minutes=15)
# the shortest and longest a care team may set
OFFLINE_AFTER_RANGE = (timedelta(minutes=5), timedelta(days=7))
QUIET_PERIOD_RANGE = (timedelta(minutes=1), timedelta(days=1))
# NEWS2's own maximum age of a wearable value (devices/news2.py DEFAULT_MAX_AGE)
OPEN_WINDOW = timedelta(hours=1)

HEART_RATE = vitals.HEART_RATE.code  # 8867-4
SPO2 = vitals.SPO2.code  # 2708-6
RESPIRATORY_RATE = vitals.RESPIRATORY_RATE.code  # 9279-1
TEMPERATURE = vitals.BODY_TEMPERATURE.code  # 8310-5
SYSTOLIC = vitals.SYSTOLIC.code  # 8480-6
DIASTOLIC = vitals.DIASTOLIC.code  # 8462-4
GLUCOSE = vitals.BLOOD_GLUCOSE.code  # 41653-7
SPO2_US_CORE = "59408-5"  # stored under 2708-6 by ingestion; read as SpO2 all the same


class Side(StrEnum):
    LOW = "low"
    HIGH = "high"


# Default ranges (in range: low <= value <= high). Where NEWS2 scores a vital, the limits
# sit at the edge of its score-3 bands (RCP 2017, Chart 1), so that a single reading NEWS2
# calls a red flag also breaches its own threshold:
# - heart rate 41-130 /min: NEWS2 pulse scores 3 at <= 40 and >= 131;
# - respiratory rate 9-24 /min: NEWS2 scores 3 at <= 8 and >= 25;
# - SpO2 >= 92 % on scale 1: NEWS2 scale 1 scores 3 at <= 91; on scale 2 (hypercapnic
#   respiratory failure) >= 88 %, the floor of the 88-92 % target (BTS guideline for
#   oxygen use, O'Driscoll et al., Thorax 2017), which scale 2 is defined by;
# - temperature 35.1-39.0 Cel: NEWS2 scores 3 at <= 35.0, and 2 (its top band) at >= 39.1;
# - systolic BP 91-180 mm[Hg]: NEWS2 scores 3 at <= 90; above 180 is severe hypertension
#   (ACC/AHA 2017 guideline: > 180 systolic and/or > 120 diastolic).
# Where NEWS2 is silent:
# - diastolic BP 40-120 mm[Hg]: above 120 per ACC/AHA 2017 as above; below 40 is no
#   guideline's figure, a conservative floor for hypotension;
# - capillary glucose 70-250 mg/dL: below 70 is level 1 hypoglycaemia (ADA Standards of
#   Care); above 250 is the ADA's hyperglycaemic-crisis criterion (check ketones).
# Body weight has no default: an absolute range means little (a change rule would).
_DEFAULTS: Mapping[str, Threshold] = MappingProxyType(
    {
        HEART_RATE: Threshold(41.0, 130.0),
        RESPIRATORY_RATE: Threshold(9.0, 24.0),
        SPO2: Threshold(low=92.0),
        TEMPERATURE: Threshold(35.1, 39.0),
        SYSTOLIC: Threshold(91.0, 180.0),
        DIASTOLIC: Threshold(40.0, 120.0),
        GLUCOSE: Threshold(70.0, 250.0),
    }
)
_SPO2_SCALE_2 = Threshold(low=88.0)

# Critical limits: beyond these a breach is HIGH. The same "strictly beyond" rule.
# - heart rate < 40 or > 140, respiratory rate < 5 or > 36, systolic < 90, SpO2 < 90:
#   the medical emergency team calling criteria (MERIT study, Hillman et al., Lancet 2005);
# - systolic > 219, i.e. >= 220: NEWS2 scores it 3;
# - temperature < 35.0 (hypothermia, by definition) or > 40.0 (the core temperature that
#   defines heat stroke, Bouchama & Knochel, NEJM 2002);
# - glucose < 54 mg/dL (ADA level 2, clinically significant hypoglycaemia) or > 600
#   (the hyperosmolar hyperglycaemic state criterion, ADA consensus, Kitabchi et al. 2009).
CRITICAL: Mapping[str, Threshold] = MappingProxyType(
    {
        HEART_RATE: Threshold(40.0, 140.0),
        RESPIRATORY_RATE: Threshold(5.0, 36.0),
        SPO2: Threshold(low=90.0),
        SYSTOLIC: Threshold(90.0, 219.0),
        TEMPERATURE: Threshold(35.0, 40.0),
        GLUCOSE: Threshold(54.0, 600.0),
    }
)

NEWS2_CODES: Mapping[str, Parameter] = MappingProxyType(
    {
        RESPIRATORY_RATE: Parameter.RESPIRATION_RATE,
        SPO2: Parameter.SPO2,
        SPO2_US_CORE: Parameter.SPO2,
        SYSTOLIC: Parameter.SYSTOLIC_BP,
        HEART_RATE: Parameter.PULSE,
        TEMPERATURE: Parameter.TEMPERATURE,
    }
)

NEWS2_SEVERITY: Mapping[Risk, Severity] = MappingProxyType(
    {Risk.LOW_MEDIUM: Severity.LOW, Risk.MEDIUM: Severity.MEDIUM, Risk.HIGH: Severity.HIGH}
)

_VITALS: Mapping[str, vitals.Vital] = MappingProxyType({v.code: v for v in vitals.VITALS})
_UNIT_SHOWN = MappingProxyType({"Cel": "°C", "mm[Hg]": "mmHg"})


def threshold_rule(code: str, side: Side) -> str:
    return f"{THRESHOLD_PREFIX}{code}:{side.value}"


def offline_rule(device_id: str) -> str:
    return f"{OFFLINE_PREFIX}{device_id}"


# plans --------------------------------------------------------------------------------
def default_thresholds(scale: int = 1) -> dict[str, Threshold]:
    thresholds = dict(_DEFAULTS)
    if SpO2Scale(scale) is SpO2Scale.TWO:
        thresholds[SPO2] = _SPO2_SCALE_2
    return thresholds


def default_plan(patient_id: str) -> MonitoringPlan:
    """What applies until the care team changes something: SpO2 scale 1, never 2."""
    return MonitoringPlan(
        patient_id=patient_id,
        thresholds=default_thresholds(1),
        spo2_scale=1,
        offline_after=DEFAULT_OFFLINE_AFTER,
        quiet_period=DEFAULT_QUIET_PERIOD,
    )


def with_scale(plan: MonitoringPlan, scale: int) -> MonitoringPlan:
    """The plan on another SpO2 scale. An SpO2 threshold still at the old scale's default
    follows to the new one's (92 % <-> 88 %); one a clinician chose is kept."""
    new = SpO2Scale(scale)
    thresholds = dict(plan.thresholds)
    if thresholds.get(SPO2) == default_thresholds(plan.spo2_scale).get(SPO2):
        thresholds[SPO2] = default_thresholds(new)[SPO2]
    return replace(plan, spo2_scale=int(new), thresholds=thresholds)


def known_codes() -> list[str]:
    """The LOINC codes of the vitals catalogue: those a threshold may be set for."""
    return sorted(_VITALS)


def vital_name(code: str) -> str:
    vital = _VITALS.get(code)
    return vital.display if vital is not None else code


def unit_shown(code: str) -> str:
    vital = _VITALS.get(code)
    unit = vital.unit if vital is not None else ""
    return _UNIT_SHOWN.get(unit, unit)


def clean_threshold(code: str, low: object, high: object) -> Threshold:
    """A threshold a care team may set for `code`; refusals name the field."""
    vital = _VITALS.get(code)
    if vital is None:
        known = ", ".join(sorted(_VITALS))
        raise ValidationError(f"thresholds.{code}", f"is not a vital this server knows ({known})")
    limits: dict[str, float | None] = {}
    for side, value in (("low", low), ("high", high)):
        field = f"thresholds.{code}.{side}"
        if value is None:
            limits[side] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(field, "must be a number or null")
        if not math.isfinite(value):
            raise ValidationError(field, "must be a finite number")
        if not vital.low <= value <= vital.high:
            raise ValidationError(
                field,
                f"must be between {vital.low:g} and {vital.high:g} {vital.unit}"
                f" (the range a {vital.display} can have)",
            )
        limits[side] = float(value)
    lo, hi = limits["low"], limits["high"]
    if lo is not None and hi is not None and lo >= hi:
        raise ValidationError(f"thresholds.{code}", "low must be below high")
    return Threshold(lo, hi)


def clean_scale(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in (1, 2):
        return value
    raise ValidationError("spo2_scale", "must be 1, or 2 for hypercapnic respiratory failure")


def clean_duration(field: str, minutes: object, bounds: tuple[timedelta, timedelta]) -> timedelta:
    lo, hi = (int(b.total_seconds() // 60) for b in bounds)
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not lo <= minutes <= hi:
        raise ValidationError(field, f"must be a whole number of minutes from {lo} to {hi}")
    return timedelta(minutes=minutes)


def clean_consciousness(value: object) -> str:
    if not isinstance(value, str) or value.strip().upper() not in {c.value for c in Consciousness}:
        raise ValidationError(
            "consciousness",
            "must be one of A (alert), C (new confusion), V (voice), P (pain), U (unresponsive)",
        )
    return value.strip().upper()


# findings -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's conclusion about one patient, at one time."""

    rule: str
    breached: bool  # the condition holds
    at: datetime  # when it was seen: a reading's time, or the evaluation's
    quiet: timedelta  # how long back in range before an alert of this rule resolves
    severity: Severity = Severity.MEDIUM  # when breached
    detail: str = ""  # when breached: what a clinician reads; else why it is clear
    value: float | None = None
    score: int | None = None
    settled: bool = True  # when not breached: whether this is evidence of recovery


def resolves(alert: Alert, finding: Finding) -> bool:
    """Whether `finding` resolves `alert` by itself."""
    return (
        alert.active
        and alert.rule == finding.rule
        and not finding.breached
        and finding.settled
        and finding.at - alert.last_breach_at >= finding.quiet
    )


def may_open(finding: Finding, now: datetime) -> bool:
    """Whether a breach is current enough to open an alert (see the module docstring)."""
    return finding.breached and now - finding.at <= OPEN_WINDOW


def _beyond(side: Side, value: float, limit: float) -> bool:
    return value < limit if side is Side.LOW else value > limit


def threshold_severity(code: str, side: Side, value: float) -> Severity:
    critical = CRITICAL.get(code)
    limit = None if critical is None else (critical.low if side is Side.LOW else critical.high)
    return Severity.HIGH if limit is not None and _beyond(side, value, limit) else Severity.MEDIUM


def threshold_findings(observations: Iterable[Observation], plan: MonitoringPlan) -> list[Finding]:
    """For each threshold of the plan the batch has readings for: the latest breaching
    reading (if any), then the latest reading if it is back in range."""
    by_code: dict[str, list[Observation]] = {}
    for o in observations:
        by_code.setdefault(o.code, []).append(o)
    findings: list[Finding] = []
    for code, readings in sorted(by_code.items()):
        threshold = plan.thresholds.get(code)
        if threshold is None:
            continue
        readings.sort(key=lambda o: o.taken_at)
        latest = readings[-1]
        for side, limit in ((Side.LOW, threshold.low), (Side.HIGH, threshold.high)):
            if limit is None:
                continue
            rule = threshold_rule(code, side)
            breaches = [o for o in readings if _beyond(side, o.value, limit)]
            if breaches:
                worst = breaches[-1]
                findings.append(
                    Finding(
                        rule,
                        True,
                        worst.taken_at,
                        plan.quiet_period,
                        severity=threshold_severity(code, side, worst.value),
                        detail=_threshold_detail(code, side, worst.value, limit),
                        value=worst.value,
                    )
                )
            if not _beyond(side, latest.value, limit):
                findings.append(
                    Finding(
                        rule,
                        False,
                        latest.taken_at,
                        plan.quiet_period,
                        detail=f"{vital_name(code)} back in range",
                        value=latest.value,
                    )
                )
    return findings


def _threshold_detail(code: str, side: Side, value: float, limit: float) -> str:
    unit = unit_shown(code)
    where = "below" if side is Side.LOW else "above"
    text = f"{vital_name(code)} {value:g} {unit} {where} {limit:g} {unit}"
    if threshold_severity(code, side, value) is Severity.HIGH:
        critical = CRITICAL[code]
        edge = critical.low if side is Side.LOW else critical.high
        text += f" (critical: {where} {edge:g} {unit})"
    return text


# NEWS2 ----------------------------------------------------------------------------------
def news2_inputs(latest: Iterable[Observation], check_ins: LatestCheckIns) -> News2Inputs:
    """The newest value of each NEWS2 parameter: vitals from `latest` (the newest
    observation per code), consciousness and oxygen from the check-ins."""
    values: dict[str, Observed[Any]] = {}
    for o in latest:
        parameter = NEWS2_CODES.get(o.code)
        if parameter is None:
            continue
        seen = values.get(parameter.value)
        if seen is None or o.taken_at > seen.taken_at:
            values[parameter.value] = Observed(o.value, o.taken_at)
    c, oxygen = check_ins.consciousness, check_ins.on_oxygen
    if c is not None and c.consciousness is not None:
        values["consciousness"] = Observed(Consciousness(c.consciousness), c.taken_at)
    if oxygen is not None and oxygen.on_oxygen is not None:
        values["on_oxygen"] = Observed(oxygen.on_oxygen, oxygen.taken_at)
    return News2Inputs(**values)


def news2_score(inputs: News2Inputs, *, now: datetime, scale: int) -> News2Score:
    """`news2.score`, except that a value the chart refuses (no patient can have it) is
    left out, and so reported missing, instead of losing the whole score."""
    while True:
        try:
            return score(inputs, now=now, scale=SpO2Scale(scale))
        except InvalidObservation as exc:
            field = "on_oxygen" if exc.parameter is Parameter.AIR_OR_OXYGEN else exc.parameter
            inputs = replace(inputs, **{str(field): None})


def news2_alerting(result: News2Score) -> bool:
    """Chart 4 calls for more than routine care: low-medium, medium or high."""
    return result.risk_at_least is not Risk.LOW


def news2_detail(result: News2Score) -> str:
    band = result.risk_at_least
    text = f"{result.label}: " if result.complete else f"{result.label}; at least {band}: "
    text += RESPONSE[band] if band is not Risk.LOW else "below the alerting bands."
    threes = [p.value for p, points in result.sub_scores.items() if points == 3]
    if threes:
        text += f" Scored 3: {', '.join(threes)}."
    return text


def news2_finding(result: News2Score, quiet: timedelta) -> Finding:
    if news2_alerting(result):
        return Finding(
            NEWS2_RULE,
            True,
            result.computed_at,
            quiet,
            severity=NEWS2_SEVERITY[result.risk_at_least],
            detail=news2_detail(result),
            score=result.total,
        )
    return Finding(
        NEWS2_RULE,
        False,
        result.computed_at,
        quiet,
        detail=news2_detail(result),
        score=result.total,
        settled=not result.stale,
    )


# devices ------------------------------------------------------------------------------
def offline_finding(
    device: Device,
    last_seen_at: datetime | None,
    now: datetime,
    offline_after: timedelta,
    online: bool | None = None,
) -> Finding:
    """Whether the device has been silent longer than `offline_after` at `now`."""
    since = last_seen_at or device.created_at
    rule = offline_rule(device.id)
    silent = now - since
    if silent <= offline_after:
        return Finding(rule, False, now, timedelta(0), detail="the device sends data again")
    minutes = int(silent.total_seconds() // 60)
    limit = int(offline_after.total_seconds() // 60)
    what = f"{device.kind} {device.id}"
    if last_seen_at is None:
        text = f"no data from {what} since its enrollment at {iso(since)} ({minutes} min)"
    else:
        text = f"no data from {what} for {minutes} min (last reading {iso(since)})"
    text += f"; the limit is {limit} min"
    if online is not None:
        text += f"; it reports itself {'online' if online else 'offline'}"
    return Finding(rule, True, now, timedelta(0), severity=Severity.LOW, detail=text)


def back_online_finding(
    device_id: str, newest: datetime, now: datetime, offline_after: timedelta
) -> Finding | None:
    """A batch of readings from a device: current ones clear its offline alert; a backlog
    of old ones does not."""
    if now - newest > offline_after:
        return None
    return Finding(
        offline_rule(device_id), False, now, timedelta(0), detail="the device sends data again"
    )
