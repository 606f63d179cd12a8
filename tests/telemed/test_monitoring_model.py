"""telemed/monitoring.py's fast construction of observations: the same frozen objects."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from telemed.monitoring import Observation, observations_from_rows

NOW = datetime(2026, 11, 29, 18, 0, tzinfo=UTC)


def test_observations_from_rows_are_what_the_constructor_makes() -> None:
    rows = [
        ("8867-4", 72.0, "/min", NOW - timedelta(seconds=2)),
        ("59408-5", 97.0, "%", NOW - timedelta(seconds=1)),
    ]
    made = observations_from_rows("p1", "d1", rows, NOW)
    expected = [Observation("p1", "d1", *row, NOW) for row in rows]
    assert made == expected
    assert [hash(o) for o in made] == [hash(o) for o in expected]
    assert [repr(o) for o in made] == [repr(o) for o in expected]
    assert dataclasses.replace(made[0], value=80.0) == dataclasses.replace(expected[0], value=80.0)
    assert observations_from_rows("p1", "d1", [], NOW) == []


def test_observations_from_rows_are_frozen() -> None:
    [made] = observations_from_rows("p1", "d1", [("8867-4", 72.0, "/min", NOW)], NOW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.value = 1.0  # type: ignore[misc]
