"""The vitals catalogue: what a wearable may report, how it may name it, in which units.

Each vital has a LOINC code and a canonical UCUM unit (FHIR R4 vital-signs profile; see
/work/shared/CLINICAL.md), the names a device may give it, the unit spellings devices send
with their conversion to the canonical unit, and the range of values a living patient can
have. Values outside that range are sensor faults or unit mistakes, and are refused.

Decisions (documented for firmware developers in docs/device-payloads.md):

- Names and unit spellings are matched case-insensitively after trimming spaces
  ("SpO2" = "spo2", "mg/dl" = "mg/dL"); no two spellings of one vital collide that way.
- A missing unit means the canonical unit.
- SpO2: "/" (SenML's ratio, 0..1) is multiplied by 100. "%" means a percentage (0..100),
  as UCUM and every pulse oximeter in the field use it. RFC 8428's registry defines "%"
  as a 0..1 ratio instead, so "%" (or no unit) with a value of 1.0 or less is ambiguous:
  it is refused, never guessed, with a reason that tells the device to send "/".
- Converted values are rounded to 9 decimal places, which removes binary floating-point
  noise (98.6 [degF] gives 37.0, not 36.99999999999999) and is far below any sensor's
  resolution. Values already in the canonical unit are kept exactly as sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

DECIMALS = 9  # rounding of converted values; see the module docstring


@dataclass(frozen=True, slots=True)
class Conversion:
    """canonical = (value + offset) * factor."""

    factor: float = 1.0
    offset: float = 0.0
    # Values at or below this are refused as ambiguous (SpO2 "%" that may be a ratio).
    ambiguous_up_to: float | None = None

    @property
    def identity(self) -> bool:
        return self.factor == 1.0 and self.offset == 0.0


SAME = Conversion()


@dataclass(frozen=True, slots=True)
class Vital:
    code: str  # LOINC
    display: str
    unit: str  # canonical UCUM unit
    key: str  # the compact JSON key, also a SenML name
    names: tuple[str, ...]  # further names a device may use (SenML `n`)
    units: tuple[tuple[str, Conversion], ...]  # accepted spellings, canonical one first
    low: float  # physiologically possible range, canonical unit, inclusive
    high: float

    @property
    def spellings(self) -> tuple[str, ...]:
        return tuple(spelling for spelling, _ in self.units)

    def conversion(self, unit: str) -> Conversion | None:
        wanted = unit.strip().casefold()
        for spelling, conversion in self.units:
            if spelling.casefold() == wanted:
                return conversion
        return None

    def __str__(self) -> str:
        return f"{self.code} {self.display}"


class UnitError(ValueError):
    """A unit that cannot be converted to the vital's canonical unit."""

    def __init__(self, vital: Vital, unit: str, message: str) -> None:
        super().__init__(message)
        self.vital = vital
        self.unit = unit


_PER_MINUTE = ("/min", SAME)
_RATIO_TO_PERCENT = Conversion(factor=100.0)
_FAHRENHEIT = Conversion(factor=5 / 9, offset=-32.0)
_KELVIN = Conversion(offset=-273.15)
_POUND = Conversion(factor=0.45359237)  # international avoirdupois pound, exact since 1959
# mmol/L to mg/dL: the molar mass of glucose, C6H12O6, is 180.16 g/mol, so 1 mmol/L is
# 180.16 mg/L = 18.016 mg/dL.
_GLUCOSE_MMOL = Conversion(factor=18.016)

HEART_RATE = Vital(
    code="8867-4",
    display="heart rate",
    unit="/min",
    key="hr",
    names=(
        "heart_rate",
        "heartRate",
        "pulse",
        "pulse_rate",
        "pulseRate",
        "8867-4",
        "147842",
        "MDC_ECG_HEART_RATE",
        "149530",
        "MDC_PULS_OXIM_PULS_RATE",
    ),
    units=(
        _PER_MINUTE,
        ("beat/min", SAME),
        ("beats/min", SAME),
        ("{beat}/min", SAME),
        ("{beats}/min", SAME),
        ("bpm", SAME),
        ("1/min", SAME),
        ("count/min", SAME),
    ),
    # Only the impossible is refused: a real but extreme value must reach a clinician
    # (and score on NEWS2). Below 10 /min no heart sustains a pulse a wearable can read;
    # above 350 /min exceeds even neonatal supraventricular tachycardia.
    low=10.0,
    high=350.0,
)

SPO2 = Vital(
    code="2708-6",
    display="oxygen saturation (SpO2)",
    unit="%",
    key="spo2",
    names=(
        "oxygen_saturation",
        "oxygenSaturation",
        "2708-6",
        "59408-5",  # US Core's pulse-oximetry code, stored under 2708-6
        "150456",
        "MDC_PULS_OXIM_SAT_O2",
    ),
    units=(
        ("%", Conversion(ambiguous_up_to=1.0)),
        ("/", _RATIO_TO_PERCENT),
    ),
    # Pulse oximeters are validated from 70 % up, but a lower reading is still a
    # critically ill patient (cyanotic heart disease reaches 30 %): keep it for the
    # clinician. Below 10 % is a sensor fault; above 100 % is impossible.
    low=10.0,
    high=100.0,
)

RESPIRATORY_RATE = Vital(
    code="9279-1",
    display="respiratory rate",
    unit="/min",
    key="rr",
    names=(
        "respiration_rate",
        "respirationRate",
        "respiratory_rate",
        "respiratoryRate",
        "9279-1",
        "151562",
        "MDC_RESP_RATE",
    ),
    units=(
        _PER_MINUTE,
        ("breaths/min", SAME),
        ("breath/min", SAME),
        ("{breaths}/min", SAME),
        ("{breath}/min", SAME),
        ("1/min", SAME),
        ("count/min", SAME),
    ),
    # Below 1 /min is apnoea, not a rate; above 100 /min exceeds even newborns in distress.
    low=1.0,
    high=100.0,
)

BODY_TEMPERATURE = Vital(
    code="8310-5",
    display="body temperature",
    unit="Cel",
    key="temp",
    names=(
        "body_temperature",
        "bodyTemperature",
        "body_temp",
        "8310-5",
        "150364",
        "MDC_TEMP_BODY",
    ),
    units=(
        ("Cel", SAME),
        ("degC", SAME),
        ("°C", SAME),
        ("℃", SAME),
        ("[degF]", _FAHRENHEIT),
        ("degF", _FAHRENHEIT),
        ("°F", _FAHRENHEIT),
        ("℉", _FAHRENHEIT),
        ("K", _KELVIN),  # SenML's SI unit for temperature
    ),
    # Survived accidental hypothermia reaches 13.7 Cel, so 10 Cel is the floor; 47 Cel is
    # beyond any survived hyperthermia. Outside this a thermometer measures the room.
    low=10.0,
    high=47.0,
)

SYSTOLIC = Vital(
    code="8480-6",
    display="systolic blood pressure",
    unit="mm[Hg]",
    key="sys",
    names=(
        "systolic",
        "8480-6",
        "150021",
        "MDC_PRESS_BLD_NONINV_SYS",
    ),
    units=(("mm[Hg]", SAME), ("mmHg", SAME)),
    # Cuffs measure up to 300 mm[Hg]; below 20 no cuff detects a pulse. Extreme but real
    # values in between must reach a clinician.
    low=20.0,
    high=300.0,
)

DIASTOLIC = Vital(
    code="8462-4",
    display="diastolic blood pressure",
    unit="mm[Hg]",
    key="dia",
    names=(
        "diastolic",
        "8462-4",
        "150022",
        "MDC_PRESS_BLD_NONINV_DIA",
    ),
    units=(("mm[Hg]", SAME), ("mmHg", SAME)),
    low=10.0,
    high=250.0,
)

BODY_WEIGHT = Vital(
    code="29463-7",
    display="body weight",
    unit="kg",
    key="weight",
    names=(
        "body_weight",
        "bodyWeight",
        "29463-7",
        "188736",
        "MDC_MASS_BODY_ACTUAL",
    ),
    units=(
        ("kg", SAME),
        ("g", Conversion(factor=0.001)),
        ("[lb_av]", _POUND),
        ("lb", _POUND),
        ("lbs", _POUND),
    ),
    # From the smallest surviving newborns (about 0.25 kg) to the heaviest recorded
    # people (about 635 kg).
    low=0.2,
    high=650.0,
)

BLOOD_GLUCOSE = Vital(
    code="41653-7",
    display="blood glucose (capillary)",
    unit="mg/dL",
    key="glucose",
    names=(
        "blood_glucose",
        "bloodGlucose",
        "41653-7",
        "160184",
    ),
    units=(("mg/dL", SAME), ("mmol/L", _GLUCOSE_MMOL)),
    # Meters read about 20..600 mg/dL; hyperosmolar states above 1000 are documented.
    low=10.0,
    high=1500.0,
)

VITALS: tuple[Vital, ...] = (
    HEART_RATE,
    SPO2,
    RESPIRATORY_RATE,
    BODY_TEMPERATURE,
    SYSTOLIC,
    DIASTOLIC,
    BODY_WEIGHT,
    BLOOD_GLUCOSE,
)

BY_KEY: dict[str, Vital] = {vital.key: vital for vital in VITALS}


def _index() -> dict[str, Vital]:
    index: dict[str, Vital] = {}
    for vital in VITALS:
        for name in (vital.key, *vital.names):
            folded = name.casefold()
            if index.setdefault(folded, vital) is not vital:
                raise AssertionError(f"the name {name!r} is given to two vitals")
    return index


_BY_NAME = _index()


def lookup(name: str) -> Vital | None:
    """The vital a device means by `name` (compact key, long name, LOINC or MDC code)."""
    return _BY_NAME.get(name.strip().casefold())


def _declared() -> dict[tuple[str, str | None], Conversion]:
    """(code, unit as sent) for each spelling exactly as declared, and for no unit (None
    or ""): one dict lookup on the hot path; other spellings go through `conversion`."""
    declared: dict[tuple[str, str | None], Conversion] = {}
    for vital in VITALS:
        canonical = vital.conversion(vital.unit)
        assert canonical is not None, vital
        declared[(vital.code, None)] = declared[(vital.code, "")] = canonical
        for spelling in vital.spellings:
            found = vital.conversion(spelling)  # the first match, as the search finds it
            assert found is not None, spelling
            declared[(vital.code, spelling)] = found
    return declared


DECLARED = _declared()  # (code, unit as sent): its conversion, for the declared spellings


def to_canonical(vital: Vital, value: float, unit: str | None) -> float:
    """`value` in `unit` (None or "" for the canonical unit), in the vital's canonical unit.

    Raises UnitError, naming the unit, when the unit is not one the vital accepts or
    when it is ambiguous for this value (SpO2 "%" at or below 1.0).
    """
    conversion = DECLARED.get((vital.code, unit))
    spelling = unit if conversion is not None and unit else vital.unit
    if conversion is None:
        spelling = unit if unit and unit.strip() else vital.unit
        conversion = vital.conversion(spelling)
    if conversion is None:
        raise UnitError(
            vital,
            spelling,
            f"unit {spelling!r} cannot be converted to {vital.unit} for {vital}; "
            f"send one of: {', '.join(vital.spellings)}",
        )
    if conversion.ambiguous_up_to is not None and 0 <= value <= conversion.ambiguous_up_to:
        sent = f"unit {spelling!r}" if unit and unit.strip() else f"no unit (read as {spelling!r})"
        raise UnitError(
            vital,
            spelling,
            f"{sent} with the value {value:g} is ambiguous for {vital}: SenML reads '%' as "
            f"a 0..1 ratio, UCUM as a percentage; send the percentage (0..100) with '%', "
            f"or the 0..1 ratio with '/'",
        )
    if conversion.identity:
        return value
    converted = (value + conversion.offset) * conversion.factor
    return round(converted, DECIMALS) if math.isfinite(converted) else converted


def number(value: object) -> float | None:
    """A JSON number as a float (too large an integer gives inf); None for anything else.

    JSON `true`/`false` are not numbers, although Python's bool is an int.
    """
    if value.__class__ is float:  # the common cases first: this runs once per reading
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def describe(value: object) -> str:
    """A JSON value as a refusal names it: "null", "the string '72'", "an array"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return repr(value)


class Measurement(NamedTuple):
    """A vital as a codec decoded it, before the payload-wide checks (range, time, dupes).

    `time` is what the device wrote, resolved (SenML: bt + t; compact: t; 0.0 when
    absent): below 2**28 it is seconds relative to now, otherwise Unix seconds.

    A NamedTuple rather than a frozen dataclass: one is made per reading on the ingest
    hot path, and a tuple is built for a third of the cost, immutable all the same.
    """

    record: int  # index of the record in the pack, or of the key in compact JSON
    name: str  # the name as the device sent it
    vital: Vital
    value: float  # in vital.unit
    value_field: str  # where the value was: "v", or the compact key
    time: float
    time_field: str
    as_sent: str = ""  # "98.6 [degF]" when a conversion was applied, for messages
