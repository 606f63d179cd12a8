"""The monitoring JSON API through the real app: alerts, NEWS2, the plan, check-ins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from devices.alerts import DIASTOLIC, HEART_RATE, RESPIRATORY_RATE, SPO2
from devices.monitor import Monitor
from telemed.app import create_app
from telemed.audit import Outcome
from telemed.clinic import OPERATOR
from telemed.monitoring import Alert, Device, Observation
from telemed.settings import Settings
from telemed.web import monitoring_api
from telemed.web.keys import CLINIC, CLOCK, STORE
from telemed.web.monitoring_api import MONITOR
from tests.conftest import FakeClock, People, login, page_csrf

Client = TestClient  # type: ignore[type-arg]
UNITS = {HEART_RATE: "/min", SPO2: "%", RESPIRATORY_RATE: "/min", DIASTOLIC: "mm[Hg]"}


class RecordingLive:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    async def observations_stored(
        self, patient_id: str, observations: Sequence[Observation]
    ) -> None:
        return None

    async def alert_changed(self, alert: Alert) -> None:
        self.alerts.append(alert)

    async def device_presence(
        self, patient_id: str, device_id: str, online: bool, at: datetime
    ) -> None:
        return None


async def monitor_ctx(app: web.Application) -> AsyncIterator[None]:
    """As the composition root wires it: after the store (and the live feed)."""
    if MONITOR not in app:
        app[MONITOR] = Monitor(app[STORE], app[CLOCK], app[CLINIC], RecordingLive())
    yield


@pytest_asyncio.fixture
async def client(
    aiohttp_client: Any, settings: Settings, clock: FakeClock
) -> AsyncIterator[Client]:
    """The real app, with the monitoring routes and service (if the root does not yet)."""
    app = create_app(settings, clock=clock)
    app.cleanup_ctx.append(monitor_ctx)
    paths = {r.canonical for r in app.router.resources()}
    if "/api/patients/{patient_id}/alerts" not in paths:
        app.router.add_routes(monitoring_api.routes)
    test_client: Client = await aiohttp_client(app)
    yield test_client


async def breach(client: Client, people: People, *readings: tuple[str, float]) -> list[Alert]:
    """Store readings for patient 1 as ingestion would, and return the active alerts."""
    store, clock = client.app[STORE], client.app[CLOCK]
    if await store.get_device("d1") is None:
        await store.add_device(Device("d1", people.patient_1.id, "pulse-oximeter", clock()))
    now = clock()
    batch = [
        Observation(people.patient_1.id, "d1", code, value, UNITS[code], now, now)
        for code, value in readings
    ]
    await store.add_observations(batch)
    await client.app[MONITOR].observations_stored(batch)
    return await client.app[MONITOR].alerts(OPERATOR, people.patient_1.id)


async def json_of(response: Any, status: int) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


# alerts -------------------------------------------------------------------------------------


async def test_alerts_of_a_patient(client: Client, people: People, clock: FakeClock) -> None:
    opened_at = clock()
    [alert] = await breach(client, people, (DIASTOLIC, 125.0))
    await login(client, people.doctor_a.email)
    body = await json_of(await client.get(f"/api/patients/{people.patient_1.id}/alerts"), 200)
    assert body["alerts"] == [
        {
            "id": alert.id,
            "patient_id": people.patient_1.id,
            "rule": f"threshold:{DIASTOLIC}:high",
            "severity": "medium",
            "state": "open",
            "value": 125.0,
            "score": None,
            "opened_at": opened_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "last_breach_at": opened_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "acknowledged_by": None,
            "acknowledged_at": None,
            "resolved_by": None,
            "resolved_at": None,
            "detail": "diastolic blood pressure 125 mmHg above 120 mmHg",
        },
    ]


async def test_a_news2_alert_carries_its_score(client: Client, people: People) -> None:
    await breach(client, people, (SPO2, 91.0), (HEART_RATE, 120.0))  # 3 + 2
    await login(client, people.nurse_a.email)
    body = await json_of(
        await client.get(f"/api/patients/{people.patient_1.id}/alerts?state=open"), 200
    )
    [news2] = [a for a in body["alerts"] if a["rule"] == "news2"]
    assert (news2["score"], news2["value"], news2["severity"]) == (5, None, "medium")
    assert "incomplete" in news2["detail"]


async def test_alerts_by_state(client: Client, people: People) -> None:
    [alert] = await breach(client, people, (DIASTOLIC, 125.0))
    await login(client, people.doctor_a.email)
    path = f"/api/patients/{people.patient_1.id}/alerts"
    token = await page_csrf(client)
    await json_of(
        await client.post(f"/api/alerts/{alert.id}/acknowledge", headers={"X-CSRF-Token": token}),
        200,
    )
    for query, expected in [
        ("?state=open", []),
        ("?state=acknowledged", [alert.id]),
        ("?state=active", [alert.id]),
        ("?state=resolved", []),
        ("?state=open&state=acknowledged", [alert.id]),
        ("", [alert.id]),
    ]:
        body = await json_of(await client.get(path + query), 200)
        assert [a["id"] for a in body["alerts"]] == expected, query
    bad = await json_of(await client.get(path + "?state=closed"), 400)
    assert bad["error"].startswith("state:")


async def test_alerts_need_the_care_team(client: Client, people: People) -> None:
    await breach(client, people, (SPO2, 91.0))
    path = f"/api/patients/{people.patient_1.id}/alerts"
    assert (await client.get(path)).status == 401
    for who in (people.doctor_b, people.admin, people.patient_1):
        await login(client, who.email)
        assert (await client.get(path)).status == 403, who.email
    denied = [
        (r.event.actor_id, r.event.detail)
        async for r in client.app[STORE].audit_records(patient_id=people.patient_1.id)
        if r.event.action == "alert.list" and r.event.outcome is Outcome.DENIED
    ]
    assert denied == [
        (people.doctor_b.id, "not on the care team"),
        (people.admin.id, "admins see no clinical data"),
        (people.patient_1.id, "patients may only enter their own check-ins"),
    ]


async def test_acknowledge_and_resolve_need_the_csrf_header_from_a_browser(
    client: Client, people: People, clock: FakeClock
) -> None:
    [alert] = await breach(client, people, (DIASTOLIC, 125.0))
    await login(client, people.doctor_a.email)
    path = f"/api/alerts/{alert.id}/acknowledge"
    assert (await client.post(path)).status == 403
    token = await page_csrf(client)
    clock.advance(minutes=2)
    body = await json_of(await client.post(path, headers={"X-CSRF-Token": token}), 200)
    assert (body["state"], body["acknowledged_by"], body["acknowledged_at"]) == (
        "acknowledged",
        people.doctor_a.id,
        clock().strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    )
    resolved = await json_of(
        await client.post(f"/api/alerts/{alert.id}/resolve", headers={"X-CSRF-Token": token}),
        200,
    )
    assert (resolved["state"], resolved["resolved_by"]) == ("resolved", people.doctor_a.id)
    again = await json_of(await client.post(path, headers={"X-CSRF-Token": token}), 400)
    assert again["error"].startswith("alert:")
    unknown = await client.post("/api/alerts/nope/resolve", headers={"X-CSRF-Token": token})
    assert unknown.status == 404


async def test_a_bearer_token_acknowledges_without_csrf(client: Client, people: People) -> None:
    [alert] = await breach(client, people, (DIASTOLIC, 125.0))
    _, secret = await client.app[CLINIC].create_token(OPERATOR, people.nurse_a.email, "EHR")
    response = await client.post(
        f"/api/alerts/{alert.id}/acknowledge", headers={"Authorization": f"Bearer {secret}"}
    )
    body = await json_of(response, 200)
    assert body["acknowledged_by"] == people.nurse_a.id


async def test_another_team_cannot_acknowledge(client: Client, people: People) -> None:
    [alert] = await breach(client, people, (DIASTOLIC, 125.0))
    await login(client, people.doctor_b.email)
    token = await page_csrf(client)
    response = await client.post(
        f"/api/alerts/{alert.id}/acknowledge", headers={"X-CSRF-Token": token}
    )
    assert response.status == 403
    stored = await client.app[STORE].get_alert(alert.id)
    assert stored == alert


# NEWS2 ----------------------------------------------------------------------------------------


async def test_news2_of_a_patient(client: Client, people: People, clock: FakeClock) -> None:
    await breach(client, people, (RESPIRATORY_RATE, 22.0), (HEART_RATE, 72.0), (SPO2, 95.0))
    await login(client, people.doctor_a.email)
    body = await json_of(await client.get(f"/api/patients/{people.patient_1.id}/news2"), 200)
    assert body["score"] == 3
    assert body["complete"] is False
    assert body["risk"] is None
    assert body["risk_at_least"] == "low"
    assert body["sub_scores"] == {"respiration_rate": 2, "spo2": 1, "pulse": 0}
    assert body["missing"] == ["air_or_oxygen", "systolic_bp", "consciousness", "temperature"]
    assert body["stale"] == []
    assert body["scale"] == 1
    assert body["computed_at"] == clock().strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert body["values"]["respiration_rate"]["value"] == 22.0
    assert "incomplete" in body["label"]
    await login(client, people.doctor_b.email)
    assert (await client.get(f"/api/patients/{people.patient_1.id}/news2")).status == 403


# the monitoring plan ----------------------------------------------------------------------------


async def test_monitoring_defaults(client: Client, people: People) -> None:
    await login(client, people.nurse_a.email)
    body = await json_of(await client.get(f"/api/patients/{people.patient_1.id}/monitoring"), 200)
    assert body["spo2_scale"] == 1
    assert (body["offline_after_minutes"], body["quiet_period_minutes"]) == (30, 15)
    hr = body["thresholds"][HEART_RATE]
    assert hr == {
        "name": "heart rate",
        "unit": "/min",
        "low": 41.0,
        "high": 130.0,
        "default": {"low": 41.0, "high": 130.0},
    }
    assert body["thresholds"][SPO2]["low"] == 92.0
    assert body["thresholds"]["29463-7"]["low"] is None
    assert body["updated_by"] is None


async def test_monitoring_changes(client: Client, people: People) -> None:
    await login(client, people.doctor_a.email)
    token = await page_csrf(client)
    path = f"/api/patients/{people.patient_1.id}/monitoring"
    change = {
        "thresholds": {HEART_RATE: {"low": 45, "high": 120}, "29463-7": {"high": 110}},
        "spo2_scale": 2,
        "offline_after_minutes": 60,
        "quiet_period_minutes": 20,
    }
    body = await json_of(await client.put(path, json=change, headers={"X-CSRF-Token": token}), 200)
    assert body["thresholds"][HEART_RATE]["low"] == 45.0
    assert body["thresholds"]["29463-7"]["high"] == 110.0
    assert body["thresholds"][SPO2]["low"] == 88.0  # the default followed the scale
    assert (body["spo2_scale"], body["offline_after_minutes"], body["quiet_period_minutes"]) == (
        2,
        60,
        20,
    )
    assert body["updated_by"] == people.doctor_a.id
    assert await json_of(await client.get(path), 200) == body
    back = await json_of(
        await client.put(
            path, json={"thresholds": {HEART_RATE: None}}, headers={"X-CSRF-Token": token}
        ),
        200,
    )
    assert back["thresholds"][HEART_RATE]["low"] == 41.0
    assert back["spo2_scale"] == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"thresholds": {HEART_RATE: {"low": 130, "high": 40}}}, f"thresholds.{HEART_RATE}"),
        ({"thresholds": {HEART_RATE: {"low": "40"}}}, f"thresholds.{HEART_RATE}.low"),
        ({"thresholds": {HEART_RATE: {"lo": 40}}}, f"thresholds.{HEART_RATE}.lo"),
        ({"thresholds": {"1234-5": {"low": 1}}}, "thresholds.1234-5"),
        ({"thresholds": [1]}, "thresholds"),
        ({"spo2_scale": 3}, "spo2_scale"),
        ({"offline_after_minutes": 1}, "offline_after_minutes"),
        ({"quiet_period_minutes": 0}, "quiet_period_minutes"),
        ({"quiet_minutes": 5}, "quiet_minutes"),
        ([], "body"),
    ],
)
async def test_bad_monitoring_changes_name_the_field(
    client: Client, people: People, change: Any, field: str
) -> None:
    await login(client, people.doctor_a.email)
    token = await page_csrf(client)
    response = await client.put(
        f"/api/patients/{people.patient_1.id}/monitoring",
        json=change,
        headers={"X-CSRF-Token": token},
    )
    body = await json_of(response, 400)
    assert body["error"].startswith(f"{field}:")


async def test_patients_cannot_change_their_monitoring(client: Client, people: People) -> None:
    await login(client, people.patient_1.email)
    token = await page_csrf(client, "/me")
    response = await client.put(
        f"/api/patients/{people.patient_1.id}/monitoring",
        json={"spo2_scale": 2},
        headers={"X-CSRF-Token": token},
    )
    assert response.status == 403


# check-ins ---------------------------------------------------------------------------------------


async def test_a_patient_checks_in_for_themself_only(
    client: Client, people: People, clock: FakeClock
) -> None:
    await login(client, people.patient_1.email)
    token = await page_csrf(client, "/me")
    headers = {"X-CSRF-Token": token}
    own = f"/api/patients/{people.patient_1.id}/check-ins"
    body = await json_of(
        await client.post(own, json={"consciousness": "A", "on_oxygen": False}, headers=headers),
        201,
    )
    assert body["consciousness"] == "A"
    assert body["on_oxygen"] is False
    assert (body["entered_by"], body["entered_by_role"]) == (people.patient_1.id, "patient")
    assert body["taken_at"] == clock().strftime("%Y-%m-%dT%H:%M:%S.000Z")
    other = f"/api/patients/{people.patient_2.id}/check-ins"
    assert (await client.post(other, json={"consciousness": "A"}, headers=headers)).status == 403
    latest = await client.app[STORE].latest_check_ins(people.patient_1.id)
    assert latest.consciousness is not None
    assert latest.consciousness.id == body["id"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"consciousness": "X"}, "consciousness"),
        ({"on_oxygen": "yes"}, "on_oxygen"),
        ({}, "check_in"),
        ({"mood": "fine"}, "mood"),
    ],
)
async def test_bad_check_ins_name_the_field(
    client: Client, people: People, payload: dict[str, Any], field: str
) -> None:
    await login(client, people.nurse_a.email)
    token = await page_csrf(client)
    response = await client.post(
        f"/api/patients/{people.patient_1.id}/check-ins",
        json=payload,
        headers={"X-CSRF-Token": token},
    )
    body = await json_of(response, 400)
    assert body["error"].startswith(f"{field}:")


async def test_a_clinician_check_in_can_raise_a_news2_alert(
    client: Client, people: People, clock: FakeClock
) -> None:
    await breach(client, people, (RESPIRATORY_RATE, 16.0), (HEART_RATE, 72.0))
    clock.advance(seconds=timedelta(minutes=1).total_seconds())
    await login(client, people.nurse_a.email)
    token = await page_csrf(client)
    await json_of(
        await client.post(
            f"/api/patients/{people.patient_1.id}/check-ins",
            json={"consciousness": "V"},
            headers={"X-CSRF-Token": token},
        ),
        201,
    )
    body = await json_of(await client.get(f"/api/patients/{people.patient_1.id}/alerts"), 200)
    [alert] = body["alerts"]
    assert (alert["rule"], alert["score"], alert["severity"]) == ("news2", 3, "low")
