"""Device payloads: SenML packs (RFC 8428), the compact JSON form, and what is refused.

Times are checked against a fixed `now`; every expected number is written out.
"""

from __future__ import annotations

import copy
import json
import math
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from devices.payloads import MAX_DEPTH, decode
from devices.readings import Decoded, Reading, Refusal
from devices.vitals import BY_KEY

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
T = NOW.timestamp()  # 1796029200.0
MAX_AGE = timedelta(hours=24)
MAX_SKEW = timedelta(minutes=5)
DEVICE = "dev-7"
BN = "urn:dev:ow:10e2073a01080063:"


def run(payload: Any, *, raw: bool = False, **options: Any) -> Decoded:
    data = payload if raw else json.dumps(payload).encode()
    settings: dict[str, Any] = {"now": NOW, "max_age": MAX_AGE, "max_skew": MAX_SKEW}
    settings.update(options)
    return decode(data, DEVICE, **settings)


def at(seconds: float = 0.0) -> datetime:
    return NOW + timedelta(seconds=seconds)


def only(decoded: Decoded) -> Refusal:
    assert decoded.readings == ()
    assert len(decoded.refusals) == 1, decoded.refusals
    return decoded.refusals[0]


def triples(decoded: Decoded) -> list[tuple[str, float, datetime]]:
    return [(r.code, r.value, r.taken_at) for r in decoded.readings]


# --- SenML -------------------------------------------------------------------------------


def test_senml_pack_with_base_values_in_the_style_of_rfc_8428_section_5_1_2() -> None:
    decoded = run(
        [
            {"bn": BN, "bt": T, "bu": "/min", "bver": 10, "n": "hr", "v": 72},
            {"n": "rr", "v": 14},
            {"n": "spo2", "u": "%", "v": 97},
            {"n": "temp", "u": "Cel", "v": 36.8},
        ]
    )
    assert decoded.refusals == ()
    assert decoded.readings == (
        Reading(DEVICE, "8867-4", 72.0, "/min", NOW),
        Reading(DEVICE, "9279-1", 14.0, "/min", NOW),
        Reading(DEVICE, "2708-6", 97.0, "%", NOW),
        Reading(DEVICE, "8310-5", 36.8, "Cel", NOW),
    )


def test_senml_relative_times_count_from_now() -> None:
    decoded = run(
        [
            {"n": "hr", "t": -60, "v": 70},
            {"n": "hr", "v": 72},
            {"n": "hr", "t": -0.5, "v": 71},
            {"n": "hr", "t": -3600.25, "v": 69},
        ]
    )
    assert decoded.refusals == ()
    assert triples(decoded) == [
        ("8867-4", 70.0, at(-60)),
        ("8867-4", 72.0, NOW),
        ("8867-4", 71.0, at(-0.5)),
        ("8867-4", 69.0, at(-3600.25)),
    ]


def test_senml_absolute_times_keep_milliseconds() -> None:
    decoded = run([{"n": "hr", "t": T - 120.123, "v": 70}])
    assert decoded.refusals == ()
    (reading,) = decoded.readings
    assert reading.taken_at == datetime(2026, 11, 29, 8, 57, 59, 877000, tzinfo=UTC)
    assert reading.taken_at.tzinfo is UTC


def test_senml_time_is_bt_plus_t() -> None:
    decoded = run(
        [
            {"bn": BN, "bt": T - 100, "n": "hr", "t": -5, "v": 70},
            {"n": "hr", "t": 10, "v": 71},
            {"n": "hr", "v": 72},
        ]
    )
    assert [r.taken_at for r in decoded.readings] == [at(-105), at(-90), at(-100)]


def test_senml_relative_base_time_plus_t_is_relative_too() -> None:
    decoded = run([{"bt": -300, "n": "hr", "t": 60, "v": 70}, {"n": "hr", "v": 71}])
    assert [r.taken_at for r in decoded.readings] == [at(-240), at(-300)]


def test_senml_value_is_bv_plus_v_and_base_values_last_until_replaced() -> None:
    decoded = run(
        [
            {"bn": BN, "bv": 70, "n": "hr", "t": -2, "v": 2},
            {"n": "hr", "t": -1, "v": -1},
            {"bv": 100, "n": "sys", "u": "mmHg", "v": 20},
        ]
    )
    assert decoded.refusals == ()
    assert [r.value for r in decoded.readings] == [72.0, 69.0, 120.0]


def test_senml_unit_is_u_or_else_bu() -> None:
    decoded = run(
        [
            {"bn": BN, "bu": "[degF]", "n": "temp", "t": -2, "v": 98.6},
            {"n": "temp", "t": -1, "u": "Cel", "v": 36.6},
            {"n": "temp", "v": 100.4},
        ]
    )
    assert decoded.refusals == ()
    assert [(r.value, r.unit) for r in decoded.readings] == [
        (37.0, "Cel"),
        (36.6, "Cel"),
        (38.0, "Cel"),
    ]


def test_senml_blood_pressure_is_two_records_with_the_same_time() -> None:
    decoded = run(
        [
            {"bn": BN, "bt": T - 30, "bu": "mmHg", "n": "sys", "v": 121},
            {"n": "dia", "v": 79},
        ]
    )
    assert decoded.refusals == ()
    assert decoded.readings == (
        Reading(DEVICE, "8480-6", 121.0, "mm[Hg]", at(-30)),
        Reading(DEVICE, "8462-4", 79.0, "mm[Hg]", at(-30)),
    )


def test_senml_blood_pressure_as_one_panel_record_is_refused_with_the_way_to_send_it() -> None:
    refusal = only(run([{"bn": BN, "n": "bp", "v": 120}]))
    assert refusal.field == "n"
    assert "'sys' and 'dia'" in refusal.reason


@pytest.mark.parametrize(
    ("bn", "n", "code"),
    [
        (BN, "hr", "8867-4"),
        ("", "urn:dev:mac:0024befffe804ff1/spo2", "2708-6"),
        ("urn:dev:mac:0024befffe804ff1/", "SpO2", "2708-6"),
        ("patch-3.", "temp", "8310-5"),
        ("", "heart_rate", "8867-4"),
        ("", "8867-4", "8867-4"),
        (BN, "8480-6", "8480-6"),
        ("", "MDC_PULS_OXIM_SAT_O2", "2708-6"),
        (BN, "150456", "2708-6"),
        (BN, "149530", "8867-4"),
        ("", "MDC_TEMP_BODY", "8310-5"),
        ("dev:", "glucose", "41653-7"),
    ],
)
def test_senml_names_resolve_whole_or_by_their_last_segment(bn: str, n: str, code: str) -> None:
    record: dict[str, Any] = {"n": n, "v": 72 if code != "2708-6" else 97}
    if code == "8310-5":
        record["v"] = 36.6
    if code == "8480-6":
        record["v"] = 120
    if code == "41653-7":
        record["v"] = 99
    if bn:
        record["bn"] = bn
    decoded = run([record])
    assert decoded.refusals == ()
    assert [r.code for r in decoded.readings] == [code]


@pytest.mark.parametrize(
    ("bn", "n"),
    [
        (BN, "bat"),
        ("", "urn:dev:ow:10e2073a01080063"),  # RFC 8428 §5.1.1: the name is the device
        (BN, ""),
        ("patch3", "hr"),  # no separator: "patch3hr"
        ("", "hr:left"),
    ],
)
def test_senml_unknown_names_are_refused_naming_them(bn: str, n: str) -> None:
    refusal = only(run([{"bn": bn, "n": n, "v": 72}]))
    assert refusal.record == 0
    assert refusal.field == "n"
    assert refusal.name == bn + n
    assert repr(bn + n) in refusal.reason
    assert "hr, spo2, rr, temp, sys, dia, weight, glucose" in refusal.reason


def test_senml_record_without_any_name_is_refused() -> None:
    refusal = only(run([{"v": 72}]))
    assert refusal.field == "n"
    assert "no name" in refusal.reason


def test_senml_mixed_valid_and_invalid_records_keep_the_valid_ones() -> None:
    decoded = run(
        [
            {"bn": BN, "bt": T, "n": "hr", "v": 72},  # 0 kept
            {"n": "bat", "v": 3.7},  # 1 unknown name
            {"n": "sys", "u": "furlongs", "v": 120},  # 2 unit
            {"n": "spo2", "v": 140},  # 3 out of range
            {"n": "temp", "vs": "normal"},  # 4 not numeric
            {"n": "rr", "v": 14},  # 5 kept
            {"n": "dia", "u": "mmHg", "v": 80},  # 6 kept
        ]
    )
    assert [r.code for r in decoded.readings] == ["8867-4", "9279-1", "8462-4"]
    assert [(r.record, r.field) for r in decoded.refusals] == [
        (1, "n"),
        (2, "u"),
        (3, "v"),
        (4, "vs"),
    ]
    assert decoded.refusals[1].reason == (
        "u: unit 'furlongs' cannot be converted to mm[Hg] for 8480-6 systolic blood "
        "pressure; send one of: mm[Hg], mmHg"
    )
    assert decoded.refusals[1].name == BN + "sys"


def test_senml_unit_error_from_bu_names_bu() -> None:
    refusal = only(run([{"bu": "furlongs", "n": "sys", "v": 120}]))
    assert refusal.field == "bu"
    assert refusal.reason.startswith("bu: unit 'furlongs' cannot be converted")


@pytest.mark.parametrize("version", [11, 12, 26])
def test_senml_version_above_10_refuses_the_pack(version: int) -> None:
    refusal = only(run([{"bver": version, "n": "hr", "v": 72}, {"n": "rr", "v": 14}]))
    assert refusal.record is None
    assert refusal.field == "bver"
    assert f"version {version} is newer" in refusal.reason


@pytest.mark.parametrize("version", [5, 10])
def test_senml_versions_up_to_10_are_read(version: int) -> None:
    # RFC 8428 §5.1.3's own example uses "bver": 5.
    decoded = run([{"bver": version, "n": "hr", "v": 72}])
    assert decoded.refusals == ()
    assert len(decoded.readings) == 1


@pytest.mark.parametrize("version", [0, -1, "10", 10.5, True, None])
def test_senml_malformed_version_refuses_the_pack(version: object) -> None:
    refusal = only(run([{"bver": version, "n": "hr", "v": 72}]))
    assert (refusal.record, refusal.field) == (None, "bver")


def test_senml_records_disagreeing_on_the_version_refuse_the_pack() -> None:
    refusal = only(run([{"bver": 10, "n": "hr", "v": 72}, {"bver": 5, "n": "rr", "v": 14}]))
    assert (refusal.record, refusal.field) == (None, "bver")


def test_senml_must_understand_label_refuses_the_pack() -> None:
    refusal = only(run([{"n": "hr", "v": 72}, {"n": "rr", "v": 14, "ct_": "60"}]))
    assert (refusal.record, refusal.field) == (None, "ct_")
    assert "record 1" in refusal.reason


def test_senml_unknown_labels_and_update_time_are_ignored() -> None:
    decoded = run([{"n": "hr", "v": 72, "ut": 60, "ct": "60", "vendor": {"x": 1}}])
    assert decoded.refusals == ()
    assert len(decoded.readings) == 1


@pytest.mark.parametrize(
    ("record", "field", "words"),
    [
        ({"n": "hr", "vs": "72"}, "vs", "not a string value in vs"),
        ({"n": "hr", "vb": True}, "vb", "not a boolean value in vb"),
        ({"n": "hr", "vd": "aGVsbG8"}, "vd", "not a data value in vd"),
        ({"n": "hr", "v": "72"}, "v", "must be a JSON number, not the string '72'"),
        ({"n": "hr", "v": True}, "v", "must be a JSON number, not true"),
        ({"n": "hr", "v": None}, "v", "must be a JSON number, not null"),
        ({"n": "hr", "v": 72, "vs": "72"}, "vs", "one value field"),
        ({"n": "hr"}, "v", "missing"),
        ({"n": "hr", "s": 7200}, "s", "a sum is not a measurement"),
        ({"n": "hr", "v": 72, "t": "now"}, "t", "must be a number of seconds"),
        ({"n": "hr", "v": 72, "u": 7}, "u", "must be a string"),
        ({"n": 7, "v": 72}, "n", "must be a string"),
    ],
)
def test_senml_records_without_a_usable_number_are_refused_naming_the_field(
    record: dict[str, Any], field: str, words: str
) -> None:
    decoded = run([record, {"n": "rr", "v": 14}])
    assert [r.code for r in decoded.readings] == ["9279-1"]
    (refusal,) = decoded.refusals
    assert (refusal.record, refusal.field) == (0, field)
    assert refusal.reason.startswith(f"{field}: ")
    assert words in refusal.reason


def test_senml_sum_next_to_a_value_is_ignored() -> None:
    decoded = run([{"bs": 100, "n": "hr", "v": 72, "s": 7200}])
    assert decoded.refusals == ()
    assert [r.value for r in decoded.readings] == [72.0]


def test_senml_record_of_base_fields_only_is_a_header_not_a_refusal() -> None:
    decoded = run([{"bn": BN, "bt": T - 10, "bu": "/min"}, {"n": "hr", "v": 72}])
    assert decoded.refusals == ()
    assert triples(decoded) == [("8867-4", 72.0, at(-10))]


def test_senml_malformed_base_field_stops_decoding_there() -> None:
    decoded = run(
        [
            {"n": "hr", "v": 72},
            {"bt": "yesterday", "n": "rr", "v": 14},
            {"n": "spo2", "v": 97},
        ]
    )
    assert [r.code for r in decoded.readings] == ["8867-4"]
    (refusal,) = decoded.refusals
    assert (refusal.record, refusal.field) == (1, "bt")
    assert "records 1..2 were not decoded" in refusal.reason


def test_senml_record_that_is_not_an_object_is_refused_alone() -> None:
    decoded = run([{"n": "hr", "v": 72}, 42, ["n", "rr"]])
    assert len(decoded.readings) == 1
    assert [(r.record, r.field) for r in decoded.refusals] == [(1, "record"), (2, "record")]


def test_senml_spo2_ratio_and_ambiguous_percent() -> None:
    decoded = run(
        [
            {"n": "spo2", "u": "/", "t": -2, "v": 0.97},
            {"n": "spo2", "u": "%", "t": -1, "v": 0.97},
            {"n": "spo2", "u": "%", "v": 97},
        ]
    )
    assert [r.value for r in decoded.readings] == [97.0, 97.0]
    (refusal,) = decoded.refusals
    assert (refusal.record, refusal.field) == (1, "u")
    assert "ambiguous" in refusal.reason


def test_an_empty_pack_is_answered() -> None:
    """Every message gets a reading or an answer: a device sending nothing is told so."""
    refusal = only(run([]))
    assert (refusal.record, refusal.field) == (None, "payload")
    assert "no measurement in this message" in refusal.reason


# --- compact -----------------------------------------------------------------------------

EXAMPLE = {"t": 1764400000, "hr": 72, "spo2": 97, "sys": 121, "dia": 79, "temp": 36.8, "rr": 14}


def test_compact_example_gives_seven_readings_with_codes_and_units() -> None:
    now = datetime(2025, 11, 29, 7, 10, tzinfo=UTC)  # the example's t is 2025-11-29T07:06:40Z
    decoded = run(EXAMPLE, now=now)
    assert decoded.refusals == ()
    taken = datetime(2025, 11, 29, 7, 6, 40, tzinfo=UTC)
    assert decoded.readings == (
        Reading(DEVICE, "8867-4", 72.0, "/min", taken),
        Reading(DEVICE, "2708-6", 97.0, "%", taken),
        Reading(DEVICE, "8480-6", 121.0, "mm[Hg]", taken),
        Reading(DEVICE, "8462-4", 79.0, "mm[Hg]", taken),
        Reading(DEVICE, "8310-5", 36.8, "Cel", taken),
        Reading(DEVICE, "9279-1", 14.0, "/min", taken),
    )


def test_compact_example_with_weight_and_glucose_gives_eight_kinds() -> None:
    decoded = run({**EXAMPLE, "t": T, "weight": 70.2, "glucose": 99})
    assert {r.code: r.unit for r in decoded.readings} == {
        "8867-4": "/min",
        "2708-6": "%",
        "8480-6": "mm[Hg]",
        "8462-4": "mm[Hg]",
        "8310-5": "Cel",
        "9279-1": "/min",
        "29463-7": "kg",
        "41653-7": "mg/dL",
    }


def test_compact_units_convert() -> None:
    decoded = run(
        {
            "temp": 98.6,
            "weight": 150,
            "glucose": 5.5,
            "spo2": 0.97,
            "u": {"temp": "[degF]", "weight": "lb", "glucose": "mmol/L", "spo2": "/"},
        }
    )
    assert decoded.refusals == ()
    assert [(r.code, r.value, r.unit) for r in decoded.readings] == [
        ("8310-5", 37.0, "Cel"),
        ("29463-7", 68.0388555, "kg"),
        ("41653-7", 99.088, "mg/dL"),
        ("2708-6", 97.0, "%"),
    ]


def test_compact_unit_for_an_absent_vital_is_ignored() -> None:
    decoded = run({"hr": 72, "u": {"weight": "lb"}})
    assert decoded.refusals == ()
    assert [r.code for r in decoded.readings] == ["8867-4"]


def test_compact_unknown_key_is_refused_at_its_position_and_the_rest_kept() -> None:
    decoded = run({"t": T, "hr": 72, "battery": 88, "spo2": 97})
    assert [r.code for r in decoded.readings] == ["8867-4", "2708-6"]
    (refusal,) = decoded.refusals
    assert (refusal.record, refusal.field, refusal.name) == (2, "battery", "battery")
    assert "t, u, hr, spo2, rr, temp, sys, dia, weight, glucose" in refusal.reason


@pytest.mark.parametrize("key", ["heart_rate", "HR", "t_ms", "ts", "8867-4"])
def test_compact_takes_only_its_own_keys(key: str) -> None:
    decoded = run({key: 72, "spo2": 97})
    assert len(decoded.readings) == 1
    assert [(r.record, r.field) for r in decoded.refusals] == [(0, key)]


def test_compact_empty_key_is_refused_under_its_json_spelling() -> None:
    decoded = run({"": 72, "hr": 72})
    assert len(decoded.readings) == 1
    assert [(r.record, r.field, r.name) for r in decoded.refusals] == [(0, '""', "")]


def test_compact_unit_for_an_unknown_key_is_refused() -> None:
    decoded = run({"hr": 72, "u": {"pulse": "bpm", "hr": "bpm"}})
    assert [r.value for r in decoded.readings] == [72.0]
    (refusal,) = decoded.refusals
    assert (refusal.record, refusal.field, refusal.name) == (1, "u", "pulse")


def test_compact_unconvertible_unit_refuses_that_value() -> None:
    decoded = run({"hr": 72, "temp": 36.6, "u": {"temp": "furlongs"}})
    assert [r.code for r in decoded.readings] == ["8867-4"]
    (refusal,) = decoded.refusals
    assert (refusal.record, refusal.field, refusal.name) == (1, "u", "temp")
    assert "unit 'furlongs' cannot be converted to Cel for 8310-5 body temperature" in (
        refusal.reason
    )


def test_compact_missing_t_means_now() -> None:
    assert triples(run({"hr": 72})) == [("8867-4", 72.0, NOW)]


def test_compact_t_follows_the_senml_rule() -> None:
    assert triples(run({"t": -30, "hr": 72})) == [("8867-4", 72.0, at(-30))]
    assert triples(run({"t": T - 60.123, "hr": 72})) == [("8867-4", 72.0, at(-60.123))]


@pytest.mark.parametrize("value", ["2026-11-29T09:00:00Z", None, True, [1]])
def test_compact_malformed_t_keeps_nothing(value: object) -> None:
    refusal = only(run({"hr": 72, "t": value}))
    assert (refusal.record, refusal.field) == (1, "t")


@pytest.mark.parametrize("value", ["lb", ["lb"], 7])
def test_compact_malformed_u_keeps_nothing(value: object) -> None:
    refusal = only(run({"weight": 70, "u": value}))
    assert (refusal.record, refusal.field) == (1, "u")


def test_compact_unit_that_is_not_a_string_refuses_that_value() -> None:
    decoded = run({"weight": 70, "hr": 72, "u": {"weight": 1}})
    assert [r.code for r in decoded.readings] == ["8867-4"]
    assert [(r.record, r.field) for r in decoded.refusals] == [(0, "u")]


@pytest.mark.parametrize(
    ("value", "words"),
    [(None, "leave the key out"), ("72", "the string '72'"), (True, "true"), ({}, "an object")],
)
def test_compact_value_must_be_a_number(value: object, words: str) -> None:
    decoded = run({"hr": value, "rr": 14})
    assert len(decoded.readings) == 1
    (refusal,) = decoded.refusals
    assert (refusal.record, refusal.field) == (0, "hr")
    assert words in refusal.reason


def test_compact_spo2_ratio_without_unit_is_refused_as_ambiguous() -> None:
    refusal = only(run({"spo2": 0.97}))
    assert (refusal.record, refusal.field, refusal.name) == (0, "u", "spo2")
    assert "ambiguous" in refusal.reason


def test_compact_empty_object_is_answered() -> None:
    refusal = only(run({}))
    assert "no measurement in this message" in refusal.reason


def test_refusals_are_capped_per_message_with_a_summary() -> None:
    decoded = run([{"n": "nope", "v": 1} for _ in range(50)])
    assert len(decoded.refusals) == 21
    assert "30 more records were refused" in decoded.refusals[-1].reason


# --- whole-payload refusals --------------------------------------------------------------


def test_payload_over_max_bytes_is_refused() -> None:
    data = json.dumps({"hr": 72, "pad": "x" * 20000}).encode()
    refusal = only(run(data, raw=True))
    assert (refusal.record, refusal.field) == (None, "payload")
    assert f"{len(data)} bytes is over the limit of 16384 bytes" in refusal.reason


def test_max_bytes_is_inclusive() -> None:
    data = b'{"hr": 72}'
    assert len(run(data, raw=True, max_bytes=len(data)).readings) == 1
    assert only(run(data, raw=True, max_bytes=len(data) - 1)).field == "payload"


def test_payload_not_utf8_is_refused() -> None:
    refusal = only(run(b'{"hr": 72, "x": "\xff"}', raw=True))
    assert (refusal.record, refusal.field) == (None, "payload")
    assert "not UTF-8" in refusal.reason
    assert "0xff at offset 17" in refusal.reason


def test_utf8_byte_order_mark_is_allowed() -> None:
    assert len(run(b'\xef\xbb\xbf{"hr": 72}', raw=True).readings) == 1


@pytest.mark.parametrize("data", [b"{", b'{"hr": 72,}', b"hr=72", b"[{'n': 'hr'}]", b"nan"])
def test_payload_not_json_is_refused(data: bytes) -> None:
    refusal = only(run(data, raw=True))
    assert (refusal.record, refusal.field) == (None, "payload")
    assert refusal.reason.startswith("payload: not JSON: ")


@pytest.mark.parametrize("data", [b"", b"  \n"])
def test_empty_payload_is_refused(data: bytes) -> None:
    assert "empty message" in only(run(data, raw=True)).reason


@pytest.mark.parametrize("data", [b'"hr=72"', b"72", b"36.8", b"null", b"true"])
def test_json_that_is_neither_array_nor_object_is_refused(data: bytes) -> None:
    refusal = only(run(data, raw=True))
    assert (refusal.record, refusal.field) == (None, "payload")
    assert "neither a SenML pack" in refusal.reason


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100, 16000])
def test_deep_nesting_is_refused_naming_the_depth(depth: int) -> None:
    data = b"[" * depth + b"]" * depth
    refusal = only(run(data, raw=True, max_bytes=64000))
    assert (refusal.record, refusal.field) == (None, "payload")
    assert f"nested {depth} levels deep" in refusal.reason


def test_nesting_up_to_the_limit_is_read_and_brackets_in_strings_do_not_count() -> None:
    inner: Any = 1
    for _ in range(MAX_DEPTH - 2):  # the pack and the record are the first two levels
        inner = [inner]
    decoded = run([{"n": "hr", "v": 72, "note": "[[[[[[[[[[{{{{{{{{{{", "x": inner}])
    assert decoded.refusals == ()
    assert len(decoded.readings) == 1


def test_duplicate_key_in_an_object_is_refused() -> None:
    refusal = only(run(b'{"hr": 72, "hr": 80}', raw=True))
    assert (refusal.record, refusal.field) == (None, "payload")
    assert "'hr' appears twice" in refusal.reason


def test_integer_too_long_to_read_is_refused() -> None:
    refusal = only(run(b'{"hr": ' + b"9" * 5000 + b"}", raw=True))
    assert (refusal.record, refusal.field) == (None, "payload")


# --- non-finite numbers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "shown"),
    [
        (b"NaN", "NaN"),
        (b"Infinity", "Infinity"),
        (b"-Infinity", "-Infinity"),
        (b"1e400", "Infinity"),
    ],
)
def test_non_finite_values_are_refused_and_the_rest_kept(literal: bytes, shown: str) -> None:
    decoded = run(b'{"hr": ' + literal + b', "spo2": 97}', raw=True)
    assert [r.code for r in decoded.readings] == ["2708-6"]
    (refusal,) = decoded.refusals
    assert (refusal.record, refusal.field) == (0, "hr")
    assert refusal.reason.startswith(f"hr: {shown} is not a finite number")


def test_non_finite_senml_value_and_time_are_refused() -> None:
    decoded = run(
        b'[{"n": "hr", "v": NaN}, {"n": "hr", "t": NaN, "v": 70}, {"n": "rr", "v": 14},'
        b' {"n": "hr", "v": 100000000000000000000000000000000000000000000000000000000000000'
        b"0000000000000000000000000000000000000000000000000000000000000000000000000000000"
        b"0000000000000000000000000000000000000000000000000000000000000000000000000000000"
        b"0000000000000000000000000000000000000000000000000000000000000000000000000000000}]",
        raw=True,
    )
    assert [r.code for r in decoded.readings] == ["9279-1"]
    assert [(r.record, r.field) for r in decoded.refusals] == [(0, "v"), (1, "t"), (3, "v")]
    assert decoded.refusals[1].reason == "t: NaN is not a finite number of seconds"


def test_non_finite_compact_time_refuses_every_value() -> None:
    decoded = run(b'{"t": Infinity, "hr": 72, "rr": 14}', raw=True)
    assert decoded.readings == ()
    assert [(r.record, r.field) for r in decoded.refusals] == [(1, "t"), (2, "t")]


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "kept"),
    [
        ("hr", 9.9, False),
        ("hr", 10, True),
        ("hr", 18, True),  # extreme bradycardia: real, and the clinician must see it
        ("hr", 350, True),
        ("hr", 351, False),
        ("spo2", 9, False),
        ("spo2", 45, True),  # critical hypoxaemia: real, never dropped
        ("spo2", 100, True),
        ("spo2", 100.1, False),
        ("temp", 9.9, False),
        ("temp", 20, True),  # survivable deep hypothermia
        ("temp", 47, True),
        ("temp", 47.1, False),
        ("sys", 301, False),
        ("dia", 9, False),
        ("weight", 0.2, True),
        ("weight", 651, False),
        ("glucose", 9, False),
        ("rr", 0, False),
    ],
)
def test_values_outside_the_physiological_range_are_refused(
    key: str, value: float, kept: bool
) -> None:
    decoded = run({key: value})
    assert len(decoded.readings) == int(kept)
    if not kept:
        vital = BY_KEY[key]
        (refusal,) = decoded.refusals
        assert (refusal.record, refusal.field) == (0, key)
        assert f"({vital.low:g}..{vital.high:g} {vital.unit})" in refusal.reason
        assert str(vital) in refusal.reason


def test_out_of_range_reason_names_the_range_unit_and_what_was_sent() -> None:
    refusal = only(run([{"n": "hr", "v": 400}]))
    assert refusal.reason == (
        "v: 400 /min is outside the possible range for 8867-4 heart rate (10..350 /min); "
        "check the sensor and the unit"
    )
    refusal = only(run({"temp": 120, "u": {"temp": "[degF]"}}))
    assert "48.8889 Cel (sent as 120 [degF])" in refusal.reason  # above 47 Cel


def test_a_weight_in_pounds_sent_as_kilograms_can_pass_but_one_in_grams_cannot() -> None:
    # The range catches unit mistakes only where the numbers cannot overlap.
    assert only(run({"weight": 70500})).field == "weight"


def test_time_up_to_max_skew_ahead_is_kept_and_beyond_it_refused() -> None:
    skew = MAX_SKEW.total_seconds()
    assert triples(run([{"n": "hr", "t": T + skew, "v": 72}])) == [
        ("8867-4", 72.0, at(skew)),
    ]
    refusal = only(run([{"n": "hr", "t": T + skew + 0.001, "v": 72}]))
    assert refusal.field == "t"
    assert "in the future, more than the allowed clock skew of 5 min" in refusal.reason
    assert "set the device clock" in refusal.reason


def test_relative_time_in_the_future_is_refused_with_the_relative_rule() -> None:
    refusal = only(run({"t": 3600, "hr": 72}))
    assert refusal.field == "t"
    assert "count from now" in refusal.reason


def test_time_in_milliseconds_is_refused_with_a_hint() -> None:
    refusal = only(run({"t": T * 1000, "hr": 72}))
    assert "looks like milliseconds" in refusal.reason


def test_time_up_to_max_age_old_is_kept_and_older_refused() -> None:
    age = MAX_AGE.total_seconds()
    assert triples(run([{"n": "hr", "t": T - age, "v": 72}])) == [
        ("8867-4", 72.0, at(-age)),
    ]
    refusal = only(run([{"n": "hr", "t": T - age - 0.001, "v": 72}]))
    assert refusal.field == "t"
    assert "older than the accepted window of 24 h" in refusal.reason
    assert "check the device clock" in refusal.reason


@pytest.mark.parametrize("t", [2**28, 1e9, -1e300, -(2**40)])
def test_far_past_times_are_refused_as_too_old(t: float) -> None:
    refusal = only(run({"t": t, "hr": 72}))
    assert "older than the accepted window" in refusal.reason


@pytest.mark.parametrize("t", [1e300, 2**63])
def test_far_future_times_are_refused_without_overflowing(t: float) -> None:
    assert "in the future" in only(run({"t": t, "hr": 72})).reason


def test_window_spans_are_written_in_the_unit_that_fits() -> None:
    old = {"t": -7200, "hr": 72}
    assert "window of 90 min" in only(run(old, max_age=timedelta(minutes=90))).reason
    assert "window of 45.5 s" in only(run(old, max_age=timedelta(seconds=45.5))).reason


def test_duplicate_code_and_time_in_a_pack_keeps_the_first() -> None:
    decoded = run(
        [
            {"bn": BN, "bt": T - 60, "n": "hr", "v": 72},  # 0 kept
            {"n": "sys", "u": "mmHg", "v": 120},  # 1 same time, other code: kept
            {"n": "hr", "v": 80},  # 2 duplicate of 0
            {"n": "hr", "t": 1, "v": 74},  # 3 other time: kept
        ]
    )
    assert triples(decoded) == [
        ("8867-4", 72.0, at(-60)),
        ("8480-6", 120.0, at(-60)),
        ("8867-4", 74.0, at(-59)),
    ]
    (refusal,) = decoded.refusals
    assert (refusal.record, refusal.field, refusal.name) == (2, "t", BN + "hr")
    assert "earlier in this message (record 0)" in refusal.reason


def test_duplicates_are_found_at_millisecond_precision() -> None:
    decoded = run([{"n": "hr", "v": 72}, {"n": "hr", "t": 0.0004, "v": 73}])
    assert [r.value for r in decoded.readings] == [72.0]
    assert decoded.refusals[0].record == 1


def test_a_refused_first_record_does_not_shadow_a_valid_second() -> None:
    decoded = run([{"n": "hr", "v": 500}, {"n": "hr", "v": 72}])
    assert [r.value for r in decoded.readings] == [72.0]
    assert [r.field for r in decoded.refusals] == ["v"]


def test_times_are_utc_milliseconds_whatever_the_zone_of_now() -> None:
    now = NOW.astimezone(timezone(timedelta(hours=2)))
    decoded = run([{"n": "hr", "t": -1.2345678, "v": 72}], now=now)
    (reading,) = decoded.readings
    assert reading.taken_at.tzinfo is UTC
    assert reading.taken_at == datetime(2026, 11, 29, 8, 59, 58, 765000, tzinfo=UTC)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        run({"hr": 72}, now=datetime(2026, 11, 29, 9, 0))  # noqa: DTZ001


def test_readings_carry_the_device_id_given_not_one_from_the_payload() -> None:
    decoded = run([{"bn": "urn:dev:mac:other/", "n": "hr", "v": 72, "device_id": "x"}])
    assert [r.device_id for r in decoded.readings] == [DEVICE]
    assert decoded.readings[0].key == (DEVICE, "8867-4", NOW)


# --- fuzz: decode never raises, and what it returns holds its promises --------------------

SEEDS: list[Any] = [
    [
        {"bn": BN, "bt": T - 30, "bu": "mmHg", "bver": 10, "n": "sys", "v": 121},
        {"n": "dia", "v": 79},
        {"n": "hr", "u": "beat/min", "t": -5, "v": 72},
        {"n": "spo2", "u": "/", "v": 0.97},
        {"n": "temp", "u": "[degF]", "v": 98.6},
    ],
    {"t": T, "hr": 72, "spo2": 97, "sys": 121, "dia": 79, "temp": 36.8, "rr": 14},
    {"weight": 150, "glucose": 5.5, "u": {"weight": "lb", "glucose": "mmol/L"}},
]
TOKENS = [
    b"NaN",
    b"Infinity",
    b"-",
    b"1e999",
    b"[",
    b"]",
    b"{",
    b"}",
    b'"',
    b",",
    b":",
    b"null",
    b"true",
    b"\\",
    b"\xff",
    b"\xc3",
    b'"bver": 11',
    b'"vs": "x"',
    b'"t": 1e20',
    b'"u": "%"',
    b'"x_": 1',
    b"0",
    b"-1e9",
    b"99999999999999999999",
]
KEYS = ["n", "v", "t", "u", "bn", "bt", "bu", "bv", "bver", "vs", "vb", "s", "hr", "spo2", "temp"]
KEYS += ["weight", "sys", "x_", "bs", "ut", "rr", "glucose", "dia"]
VALUES: list[Any] = [
    0,
    -1,
    72,
    0.97,
    98.6,
    1e308,
    -1e308,
    2**28,
    T,
    T * 1000,
    "hr",
    "spo2",
    "/",
    "%",
    "[degF]",
    "lb",
    "urn:dev:x:",
    "",
    None,
    True,
    [],
    {},
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        where = rng.randint(0, len(out))
        action = rng.randrange(4)
        if action == 0 and out:
            out[min(where, len(out) - 1)] = rng.randrange(256)
        elif action == 1:
            del out[where : where + rng.randint(1, 8)]
        elif action == 2:
            out[where:where] = rng.choice(TOKENS)
        else:
            out[where:where] = out[where : where + rng.randint(1, 16)]
    return bytes(out)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if depth < 3 and roll < 0.3:
        return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    if roll < 0.4:
        return rng.uniform(-1e10, 1e10)
    return copy.deepcopy(rng.choice(VALUES))  # never share the [] and {} of VALUES


def check(decoded: Decoded, size: int) -> None:
    assert isinstance(decoded, Decoded)
    for reading in decoded.readings:
        assert isinstance(reading, Reading)
        vital = next(v for v in BY_KEY.values() if v.code == reading.code)
        assert reading.unit == vital.unit
        assert isinstance(reading.value, float)
        assert math.isfinite(reading.value)
        assert vital.low <= reading.value <= vital.high
        assert reading.taken_at.tzinfo is UTC
        assert reading.taken_at.microsecond % 1000 == 0
        assert NOW - MAX_AGE <= reading.taken_at <= NOW + MAX_SKEW
    assert len({r.key for r in decoded.readings}) == len(decoded.readings)
    for refusal in decoded.refusals:
        assert isinstance(refusal, Refusal)
        assert refusal.field
        assert refusal.reason.startswith(f"{refusal.field}: ")
        assert refusal.record is None or 0 <= refusal.record < size


def mutate_json(rng: random.Random, value: Any) -> Any:
    """`value` with one to three changes deep inside: a value, a key, an added or lost key."""
    value = json.loads(json.dumps(value))
    for _ in range(rng.randint(1, 3)):
        target = value
        while isinstance(target, list | dict) and target and rng.random() < 0.6:
            items = target if isinstance(target, list) else list(target.values())
            if not any(isinstance(item, list | dict) for item in items):
                break
            target = rng.choice([item for item in items if isinstance(item, list | dict)])
        if isinstance(target, dict):
            action = rng.randrange(3)
            if action == 0 and target:
                target[rng.choice(list(target))] = random_value(rng, 2)
            elif action == 1 and target:
                del target[rng.choice(list(target))]
            else:
                target[rng.choice(KEYS)] = random_value(rng, 2)
        elif isinstance(target, list):
            if target and rng.random() < 0.5:
                target[rng.randrange(len(target))] = random_value(rng, 1)
            else:
                target.append(random_value(rng, 1))
    return value


def test_fuzz_mutated_payloads_never_raise() -> None:
    rng = random.Random(20261129)
    for _ in range(3000):
        seed = json.dumps(rng.choice(SEEDS)).encode()
        data = mutate(rng, seed)
        check(run(data, raw=True), size=len(data))


def test_fuzz_random_json_never_raises() -> None:
    rng = random.Random(8428)
    for _ in range(3000):
        if rng.random() < 0.5:
            payload: Any = [random_value(rng, 1) for _ in range(rng.randint(0, 6))]
        else:
            payload = {rng.choice(KEYS): random_value(rng, 1) for _ in range(rng.randint(0, 8))}
        check(run(payload), size=max(1, len(payload)))


def test_fuzz_mutated_structures_never_raise_and_mostly_keep_something() -> None:
    rng = random.Random(5)
    kept = 0
    for _ in range(3000):
        payload = mutate_json(rng, rng.choice(SEEDS))
        decoded = run(payload)
        check(decoded, size=max(1, len(payload)))
        kept += bool(decoded.readings)
    assert kept > 1500  # the mutations reach the per-record checks, not only the parser
