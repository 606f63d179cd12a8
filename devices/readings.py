"""What a device payload becomes: readings to store, and refusals to send back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement, normalized: LOINC code, value in the code's canonical UCUM unit."""

    device_id: str
    code: str  # LOINC, e.g. "8867-4" for heart rate
    value: float  # in `unit`, the canonical UCUM unit for `code`
    unit: str  # UCUM, e.g. "/min", "%", "Cel", "mm[Hg]", "kg", "mg/dL"
    taken_at: datetime  # timezone-aware UTC, millisecond precision

    @property
    def key(self) -> tuple[str, str, datetime]:
        """The dedupe key: one value per device, code and instant."""
        return (self.device_id, self.code, self.taken_at)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why one record (or the whole payload, `record` None) was not kept."""

    record: int | None  # index of the record in the pack, or of the field in compact JSON
    field: str  # the payload field at fault, e.g. "u", "v", "t", "spo2", "payload"
    reason: str  # what a firmware developer can act on
    name: str = ""  # the measurement's name as the device sent it


@dataclass(frozen=True, slots=True)
class Decoded:
    readings: tuple[Reading, ...]
    refusals: tuple[Refusal, ...]


# One reading as the ingest hot path carries it, before it has a device or a patient:
# (LOINC code, value in the canonical unit, that unit, taken_at, taken_at in milliseconds
# since the epoch). A plain tuple: one is made per reading, and the store's row is built
# from it without another object between (the milliseconds as the decoder computed them).
Row = tuple[str, float, str, datetime, int]
