"""The fast way through devices/payloads.py decides exactly as the general way does.

`decode_rows` parses without a hook and computes times in integer microseconds when it
can; whatever it does not accept goes the general way. These tests force the general way
(a parser that always fails sends every payload there) and compare, over the fuzz corpus
of test_payloads.py and over times chosen to sit on every rounding edge.
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from devices import payloads
from devices.payloads import decode, decode_rows
from devices.readings import Decoded, Refusal
from devices.vitals import HEART_RATE, Measurement
from tests.devices.test_payloads import MAX_AGE, MAX_SKEW, NOW, SEEDS, mutate, mutate_json

T = NOW.timestamp()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str) -> object:
        raise ValueError("the general way, please")

    monkeypatch.setattr(payloads, "_PARSE", refuse)
    monkeypatch.setattr(payloads, "_PARSE_JSON", refuse)


def both_ways(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[Decoded, Decoded]:
    options: dict[str, Any] = {"now": NOW, "max_age": MAX_AGE, "max_skew": MAX_SKEW}
    fast = decode(data, "dev-7", **options)
    with monkeypatch.context() as m:
        general_way(m)
        general = decode(data, "dev-7", **options)
    return fast, general


def test_fuzzed_payloads_decode_the_same_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(428)
    for _ in range(1500):
        seed = rng.choice(SEEDS)
        data = json.dumps(mutate_json(rng, seed)).encode()
        if rng.random() < 0.5:
            data = mutate(rng, data)
        fast, general = both_ways(data, monkeypatch)
        assert fast == general, data


@pytest.mark.parametrize(
    "text",
    [
        '[{"n": "hr", "v": 70, "v": 71}]',
        '[{"bn": "urn:dev:a:b:", "n": "hr", "v": 70, "n": "hr"}]',
        '{"a:b": 1, "hr": 70, "hr": 71}',
        '{"hr" : 70 , "t":0, "hr" : 71}',
        '[{"n": "h\\u0072", "v": 70, "n": "hr"}]',
        '[{"n": "hr", "v": 70, "t": 0}, {"n": ":", "v": 1, "n": "hr"}]',
        '{"hr": 70, "u": {"hr": "/min", "hr": "bpm"}}',
    ],
)
def test_a_key_twice_is_refused_by_the_fast_way_too(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, general = both_ways(text.encode(), monkeypatch)
    assert fast == general
    (refusal,) = fast.refusals
    assert "appears twice in one JSON object" in refusal.reason


def test_colons_in_strings_are_not_taken_for_keys() -> None:
    text = json.dumps([{"bn": "urn:dev:ow:10e2:", "bt": T, "n": "hr", "v": 70, "x": "a:b:c"}])
    decoded = decode(text.encode(), "dev-7", now=NOW, max_age=MAX_AGE, max_skew=MAX_SKEW)
    assert decoded.refusals == ()
    assert len(decoded.readings) == 1


NOWS = [
    NOW,
    NOW.replace(microsecond=123456),
    datetime(2026, 11, 29, 10, 0, 0, 999999, tzinfo=timezone(timedelta(hours=-5))),
]


@settings(max_examples=3000, deadline=None)
@given(
    now=st.sampled_from(NOWS),
    seconds=st.one_of(
        st.floats(min_value=T - 2 * 86400, max_value=T + 600),  # absolute, near the window
        st.floats(min_value=-2 * 86400, max_value=600),  # relative
        st.integers(min_value=-10_000, max_value=10_000).map(lambda k: k / 2000),  # ± half µs
        st.integers(min_value=-(10**6), max_value=10**6).map(lambda k: T + k * 0.0005),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
)
@example(now=NOW, seconds=T - MAX_AGE.total_seconds())
@example(now=NOW, seconds=T + MAX_SKEW.total_seconds())
@example(now=NOW, seconds=-MAX_AGE.total_seconds())
@example(now=NOW, seconds=MAX_SKEW.total_seconds() + 0.0005)
@example(now=NOW, seconds=2.0**28)
@example(now=NOW, seconds=2.0**28 - 0.5)
@example(now=NOW, seconds=-0.0005)
@example(now=NOW, seconds=-1e10)
def test_times_are_the_same_both_ways(now: datetime, seconds: float) -> None:
    item = Measurement(0, "hr", HEART_RATE, 72.0, "v", seconds, "t")
    rows, refusals = payloads._validate([item], now, MAX_AGE, MAX_SKEW)
    general = payloads._check(item, now, MAX_AGE, MAX_SKEW)
    if isinstance(general, Refusal):
        assert (rows, refusals) == ([], [general])
    else:
        assert refusals == []
        assert rows == [("8867-4", 72.0, "/min", general, (general - EPOCH) // MS)]
        assert rows[0][3].tzinfo is UTC


@settings(max_examples=1500, deadline=None)
@given(
    seconds=st.one_of(
        st.floats(min_value=T - 2 * 86400, max_value=T + 600),
        st.floats(min_value=-2 * 86400, max_value=600),
        st.integers(min_value=-10_000, max_value=10_000).map(lambda k: k / 2000),
        st.integers(min_value=-(10**6), max_value=10**6).map(lambda k: T + k * 0.0005),
    ),
    offset=st.one_of(st.just(0.0), st.floats(min_value=-1.0, max_value=1.0)),
)
@example(seconds=T - MAX_AGE.total_seconds(), offset=0.0)
@example(seconds=T + MAX_SKEW.total_seconds(), offset=0.0)
@example(seconds=MAX_SKEW.total_seconds() + 0.0005, offset=0.0)
@example(seconds=2.0**28 - 0.5, offset=0.5)
def test_the_one_pass_way_times_a_pack_as_the_general_way(seconds: float, offset: float) -> None:
    """The one-pass way computes each time itself (as `_Window.ms` does): a pack's time,
    from `t` alone and from `bt` plus `t`, is the general way's at every edge."""
    for pack in (
        [{"n": "hr", "v": 72, "t": seconds}],
        [{"bt": seconds, "n": "hr", "v": 72, "t": offset}, {"n": "rr", "v": 14}],
    ):
        data = json.dumps(pack).encode()
        with pytest.MonkeyPatch.context() as m:
            fast, general = both_ways(data, m)
        assert fast == general, data


def test_rows_are_the_readings_without_the_device() -> None:
    pack = [{"bt": T - 60, "n": "hr", "v": 70}, {"n": "spo2", "v": 97, "t": 0.5}]
    data = json.dumps(pack).encode()
    options: dict[str, Any] = {"now": NOW, "max_age": MAX_AGE, "max_skew": MAX_SKEW}
    rows, refusals = decode_rows(data, **options)
    decoded = decode(data, "dev-7", **options)
    assert refusals == decoded.refusals == ()
    assert [("dev-7", *row[:4]) for row in rows] == [
        (r.device_id, r.code, r.value, r.unit, r.taken_at) for r in decoded.readings
    ]
    assert not any(math.isnan(row[1]) for row in rows)
    assert [row[4] for row in rows] == [(row[3] - EPOCH) // MS for row in rows]  # ms


USUAL_PACKS = [
    # a wearable's pack: base name and time, relative times, canonical units
    '[{"bn":"urn:dev:ow:10e2:","bt":%(t).3f,"n":"hr","u":"beat/min","v":72},'
    '{"n":"spo2","u":"%%","v":97,"t":0.001},{"n":"sys","u":"mm[Hg]","v":121,"t":0.002},'
    '{"n":"dia","u":"mm[Hg]","v":79,"t":0.002},{"n":"temp","u":"Cel","v":36.8,"t":0.003}]',
    # no base fields, times relative to now, a unit left to its default
    '[{"n":"8867-4","v":70,"t":-5},{"n":"rr","u":"/min","v":14,"t":-4.5}]',
]


@pytest.mark.parametrize("template", USUAL_PACKS)
def test_the_usual_pack_takes_the_one_pass_way(
    template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the general way's decoder and checks broken, the usual pack still decodes,
    to what the general way gives."""
    data = (template % {"t": T - 30}).encode()
    fast, general = both_ways(data, monkeypatch)
    assert general.refusals == ()
    assert len(general.readings) > 1

    def broken(*args: object, **kwargs: object) -> object:
        raise AssertionError("the general way")

    monkeypatch.setattr(payloads, "_validate", broken)
    monkeypatch.setattr(payloads, "decode_pack", broken)
    assert decode(data, "dev-7", now=NOW, max_age=MAX_AGE, max_skew=MAX_SKEW) == general


@pytest.mark.parametrize(
    "text",
    [
        '[{"n":"hr","v":72,"t":-1},{"n":"hr","v":73,"t":-1}]',  # a second reading, same ms
        '[{"n":"temp","u":"[degF]","v":98.6,"t":-1}]',  # a conversion
        '[{"n":"spo2","u":"%","v":0.97,"t":-1}]',  # an ambiguous SpO2
        '[{"n":"hr","v":72,"t":-1,"n":"hr"}]',  # a key twice
        '[{"n":"hr","v":true,"t":-1}]',  # not a number
        '[{"n":"hr","v":72,"t":-1,"bver":10}]',  # a rarer label
        '[{"n":"hr","v":1e400,"t":-1}]',  # out of range
        '[{"n":"hr","v":72,"t":1e30}]',  # far future
    ],
)
def test_what_the_one_pass_way_leaves_is_decided_the_general_way(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert payloads._usual_pack(text.encode(), NOW, MAX_AGE, MAX_SKEW, 16384) is None
    fast, general = both_ways(text.encode(), monkeypatch)
    assert fast == general


def test_the_cache_of_names_and_units_stays_bounded() -> None:
    """Devices choose the names they send: the one-pass way remembers at most
    _USUAL_SERIES_MAX of them, and a name it forgot decodes as before."""
    payloads._USUAL_SERIES.clear()
    options: dict[str, Any] = {"now": NOW, "max_age": MAX_AGE, "max_skew": MAX_SKEW}
    for i in range(payloads._USUAL_SERIES_MAX + 50):
        decode_rows(f'[{{"bn":"urn:dev:{i}:","n":"hr","v":70,"t":-1}}]'.encode(), **options)
        assert len(payloads._USUAL_SERIES) <= payloads._USUAL_SERIES_MAX
    rows, refusals = decode_rows(b'[{"bn":"urn:dev:0:","n":"hr","v":70,"t":-1}]', **options)
    assert [row[:3] for row in rows] == [(HEART_RATE.code, 70.0, HEART_RATE.unit)]
    assert refusals == ()


def test_each_message_is_judged_by_its_own_clock() -> None:
    """The one-pass way keeps the window of the last `now` it saw: a message received
    at another time gets that time's window, whatever came before."""
    data = json.dumps([{"bt": T - 60, "n": "hr", "v": 70}]).encode()
    later = NOW + MAX_AGE + timedelta(minutes=2)  # the reading is then too old
    for now, kept in [(NOW, 1), (later, 0), (NOW, 1), (NOW, 1), (later, 0)]:
        rows, refusals = decode_rows(data, now=now, max_age=MAX_AGE, max_skew=MAX_SKEW)
        assert (len(rows), len(refusals)) == (kept, 1 - kept)


@pytest.mark.parametrize(
    "text",
    [
        '[{"n":"hr","v":NaN,"t":-1}]',  # literals json reads and orjson refuses
        '[{"n":"hr","v":Infinity,"t":-1},{"n":"rr","v":14,"t":-1}]',
        '[{"n":"hr","v":-Infinity,"t":-1}]',
        '[{"n":"hr","v":72,"t":-1},{"n":"rr","v":' + "9" * 30 + ',"t":-1}]',  # > 64 bits
        '[{"n":"hr","v":72,"t":-' + "1" * 25 + "}]",
        '[{"n":"hr","v":72,"t":-1},{"n":18446744073709551616,"v":1}]',  # named as sent
        '[{"bver":18446744073709551616,"n":"hr","v":72,"t":-1}]',
        '{"hr":72,"t":-1,"u":{"hr":18446744073709551616}}',
        '[{"bt":18446744073709551616,"n":"hr","v":72}]',
        '[{"n":"hr","v":18446744073709551616,"t":-1}]',
        '[{"n":"hr","v":1e400,"t":-1}]',
        '[{"n":"hr","v":72.0e0,"t":-0},{"n":"rr","v":-0,"t":-1}]',
        '[{"n":"hr","v":72,"t":-1.0000000000000001}]',
        "[" * 2000 + "]" * 2000,  # deeper than orjson's limit
        '[{"n":"hr","v":72,"t":-1}] ',
        '[{"n":"hr","v":72,"t":-1}] x',
    ],
)
def test_what_the_fast_parser_reads_otherwise_the_general_way_decides(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orjson, the fast way's parser, refuses a few things Python's json reads: both
    ways still decide alike."""
    fast, general = both_ways(text.encode(), monkeypatch)
    assert fast == general
