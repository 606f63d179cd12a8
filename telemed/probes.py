"""Readiness: each dependency the server needs answers a probe, or says why not."""

from __future__ import annotations

from typing import Protocol


class Probe(Protocol):
    name: str

    async def check(self) -> None:
        """Return when the dependency answers; raise with a reason otherwise."""
