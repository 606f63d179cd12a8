"""Remote monitoring as the core stores it: enrolled wearables and their observations,
device presence, per-patient monitoring plans, check-ins and alerts.

The `devices/` package decodes payloads, runs the MQTT side and the alerting rules; what
it keeps is these. Clinical defaults (thresholds, NEWS2) live in `devices/`, not here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from telemed.clock import epoch_ms


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
    # taken_at in milliseconds since the epoch, as the stores file it: from taken_at
    # (timezone-aware, as every time here: a naive one raises TypeError), or from the
    # decoder that computed both (`observations_from_rows`)
    taken_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _SET_TAKEN_MS(self, epoch_ms(self.taken_at))

    @property
    def key(self) -> tuple[str, str, datetime]:
        return (self.device_id, self.code, self.taken_at)


_new = object.__new__
(
    _SET_PATIENT,
    _SET_DEVICE,
    _SET_CODE,
    _SET_VALUE,
    _SET_UNIT,
    _SET_TAKEN,
    _SET_RECEIVED,
    _SET_TAKEN_MS,
) = (
    Observation.__dict__[name].__set__
    for name in (
        "patient_id",
        "device_id",
        "code",
        "value",
        "unit",
        "taken_at",
        "received_at",
        "taken_ms",
    )
)


def observations_from_rows(
    patient_id: str,
    device_id: str,
    rows: Iterable[tuple[str, float, str, datetime, int]],
    received_at: datetime,
) -> list[Observation]:
    """`Observation(patient_id, device_id, code, value, unit, taken_at, received_at)` for
    each (code, value, unit, taken_at, taken_ms) row, taken_ms being taken_at in ms since
    the epoch: the same objects, each field set through its slot as the frozen
    dataclass's own `__init__` does, without its per-field lookups (half the time;
    ingestion makes one per reading), and taken_ms as the decoder computed it."""
    out: list[Observation] = []
    append = out.append
    for code, value, unit, taken_at, taken_ms in rows:
        o = _new(Observation)
        _SET_PATIENT(o, patient_id)
        _SET_DEVICE(o, device_id)
        _SET_CODE(o, code)
        _SET_VALUE(o, value)
        _SET_UNIT(o, unit)
        _SET_TAKEN(o, taken_at)
        _SET_RECEIVED(o, received_at)
        _SET_TAKEN_MS(o, taken_ms)
        append(o)
    return out


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
    resolved_by: str = ""  # user id, or "system" when it resolved by itself

    @property
    def active(self) -> bool:
        """Not resolved: the one alert of its (patient_id, rule)."""
        return self.state is not AlertState.RESOLVED


ACTIVE_STATES: frozenset[AlertState] = frozenset({AlertState.OPEN, AlertState.ACKNOWLEDGED})


@dataclass(frozen=True, slots=True)
class DevicePresence:
    """What is known of a device's connection: its retained MQTT status and its data."""

    device_id: str
    online: bool | None = None  # the last `status` message; None if none came yet
    status_at: datetime | None = None  # when that status was first received
    last_seen_at: datetime | None = None  # the newest reading time stored from it


@dataclass(frozen=True, slots=True)
class Threshold:
    """The range a care team accepts for one vital: a value below `low` or above `high`
    breaches it (the limits themselves are in range). None: no limit on that side."""

    low: float | None = None
    high: float | None = None

    def breached_by(self, value: float) -> bool:
        return (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        )


@dataclass(frozen=True, slots=True)
class MonitoringPlan:
    """How one patient is watched, as their care team set it (defaults in `devices/`)."""

    patient_id: str
    thresholds: Mapping[str, Threshold]  # by LOINC code; an absent code has no threshold
    spo2_scale: int  # NEWS2 SpO2 scale: 1, or 2 when a clinician set it for this patient
    offline_after: timedelta  # a device silent for longer opens a device-offline alert
    quiet_period: timedelta  # back in range this long, an alert resolves by itself
    updated_by: str = ""  # user id of the last change; "" while the defaults apply
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CheckIn:
    """What wearables cannot report, entered by the patient or a clinician.

    Either or both of `consciousness` (ACVPU letter) and `on_oxygen` (supplemental oxygen).
    """

    id: str
    patient_id: str
    taken_at: datetime  # when it was entered (UTC, ms)
    entered_by: str  # user id
    entered_by_role: str  # "patient", "doctor", "nurse", or "operator"
    consciousness: str | None = None  # "A", "C", "V", "P" or "U"
    on_oxygen: bool | None = None


@dataclass(frozen=True, slots=True)
class LatestCheckIns:
    """The newest check-in that gave each NEWS2 parameter (they may be different ones)."""

    consciousness: CheckIn | None = None
    on_oxygen: CheckIn | None = None
