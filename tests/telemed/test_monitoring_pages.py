"""The care team's monitoring forms on the patient page, and the patient's own check-in."""

from __future__ import annotations

from datetime import timedelta

from aiohttp.test_utils import TestClient

from telemed.monitoring import Alert, Observation
from telemed.web.keys import MONITOR, STORE
from tests.conftest import FakeClock, People, login, page_csrf

Client = TestClient  # type: ignore[type-arg]


async def breach(client: Client, people: People, clock: FakeClock, value: float) -> None:
    at = clock.now - timedelta(seconds=5)
    obs = Observation(people.patient_1.id, "dev1", "8867-4", value, "/min", at, at)
    await client.app[STORE].add_observations([obs])
    await client.app[MONITOR].observations_stored([obs])


async def threshold_alert(client: Client, people: People) -> Alert:
    """A heart rate of 171 also scores 3 on NEWS2: take the threshold rule's alert."""
    found = await client.app[STORE].alerts(people.patient_1.id)
    return next(a for a in found if a.rule.startswith("threshold:8867-4"))


async def post(client: Client, path: str, page: str, data: dict[str, str]) -> tuple[int, str]:
    token = await page_csrf(client, page)
    response = await client.post(path, data={**data, "csrf_token": token})
    return response.status, await response.text()


async def test_an_alert_is_shown_acknowledged_and_resolved_from_the_patient_page(
    client: Client, people: People, clock: FakeClock
) -> None:
    await breach(client, people, clock, 171)
    await login(client, people.doctor_a.email)
    page = f"/patients/{people.patient_1.id}"
    text = await (await client.get(page)).text()
    assert "heart rate" in text.lower()
    alert = await threshold_alert(client, people)
    status, text = await post(client, f"{page}/alerts/{alert.id}", page, {"action": "acknowledge"})
    assert status == 200
    acked = await client.app[STORE].get_alert(alert.id)
    assert acked is not None
    assert acked.acknowledged_by == people.doctor_a.id
    status, text = await post(client, f"{page}/alerts/{alert.id}", page, {"action": "resolve"})
    assert status == 200
    resolved = await client.app[STORE].get_alert(alert.id)
    assert resolved is not None
    assert resolved.state.value == "resolved"
    assert f'data-alert="{alert.id}"' not in text
    status, text = await post(client, f"{page}/alerts/{alert.id}", page, {"action": "nope"})
    assert status == 400
    assert "action: must be acknowledge or resolve" in text


async def test_another_teams_doctor_cannot_act_on_the_alert(
    client: Client, people: People, clock: FakeClock
) -> None:
    await breach(client, people, clock, 171)
    alert = await threshold_alert(client, people)
    await login(client, people.doctor_b.email)
    token = await page_csrf(client, "/dashboard")
    response = await client.post(
        f"/patients/{people.patient_1.id}/alerts/{alert.id}",
        data={"action": "acknowledge", "csrf_token": token},
    )
    assert response.status == 403
    unchanged = await client.app[STORE].get_alert(alert.id)
    assert unchanged is not None
    assert unchanged.acknowledged_by == ""


async def test_check_ins_complete_the_news2_inputs(
    client: Client, people: People, clock: FakeClock
) -> None:
    await login(client, people.nurse_a.email)
    page = f"/patients/{people.patient_1.id}"
    text = await (await client.get(page)).text()
    assert "incomplete" in text
    status, text = await post(
        client, f"{page}/check-ins", page, {"consciousness": "A", "oxygen": "air"}
    )
    assert status == 200
    latest = await client.app[STORE].latest_check_ins(people.patient_1.id)
    assert latest.consciousness is not None
    assert latest.consciousness.consciousness == "A"
    assert latest.on_oxygen is not None
    assert latest.on_oxygen.on_oxygen is False
    status, text = await post(client, f"{page}/check-ins", page, {"consciousness": "Z"})
    assert status == 400
    assert "consciousness: choose A, C, V, P or U" in text


async def test_the_patient_checks_in_from_their_page(
    client: Client, people: People, clock: FakeClock
) -> None:
    await login(client, people.patient_1.email)
    status, text = await post(client, "/me/check-ins", "/me", {"oxygen": "oxygen"})
    assert status == 200
    assert "your care team can see it" in text
    latest = await client.app[STORE].latest_check_ins(people.patient_1.id)
    assert latest.on_oxygen is not None
    assert latest.on_oxygen.on_oxygen is True
    assert latest.on_oxygen.entered_by == people.patient_1.id


async def test_the_care_team_changes_the_plan(
    client: Client, people: People, clock: FakeClock
) -> None:
    await login(client, people.doctor_a.email)
    page = f"/patients/{people.patient_1.id}"
    fields = {
        "low-8867-4": "45",
        "high-8867-4": "120",
        "spo2_scale": "2",
        "offline_after_minutes": "60",
        "quiet_period_minutes": "20",
    }
    status, text = await post(client, f"{page}/monitoring", page, fields)
    assert status == 200
    plan = await client.app[STORE].get_monitoring_plan(people.patient_1.id)
    assert plan is not None
    assert plan.spo2_scale == 2
    assert plan.thresholds["8867-4"].low == 45
    assert plan.thresholds["8867-4"].high == 120
    assert plan.offline_after == timedelta(minutes=60)
    assert plan.updated_by == people.doctor_a.id
    status, text = await post(client, f"{page}/monitoring", page, {**fields, "high-8867-4": "lots"})
    assert status == 400
    assert "high-8867-4: must be a number" in text
