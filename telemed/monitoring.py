"""Remote monitoring as the core stores it: enrolled wearables and their observations.

The `devices/` package decodes payloads and runs the MQTT side; what it keeps is these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Device:
    """A wearable enrolled for one patient. Its id is also its MQTT username."""

    id: str
    patient_id: str
    kind: str  # free text chosen at enrollment, e.g. "pulse-oximeter", "bp-cuff"
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class Observation:
    """One stored vital sign. Unique by (device_id, code, taken_at)."""

    patient_id: str  # from enrollment, never from the payload
    device_id: str
    code: str  # LOINC
    value: float  # in `unit`, the canonical UCUM unit for `code`
    unit: str
    taken_at: datetime  # UTC, ms
    received_at: datetime  # when the server accepted it (UTC, ms)

    @property
    def key(self) -> tuple[str, str, datetime]:
        return (self.device_id, self.code, self.taken_at)
