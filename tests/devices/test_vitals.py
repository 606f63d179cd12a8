"""The vitals catalogue: names, codes and units from CLINICAL.md, conversions, ranges.

Sources: LOINC codes and UCUM units from the FHIR R4 vital-signs profile
(hl7.org/fhir/R4/valueset-observation-vitalsignresult.html) and the UCUM common vitals
value set (hl7.org/fhir/valueset-ucum-vitals-common.html); MDC codes from IEEE
11073-10101; SenML units from RFC 8428 §12.1 (where "%" is a 0..1 ratio, like "/").
"""

from __future__ import annotations

import math

import pytest

from devices.vitals import (
    BY_KEY,
    VITALS,
    UnitError,
    Vital,
    describe,
    lookup,
    number,
    to_canonical,
)

# code, canonical unit, compact key: written out again here, not read from the module.
EXPECTED = {
    "hr": ("8867-4", "/min"),
    "spo2": ("2708-6", "%"),
    "rr": ("9279-1", "/min"),
    "temp": ("8310-5", "Cel"),
    "sys": ("8480-6", "mm[Hg]"),
    "dia": ("8462-4", "mm[Hg]"),
    "weight": ("29463-7", "kg"),
    "glucose": ("41653-7", "mg/dL"),
}

NAMES = {
    "hr": [
        "hr",
        "heart_rate",
        "heartRate",
        "pulse",
        "8867-4",
        "147842",
        "MDC_ECG_HEART_RATE",
        "149530",
        "MDC_PULS_OXIM_PULS_RATE",
    ],
    "spo2": ["spo2", "SpO2", "2708-6", "59408-5", "150456", "MDC_PULS_OXIM_SAT_O2"],
    "rr": ["rr", "respiration_rate", "respiratory_rate", "9279-1", "151562", "MDC_RESP_RATE"],
    "temp": ["temp", "body_temperature", "8310-5", "150364", "MDC_TEMP_BODY"],
    "sys": ["sys", "systolic", "8480-6", "150021"],
    "dia": ["dia", "diastolic", "8462-4", "150022"],
    "weight": ["weight", "body_weight", "29463-7", "188736", "MDC_MASS_BODY_ACTUAL"],
    "glucose": ["glucose", "41653-7", "160184"],
}


def test_the_catalogue_has_exactly_the_vitals_of_clinical_md() -> None:
    assert {vital.key: (vital.code, vital.unit) for vital in VITALS} == EXPECTED
    assert set(BY_KEY) == set(EXPECTED)


@pytest.mark.parametrize(
    ("key", "name"), [(key, name) for key, names in NAMES.items() for name in names]
)
def test_lookup_by_every_name(key: str, name: str) -> None:
    vital = lookup(name)
    assert vital is not None
    assert vital.code == EXPECTED[key][0]


@pytest.mark.parametrize("vital", VITALS, ids=lambda vital: vital.key)
def test_every_declared_name_finds_its_vital_in_any_case(vital: Vital) -> None:
    for name in (vital.key, *vital.names):
        assert lookup(name) is vital
        assert lookup(name.upper()) is vital
        assert lookup(f" {name.lower()} ") is vital


@pytest.mark.parametrize("name", ["", "bat", "heart", "85354-9", "2339-0", "temperature", "C"])
def test_lookup_of_an_unknown_name_is_none(name: str) -> None:
    # 85354-9 is the blood-pressure panel (two values); 2339-0 is glucose in venous blood,
    # a different observation from the capillary 41653-7, so it is not silently remapped.
    assert lookup(name) is None


@pytest.mark.parametrize(
    ("key", "value", "unit", "expected"),
    [
        # °F to Cel: (F - 32) × 5/9
        ("temp", 98.6, "[degF]", 37.0),
        ("temp", 98.6, "degF", 37.0),
        ("temp", 98.6, "°F", 37.0),
        ("temp", 98.6, "℉", 37.0),
        ("temp", 32.0, "[degF]", 0.0),
        ("temp", 212.0, "[degF]", 100.0),
        ("temp", 100.4, "[degF]", 38.0),
        ("temp", 310.15, "K", 37.0),
        # lb to kg: × 0.45359237 (international avoirdupois pound, exact)
        ("weight", 150.0, "lb", 68.0388555),
        ("weight", 150.0, "lbs", 68.0388555),
        ("weight", 150.0, "[lb_av]", 68.0388555),
        ("weight", 1.0, "[lb_av]", 0.45359237),
        ("weight", 70500.0, "g", 70.5),
        # mmol/L to mg/dL: × 18.016 (molar mass of glucose 180.16 g/mol)
        ("glucose", 5.5, "mmol/L", 99.088),
        ("glucose", 10.0, "mmol/L", 180.16),
        ("glucose", 5.5, "mmol/l", 99.088),
        # SenML's ratio "/" (0..1) to %
        ("spo2", 0.97, "/", 97.0),
        ("spo2", 1.0, "/", 100.0),
        ("spo2", 0.5, "/", 50.0),
    ],
)
def test_conversions_give_exact_numbers(key: str, value: float, unit: str, expected: float) -> None:
    assert to_canonical(BY_KEY[key], value, unit) == expected


def test_glucose_factor_is_the_molar_mass_of_glucose() -> None:
    molar_mass = 180.16  # g/mol, C6H12O6
    # 1 mmol/L = 180.16 mg/L = 18.016 mg/dL
    assert to_canonical(BY_KEY["glucose"], 1.0, "mmol/L") == molar_mass / 10


@pytest.mark.parametrize(
    ("key", "units"),
    [
        ("hr", ["/min", "beat/min", "beats/min", "bpm", "1/min", "count/min", "{beats}/min"]),
        ("rr", ["/min", "breaths/min", "{breaths}/min", "1/min", "count/min"]),
        ("spo2", ["%"]),
        ("temp", ["Cel", "degC", "°C", "℃", "CEL"]),
        ("sys", ["mm[Hg]", "mmHg", "MMHG"]),
        ("dia", ["mm[Hg]", "mmHg"]),
        ("weight", ["kg", "KG"]),
        ("glucose", ["mg/dL", "mg/dl"]),
    ],
)
def test_canonical_spellings_pass_the_value_through_unchanged(key: str, units: list[str]) -> None:
    vital = BY_KEY[key]
    value = (vital.low + vital.high) / 3 + 0.123456789012  # not a round number
    for unit in units:
        assert to_canonical(vital, value, unit) == value


@pytest.mark.parametrize("vital", VITALS, ids=lambda vital: vital.key)
def test_a_missing_unit_means_the_canonical_unit(vital: Vital) -> None:
    value = (vital.low + vital.high) / 2
    assert to_canonical(vital, value, None) == value
    assert to_canonical(vital, value, "") == value
    assert to_canonical(vital, value, "  ") == value


def test_an_unknown_unit_is_refused_naming_it_and_the_accepted_ones() -> None:
    with pytest.raises(UnitError) as caught:
        to_canonical(BY_KEY["sys"], 120.0, "furlongs")
    assert isinstance(caught.value, ValueError)
    assert caught.value.unit == "furlongs"
    assert str(caught.value) == (
        "unit 'furlongs' cannot be converted to mm[Hg] for 8480-6 systolic blood pressure; "
        "send one of: mm[Hg], mmHg"
    )


@pytest.mark.parametrize(
    ("key", "unit"),
    [
        ("rr", "beat/min"),  # a heart-rate unit on a respiration record
        ("rr", "bpm"),
        ("hr", "breaths/min"),
        ("temp", "C"),  # SenML/SI: coulomb
        ("temp", "F"),  # farad
        ("sys", "Pa"),
        ("weight", "st"),
        ("glucose", "mg"),
        ("spo2", "%RH"),
        ("spo2", "ratio"),
    ],
)
def test_units_of_another_quantity_are_refused(key: str, unit: str) -> None:
    with pytest.raises(UnitError, match=f"unit '{unit}' cannot be converted"):
        to_canonical(BY_KEY[key], 50.0, unit)


@pytest.mark.parametrize("value", [0.0, 0.5, 0.97, 1.0])
def test_spo2_percent_at_or_below_one_is_ambiguous_and_refused(value: float) -> None:
    # RFC 8428 §12.1: "%" is a 0..1 ratio in SenML; devices in the field mean 0..100.
    with pytest.raises(UnitError, match="ambiguous") as caught:
        to_canonical(BY_KEY["spo2"], value, "%")
    assert "'/'" in str(caught.value)


def test_spo2_without_a_unit_at_or_below_one_is_ambiguous_too() -> None:
    with pytest.raises(UnitError, match=r"no unit \(read as '%'\)"):
        to_canonical(BY_KEY["spo2"], 0.97, None)


@pytest.mark.parametrize("value", [1.5, 50.0, 97.0, 100.0])
def test_spo2_percent_above_one_is_a_percentage(value: float) -> None:
    assert to_canonical(BY_KEY["spo2"], value, "%") == value


# The ranges, written out: refusing outside them is what keeps a sensor fault or a unit
# mistake out of the chart.
RANGES = {
    "hr": (10.0, 350.0),
    "spo2": (10.0, 100.0),
    "rr": (1.0, 100.0),
    "temp": (10.0, 47.0),
    "sys": (20.0, 300.0),
    "dia": (10.0, 250.0),
    "weight": (0.2, 650.0),
    "glucose": (10.0, 1500.0),
}


def test_ranges() -> None:
    assert {vital.key: (vital.low, vital.high) for vital in VITALS} == RANGES


@pytest.mark.parametrize(
    ("key", "normal"),
    [
        ("hr", 72.0),
        ("spo2", 97.0),
        ("rr", 14.0),
        ("temp", 36.8),
        ("sys", 121.0),
        ("dia", 79.0),
        ("weight", 70.0),
        ("glucose", 99.0),
    ],
)
def test_normal_values_are_inside_the_range(key: str, normal: float) -> None:
    vital = BY_KEY[key]
    assert vital.low < normal < vital.high


def test_number_reads_json_numbers_only() -> None:
    assert number(72) == 72.0
    assert isinstance(number(72), float)
    assert number(36.8) == 36.8
    assert number(True) is None
    assert number(False) is None
    assert number("72") is None
    assert number(None) is None
    assert number([72]) is None
    assert number(10**400) == math.inf
    assert number(-(10**400)) == -math.inf


def test_describe_names_json_values_as_a_developer_reads_them() -> None:
    assert describe(None) == "null"
    assert describe(True) == "true"
    assert describe("72") == "the string '72'"
    assert describe({}) == "an object"
    assert describe([]) == "an array"
    assert describe(7) == "7"
