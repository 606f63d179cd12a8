"""A wearable's reading travels MQTT → ingestion → store → Socket.IO → the doctor's open
dashboard, and the patient page charts it: the real server, broker and browser."""

from __future__ import annotations

import json
from pathlib import Path

import aiomqtt
import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import PageErrors, Server
from tests.e2e.test_login_smoke import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

HEART_RATE = "8867-4"
SPO2 = "2708-6"


async def publish(server: Server, device: dict[str, object], payload: object) -> None:
    async with aiomqtt.Client(
        str(device["host"]),
        int(str(device["port"])),
        username=str(device["username"]),
        password=str(device["password"]),
        identifier=str(device["device_id"]),
        timeout=10.0,
    ) as client:
        await client.publish(str(device["topic"]), json.dumps(payload), qos=1)


async def test_a_new_reading_reaches_the_open_dashboard_and_the_chart(
    page: Page, server: Server, page_errors: PageErrors, shots: Path
) -> None:
    device = server.cli("device", "enroll", "--patient", server.patient.id, "--kind", "oximeter")
    await page.goto("/login")
    await sign_in(page, server.doctor.email, server.doctor.password)
    await expect(page.get_by_test_id("dashboard-title")).to_be_visible()
    await expect(page.get_by_test_id("live-state")).to_have_text("live")

    await publish(server, device, {"hr": 123, "spo2": 91, "rr": 22, "temp": 38.4})
    cell = page.get_by_test_id(f"vital-{server.patient.id}-{HEART_RATE}")
    await expect(cell).to_have_text("123")
    await expect(page.get_by_test_id(f"vital-{server.patient.id}-{SPO2}")).to_have_text("91")
    await page.screenshot(path=shots / "dashboard-live.png", full_page=True)

    await page.goto(f"/patients/{server.patient.id}")
    await expect(page.get_by_test_id(f"latest-{HEART_RATE}")).to_contain_text("123")
    chart = page.get_by_test_id(f"chart-{HEART_RATE}")
    await expect(chart.locator("canvas")).to_be_visible()
    await page.get_by_role("button", name="1 hour").click()
    await expect(chart.locator("canvas")).to_be_visible()
    await page.screenshot(path=shots / "patient-charts.png", full_page=True)
    assert page_errors.messages == []


async def test_the_care_team_enrolls_and_revokes_a_device_from_the_patient_page(
    page: Page, server: Server, page_errors: PageErrors
) -> None:
    await page.goto("/login")
    await sign_in(page, server.doctor.email, server.doctor.password)
    await page.goto(f"/patients/{server.patient.id}")
    await page.get_by_label("Enroll a device (kind)").fill("bp-cuff")
    await page.get_by_role("button", name="Enroll").click()
    await expect(page.get_by_test_id("device-credentials")).to_be_visible()
    device_id = (await page.get_by_test_id("cred-device_id").inner_text()).strip()
    password = (await page.get_by_test_id("cred-password").inner_text()).strip()
    assert len(password) >= 24

    await page.goto(f"/patients/{server.patient.id}")
    devices = page.get_by_test_id("devices")
    await expect(devices).to_contain_text(device_id)
    await page.get_by_role("button", name=f"Revoke bp-cuff {device_id}").click()
    await expect(devices).to_contain_text("revoked")
    with pytest.raises(aiomqtt.MqttError):
        await publish(
            server,
            {
                "host": "127.0.0.1",
                "port": server.env["TELEMED_MQTT_PORT"],
                "username": device_id,
                "password": password,
                "device_id": device_id,
                "topic": "x",
            },
            {"hr": 60},
        )
    assert page_errors.messages == []
