"""NEWS2 against its source: RCP, National Early Warning Score (NEWS) 2, 2017.

Chart 1 (the scoring bands) and Chart 4 (risk and clinical response), as transcribed in
/work/shared/CLINICAL.md, section "NEWS2". Every band boundary is tested on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from devices.news2 import (
    DEFAULT_MAX_AGE,
    Consciousness,
    InvalidObservation,
    News2Inputs,
    News2Score,
    Observed,
    Parameter,
    Risk,
    SpO2Scale,
    score,
    sub_score,
)

NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
P = Parameter

# A patient who scores 0 on every parameter, observed at NOW.
ZERO: dict[str, Any] = {
    "respiration_rate": 16,
    "spo2": 98,
    "on_oxygen": False,
    "systolic_bp": 120,
    "pulse": 70,
    "consciousness": Consciousness.ALERT,
    "temperature": 37.0,
}


def inputs(*, at: datetime = NOW, omit: tuple[str, ...] = (), **values: Any) -> News2Inputs:
    """ZERO with `values` replacing some fields and `omit` left out, taken `at` unless
    given as an Observed with a time of its own."""
    fields = {**ZERO, **values}
    return News2Inputs(
        **{
            name: value if isinstance(value, Observed) else Observed(value, at)
            for name, value in fields.items()
            if name not in omit
        }
    )


def cases(parameter: Parameter, table: Sequence[tuple[float, int]]) -> list[Any]:
    return [
        pytest.param(parameter, value, points, id=f"{parameter}={value}") for value, points in table
    ]


# --- Chart 1: every boundary, both sides -------------------------------------------------

# CLINICAL.md / RCP Chart 1: RR ≤8 3, 9–11 1, 12–20 0, 21–24 2, ≥25 3.
RESPIRATION_RATE = [
    (0, 3),
    (8, 3),
    (9, 1),
    (11, 1),
    (12, 0),
    (20, 0),
    (21, 2),
    (24, 2),
    (25, 3),
    (60, 3),
]
# CLINICAL.md / RCP Chart 1: systolic ≤90 3, 91–100 2, 101–110 1, 111–219 0, ≥220 3.
SYSTOLIC_BP = [
    (0, 3),
    (90, 3),
    (91, 2),
    (100, 2),
    (101, 1),
    (110, 1),
    (111, 0),
    (219, 0),
    (220, 3),
    (300, 3),
]
# CLINICAL.md / RCP Chart 1: pulse ≤40 3, 41–50 1, 51–90 0, 91–110 1, 111–130 2, ≥131 3.
PULSE = [
    (0, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0),
    (91, 1), (110, 1), (111, 2), (130, 2), (131, 3), (250, 3),
]  # fmt: skip
# CLINICAL.md / RCP Chart 1: temperature ≤35.0 3, 35.1–36.0 1, 36.1–38.0 0, 38.1–39.0 1, ≥39.1 2.
TEMPERATURE = [
    (30.0, 3), (35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0),
    (38.0, 0), (38.1, 1), (39.0, 1), (39.1, 2), (42.0, 2),
]  # fmt: skip
# CLINICAL.md / RCP Chart 1: SpO2 scale 1 ≤91 3, 92–93 2, 94–95 1, ≥96 0.
SPO2_SCALE_1 = [(0, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]


@pytest.mark.parametrize(
    ("parameter", "value", "points"),
    cases(P.RESPIRATION_RATE, RESPIRATION_RATE)
    + cases(P.SYSTOLIC_BP, SYSTOLIC_BP)
    + cases(P.PULSE, PULSE)
    + cases(P.TEMPERATURE, TEMPERATURE)
    + cases(P.SPO2, SPO2_SCALE_1),
)
def test_chart_1_boundaries(parameter: Parameter, value: float, points: int) -> None:
    """RCP Chart 1: the last value of each band and the first of the next."""
    assert sub_score(parameter, value) == points


@pytest.mark.parametrize(("value", "points"), SPO2_SCALE_1)
def test_spo2_scale_1_does_not_depend_on_oxygen(value: float, points: int) -> None:
    """RCP Chart 1: on scale 1, oxygen scores in its own row, not in SpO2's."""
    assert sub_score(P.SPO2, value, on_oxygen=True) == points


# CLINICAL.md / RCP Chart 1, SpO2 scale 2: ≤83 3, 84–85 2, 86–87 1, 88–92 0 (either way),
# ≥93 on air 0; on oxygen 93–94 1, 95–96 2, ≥97 3.
SPO2_SCALE_2_BELOW_93 = [(0, 3), (83, 3), (84, 2), (85, 2), (86, 1), (87, 1), (88, 0), (92, 0)]
SPO2_SCALE_2_AIR = [*SPO2_SCALE_2_BELOW_93, (93, 0), (94, 0), (96, 0), (97, 0), (100, 0)]
SPO2_SCALE_2_OXYGEN = [
    *SPO2_SCALE_2_BELOW_93,
    (93, 1),
    (94, 1),
    (95, 2),
    (96, 2),
    (97, 3),
    (100, 3),
]


@pytest.mark.parametrize(("value", "points"), SPO2_SCALE_2_AIR)
def test_spo2_scale_2_on_air(value: float, points: int) -> None:
    """RCP Chart 1, SpO2 scale 2, on air."""
    assert sub_score(P.SPO2, value, scale=SpO2Scale.TWO, on_oxygen=False) == points


@pytest.mark.parametrize(("value", "points"), SPO2_SCALE_2_OXYGEN)
def test_spo2_scale_2_on_oxygen(value: float, points: int) -> None:
    """RCP Chart 1, SpO2 scale 2, on oxygen."""
    assert sub_score(P.SPO2, value, scale=SpO2Scale.TWO, on_oxygen=True) == points


@pytest.mark.parametrize(("on_oxygen", "points"), [(False, 0), (True, 2)])
def test_air_or_oxygen(on_oxygen: bool, points: int) -> None:
    """RCP Chart 1: air 0, oxygen 2."""
    assert sub_score(P.AIR_OR_OXYGEN, on_oxygen) == points


@pytest.mark.parametrize(
    ("level", "points"),
    [
        (Consciousness.ALERT, 0),
        (Consciousness.CONFUSION, 3),
        (Consciousness.VOICE, 3),
        (Consciousness.PAIN, 3),
        (Consciousness.UNRESPONSIVE, 3),
        ("A", 0),
        ("C", 3),
    ],
)
def test_consciousness(level: str, points: int) -> None:
    """RCP Chart 1: alert 0; new confusion, voice, pain or unresponsive (CVPU) 3."""
    assert sub_score(P.CONSCIOUSNESS, level) == points


# --- Values between two bands --------------------------------------------------------------

# CLINICAL.md: "values between two bands ... fall on the boundaries as published". Rule:
# round half up to the chart's precision (integers; temperature to 0.1), then look up.
BETWEEN = [
    (P.TEMPERATURE, 35.04, 3),  # -> 35.0
    (P.TEMPERATURE, 35.05, 1),  # -> 35.1
    (P.TEMPERATURE, 36.04, 1),  # -> 36.0
    (P.TEMPERATURE, 36.05, 0),  # -> 36.1 (the float is 36.0499..., rounded as written)
    (P.TEMPERATURE, 38.04, 0),  # -> 38.0
    (P.TEMPERATURE, 38.05, 1),  # -> 38.1
    (P.TEMPERATURE, 39.04, 1),  # -> 39.0
    (P.TEMPERATURE, 39.05, 2),  # -> 39.1
    (P.RESPIRATION_RATE, 8.49, 3),  # -> 8
    (P.RESPIRATION_RATE, 8.5, 1),  # -> 9
    (P.RESPIRATION_RATE, 11.49, 1),  # -> 11
    (P.RESPIRATION_RATE, 11.5, 0),  # -> 12
    (P.RESPIRATION_RATE, 20.49, 0),  # -> 20
    (P.RESPIRATION_RATE, 20.5, 2),  # -> 21 (round() would give 20: half to even)
    (P.RESPIRATION_RATE, 24.5, 3),  # -> 25
    (P.SYSTOLIC_BP, 90.49, 3),  # -> 90
    (P.SYSTOLIC_BP, 90.5, 2),  # -> 91
    (P.SYSTOLIC_BP, 100.5, 1),  # -> 101
    (P.SYSTOLIC_BP, 110.5, 0),  # -> 111
    (P.SYSTOLIC_BP, 219.49, 0),  # -> 219
    (P.SYSTOLIC_BP, 219.5, 3),  # -> 220
    (P.PULSE, 40.49, 3),  # -> 40
    (P.PULSE, 40.5, 1),  # -> 41
    (P.PULSE, 50.5, 0),  # -> 51
    (P.PULSE, 90.5, 1),  # -> 91
    (P.PULSE, 110.5, 2),  # -> 111
    (P.PULSE, 130.5, 3),  # -> 131
    (P.SPO2, 91.49, 3),  # -> 91
    (P.SPO2, 91.5, 2),  # -> 92
    (P.SPO2, 93.5, 1),  # -> 94
    (P.SPO2, 95.5, 0),  # -> 96
]


@pytest.mark.parametrize(
    ("parameter", "value", "points"),
    [pytest.param(p, v, s, id=f"{p}={v}") for p, v, s in BETWEEN],
)
def test_between_bands_rounds_half_up(parameter: Parameter, value: float, points: int) -> None:
    """CLINICAL.md, NEWS2 notes: values between two bands (e.g. 36.05)."""
    assert sub_score(parameter, value) == points


def test_between_bands_is_not_float_rounding() -> None:
    """CLINICAL.md, NEWS2 notes: 36.05 is rounded as written, not as the float stores it."""
    assert Decimal(36.05) < Decimal("36.05")  # why rounding the float would score it 1
    assert round(36.05, 1) == 36.0  # the builtin rounds the float...
    assert round(20.5) == 20  # ...and rounds half to even
    assert sub_score(P.TEMPERATURE, 36.05) == 0
    assert sub_score(P.RESPIRATION_RATE, 20.5) == 2


@pytest.mark.parametrize(
    ("value", "on_oxygen", "points"),
    [(87.5, False, 0), (87.49, True, 1), (92.5, False, 0), (92.5, True, 1), (96.5, True, 3)],
)
def test_spo2_scale_2_between_bands(value: float, on_oxygen: bool, points: int) -> None:
    """RCP Chart 1, SpO2 scale 2, with CLINICAL.md's between-bands note."""
    assert sub_score(P.SPO2, value, scale=SpO2Scale.TWO, on_oxygen=on_oxygen) == points


# --- Refusals ------------------------------------------------------------------------------

INVALID = [
    (P.RESPIRATION_RATE, -1),
    (P.RESPIRATION_RATE, float("nan")),
    (P.RESPIRATION_RATE, float("inf")),
    (P.SPO2, 100.1),
    (P.SPO2, -0.5),
    (P.SPO2, float("nan")),
    (P.SYSTOLIC_BP, -120),
    (P.SYSTOLIC_BP, "120"),
    (P.PULSE, float("-inf")),
    (P.PULSE, True),
    (P.TEMPERATURE, -0.1),
    (P.TEMPERATURE, 98.6),  # degF passed as Cel
    (P.AIR_OR_OXYGEN, 1),
    (P.AIR_OR_OXYGEN, "oxygen"),
    (P.CONSCIOUSNESS, "X"),
    (P.CONSCIOUSNESS, 0),
]


@pytest.mark.parametrize(
    ("parameter", "value"),
    [pytest.param(p, v, id=f"{p}={v!r}") for p, v in INVALID],
)
def test_impossible_values_are_refused_by_name(parameter: Parameter, value: Any) -> None:
    """CLINICAL.md / STYLE.md: a refusal names the field; RCP Chart 1 has no such value."""
    with pytest.raises(ValueError, match=f"^{parameter}: ") as caught:
        sub_score(parameter, value)
    assert isinstance(caught.value, InvalidObservation)
    assert caught.value.parameter is parameter


def test_score_refuses_an_impossible_value_by_name() -> None:
    """RCP Chart 1: a SpO2 above 100% is a device fault, not a score of 0."""
    with pytest.raises(ValueError, match="^spo2: "):
        score(inputs(spo2=101), now=NOW)


def test_times_must_be_timezone_aware() -> None:
    """CLINICAL.md: a parameter's age is measured in UTC; a naive time has none."""
    naive = NOW.replace(tzinfo=None)
    with pytest.raises(ValueError, match="taken_at"):
        Observed(16, naive)
    with pytest.raises(ValueError, match="now"):
        score(inputs(), now=naive)


# --- Aggregate, Chart 4 --------------------------------------------------------------------


def test_worked_example() -> None:
    """RCP Chart 1 and Chart 4, computed by hand.

    RR 22 -> 2, SpO2 95 (scale 1) -> 1, oxygen -> 2, systolic 105 -> 1, pulse 115 -> 2,
    alert -> 0, temperature 38.5 -> 1: total 9, high risk, emergency response.
    """
    result = score(
        inputs(
            respiration_rate=22,
            spo2=95,
            on_oxygen=True,
            systolic_bp=105,
            pulse=115,
            consciousness=Consciousness.ALERT,
            temperature=38.5,
        ),
        now=NOW,
    )
    assert dict(result.sub_scores) == {
        P.RESPIRATION_RATE: 2,
        P.SPO2: 1,
        P.AIR_OR_OXYGEN: 2,
        P.SYSTOLIC_BP: 1,
        P.PULSE: 2,
        P.CONSCIOUSNESS: 0,
        P.TEMPERATURE: 1,
    }
    assert result.total == 9
    assert result.complete
    assert not result.red_flag
    assert result.risk is Risk.HIGH
    assert result.label == "NEWS2 9 (high)"
    assert "Emergency response" in result.response


@pytest.mark.parametrize(
    ("values", "total", "risk", "response"),
    [
        pytest.param({}, 0, Risk.LOW, "every 12 hours", id="0-low"),
        pytest.param(
            {"respiration_rate": 22, "pulse": 115}, 4, Risk.LOW, "registered nurse", id="4-low"
        ),
        pytest.param(
            {"consciousness": Consciousness.VOICE}, 3, Risk.LOW_MEDIUM, "ward-based", id="3-single"
        ),
        pytest.param(
            {"respiration_rate": 25, "pulse": 95}, 4, Risk.LOW_MEDIUM, "ward-based", id="4-single-3"
        ),
        pytest.param(
            {"respiration_rate": 25, "pulse": 115}, 5, Risk.MEDIUM, "Key threshold", id="5-beats-3"
        ),
        pytest.param(
            {"on_oxygen": True, "pulse": 115, "temperature": 39.1},
            6,
            Risk.MEDIUM,
            "Key threshold",
            id="6-medium",
        ),
        pytest.param(
            {"on_oxygen": True, "pulse": 115, "temperature": 39.1, "spo2": 95},
            7,
            Risk.HIGH,
            "Emergency",
            id="7-high",
        ),
    ],
)
def test_chart_4_bands(values: dict[str, Any], total: int, risk: Risk, response: str) -> None:
    """RCP Chart 4: 0 and 1-4 low, a 3 in one parameter low-medium, 5-6 medium, 7+ high."""
    result = score(inputs(**values), now=NOW)
    assert result.complete
    assert result.total == total
    assert result.risk is risk
    assert result.risk_at_least is risk
    assert result.red_flag is (3 in result.sub_scores.values())
    assert response in result.response
    assert result.label == f"NEWS2 {total} ({risk})"


def test_a_single_3_is_a_red_flag_at_any_total() -> None:
    """RCP Chart 4: a score of 3 in any individual parameter, even with a high aggregate."""
    result = score(inputs(consciousness=Consciousness.UNRESPONSIVE, pulse=135), now=NOW)
    assert result.red_flag
    assert result.total == 6
    assert result.risk is Risk.MEDIUM


# --- Incomplete scores ---------------------------------------------------------------------


def test_missing_check_in_makes_the_score_incomplete() -> None:
    """CLINICAL.md, remote monitoring: wearables cannot report consciousness or oxygen;
    a score without them says so and is never shown as complete (RCP Chart 4 bands)."""
    result = score(
        inputs(
            omit=("consciousness", "on_oxygen"), respiration_rate=22, pulse=115, temperature=38.5
        ),
        now=NOW,
    )
    assert not result.complete
    assert result.missing == (P.AIR_OR_OXYGEN, P.CONSCIOUSNESS)
    assert result.stale == ()
    assert P.CONSCIOUSNESS not in result.sub_scores
    assert result.total == 5
    assert result.risk is None
    assert result.risk_at_least is Risk.MEDIUM
    assert result.label == "NEWS2 5 (incomplete: missing air_or_oxygen, consciousness)"
    assert result.response.startswith("Incomplete score (missing air_or_oxygen, consciousness)")
    assert "Key threshold" in result.response


def test_incomplete_score_with_a_3_is_at_least_low_medium() -> None:
    """RCP Chart 4: a 3 already seen stands; missing parameters can only add points."""
    result = score(inputs(omit=("consciousness",), respiration_rate=25), now=NOW)
    assert result.risk is None
    assert result.red_flag
    assert result.risk_at_least is Risk.LOW_MEDIUM


def test_incomplete_score_of_0_does_not_offer_routine_monitoring_alone() -> None:
    """CLINICAL.md: an incomplete score must never be shown as if it were complete."""
    result = score(inputs(omit=tuple(ZERO)), now=NOW)
    assert result.missing == tuple(Parameter)
    assert result.total == 0
    assert result.risk is None
    assert result.risk_at_least is Risk.LOW
    assert result.response.startswith("Incomplete score (missing respiration_rate, spo2, ")
    assert result.label.startswith("NEWS2 0 (incomplete: missing respiration_rate, ")


# --- Staleness -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameter", "field"),
    [
        (P.RESPIRATION_RATE, "respiration_rate"),
        (P.SPO2, "spo2"),
        (P.AIR_OR_OXYGEN, "on_oxygen"),
        (P.SYSTOLIC_BP, "systolic_bp"),
        (P.PULSE, "pulse"),
        (P.CONSCIOUSNESS, "consciousness"),
        (P.TEMPERATURE, "temperature"),
    ],
)
def test_value_is_stale_just_past_its_maximum_age(parameter: Parameter, field: str) -> None:
    """CLINICAL.md, remote monitoring: parameters have a time of their own; a stale one
    does not count (RCP Chart 4 observation intervals set the maximum ages)."""
    limit = DEFAULT_MAX_AGE[parameter]
    at_limit: dict[str, Any] = {field: Observed(ZERO[field], NOW - limit)}
    past: dict[str, Any] = {field: Observed(ZERO[field], NOW - limit - timedelta(seconds=1))}

    assert score(inputs(**at_limit), now=NOW).complete

    result = score(inputs(**past), now=NOW)
    assert result.stale == (parameter,)
    assert result.missing == ()
    assert parameter not in result.sub_scores
    assert result.risk is None
    assert result.label == f"NEWS2 0 (incomplete: stale {parameter})"


def test_default_maximum_ages() -> None:
    """CLINICAL.md: vitals from wearables are hourly (RCP Chart 4's most frequent round);
    consciousness and oxygen come from a check-in, good for 12 h (Chart 4's longest)."""
    hour, half_day = timedelta(hours=1), timedelta(hours=12)
    assert dict(DEFAULT_MAX_AGE) == {
        P.RESPIRATION_RATE: hour,
        P.SPO2: hour,
        P.AIR_OR_OXYGEN: half_day,
        P.SYSTOLIC_BP: hour,
        P.PULSE: hour,
        P.CONSCIOUSNESS: half_day,
        P.TEMPERATURE: hour,
    }


def test_stale_values_do_not_count() -> None:
    """RCP Chart 1: an old pulse of 150 would score 3; it is reported, not added."""
    old_pulse = Observed(150.0, NOW - timedelta(hours=2))
    result = score(inputs(respiration_rate=22, pulse=old_pulse), now=NOW)
    assert result.stale == (P.PULSE,)
    assert result.total == 2
    assert not result.red_flag
    assert result.risk_at_least is Risk.LOW


def test_staleness_is_judged_at_now() -> None:
    """CLINICAL.md: the same values are current at one `now` and stale at a later one."""
    values = inputs(at=NOW - timedelta(minutes=30))
    assert score(values, now=NOW).complete
    later = score(values, now=NOW + timedelta(minutes=31))
    assert later.stale == (
        P.RESPIRATION_RATE,
        P.SPO2,
        P.SYSTOLIC_BP,
        P.PULSE,
        P.TEMPERATURE,
    )
    assert later.computed_at == NOW + timedelta(minutes=31)


def test_values_from_the_future_beyond_a_minute_are_stale() -> None:
    """CLINICAL.md: a value counts only with a trustworthy time of its own."""
    assert score(inputs(at=NOW + timedelta(seconds=60)), now=NOW).complete
    result = score(inputs(at=NOW + timedelta(seconds=61)), now=NOW)
    assert result.stale == tuple(Parameter)
    assert result.sub_scores == {}


def test_custom_maximum_ages() -> None:
    """CLINICAL.md: the maximum age is a setting; every parameter must have one."""
    strict = {**DEFAULT_MAX_AGE, P.PULSE: timedelta(minutes=5)}
    result = score(inputs(at=NOW - timedelta(minutes=10)), now=NOW, max_age=strict)
    assert result.stale == (P.PULSE,)
    with pytest.raises(ValueError, match="max_age: no maximum age for pulse"):
        score(inputs(), now=NOW, max_age={p: strict[p] for p in Parameter if p is not P.PULSE})


# --- SpO2 scale 2 only when asked ------------------------------------------------------------


def test_scale_1_is_the_default() -> None:
    """CLINICAL.md: scale 2 is a per-patient setting, never a default (RCP Chart 1)."""
    result = score(inputs(spo2=90), now=NOW)
    assert result.scale is SpO2Scale.ONE
    assert result.sub_scores[P.SPO2] == 3
    assert sub_score(P.SPO2, 90) == 3
    assert result.as_json()["scale"] == 1


def test_scale_2_when_asked() -> None:
    """RCP Chart 1, SpO2 scale 2: 90% is on target for hypercapnic respiratory failure;
    97% on oxygen scores 3."""
    on_target = score(inputs(spo2=90), now=NOW, scale=SpO2Scale.TWO)
    assert on_target.scale is SpO2Scale.TWO
    assert on_target.sub_scores[P.SPO2] == 0
    assert on_target.label == "NEWS2 0 (low, SpO2 scale 2)"

    over_oxygenated = score(inputs(spo2=97, on_oxygen=True), now=NOW, scale=SpO2Scale.TWO)
    assert over_oxygenated.sub_scores[P.SPO2] == 3
    assert over_oxygenated.total == 5
    assert over_oxygenated.risk is Risk.MEDIUM


def test_scale_2_without_a_current_oxygen_value_scores_spo2_as_on_air() -> None:
    """RCP Chart 1, SpO2 scale 2: ≥93% scores 0 on air, more on oxygen, so without a
    current air-or-oxygen value the total is a lower bound and the score incomplete."""
    result = score(inputs(omit=("on_oxygen",), spo2=97), now=NOW, scale=SpO2Scale.TWO)
    assert result.sub_scores[P.SPO2] == 0
    assert result.missing == (P.AIR_OR_OXYGEN,)
    assert result.risk is None


# --- JSON ------------------------------------------------------------------------------------


def test_as_json_round_trips() -> None:
    """CLINICAL.md: an incomplete score carries what it lacks wherever it goes."""
    old = Observed(Consciousness.ALERT, NOW - timedelta(hours=13))
    values = inputs(omit=("on_oxygen",), pulse=131, consciousness=old)
    cet = timezone(timedelta(hours=1))
    document = score(values, now=NOW.astimezone(cet)).as_json()
    assert json.loads(json.dumps(document)) == document
    assert document == {
        "score": 3,
        "complete": False,
        "risk": None,
        "risk_at_least": "low-medium",
        "red_flag": True,
        "sub_scores": {
            "respiration_rate": 0,
            "spo2": 0,
            "systolic_bp": 0,
            "pulse": 3,
            "temperature": 0,
        },
        "missing": ["air_or_oxygen"],
        "stale": ["consciousness"],
        "scale": 1,
        "computed_at": "2025-03-14T09:30:00.000Z",
        "label": "NEWS2 3 (incomplete: missing air_or_oxygen; stale consciousness)",
        "response": (
            "Incomplete score (missing air_or_oxygen; stale consciousness). "
            "At least: Urgent ward-based response; observations at least hourly."
        ),
    }


def test_complete_as_json() -> None:
    """RCP Chart 4: a complete score gives its band."""
    document = score(inputs(), now=NOW).as_json()
    assert document["complete"] is True
    assert document["risk"] == document["risk_at_least"] == "low"
    assert document["missing"] == document["stale"] == []


def test_score_must_account_for_every_parameter() -> None:
    """CLINICAL.md: a score must say which parameters it lacks, so none may go unmentioned."""
    with pytest.raises(ValueError, match="exactly once"):
        News2Score(
            sub_scores={P.PULSE: 0}, missing=(), stale=(), scale=SpO2Scale.ONE, computed_at=NOW
        )
