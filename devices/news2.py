"""NEWS2, the National Early Warning Score 2 (RCP 2017), for remotely monitored patients.

Pure: values in, a score out. The bands are RCP Chart 1 and the risk and response are
Chart 4, as transcribed in /work/shared/CLINICAL.md ("NEWS2").

Decisions the chart leaves open:

- Values between two published bands (36.05 °C, 20.5 /min) are first rounded to the
  chart's own precision (whole numbers for respiration rate, SpO2, systolic BP and pulse;
  one decimal for temperature), half up, then looked up: 36.05 -> 36.1 -> 0,
  35.04 -> 35.0 -> 3, 20.5 -> 21 -> 2. The value is rounded as written (its shortest
  `repr`), with `decimal` and ROUND_HALF_UP: the float 36.05 is stored as 36.0499...,
  and the builtin `round` rounds half to even (round(20.5) == 20).
- A parameter counts only if it has a value (else it is `missing`) and that value is
  current at `now` (else it is `stale`): no older than its maximum age, and not dated more
  than CLOCK_SKEW after `now`. A reading from the future is a device clock to distrust,
  not a reason to drop the whole score, so it is reported as stale, like an old one.
- A score with anything missing or stale is incomplete: its total is what the current
  parameters add up to, a lower bound, since the others can only add points. It has no
  `risk`, only `risk_at_least`, and its `label` names what it lacks.
- On SpO2 scale 2, a saturation of 93% or more scores 0 on air and 1-3 on oxygen. If the
  air-or-oxygen parameter is missing or stale, SpO2 is scored as on air, its lowest
  score, which keeps the total a lower bound (the score is incomplete anyway).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from telemed.clock import iso

T = TypeVar("T")


class Parameter(StrEnum):
    """The seven NEWS2 parameters, in the order of RCP Chart 1."""

    RESPIRATION_RATE = "respiration_rate"  # /min
    SPO2 = "spo2"  # %
    AIR_OR_OXYGEN = "air_or_oxygen"
    SYSTOLIC_BP = "systolic_bp"  # mm[Hg]
    PULSE = "pulse"  # /min
    CONSCIOUSNESS = "consciousness"
    TEMPERATURE = "temperature"  # Cel


class Consciousness(StrEnum):
    """ACVPU. Any of C, V, P or U scores 3."""

    ALERT = "A"
    CONFUSION = "C"  # new confusion
    VOICE = "V"
    PAIN = "P"
    UNRESPONSIVE = "U"


class SpO2Scale(IntEnum):
    """Scale 2 is for hypercapnic respiratory failure with a target of 88-92%, set by a
    clinician for one patient. It is never a default."""

    ONE = 1
    TWO = 2


class Risk(StrEnum):
    """Clinical risk, RCP Chart 4. Declared from lowest to highest."""

    LOW = "low"  # aggregate 0-4, no single parameter scoring 3
    LOW_MEDIUM = "low-medium"  # a 3 in any single parameter, aggregate below 5
    MEDIUM = "medium"  # aggregate 5-6
    HIGH = "high"  # aggregate 7 or more


# Chart 4's clinical response: LOW is split by aggregate, 0 or 1-4.
RESPONSE_ZERO = "Routine monitoring; observations at least every 12 hours."
RESPONSE: Mapping[Risk, str] = MappingProxyType(
    {
        Risk.LOW: "Assessment by a registered nurse; observations every 4-6 hours.",
        Risk.LOW_MEDIUM: "Urgent ward-based response; observations at least hourly.",
        Risk.MEDIUM: "Key threshold for urgent response; observations at least hourly.",
        Risk.HIGH: "Emergency response; continuous monitoring of vital signs.",
    }
)

# How old a value may be at `now` and still count. A NEWS2 describes one set of
# observations, so the values must be close in time:
# - wearable-fed vitals (streams, or a home cuff): 1 hour, the most frequent schedule
#   Chart 4 sets short of continuous monitoring ("at least hourly" from a 3 in a single
#   parameter or an aggregate of 5), so every value belongs to the current round;
# - consciousness and air-or-oxygen, which wearables cannot report and a person does (a
#   patient check-in or a clinician): 12 hours, the longest interval Chart 4 allows
#   between two sets of observations (aggregate 0); anything older belongs to no round.
DEFAULT_MAX_AGE: Mapping[Parameter, timedelta] = MappingProxyType(
    {
        Parameter.RESPIRATION_RATE: timedelta(hours=1),
        Parameter.SPO2: timedelta(hours=1),
        Parameter.AIR_OR_OXYGEN: timedelta(hours=12),
        Parameter.SYSTOLIC_BP: timedelta(hours=1),
        Parameter.PULSE: timedelta(hours=1),
        Parameter.CONSCIOUSNESS: timedelta(hours=12),
        Parameter.TEMPERATURE: timedelta(hours=1),
    }
)

# How far after `now` a value may be dated (device clocks drift) and still count.
CLOCK_SKEW = timedelta(minutes=1)

# Above this, a "temperature in Cel" is a body temperature in degF that was never converted.
MAX_TEMPERATURE = 50


class InvalidObservation(ValueError):
    """A value no patient can have, refused with the parameter it was given for."""

    def __init__(self, parameter: Parameter, reason: str) -> None:
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Observed(Generic[T]):
    """One parameter's value and when it was observed."""

    value: T
    taken_at: datetime  # timezone-aware, UTC

    def __post_init__(self) -> None:
        _require_aware(self.taken_at, "taken_at")


@dataclass(frozen=True, slots=True)
class News2Inputs:
    """The latest value of each parameter, if there is one."""

    respiration_rate: Observed[float] | None = None  # /min
    spo2: Observed[float] | None = None  # %
    on_oxygen: Observed[bool] | None = None  # True: supplemental oxygen
    systolic_bp: Observed[float] | None = None  # mm[Hg]
    pulse: Observed[float] | None = None  # /min
    consciousness: Observed[Consciousness] | None = None
    temperature: Observed[float] | None = None  # Cel

    def get(self, parameter: Parameter) -> Observed[Any] | None:
        if parameter is Parameter.AIR_OR_OXYGEN:
            return self.on_oxygen
        observed: Observed[Any] | None = getattr(self, parameter.value)
        return observed


@dataclass(frozen=True, slots=True)
class News2Score:
    """An aggregate score, and what it was built without.

    Every parameter is in exactly one of `sub_scores`, `missing` and `stale`.
    """

    sub_scores: Mapping[Parameter, int]  # the parameters that counted
    missing: tuple[Parameter, ...]  # no value
    stale: tuple[Parameter, ...]  # a value, not current at `computed_at`
    scale: SpO2Scale
    computed_at: datetime  # the `now` the score was computed for

    def __post_init__(self) -> None:
        _require_aware(self.computed_at, "computed_at")
        seen = [*self.sub_scores, *self.missing, *self.stale]
        if sorted(seen) != sorted(Parameter):
            raise ValueError("sub_scores, missing and stale must hold each parameter exactly once")

    @property
    def total(self) -> int:
        """The sum of the sub-scores that counted: a lower bound if incomplete."""
        return sum(self.sub_scores.values())

    @property
    def complete(self) -> bool:
        return not self.missing and not self.stale

    @property
    def red_flag(self) -> bool:
        """A 3 in any single parameter (Chart 4: at least low-medium risk)."""
        return 3 in self.sub_scores.values()

    @property
    def risk_at_least(self) -> Risk:
        """The Chart 4 band the parameters that counted already reach."""
        if self.total >= 7:
            return Risk.HIGH
        if self.total >= 5:
            return Risk.MEDIUM
        if self.red_flag:
            return Risk.LOW_MEDIUM
        return Risk.LOW

    @property
    def risk(self) -> Risk | None:
        """The Chart 4 band, or None if the score is incomplete."""
        return self.risk_at_least if self.complete else None

    @property
    def response(self) -> str:
        """Chart 4's clinical response; for an incomplete score, the least it calls for."""
        band = self.risk_at_least
        text = RESPONSE_ZERO if band is Risk.LOW and self.total == 0 else RESPONSE[band]
        if self.complete:
            return text
        return f"Incomplete score ({self._lacking()}). At least: {text}"

    @property
    def label(self) -> str:
        """e.g. "NEWS2 5 (medium)", "NEWS2 5 (incomplete: missing consciousness)"."""
        scale = ", SpO2 scale 2" if self.scale is SpO2Scale.TWO else ""
        if self.complete:
            return f"NEWS2 {self.total} ({self.risk_at_least}{scale})"
        return f"NEWS2 {self.total} (incomplete: {self._lacking()}{scale})"

    def as_json(self) -> dict[str, Any]:
        """Plain JSON types only."""
        risk = self.risk
        return {
            "score": self.total,
            "complete": self.complete,
            "risk": None if risk is None else risk.value,
            "risk_at_least": self.risk_at_least.value,
            "red_flag": self.red_flag,
            "sub_scores": {p.value: points for p, points in self.sub_scores.items()},
            "missing": [p.value for p in self.missing],
            "stale": [p.value for p in self.stale],
            "scale": int(self.scale),
            "computed_at": iso(self.computed_at),
            "label": self.label,
            "response": self.response,
        }

    def _lacking(self) -> str:
        parts = []
        if self.missing:
            parts.append("missing " + ", ".join(self.missing))
        if self.stale:
            parts.append("stale " + ", ".join(self.stale))
        return "; ".join(parts)


def score(
    inputs: News2Inputs,
    *,
    now: datetime,
    scale: SpO2Scale = SpO2Scale.ONE,
    max_age: Mapping[Parameter, timedelta] = DEFAULT_MAX_AGE,
) -> News2Score:
    """Score the parameters that are current at `now`; report the others."""
    _require_aware(now, "now")
    scale = SpO2Scale(scale)
    if unset := [p.value for p in Parameter if p not in max_age]:
        raise ValueError(f"max_age: no maximum age for {', '.join(unset)}")

    current: dict[Parameter, Observed[Any]] = {}
    missing: list[Parameter] = []
    stale: list[Parameter] = []
    for parameter in Parameter:
        observed = inputs.get(parameter)
        if observed is None:
            missing.append(parameter)
        elif not -CLOCK_SKEW <= now - observed.taken_at <= max_age[parameter]:
            stale.append(parameter)
        else:
            current[parameter] = observed

    oxygen = current.get(Parameter.AIR_OR_OXYGEN)
    on_oxygen = False if oxygen is None else oxygen.value  # see the module docstring
    sub_scores = {
        parameter: sub_score(parameter, observed.value, scale=scale, on_oxygen=on_oxygen)
        for parameter, observed in current.items()
    }
    return News2Score(
        sub_scores=MappingProxyType(sub_scores),
        missing=tuple(missing),
        stale=tuple(stale),
        scale=scale,
        computed_at=now,
    )


# Chart 1 as (highest value in the band, points), lowest band first.
Bands = tuple[tuple[Decimal, int], ...]
_TOP = Decimal("Infinity")
_BANDS: Mapping[Parameter, Bands] = MappingProxyType(
    {
        Parameter.RESPIRATION_RATE: (
            (Decimal(8), 3),
            (Decimal(11), 1),
            (Decimal(20), 0),
            (Decimal(24), 2),
            (_TOP, 3),
        ),
        Parameter.SYSTOLIC_BP: (
            (Decimal(90), 3),
            (Decimal(100), 2),
            (Decimal(110), 1),
            (Decimal(219), 0),
            (_TOP, 3),
        ),
        Parameter.PULSE: (
            (Decimal(40), 3),
            (Decimal(50), 1),
            (Decimal(90), 0),
            (Decimal(110), 1),
            (Decimal(130), 2),
            (_TOP, 3),
        ),
        Parameter.TEMPERATURE: (
            (Decimal("35.0"), 3),
            (Decimal("36.0"), 1),
            (Decimal("38.0"), 0),
            (Decimal("39.0"), 1),
            (_TOP, 2),
        ),
    }
)
_SPO2_SCALE_1: Bands = ((Decimal(91), 3), (Decimal(93), 2), (Decimal(95), 1), (_TOP, 0))
_SPO2_SCALE_2_AIR: Bands = ((Decimal(83), 3), (Decimal(85), 2), (Decimal(87), 1), (_TOP, 0))
_SPO2_SCALE_2_OXYGEN: Bands = (
    *_SPO2_SCALE_2_AIR[:-1],
    (Decimal(92), 0),
    (Decimal(94), 1),
    (Decimal(96), 2),
    (_TOP, 3),
)
_LEVELS: Mapping[str, Consciousness] = MappingProxyType({c.value: c for c in Consciousness})
_PRECISION: Mapping[Parameter, Decimal] = MappingProxyType(
    {p: Decimal("0.1") if p is Parameter.TEMPERATURE else Decimal(1) for p in Parameter}
)


def sub_score(
    parameter: Parameter,
    value: float | bool | str,
    *,
    scale: SpO2Scale = SpO2Scale.ONE,
    on_oxygen: bool = False,
) -> int:
    """Points for one parameter, per RCP Chart 1.

    `value` is a bool for AIR_OR_OXYGEN (True: on oxygen), a Consciousness (or its letter)
    for CONSCIOUSNESS, and a number in the parameter's unit otherwise. `on_oxygen` matters
    only for SpO2 on scale 2. Raises InvalidObservation (a ValueError) for a value no
    patient can have.
    """
    parameter = Parameter(parameter)
    if parameter is Parameter.AIR_OR_OXYGEN:
        if not isinstance(value, bool):
            raise InvalidObservation(
                parameter, f"expected True (oxygen) or False (air), got {value!r}"
            )
        return 2 if value else 0
    if parameter is Parameter.CONSCIOUSNESS:
        level = _LEVELS.get(value) if isinstance(value, str) else None
        if level is None:
            raise InvalidObservation(parameter, f"expected one of ACVPU, got {value!r}")
        return 0 if level is Consciousness.ALERT else 3

    rounded = _rounded(parameter, value)
    if parameter is not Parameter.SPO2:
        return _lookup(rounded, _BANDS[parameter])
    if SpO2Scale(scale) is SpO2Scale.ONE:
        return _lookup(rounded, _SPO2_SCALE_1)
    return _lookup(rounded, _SPO2_SCALE_2_OXYGEN if on_oxygen else _SPO2_SCALE_2_AIR)


def _rounded(parameter: Parameter, value: object) -> Decimal:
    """`value` checked, then rounded half up to the chart's precision for `parameter`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidObservation(parameter, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidObservation(parameter, f"expected a finite number, got {value!r}")
    if value < 0:
        raise InvalidObservation(parameter, f"cannot be negative, got {value!r}")
    if parameter is Parameter.SPO2 and value > 100:
        raise InvalidObservation(parameter, f"a saturation is at most 100%, got {value!r}")
    if parameter is Parameter.TEMPERATURE and value > MAX_TEMPERATURE:
        raise InvalidObservation(parameter, f"expected Cel, got {value!r} (degF?)")
    # str(): the shortest decimal that reads back as this float, i.e. the value as written.
    return Decimal(str(value)).quantize(_PRECISION[parameter], rounding=ROUND_HALF_UP)


def _lookup(value: Decimal, bands: Bands) -> int:
    return next(points for top, points in bands if value <= top)


def _require_aware(moment: datetime, name: str) -> None:
    if moment.utcoffset() is None:
        raise ValueError(f"{name}: must be timezone-aware (UTC), got {moment!r}")
