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


def general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str) -> object:
        raise ValueError("the general way, please")

    monkeypatch.setattr(payloads, "_PARSE", refuse)


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
        assert rows == [("8867-4", 72.0, "/min", general)]
        assert rows[0][3].tzinfo is UTC


def test_rows_are_the_readings_without_the_device() -> None:
    pack = [{"bt": T - 60, "n": "hr", "v": 70}, {"n": "spo2", "v": 97, "t": 0.5}]
    data = json.dumps(pack).encode()
    options: dict[str, Any] = {"now": NOW, "max_age": MAX_AGE, "max_skew": MAX_SKEW}
    rows, refusals = decode_rows(data, **options)
    decoded = decode(data, "dev-7", **options)
    assert refusals == decoded.refusals == ()
    assert [("dev-7", *row) for row in rows] == [
        (r.device_id, r.code, r.value, r.unit, r.taken_at) for r in decoded.readings
    ]
    assert not any(math.isnan(row[1]) for row in rows)
