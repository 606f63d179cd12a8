"""Time series for charts: observations folded into at most N buckets (min, mean, max),
so a week of per-second readings reaches the browser as a few hundred points."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from telemed.monitoring import Observation

RANGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
MAX_POINTS = 360


@dataclass(frozen=True, slots=True)
class Point:
    t: float  # Unix seconds: the bucket's start, or the reading's own time when not folded
    low: float
    mean: float
    high: float
    count: int


def downsample(
    observations: Iterable[Observation], start: datetime, end: datetime, points: int = MAX_POINTS
) -> list[Point]:
    """Observations (oldest first) in [start, end] folded into `points` equal buckets.

    Buckets without data are left out (a chart draws the gap). With no more readings than
    points, every reading is its own point at its own time.
    """
    rows = [o for o in observations if start <= o.taken_at <= end]
    if len(rows) <= points:
        return [Point(o.taken_at.timestamp(), o.value, o.value, o.value, 1) for o in rows]
    t0, span = start.timestamp(), (end - start).total_seconds()
    width = span / points
    buckets: dict[int, list[float]] = {}
    for o in rows:
        index = min(int((o.taken_at.timestamp() - t0) / width), points - 1)
        buckets.setdefault(index, []).append(o.value)
    return [
        Point(t0 + i * width, min(v), sum(v) / len(v), max(v), len(v))
        for i, v in sorted(buckets.items())
    ]
