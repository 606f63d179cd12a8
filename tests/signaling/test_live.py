"""The live feed over a real Socket.IO connection: only the care team's clinicians
receive a patient's events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
import socketio
from aiohttp.test_utils import TestClient

from telemed import sessions
from telemed.clinic import OPERATOR
from telemed.monitoring import Observation
from telemed.web.keys import CLINIC, LIVE
from tests.conftest import People, login

Client = TestClient  # type: ignore[type-arg]
WAIT = 5.0


class Dashboard:
    """A Socket.IO client as the dashboard's script is, recording what it receives."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        for name in ("observations", "alert", "presence"):
            self.sio.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[[Any], Any]:
        async def record(data: Any) -> None:
            await self.events.put((name, data))

        return record

    async def next(self) -> tuple[str, Any]:
        async with asyncio.timeout(WAIT):
            return await self.events.get()


@pytest_asyncio.fixture
async def connect(client: Client) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Dashboard] = []

    async def open_as(email: str | None, origin: str | None = None) -> Dashboard:
        headers: dict[str, str] = {}
        if email is not None:
            cookie = (await login(client, email)).cookies[sessions.COOKIE].value
            headers["Cookie"] = f"{sessions.COOKIE}={cookie}"
        if origin is not None:
            headers["Origin"] = origin
        dashboard = Dashboard()
        opened.append(dashboard)
        await dashboard.sio.connect(
            str(client.make_url("/")),
            headers=headers,
            transports=["websocket"],
            wait_timeout=WAIT,
        )
        return dashboard

    yield open_as
    for dashboard in opened:
        await dashboard.sio.disconnect()


def reading(patient_id: str, value: float) -> Observation:
    now = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
    return Observation(patient_id, "dev1", "8867-4", value, "/min", now, now)


async def test_the_care_team_receives_a_patients_new_vitals(
    client: Client, people: People, connect: Callable[..., Any]
) -> None:
    alice = await connect(people.doctor_a.email)
    bob = await connect(people.doctor_b.email)
    await client.app[LIVE].observations_stored(
        people.patient_1.id, [reading(people.patient_1.id, 88)]
    )
    await client.app[LIVE].observations_stored(
        people.patient_2.id, [reading(people.patient_2.id, 77)]
    )

    name, data = await alice.next()
    assert name == "observations"
    assert data["patient_id"] == people.patient_1.id
    assert data["observations"][0]["value"] == 88
    assert data["observations"][0]["code"] == "8867-4"
    # Bob's first event is his own patient's: he never saw Alice's
    name, data = await bob.next()
    assert data["patient_id"] == people.patient_2.id
    assert alice.events.empty()


async def test_leaving_the_care_team_stops_the_feed_on_an_open_connection(
    client: Client, people: People, connect: Callable[..., Any]
) -> None:
    alice = await connect(people.doctor_a.email)
    await client.app[CLINIC].remove_care_team_member(
        OPERATOR, people.patient_1.id, people.doctor_a.id
    )
    await client.app[LIVE].resync()
    await client.app[CLINIC].add_care_team_member(OPERATOR, people.patient_2.id, people.doctor_a.id)
    await client.app[LIVE].resync()
    await client.app[LIVE].observations_stored(
        people.patient_1.id, [reading(people.patient_1.id, 90)]
    )
    await client.app[LIVE].observations_stored(
        people.patient_2.id, [reading(people.patient_2.id, 91)]
    )
    name, data = await alice.next()
    assert data["patient_id"] == people.patient_2.id  # patient 1's event never came first


@pytest.mark.parametrize("who", [None, "patient"])
async def test_only_signed_in_clinicians_connect(
    client: Client, people: People, connect: Callable[..., Any], who: str | None
) -> None:
    email = people.patient_1.email if who == "patient" else None
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect(email)


async def test_another_sites_page_cannot_connect_with_the_cookie(
    client: Client, people: People, connect: Callable[..., Any]
) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect(people.doctor_a.email, origin="https://evil.example")
