"""Fixtures for the wearable side: a real Mosquitto with dynamic security, an enrolled
device, and the store it feeds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio

from devices.broker import BrokerAccess, MosquittoSupervisor
from devices.enrollment import Enrolled, Enrollment
from telemed.clinic import OPERATOR, Clinic
from telemed.clock import utcnow
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


async def wait_for(event: asyncio.Event, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        await event.wait()
