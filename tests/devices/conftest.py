"""Fixtures for the wearable side: a real Mosquitto with dynamic security, an enrolled
device, and the store it feeds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiomqtt
import pytest_asyncio

from devices.broker import BrokerAccess, MosquittoSupervisor
from devices.enrollment import Enrolled, Enrollment
from devices.ingest import Ingestor, IngestSettings
from telemed.clinic import OPERATOR, Clinic
from telemed.clock import utcnow
from telemed.monitoring import Device, Observation
from telemed.store.sqlite import SqliteStore
from tests.conftest import free_port


@dataclass
class Rig:
    supervisor: MosquittoSupervisor
    access: BrokerAccess
    store: SqliteStore
    clinic: Clinic
    enrollment: Enrollment
    patient_id: str

    async def enroll(self, kind: str = "pulse-oximeter") -> Enrolled:
        return await self.enrollment.enroll(OPERATOR, self.patient_id, kind)

    def admin_client(self, identifier: str) -> aiomqtt.Client:
        """An MQTT client with the server's admin credentials (MQTT 3.1.1)."""
        a = self.access
        return aiomqtt.Client(
            a.host,
            a.port,
            username=a.username,
            password=a.password,
            identifier=identifier,
            timeout=5.0,
        )


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    supervisor = MosquittoSupervisor("mosquitto", free_port(), tmp_path / "var")
    await supervisor.start()
    store = await SqliteStore.open(f"sqlite:///{tmp_path / 'telemed.db'}")
    try:
        assert supervisor.admin is not None
        access = BrokerAccess(
            "127.0.0.1",
            supervisor.port,
            supervisor.admin.username,
            supervisor.admin.password,
            False,
        )
        clinic = Clinic(store, utcnow)
        patient = await clinic.add_user(
            OPERATOR, role="patient", email="pat@example.org", name="Pat", password=None
        )
        yield Rig(supervisor, access, store, clinic, Enrollment(clinic, access), patient.id)
    finally:
        await store.close()
        await supervisor.stop()


class Stored:
    """What an ingestor reports stored (and device statuses); waits on conditions."""

    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self.statuses: list[tuple[str, bool]] = []
        self.changed = asyncio.Event()

    async def __call__(self, batch: Sequence[Observation]) -> None:
        self.observations.extend(batch)
        self.changed.set()

    async def status(self, device: Device, online: bool, at: datetime) -> None:
        self.statuses.append((device.id, online))
        self.changed.set()

    async def until(self, done: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not done():
                self.changed.clear()
                await self.changed.wait()

    async def committed(self, ingestor: Ingestor, messages: int) -> None:
        """Until the ingestor has taken `messages` messages and committed a batch."""
        await self.until(lambda: ingestor.stats.messages >= messages and ingestor.stats.batches > 0)


@pytest_asyncio.fixture
async def ingesting(rig: Rig) -> AsyncIterator[tuple[Ingestor, Stored]]:
    """The server's ingestor on the rig's broker, reporting to a `Stored`."""
    stored = Stored()
    ingestor = Ingestor(
        rig.store,
        utcnow,
        rig.access,
        IngestSettings(client_id="test-ingest", batch_wait=0.01),
        on_stored=stored,
        on_status=stored.status,
    )
    task = asyncio.create_task(ingestor.run())
    try:
        async with asyncio.timeout(10):
            await ingestor.connected.wait()
        yield ingestor, stored
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
