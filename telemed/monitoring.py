"""Remote monitoring as the core stores it: enrolled wearables and their observations.

The `devices/` package decodes payloads and runs the MQTT side; what it keeps is these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


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


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class AlertState(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Alert:
    """A clinical or technical alert about one patient.

    At most one alert per (patient_id, rule) is not resolved at a time: a condition that
    keeps holding updates that alert (`last_breach_at`, `value`/`score`) instead of
    opening another. It resolves by itself after a quiet period back in range.
    """

    id: str
    patient_id: str
    rule: str  # e.g. "threshold:8867-4:high", "news2", "device-offline:<device id>"
    severity: Severity
    state: AlertState
    opened_at: datetime
    last_breach_at: datetime  # the last time the condition was seen to hold
    detail: str  # what a clinician reads, e.g. "heart rate 142 /min above 130"
    value: float | None = None  # the triggering reading (threshold rules)
    score: int | None = None  # the triggering NEWS2 total
    acknowledged_by: str = ""  # user id
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
