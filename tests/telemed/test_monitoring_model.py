"""telemed/monitoring.py's fast construction of observations: the same frozen objects."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from telemed.monitoring import Observation, observations_from_rows
from telemed.snapshot import from_plain, to_plain

NOW = datetime(2026, 11, 29, 18, 0, tzinfo=UTC)
MS = 1_795_975_200_000  # NOW in milliseconds since the epoch


def test_observations_from_rows_are_what_the_constructor_makes() -> None:
    rows = [
        ("8867-4", 72.0, "/min", NOW - timedelta(seconds=2), MS - 2000),
        ("59408-5", 97.0, "%", NOW - timedelta(seconds=1), MS - 1000),
    ]
    made = observations_from_rows("p1", "d1", rows, NOW)
    expected = [Observation("p1", "d1", *row[:4], NOW) for row in rows]
    assert made == expected
    assert [hash(o) for o in made] == [hash(o) for o in expected]
    assert [repr(o) for o in made] == [repr(o) for o in expected]
    assert dataclasses.replace(made[0], value=80.0) == dataclasses.replace(expected[0], value=80.0)
    assert observations_from_rows("p1", "d1", [], NOW) == []
    # the milliseconds the stores file by: as computed, and as the constructor computes them
    assert [o.taken_ms for o in made] == [o.taken_ms for o in expected] == [MS - 2000, MS - 1000]
    assert dataclasses.replace(made[0], taken_at=NOW).taken_ms == MS


def test_observations_from_rows_are_frozen() -> None:
    [made] = observations_from_rows("p1", "d1", [("8867-4", 72.0, "/min", NOW, MS)], NOW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.value = 1.0  # type: ignore[misc]


def test_a_backup_holds_what_the_constructor_takes_and_derives_the_milliseconds() -> None:
    made = Observation("p1", "d1", "8867-4", 72.0, "/min", NOW, NOW)
    plain = to_plain(made)
    assert "taken_ms" not in plain  # backups keep their format
    back = from_plain(Observation, plain)
    assert back == made
    assert back.taken_ms == MS
