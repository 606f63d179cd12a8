"""The alerting rules (devices/alerts.py), pure: exact boundaries on both sides."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import pytest

from devices import alerts
from devices.alerts import (
    DIASTOLIC,
    GLUCOSE,
    HEART_RATE,
    NEWS2_RULE,
    RESPIRATORY_RATE,
    SPO2,
    SYSTOLIC,
    TEMPERATURE,
    Finding,
    Side,
)
from devices.news2 import News2Inputs, Observed, Parameter, Risk, SpO2Scale, score, sub_score
from telemed.errors import ValidationError
from telemed.monitoring import (
    Alert,
    AlertState,
    CheckIn,
    Device,
    LatestCheckIns,
    MonitoringPlan,
    Observation,
    Severity,
    Threshold,
)

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
UNITS = {
    HEART_RATE: "/min",
    SPO2: "%",
    "59408-5": "%",
    RESPIRATORY_RATE: "/min",
    TEMPERATURE: "Cel",
    SYSTOLIC: "mm[Hg]",
    DIASTOLIC: "mm[Hg]",
    GLUCOSE: "mg/dL",
    "29463-7": "kg",
}


def reading(code: str, value: float, seconds: float = 0, device_id: str = "d1") -> Observation:
    taken = NOW + timedelta(seconds=seconds)
    return Observation("p1", device_id, code, value, UNITS[code], taken, taken)


def plan(**changes: object) -> MonitoringPlan:
    return dataclasses.replace(alerts.default_plan("p1"), **changes)  # type: ignore[arg-type]


def breached_rules(code: str, value: float, p: MonitoringPlan | None = None) -> set[str]:
    findings = alerts.threshold_findings([reading(code, value)], p or plan())
    return {f.rule for f in findings if f.breached}


# default thresholds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "in_range", "below", "above"),
    [
        (HEART_RATE, (41, 130), 40, 131),
        (RESPIRATORY_RATE, (9, 24), 8, 25),
        (SPO2, (92, 100), 91.9, None),
        (TEMPERATURE, (35.1, 39.0), 35.09, 39.01),
        (SYSTOLIC, (91, 180), 90.9, 180.1),
        (DIASTOLIC, (40, 120), 39.9, 120.1),
        (GLUCOSE, (70, 250), 69.9, 250.1),
    ],
)
def test_default_threshold_boundaries(
    code: str, in_range: tuple[float, float], below: float, above: float | None
) -> None:
    for value in in_range:
        assert breached_rules(code, value) == set(), value
    assert breached_rules(code, below) == {f"threshold:{code}:low"}
    if above is None:
        assert alerts.default_thresholds()[code].high is None
    else:
        assert breached_rules(code, above) == {f"threshold:{code}:high"}


def test_body_weight_has_no_default_threshold() -> None:
    assert "29463-7" not in alerts.default_plan("p1").thresholds
    assert breached_rules("29463-7", 400.0) == set()


@pytest.mark.parametrize(
    ("code", "parameter", "values"),
    [
        (HEART_RATE, Parameter.PULSE, range(15, 250)),
        (RESPIRATORY_RATE, Parameter.RESPIRATION_RATE, range(2, 60)),
        (SPO2, Parameter.SPO2, range(50, 101)),
    ],
)
def test_default_thresholds_breach_exactly_where_news2_scores_3(
    code: str, parameter: Parameter, values: range
) -> None:
    """RCP Chart 1's score-3 bands are the default limits (the module docstring)."""
    for value in values:
        assert bool(breached_rules(code, value)) == (sub_score(parameter, value) == 3), value


def test_low_temperature_default_is_news2s_score_3() -> None:
    for tenth in range(300, 400):
        value = tenth / 10
        low = f"threshold:{TEMPERATURE}:low" in breached_rules(TEMPERATURE, value)
        assert low == (sub_score(Parameter.TEMPERATURE, value) == 3), value


def test_spo2_scale_2_default_is_the_88_percent_floor() -> None:
    assert alerts.default_thresholds(2)[SPO2] == Threshold(low=88.0)
    p = plan(spo2_scale=2, thresholds=alerts.default_thresholds(2))
    assert breached_rules(SPO2, 88, p) == set()
    assert breached_rules(SPO2, 87.9, p) == {f"threshold:{SPO2}:low"}


# severity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "side", "medium", "high"),
    [
        (HEART_RATE, Side.HIGH, 140, 140.1),
        (HEART_RATE, Side.LOW, 40, 39.9),
        (RESPIRATORY_RATE, Side.HIGH, 36, 37),
        (RESPIRATORY_RATE, Side.LOW, 5, 4),
        (SPO2, Side.LOW, 90, 89.9),
        (SYSTOLIC, Side.LOW, 90, 89),
        (SYSTOLIC, Side.HIGH, 219, 220),
        (TEMPERATURE, Side.LOW, 35.0, 34.9),
        (TEMPERATURE, Side.HIGH, 40.0, 40.1),
        (GLUCOSE, Side.LOW, 54, 53.9),
        (GLUCOSE, Side.HIGH, 600, 600.1),
    ],
)
def test_critical_limits_make_a_breach_high(
    code: str, side: Side, medium: float, high: float
) -> None:
    assert alerts.threshold_severity(code, side, medium) is Severity.MEDIUM
    assert alerts.threshold_severity(code, side, high) is Severity.HIGH


def test_diastolic_has_no_critical_limit() -> None:
    assert alerts.threshold_severity(DIASTOLIC, Side.HIGH, 200) is Severity.MEDIUM


def test_a_widened_range_is_not_overridden_by_the_critical_limit() -> None:
    athlete = plan(thresholds={HEART_RATE: Threshold(35.0, 130.0)})
    assert breached_rules(HEART_RATE, 38, athlete) == set()
    [finding] = [
        f for f in alerts.threshold_findings([reading(HEART_RATE, 34)], athlete) if f.breached
    ]
    assert finding.severity is Severity.HIGH


def test_threshold_detail_reads_like_a_sentence() -> None:
    [finding] = [
        f for f in alerts.threshold_findings([reading(HEART_RATE, 142)], plan()) if f.breached
    ]
    assert finding.detail == "heart rate 142 /min above 130 /min (critical: above 140 /min)"
    assert (finding.value, finding.severity) == (142, Severity.HIGH)
    [cold] = [
        f for f in alerts.threshold_findings([reading(TEMPERATURE, 35.0)], plan()) if f.breached
    ]
    assert cold.detail == "body temperature 35 °C below 35.1 °C"
    assert cold.severity is Severity.MEDIUM


# threshold findings of a batch --------------------------------------------------------------


def test_a_batch_ending_back_in_range_gives_the_breach_then_the_clear() -> None:
    batch = [reading(HEART_RATE, 72, 30), reading(HEART_RATE, 135, 10), reading(HEART_RATE, 133, 0)]
    findings = alerts.threshold_findings(batch, plan())
    rule = f"threshold:{HEART_RATE}:high"
    breach, clear = [f for f in findings if f.rule == rule]
    assert (breach.breached, breach.at, breach.value) == (True, NOW + timedelta(seconds=10), 135)
    assert (clear.breached, clear.at, clear.value) == (False, NOW + timedelta(seconds=30), 72)
    # the low side was in range all along: only its clear
    [low] = [f for f in findings if f.rule != rule]
    assert (low.rule, low.breached) == (f"threshold:{HEART_RATE}:low", False)


def test_a_batch_ending_in_breach_gives_no_clear() -> None:
    batch = [reading(HEART_RATE, 72, 0), reading(HEART_RATE, 150, 5)]
    findings = alerts.threshold_findings(batch, plan())
    high = [f for f in findings if f.rule.endswith(":high")]
    assert [(f.breached, f.value) for f in high] == [(True, 150)]
    low = [f for f in findings if f.rule.endswith(":low")]
    assert [(f.breached, f.at) for f in low] == [(False, NOW + timedelta(seconds=5))]


def test_codes_without_a_threshold_give_nothing() -> None:
    assert alerts.threshold_findings([reading("29463-7", 80)], plan()) == []
    only_low = plan(thresholds={SPO2: Threshold(low=92.0)})
    assert [f.rule for f in alerts.threshold_findings([reading(SPO2, 97)], only_low)] == [
        f"threshold:{SPO2}:low"
    ]


# resolution and opening -------------------------------------------------------------------------


def alert(rule: str = f"threshold:{HEART_RATE}:high", last_breach: datetime = NOW) -> Alert:
    return Alert(
        id="a1",
        patient_id="p1",
        rule=rule,
        severity=Severity.MEDIUM,
        state=AlertState.OPEN,
        opened_at=NOW,
        last_breach_at=last_breach,
        detail="",
    )


def clear(
    at: datetime, *, settled: bool = True, quiet: timedelta = timedelta(minutes=15)
) -> Finding:
    return Finding(f"threshold:{HEART_RATE}:high", False, at, quiet, settled=settled)


def test_resolves_after_the_quiet_period_not_before() -> None:
    quiet = timedelta(minutes=15)
    assert not alerts.resolves(alert(), clear(NOW + quiet - MS))
    assert alerts.resolves(alert(), clear(NOW + quiet))
    assert not alerts.resolves(alert(), clear(NOW + quiet, settled=False))
    assert not alerts.resolves(alert(rule="news2"), clear(NOW + quiet))
    resolved = dataclasses.replace(alert(), state=AlertState.RESOLVED)
    assert not alerts.resolves(resolved, clear(NOW + quiet))
    breach = dataclasses.replace(clear(NOW + quiet), breached=True)
    assert not alerts.resolves(alert(), breach)


def test_old_readings_do_not_open_alerts() -> None:
    def breach(at: datetime) -> Finding:
        return Finding("r", True, at, timedelta(0))

    assert alerts.may_open(breach(NOW - alerts.OPEN_WINDOW), NOW)
    assert not alerts.may_open(breach(NOW - alerts.OPEN_WINDOW - MS), NOW)
    assert alerts.may_open(breach(NOW + timedelta(minutes=1)), NOW)  # device clock skew
    assert not alerts.may_open(dataclasses.replace(breach(NOW), breached=False), NOW)


# NEWS2 -----------------------------------------------------------------------------------------


def observed(value: object, minutes_ago: float = 0) -> Observed[object]:
    return Observed(value, NOW - timedelta(minutes=minutes_ago))


NORMAL = {
    "respiration_rate": observed(16.0),
    "spo2": observed(97.0),
    "on_oxygen": observed(False),
    "systolic_bp": observed(120.0),
    "pulse": observed(70.0),
    "consciousness": observed("A"),
    "temperature": observed(36.8),
}


def news2_of(scale: int = 1, **values: Observed[object] | None) -> Finding:
    inputs = News2Inputs(**{**NORMAL, **values})  # type: ignore[arg-type]
    return alerts.news2_finding(alerts.news2_score(inputs, now=NOW, scale=scale), timedelta(0))


def test_news2_below_the_bands_does_not_alert() -> None:
    finding = news2_of(pulse=observed(115.0), temperature=observed(38.5))  # 2 + 1
    assert not finding.breached
    assert finding.score == 3
    assert finding.settled


def test_news2_a_single_3_is_low_medium_and_a_low_severity_alert() -> None:
    finding = news2_of(spo2=observed(91.0))
    assert finding.breached
    assert (finding.rule, finding.score, finding.severity) == (NEWS2_RULE, 3, Severity.LOW)
    assert finding.detail.startswith("NEWS2 3 (low-medium): Urgent ward-based response")
    assert finding.detail.endswith("Scored 3: spo2.")


@pytest.mark.parametrize(
    ("values", "total", "severity"),
    [
        ({"pulse": observed(115.0), "respiration_rate": observed(22.0)}, 4, None),
        (
            {
                "pulse": observed(115.0),
                "respiration_rate": observed(21.0),
                "temperature": observed(38.1),
            },
            5,
            Severity.MEDIUM,
        ),
        (
            {
                "pulse": observed(115.0),
                "respiration_rate": observed(22.0),
                "spo2": observed(94.0),
                "temperature": observed(38.2),
            },
            6,
            Severity.MEDIUM,
        ),
        (
            {
                "pulse": observed(115.0),
                "respiration_rate": observed(22.0),
                "spo2": observed(94.0),
                "temperature": observed(39.1),
            },
            7,
            Severity.HIGH,
        ),
    ],
)
def test_news2_bands_set_the_severity(
    values: dict[str, Observed[object]], total: int, severity: Severity | None
) -> None:
    finding = news2_of(**values)
    assert finding.score == total
    assert finding.breached == (severity is not None)
    if severity is not None:
        assert finding.severity is severity


def test_an_incomplete_news2_alerts_on_what_it_reaches_and_says_what_it_lacks() -> None:
    finding = news2_of(
        pulse=observed(115.0),
        respiration_rate=observed(25.0),
        consciousness=None,
        on_oxygen=None,
        temperature=observed(36.5, minutes_ago=61),
    )
    assert finding.breached
    assert (finding.score, finding.severity) == (5, Severity.MEDIUM)
    assert "incomplete" in finding.detail
    assert "missing air_or_oxygen, consciousness" in finding.detail
    assert "stale temperature" in finding.detail
    assert "at least medium" in finding.detail


def test_an_incomplete_news2_below_the_bands_is_no_evidence_of_recovery_if_stale() -> None:
    stale = news2_of(spo2=observed(97.0, minutes_ago=61))
    assert not stale.breached
    assert not stale.settled
    missing = news2_of(consciousness=None)
    assert not missing.breached
    assert missing.settled  # nothing that counted before has aged out


def test_news2_scale_2_only_when_asked() -> None:
    assert news2_of(spo2=observed(89.0)).score == 3
    assert not news2_of(scale=2, spo2=observed(89.0)).breached
    assert news2_of(scale=2, spo2=observed(89.0)).score == 0
    assert alerts.default_plan("p1").spo2_scale == 1


def test_news2_inputs_from_latest_observations_and_check_ins() -> None:
    latest = [
        reading(HEART_RATE, 88, -60),
        reading("59408-5", 95, -30),  # US Core's code, older than the 2708-6 one
        reading(SPO2, 93, -10),
        reading("29463-7", 80),
    ]
    c = CheckIn("c1", "p1", NOW - timedelta(hours=2), "u1", "patient", consciousness="C")
    o = CheckIn("c2", "p1", NOW - timedelta(hours=1), "u2", "nurse", on_oxygen=True)
    inputs = alerts.news2_inputs(latest, LatestCheckIns(c, o))
    assert inputs.pulse == Observed(88, NOW - timedelta(seconds=60))
    assert inputs.spo2 == Observed(93, NOW - timedelta(seconds=10))
    assert inputs.consciousness is not None
    assert inputs.consciousness.value == "C"
    assert inputs.on_oxygen == Observed(True, NOW - timedelta(hours=1))
    assert inputs.respiration_rate is None
    assert inputs.temperature is None


def test_a_value_the_chart_refuses_is_left_out_not_fatal() -> None:
    inputs = News2Inputs(**{**NORMAL, "temperature": observed(60.0)})  # type: ignore[arg-type]
    result = alerts.news2_score(inputs, now=NOW, scale=1)
    assert result.missing == (Parameter.TEMPERATURE,)
    assert result == score(dataclasses.replace(inputs, temperature=None), now=NOW)
    assert result.scale is SpO2Scale.ONE
    assert result.risk_at_least is Risk.LOW


# plans --------------------------------------------------------------------------------------


def test_changing_scale_moves_a_default_spo2_threshold_only() -> None:
    two = alerts.with_scale(alerts.default_plan("p1"), 2)
    assert (two.spo2_scale, two.thresholds[SPO2]) == (2, Threshold(low=88.0))
    assert alerts.with_scale(two, 1).thresholds[SPO2] == Threshold(low=92.0)
    chosen = plan(thresholds={**alerts.default_thresholds(), SPO2: Threshold(low=90.0)})
    assert alerts.with_scale(chosen, 2).thresholds[SPO2] == Threshold(low=90.0)


@pytest.mark.parametrize(
    ("code", "low", "high", "field"),
    [
        ("1234-5", 1, 2, "thresholds.1234-5"),
        (HEART_RATE, 130, 40, "thresholds.8867-4"),
        (HEART_RATE, 60, 60, "thresholds.8867-4"),
        (HEART_RATE, True, 100, "thresholds.8867-4.low"),
        (HEART_RATE, "40", 100, "thresholds.8867-4.low"),
        (HEART_RATE, 40, math.inf, "thresholds.8867-4.high"),
        (HEART_RATE, 40, math.nan, "thresholds.8867-4.high"),
        (TEMPERATURE, 95, 101, "thresholds.8310-5.low"),  # degF
    ],
)
def test_bad_thresholds_are_refused_naming_the_field(
    code: str, low: object, high: object, field: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        alerts.clean_threshold(code, low, high)
    assert refused.value.field == field


def test_good_thresholds() -> None:
    assert alerts.clean_threshold(HEART_RATE, 45, None) == Threshold(45.0, None)
    assert alerts.clean_threshold(HEART_RATE, None, None) == Threshold()
    assert alerts.clean_threshold(TEMPERATURE, 35.5, 38) == Threshold(35.5, 38.0)


def test_scale_durations_and_consciousness_are_checked() -> None:
    assert alerts.clean_scale(2) == 2
    for bad in (0, 3, True, "2", 2.0):
        with pytest.raises(ValidationError, match="spo2_scale"):
            alerts.clean_scale(bad)
    bounds = alerts.OFFLINE_AFTER_RANGE
    assert alerts.clean_duration("offline_after_minutes", 5, bounds) == timedelta(minutes=5)
    assert alerts.clean_duration("offline_after_minutes", 10080, bounds) == timedelta(days=7)
    for bad_minutes in (4, 10081, 30.5, "30", None):
        with pytest.raises(ValidationError, match="offline_after_minutes"):
            alerts.clean_duration("offline_after_minutes", bad_minutes, bounds)
    assert alerts.clean_consciousness(" v ") == "V"
    for bad_level in ("X", "", "alert", None, 1):
        with pytest.raises(ValidationError, match="consciousness"):
            alerts.clean_consciousness(bad_level)


# devices ------------------------------------------------------------------------------------------

DEVICE = Device("d1", "p1", "pulse-oximeter", NOW - timedelta(days=1))


def test_offline_after_the_interval_not_at_it() -> None:
    limit = timedelta(minutes=30)
    last = NOW - limit
    at_limit = alerts.offline_finding(DEVICE, last, NOW, limit)
    assert not at_limit.breached
    past = alerts.offline_finding(DEVICE, last - MS, NOW, limit, online=False)
    assert past.breached
    assert (past.rule, past.severity, past.at) == ("device-offline:d1", Severity.LOW, NOW)
    assert "no data from pulse-oximeter d1 for 30 min" in past.detail
    assert "the limit is 30 min" in past.detail
    assert "it reports itself offline" in past.detail


def test_a_device_that_never_sent_counts_from_its_enrollment() -> None:
    new = dataclasses.replace(DEVICE, created_at=NOW - timedelta(minutes=10))
    assert not alerts.offline_finding(new, None, NOW, timedelta(minutes=30)).breached
    finding = alerts.offline_finding(DEVICE, None, NOW, timedelta(minutes=30))
    assert finding.breached
    assert "since its enrollment" in finding.detail


def test_only_current_data_clears_an_offline_device() -> None:
    limit = timedelta(minutes=30)
    back = alerts.back_online_finding("d1", NOW - limit, NOW, limit)
    assert back is not None
    assert (back.rule, back.breached, back.at, back.quiet) == (
        "device-offline:d1",
        False,
        NOW,
        timedelta(0),
    )
    assert alerts.back_online_finding("d1", NOW - limit - MS, NOW, limit) is None
    offline = dataclasses.replace(alert(rule="device-offline:d1"), last_breach_at=NOW)
    assert alerts.resolves(offline, back)
