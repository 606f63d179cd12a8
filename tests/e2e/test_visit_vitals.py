"""The call view shows the patient's vitals beside the video, live: a wearable's reading
travels MQTT → ingestion → Socket.IO to the open call view; the waiting room lists the
latest readings with the patient."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.e2e.conftest import OpenParticipant, Server
from tests.e2e.test_live_vitals import HEART_RATE, SPO2, publish
from tests.e2e.test_visit_call import STEP_TIMEOUT, book, open_doctor

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


async def test_the_call_view_shows_live_vitals_and_the_queue_the_latest(
    participants: OpenParticipant, server: Server
) -> None:
    device = server.cli("device", "enroll", "--patient", server.patient.id, "--kind", "oximeter")
    visit_id, _ = book(server)
    doctor = await open_doctor(participants, server)
    page = doctor.page

    await page.goto(f"/visits/{visit_id}")
    await expect(page.get_by_test_id("after-call-text")).to_contain_text("not arrived")
    await expect(page.get_by_test_id("vitals-state")).to_have_text("live")
    await publish(server, device, {"hr": 117, "spo2": 93})
    await expect(page.get_by_test_id(f"call-vital-{HEART_RATE}")).to_have_text("117 /min")
    await expect(page.get_by_test_id(f"call-vital-{SPO2}")).to_have_text("93 %")

    # The queue entry carries the latest readings when the patient arrives.
    patient = await participants()
    await patient.page.goto(str(server.cli("visit", "link", visit_id)["join_url"]))
    await patient.page.get_by_test_id("join").click()
    await page.goto("/dashboard")
    item = page.get_by_test_id(f"queue-{visit_id}")
    await expect(item).to_contain_text("HR 117", timeout=STEP_TIMEOUT)
    await expect(item).to_contain_text("SpO₂ 93")
    server.cli("visit", "cancel", visit_id)
    assert doctor.errors == []
