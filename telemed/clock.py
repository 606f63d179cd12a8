"""Time, as the rest of the code sees it: timezone-aware UTC, millisecond precision.

Milliseconds because MongoDB stores datetimes to the millisecond: a value must read back
exactly as it was written, or hashes over it (the audit chain) would not verify.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


def utcnow() -> datetime:
    return truncate(datetime.now(UTC))


def truncate(moment: datetime) -> datetime:
    """`moment` in UTC, cut to whole milliseconds."""
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since the Unix epoch (floored) of a timezone-aware `moment`, as
    the stores file times."""
    return (moment - EPOCH) // MILLISECOND


def from_epoch_ms(ms: int) -> datetime:
    """The UTC datetime `ms` milliseconds after the Unix epoch: `epoch_ms`'s inverse."""
    return EPOCH + MILLISECOND * ms


def iso(moment: datetime) -> str:
    """RFC 3339 with milliseconds and a Z, as FHIR instants are written."""
    return truncate(moment).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(text: str) -> datetime:
    """The inverse of `iso` (and of any RFC 3339 time with an offset), in UTC."""
    return datetime.fromisoformat(text).astimezone(UTC)
