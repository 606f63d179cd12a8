"""A video visit from end to end, in two browser contexts with fake cameras and
microphones: the patient's link, the pre-call check, the waiting room, the doctor's
queue and admit, video and sound both ways, send back and admit again, the end of the
visit and its dead link; and a call that survives the patient's network dropping out.

Every wait is on a condition under a timeout. WebRTC statistics come from
`window.__rtcStats` (the `participants` fixture records each page's peer connections).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, expect

from tests.e2e.conftest import OpenParticipant, Participant, Server
from tests.e2e.test_login_smoke import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CONNECT_TIMEOUT = 30_000  # ms: ICE and the first decoded frames on a loaded machine
STEP_TIMEOUT = 15_000  # ms: a signaling round trip and the page's reaction


# True when one of the call's senders (`window.__rtc`, exposed by call.js) satisfies
# CHECK, given its track `t`, the track's `kind` and its encodings `e`.
SENDING = """() => window.__rtc !== null && window.__rtc.getSenders().some((sender) => {
  const t = sender.track;
  if (!t) return false;
  const kind = t.kind;
  const e = sender.getParameters().encodings || [];
  return CHECK;
})"""


def book(server: Server) -> tuple[str, str]:
    """A visit of the doctor's patient, booked through the CLI: (visit id, join link)."""
    booking = server.cli(
        "visit", "create", "--patient", server.patient.id, "--doctor", server.doctor.id
    )
    return str(booking["visit_id"]), str(booking["join_url"])


async def open_doctor(participants: OpenParticipant, server: Server) -> Participant:
    doctor = await participants()
    await doctor.page.goto("/login")
    await sign_in(doctor.page, server.doctor.email, server.doctor.password)
    await expect(doctor.page.get_by_test_id("dashboard-title")).to_be_visible()
    await expect(doctor.page.get_by_test_id("queue-state")).to_have_text("live")
    return doctor


async def patient_joins(participants: OpenParticipant, join_url: str) -> Participant:
    """The patient opens the link, passes the pre-call check and joins the waiting room."""
    patient = await participants()
    page = patient.page
    await page.goto(join_url)
    await page.get_by_test_id("check").click()
    await expect(page.get_by_test_id("camera-result")).to_have_attribute("data-ok", "true")
    await expect(page.get_by_test_id("mic-result")).to_have_attribute("data-ok", "true")
    advice = page.get_by_test_id("recommendation")
    await expect(advice).to_have_attribute("data-recommendation", "video", timeout=STEP_TIMEOUT)
    await page.get_by_test_id("join").click()
    await expect(waiting_room(page)).to_be_visible()
    return patient


def waiting_room(page: Page) -> Locator:
    return page.locator("#waiting")


async def pc_count(page: Page) -> int:
    count: int = await page.evaluate("window.__pcs ? window.__pcs.length : 0")
    return count


async def wait_for_media(page: Page, *, newer_than: int = 0) -> None:
    """Video frames decoded and sound arriving on a peer connection created after the
    first `newer_than`, and the remote video element showing a picture."""
    await page.wait_for_function(
        "([n]) => window.__rtcStats && window.__rtcStats.pc >= n"
        " && window.__rtcStats.framesDecoded > 0",
        arg=[newer_than],
        timeout=CONNECT_TIMEOUT,
    )
    await page.wait_for_function(
        "() => { const v = document.querySelector('[data-testid=remote-video]');"
        " return v !== null && v.videoWidth > 0 && v.videoHeight > 0; }",
        timeout=CONNECT_TIMEOUT,
    )
    await media_flows(page)


async def media_flows(page: Page) -> None:
    """On the page's newest peer connection, connected, frames and audio bytes keep
    arriving (two reads)."""
    await page.wait_for_function(
        "() => { const s = window.__rtcStats; return s !== null && s.state === 'connected'"
        " && s.pc === window.__pcs.length - 1 && s.framesDecoded > 0; }",
        timeout=CONNECT_TIMEOUT,
    )
    first = await page.evaluate("window.__rtcStats")
    await page.wait_for_function(
        "([pc, frames, audio]) => { const s = window.__rtcStats;"
        " return s && s.pc === pc && s.framesDecoded > frames"
        " && s.audioBytesReceived > audio; }",
        arg=[first["pc"], first["framesDecoded"], first["audioBytesReceived"]],
        timeout=STEP_TIMEOUT,
    )


async def test_a_visit_from_link_to_end(
    participants: OpenParticipant, server: Server, shots: Path
) -> None:
    visit_id, join_url = book(server)
    doctor = await open_doctor(participants, server)
    patient = await patient_joins(participants, join_url)

    # The doctor sees the patient waiting, with their pre-call check, and admits them.
    item = doctor.page.get_by_test_id(f"queue-{visit_id}")
    await expect(item).to_contain_text(server.patient.name, timeout=STEP_TIMEOUT)
    await expect(item).to_contain_text("camera ok", timeout=STEP_TIMEOUT)
    await expect(item.locator(".presence.online")).to_have_count(1)
    await doctor.page.screenshot(path=shots / "visit-queue.png", full_page=True)
    await doctor.page.get_by_test_id(f"admit-{visit_id}").click()
    await expect(doctor.page).to_have_url(re.compile(rf"/visits/{visit_id}$"))

    await wait_for_media(doctor.page)
    await wait_for_media(patient.page)
    await doctor.page.screenshot(path=shots / "visit-call-doctor.png")
    await patient.page.screenshot(path=shots / "visit-call-patient.png")

    # Chat both ways; the doctor's camera off and on again (audio only).
    await doctor.page.get_by_test_id("chat-text").fill("Can you hear me well?")
    await doctor.page.get_by_test_id("chat-text").press("Enter")
    await expect(patient.page.get_by_test_id("chat-log")).to_contain_text("Can you hear me well?")
    await patient.page.get_by_test_id("chat-text").fill("Yes, loud and clear.")
    await patient.page.get_by_test_id("chat-send").click()
    await expect(doctor.page.get_by_test_id("chat-log")).to_contain_text("Yes, loud and clear.")
    await doctor.page.get_by_test_id("audio-only").click()
    await expect(patient.page.get_by_test_id("remote-note")).to_be_visible()
    await expect(doctor.page.get_by_test_id("audio-only")).to_have_attribute("aria-pressed", "true")
    await doctor.page.get_by_test_id("audio-only").click()
    await expect(patient.page.get_by_test_id("remote-note")).to_be_hidden()
    # Mute, and the low-bandwidth profile: the sender's track and encoding change.
    await doctor.page.get_by_test_id("mute").click()
    await doctor.page.wait_for_function(SENDING.replace("CHECK", "kind === 'audio' && !t.enabled"))
    await doctor.page.get_by_test_id("mute").click()
    await doctor.page.wait_for_function(SENDING.replace("CHECK", "kind === 'audio' && t.enabled"))
    await doctor.page.get_by_test_id("low-bandwidth").click()
    await doctor.page.wait_for_function(
        SENDING.replace("CHECK", "kind === 'video' && e.some((x) => x.maxBitrate === 150000)")
    )
    await doctor.page.get_by_test_id("low-bandwidth").click()
    await doctor.page.wait_for_function(
        SENDING.replace("CHECK", "kind === 'video' && e.every((x) => !x.maxBitrate)")
    )

    # Sent back: the patient is in the waiting room again; admitted again from the queue.
    before = await pc_count(patient.page), await pc_count(doctor.page)
    await doctor.page.get_by_test_id(f"send-back-{visit_id}").click()
    await expect(patient.page.get_by_test_id("sent-back")).to_be_visible(timeout=STEP_TIMEOUT)
    await expect(waiting_room(patient.page)).to_be_visible()
    await expect(doctor.page.get_by_test_id("after-call")).to_be_visible()
    await doctor.page.screenshot(path=shots / "visit-sent-back-doctor.png")
    await doctor.page.goto("/dashboard")
    await expect(doctor.page.get_by_test_id(f"admit-{visit_id}")).to_be_visible(
        timeout=STEP_TIMEOUT
    )
    await doctor.page.get_by_test_id(f"admit-{visit_id}").click()
    await expect(doctor.page).to_have_url(re.compile(rf"/visits/{visit_id}$"))
    await wait_for_media(patient.page, newer_than=before[0])
    await wait_for_media(doctor.page)

    # The end: confirmed, the patient is told, the link is dead.
    await doctor.page.get_by_test_id("end-visit").click()
    await doctor.page.get_by_test_id("end-visit-confirm").click()
    await expect(doctor.page.get_by_test_id("after-call-text")).to_contain_text("ended")
    await patient_sees_the_end(patient.page)
    await patient.page.screenshot(path=shots / "visit-ended-patient.png")
    reopened = await patient.page.goto(join_url)
    assert reopened is not None
    assert reopened.status == 410
    await expect(patient.page.locator("body")).to_contain_text("ended")
    claim = await patient.page.request.post(
        join_url + "/claim", headers={"X-CSRF-Token": await csrf_cookie(patient)}
    )
    assert claim.status == 410, f"claim of a dead link answered {claim.status}"
    assert "ended" in (await claim.json())["error"]
    assert doctor.errors == []
    assert [e for e in patient.errors if "410" not in e] == []


async def csrf_cookie(person: Participant) -> str:
    """The double-submit CSRF token a visitor without a session holds."""
    for cookie in await person.context.cookies():
        if cookie.get("name") == "telemed_login_csrf":
            return str(cookie.get("value"))
    raise AssertionError("no CSRF cookie: the visit page did not set one")


async def test_the_call_recovers_when_the_patient_goes_offline(
    participants: OpenParticipant, server: Server
) -> None:
    visit_id, join_url = book(server)
    doctor = await open_doctor(participants, server)
    patient = await patient_joins(participants, join_url)
    # This time the doctor admits from the call view itself.
    await doctor.page.goto(f"/visits/{visit_id}")
    await doctor.page.get_by_test_id(f"admit-{visit_id}").click(timeout=STEP_TIMEOUT)
    await wait_for_media(doctor.page)
    await wait_for_media(patient.page)

    # The patient's network drops: the doctor's view sees them leave the call...
    # (Chromium's offline emulation cuts HTTP and WebSockets, the signaling, but not the
    # peer-to-peer media on loopback: what recovers here is the signaling, and with it a
    # new peer connection, since a new socket is a new `sid` (docs/visit-protocol.md).)
    call_view = doctor.page.get_by_test_id("call-view")
    await patient.context.set_offline(True)
    await expect(call_view).to_have_attribute("data-call", "waiting", timeout=STEP_TIMEOUT)
    await expect(doctor.page.get_by_test_id("call-status")).to_contain_text("Waiting for")
    # ...and when it is back, the call comes back by itself: no click on either side.
    await patient.context.set_offline(False)
    await expect(call_view).to_have_attribute("data-call", "connected", timeout=CONNECT_TIMEOUT)
    await media_flows(patient.page)
    await media_flows(doctor.page)
    await expect(patient.page.get_by_test_id("remote-video")).to_be_visible()
    await expect(waiting_room(patient.page)).to_be_hidden()
    state = await doctor.page.request.get(f"/api/visits/{visit_id}")
    assert (await state.json())["state"] == "in_call"
    # Each side's getStats summary reaches the call view (rtc.js samples every 5 s).
    await expect(doctor.page.get_by_test_id("q-rtt")).to_have_text(
        re.compile(r"^\d+ ms$"), timeout=CONNECT_TIMEOUT
    )
    await expect(doctor.page.get_by_test_id("q-peer")).not_to_have_text("–")

    await doctor.page.get_by_test_id("end-visit").click()
    await doctor.page.get_by_test_id("end-visit-confirm").click()
    await patient_sees_the_end(patient.page)
    assert doctor.errors == []


async def patient_sees_the_end(page: Page) -> None:
    """The patient's page shows the visit's end (not a refusal, not the waiting room)."""
    await expect(page.get_by_test_id("ended")).to_be_visible(timeout=STEP_TIMEOUT)
    await expect(page.get_by_test_id("ended")).to_contain_text("ended")
    await expect(page.get_by_test_id("remote-video")).to_be_hidden()
