"""Downsampling for charts: few readings pass through, many fold into min/mean/max."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from telemed.monitoring import Observation
from telemed.series import downsample

START = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def obs(seconds: float, value: float) -> Observation:
    at = START + timedelta(seconds=seconds)
    return Observation("p", "d", "8867-4", value, "/min", at, at)


def test_few_readings_are_kept_as_they_are() -> None:
    points = downsample([obs(0, 60), obs(30, 61)], START, START + timedelta(hours=1))
    assert [(p.t - START.timestamp(), p.low, p.high, p.count) for p in points] == [
        (0, 60, 60, 1),
        (30, 61, 61, 1),
    ]


def test_many_readings_fold_into_buckets_with_min_mean_max() -> None:
    rows = [obs(s, 60 + (s % 10)) for s in range(3600)]  # one a second for an hour
    points = downsample(rows, START, START + timedelta(hours=1), points=60)
    assert len(points) == 60
    assert all(p.count == 60 for p in points)
    assert all(p.low == 60 and p.high == 69 for p in points)
    assert points[0].mean == 64.5
    assert points[1].t - points[0].t == 60


def test_empty_buckets_are_gaps_and_range_bounds_are_inclusive() -> None:
    rows = [obs(s, 70) for s in range(0, 600)] + [obs(3600, 99)]
    points = downsample(rows, START, START + timedelta(hours=1), points=6)
    assert [p.count for p in points] == [600, 1]  # 10 min of data, a gap, the last second
    assert points[-1].high == 99
    assert downsample([obs(3601, 1)], START, START + timedelta(hours=1)) == []
