"""Live events, from where they happen (ingestion, alerting) to whoever shows them.

The composition root wires an implementation (Socket.IO in `signaling/`) into the
producers; the producers only know this Protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from telemed.monitoring import Alert, Observation


class LiveFeed(Protocol):
    async def observations_stored(
        self, patient_id: str, observations: Sequence[Observation]
    ) -> None:
        """New vitals of one patient are durably stored."""

    async def alert_changed(self, alert: Alert) -> None:
        """An alert was opened, updated, acknowledged or resolved."""

    async def news2_changed(self, patient_id: str, score: dict[str, Any]) -> None:
        """The patient's NEWS2 was scored again (`News2Score.as_json()`)."""

    async def device_presence(
        self, patient_id: str, device_id: str, online: bool, at: datetime
    ) -> None:
        """A device came online or went offline."""
