"""The patient's room in headless Chromium with fake camera and microphone: the pre-call
check, a camera refused by the browser, a 320 px wide phone, the page's weight on the
wire, Spanish, and the waiting room (with a reload that keeps the place).

Each test books its own visit through the CLI for a patient of its own (on the doctor's
care team) and cancels it afterwards, so that the doctor's queue is left as it was.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect

from tests.e2e.conftest import CHROMIUM_ARGS, CSP_REPORTER, OpenParticipant, PageErrors, Server
from tests.e2e.test_login_smoke import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

PHONE: ViewportSize = {"width": 320, "height": 640}
PAGE_BUDGET = 150_000  # bytes on the wire for the first load, everything included
CHECK_TIMEOUT_MS = 30_000
CLI_POLL_TIMEOUT = 20.0
CONNECT_TIMEOUT_MS = 30_000  # ICE and the first decoded frames on a loaded machine
LOUD = re.compile(r"^(1\.000|0\.[1-9]\d\d|0\.0[5-9]\d)$")  # a meter peak of 0.05 or more


@dataclass(frozen=True, slots=True)
class Booked:
    visit_id: str
    url: str
    patient_id: str


def add_patient(server: Server, email: str, name: str, language: str) -> str:
    data = server.cli(
        "user", "add", "--role", "patient", "--email", email, "--name", name,
        "--language", language,
    )  # fmt: skip
    patient_id = str(data["id"])
    server.cli("care-team", "add", "--patient", patient_id, "--clinician", server.doctor.id)
    return patient_id


@pytest.fixture(scope="module")
def english_patient(server: Server) -> str:
    return add_patient(server, "vera.visit@example.org", "Vera Visit", "en")


@pytest.fixture(scope="module")
def spanish_patient(server: Server) -> str:
    return add_patient(server, "lucia.visita@example.org", "Lucía Visita", "es")


def book(server: Server, patient_id: str) -> Iterator[Booked]:
    data = server.cli("visit", "create", "--patient", patient_id, "--doctor", server.doctor.id)
    booked = Booked(str(data["visit_id"]), str(data["join_url"]), patient_id)
    try:
        yield booked
    finally:
        if stored_visit(server, booked)["state"] in ("scheduled", "waiting"):
            server.cli("visit", "cancel", booked.visit_id)  # off the doctor's queue


@pytest.fixture
def visit(server: Server, english_patient: str) -> Iterator[Booked]:
    yield from book(server, english_patient)


@pytest.fixture
def spanish_visit(server: Server, spanish_patient: str) -> Iterator[Booked]:
    yield from book(server, spanish_patient)


def stored_visit(server: Server, booked: Booked) -> dict[str, object]:
    data = server.cli("visit", "list", "--patient", booked.patient_id)
    visits = data["visits"]
    assert isinstance(visits, list)
    found = [v for v in visits if v["visit_id"] == booked.visit_id]
    assert found, f"visit {booked.visit_id} is not listed"
    result: dict[str, object] = found[0]
    return result


async def wait_for_stored(server: Server, booked: Booked, key: str) -> dict[str, object]:
    """Poll the store (through the CLI, in a thread) until the visit's `key` is set."""
    deadline = time.monotonic() + CLI_POLL_TIMEOUT
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(stored_visit, server, booked)
        if found.get(key):
            return found
        await asyncio.sleep(0.2)
    pytest.fail(f"visit {booked.visit_id}: {key} was not stored within {CLI_POLL_TIMEOUT:g} s")


async def run_check(page: Page) -> None:
    await page.get_by_test_id("check").click()
    await expect(page.get_by_test_id("recommendation")).to_be_visible(timeout=CHECK_TIMEOUT_MS)


async def scroll_width(page: Page) -> int:
    width: int = await page.evaluate("document.documentElement.scrollWidth")
    return width


# the pre-call check ------------------------------------------------------------------------
async def test_the_precheck_passes_with_fake_devices(
    page: Page, server: Server, visit: Booked, page_errors: PageErrors, shots: Path
) -> None:
    response = await page.goto(visit.url)
    assert response is not None
    assert response.status == 200
    await expect(page.get_by_role("heading", name="Before your visit")).to_be_visible()
    await run_check(page)

    await expect(page.get_by_test_id("camera-result")).to_have_attribute("data-ok", "true")
    await expect(page.get_by_test_id("mic-result")).to_have_attribute("data-ok", "true")
    await expect(page.get_by_test_id("rtt")).to_have_text(re.compile(r"^\d+ ms$"))
    await expect(page.get_by_test_id("upload")).to_have_text(re.compile(r"^[\d.]+ [Mk]bit/s$"))
    advice = page.get_by_test_id("recommendation")
    await expect(advice).to_have_attribute("data-recommendation", "video")
    await expect(advice).to_contain_text("good enough for video")
    # the fake microphone beeps: the level meter moves
    await expect(page.get_by_test_id("mic-level")).to_have_attribute(
        "data-peak", LOUD, timeout=CHECK_TIMEOUT_MS
    )
    playing = await page.evaluate(
        "(() => { const v = document.querySelector('[data-testid=preview]');"
        " return v.srcObject !== null && v.srcObject.getVideoTracks().length })()"
    )
    assert playing == 1
    await page.screenshot(path=shots / "visit-precheck.png", full_page=True)

    # the clinic got the result over Socket.IO (the `precheck` event)
    precheck = (await wait_for_stored(server, visit, "precheck"))["precheck"]
    assert isinstance(precheck, dict)
    assert precheck["camera"] is True
    assert precheck["microphone"] is True
    assert precheck["recommendation"] == "video"
    assert isinstance(precheck["rtt_ms"], int | float)
    assert isinstance(precheck["upload_kbps"], int | float)
    assert precheck["upload_kbps"] > 100
    assert page_errors.messages == []


async def test_a_slow_uplink_gets_audio_only_advice(
    page: Page, server: Server, visit: Booked, page_errors: PageErrors
) -> None:
    await page.goto(visit.url)
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 200,  # ms, each way's share of a rural mobile link
            "downloadThroughput": 64_000,  # bytes/s
            "uploadThroughput": 7_000,  # bytes/s: 56 kbit/s, below audio_only_below_kbps
        },
    )
    await run_check(page)
    advice = page.get_by_test_id("recommendation")
    await expect(advice).to_have_attribute("data-recommendation", "audio")
    await expect(advice).to_contain_text("We suggest a voice-only call")
    await expect(page.get_by_test_id("upload")).to_have_attribute("data-ok", "false")
    rtt = await page.get_by_test_id("rtt").text_content()
    assert rtt is not None
    assert int(rtt.split()[0]) >= 200
    precheck = (await wait_for_stored(server, visit, "precheck"))["precheck"]
    assert isinstance(precheck, dict)
    assert precheck["recommendation"] == "audio"
    await page.get_by_test_id("join").click()
    await expect(page.get_by_test_id("voice-only-choice")).to_be_checked()
    assert page_errors.messages == []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def denying_browser(chromium_executable: Path) -> AsyncIterator[Browser]:
    """Chromium that answers every camera and microphone prompt with "block"."""
    args = [a for a in CHROMIUM_ARGS if a != "--use-fake-ui-for-media-stream"]
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(chromium_executable),
            headless=True,
            args=[*args, "--deny-permission-prompts"],
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_a_blocked_camera_is_explained_in_plain_words(
    denying_browser: Browser, server: Server, visit: Booked
) -> None:
    context = await denying_browser.new_context(base_url=server.base_url)
    try:
        await context.add_init_script(CSP_REPORTER)
        page = await context.new_page()
        await page.goto(visit.url)
        await run_check(page)
        help_text = page.get_by_test_id("media-help")
        await expect(help_text).to_be_visible()
        await expect(help_text).to_contain_text("is not letting this page use the camera")
        await expect(help_text).to_contain_text("allow the camera and the microphone")
        await expect(page.get_by_test_id("camera-result")).to_have_attribute("data-ok", "false")
        await expect(page.get_by_test_id("mic-result")).to_have_attribute("data-ok", "false")
        advice = page.get_by_test_id("recommendation")
        await expect(advice).to_contain_text("will not hear you without a microphone")
    finally:
        await context.close()


# a small phone ------------------------------------------------------------------------------
@pytest.mark.parametrize("viewport", [PHONE], ids=["320"])
async def test_the_room_is_readable_at_320_px(
    page: Page, visit: Booked, viewport: ViewportSize, page_errors: PageErrors, shots: Path
) -> None:
    await page.goto(visit.url)
    assert await scroll_width(page) <= viewport["width"]
    await run_check(page)
    await expect(page.get_by_test_id("upload")).to_have_text(re.compile(r"bit/s$"))
    await page.screenshot(path=shots / "visit-precheck-320.png", full_page=True)
    assert await scroll_width(page) <= viewport["width"]
    font_px = await page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
    assert font_px >= 16
    await page.get_by_test_id("join").click()
    await expect(page.get_by_test_id("place")).to_have_text(re.compile(r"^\d+$"))
    await page.screenshot(path=shots / "visit-waiting-320.png", full_page=True)
    assert await scroll_width(page) <= viewport["width"]
    assert page_errors.messages == []


# the page's weight -----------------------------------------------------------------------------
async def test_the_first_load_weighs_at_most_150_kb(browser: Browser, visit: Booked) -> None:
    context = await browser.new_context()  # empty cache
    try:
        page = await context.new_page()
        cdp = await context.new_cdp_session(page)
        await cdp.send("Network.enable")
        await cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        sizes: dict[str, int] = {}
        urls: dict[str, str] = {}
        encodings: dict[str, str] = {}

        def on_response(event: dict[str, object]) -> None:
            response = event["response"]
            assert isinstance(response, dict)
            request_id = str(event["requestId"])
            urls[request_id] = str(response["url"])
            headers = {str(k).lower(): str(v) for k, v in dict(response["headers"]).items()}
            encodings[request_id] = headers.get("content-encoding", "")

        def on_finished(event: dict[str, object]) -> None:
            length = event["encodedDataLength"]
            assert isinstance(length, int | float)
            sizes[str(event["requestId"])] = int(length)

        cdp.on("Network.responseReceived", on_response)
        cdp.on("Network.loadingFinished", on_finished)
        await page.goto(visit.url, wait_until="networkidle")
        await expect(page.get_by_test_id("join")).to_be_enabled()

        total = sum(sizes.values())
        lines = [f"{sizes[r]:>8} B  {encodings.get(r) or '-':5} {urls.get(r, r)}" for r in sizes]
        print("\npatient room, first load:\n" + "\n".join(lines) + f"\n{total:>8} B  total")  # noqa: T201
        scripts = [r for r in sizes if urls.get(r, "").split("?")[0].endswith(".js")]
        assert len(scripts) == 3, urls  # socket.io, rtc.js, visit.js
        assert all(encodings[r] == "gzip" for r in scripts), encodings
        assert total <= PAGE_BUDGET, f"the patient room weighs {total} bytes on first load"
    finally:
        await context.close()


# Spanish ------------------------------------------------------------------------------------------
async def test_the_room_speaks_spanish_to_a_spanish_speaking_patient(
    page: Page, spanish_visit: Booked, page_errors: PageErrors, shots: Path
) -> None:
    await page.goto(spanish_visit.url)
    assert await page.evaluate("document.documentElement.lang") == "es"
    await expect(page.get_by_role("heading", name="Antes de su consulta")).to_be_visible()
    await expect(page.get_by_test_id("join")).to_have_text("Entrar a la sala de espera")
    await expect(page.get_by_test_id("when")).to_contain_text("Su consulta está programada")
    await run_check(page)
    await expect(page.get_by_test_id("camera-result")).to_have_text("funciona")
    await expect(page.get_by_test_id("recommendation")).to_contain_text("Todo funciona")
    await page.get_by_test_id("join").click()
    await expect(page.get_by_role("heading", name="Está en la sala de espera")).to_be_visible()
    await page.screenshot(path=shots / "visit-es.png", full_page=True)
    assert page_errors.messages == []


# the waiting room, and a reload ---------------------------------------------------------------
async def test_joining_then_reloading_keeps_the_place_in_the_waiting_room(
    page: Page, server: Server, visit: Booked, page_errors: PageErrors
) -> None:
    await page.goto(visit.url)
    await page.get_by_test_id("join").click()  # no check first: it runs while waiting
    await expect(page.get_by_role("heading", name="You are in the waiting room")).to_be_visible()
    place = page.get_by_test_id("place")
    await expect(place).to_have_text(re.compile(r"^\d+$"))
    first_place = await place.text_content()
    arrived = await wait_for_stored(server, visit, "waiting_since")
    assert arrived["state"] == "waiting"
    assert (await wait_for_stored(server, visit, "precheck"))["precheck"]

    await page.reload()
    # the pass brings this browser back: no button to press, same place in line
    await expect(page.get_by_role("heading", name="You are in the waiting room")).to_be_visible()
    await expect(place).to_have_text(first_place or "")
    again = await asyncio.to_thread(stored_visit, server, visit)
    assert again["waiting_since"] == arrived["waiting_since"]
    assert page_errors.messages == []


async def test_another_browser_cannot_use_a_claimed_link(
    browser: Browser, page: Page, server: Server, visit: Booked
) -> None:
    await page.goto(visit.url)
    await page.get_by_test_id("join").click()
    await expect(page.get_by_test_id("place")).to_have_text(re.compile(r"^\d+$"))
    other = await browser.new_context(base_url=server.base_url)
    try:
        stranger = await other.new_page()
        await stranger.goto(visit.url)
        await stranger.get_by_test_id("join").click()
        await expect(stranger.get_by_test_id("refused")).to_be_visible()
        await expect(stranger.get_by_test_id("refused-message")).to_contain_text(
            "already opened on another device"
        )
    finally:
        await other.close()


# the call, and a reload in the middle of it -----------------------------------------------------
REMOTE_PICTURE = (
    "([n]) => { const v = document.querySelector('[data-testid=remote-video]');"
    " return window.__pcs.length > n && v !== null && v.videoWidth > 0 }"
)


VIDEO_SENDING = (
    "() => window.__pcs[window.__pcs.length - 1].getSenders()"
    ".some((s) => s.track !== null && s.track.kind === 'video' && s.track.readyState === 'live')"
)


async def test_a_reload_during_the_call_comes_back_into_the_call(
    participants: OpenParticipant, server: Server, visit: Booked
) -> None:
    doctor = await participants()
    await doctor.page.goto("/login")
    await sign_in(doctor.page, server.doctor.email, server.doctor.password)
    await expect(doctor.page.get_by_test_id("queue-state")).to_have_text("live")
    patient = await participants()
    await patient.page.goto(visit.url)
    await patient.page.get_by_test_id("join").click()
    await expect(patient.page.get_by_test_id("place")).to_have_text(re.compile(r"^\d+$"))
    await doctor.page.get_by_test_id(f"admit-{visit.visit_id}").click(timeout=CHECK_TIMEOUT_MS)

    call = patient.page.locator("#call")
    await expect(call).to_be_visible(timeout=CHECK_TIMEOUT_MS)
    await patient.page.wait_for_function(REMOTE_PICTURE, arg=[0], timeout=CONNECT_TIMEOUT_MS)
    await expect(patient.page.get_by_test_id("quality")).to_contain_text(
        "Connection:", timeout=CONNECT_TIMEOUT_MS
    )
    admitted = await asyncio.to_thread(stored_visit, server, visit)
    assert admitted["state"] == "in_call"

    await patient.page.reload()  # a new page: the pass takes it back into the call
    await expect(call).to_be_visible(timeout=CHECK_TIMEOUT_MS)
    await patient.page.wait_for_function(REMOTE_PICTURE, arg=[0], timeout=CONNECT_TIMEOUT_MS)
    again = await asyncio.to_thread(stored_visit, server, visit)
    assert again["state"] == "in_call"
    assert again["waiting_since"] == admitted["waiting_since"]

    # voice only: the camera stops, the doctor is told; and back
    doctor_note = doctor.page.get_by_test_id("remote-note")
    voice = patient.page.get_by_test_id("toggle-audio-only")
    await voice.click()
    await expect(voice).to_have_attribute("aria-pressed", "true")
    await expect(doctor_note).to_be_visible(timeout=CHECK_TIMEOUT_MS)
    await expect(patient.page.locator("#self")).to_be_hidden()
    assert await patient.page.evaluate(VIDEO_SENDING) is False
    await voice.click()
    await expect(voice).to_have_attribute("aria-pressed", "false")
    await expect(doctor_note).to_be_hidden(timeout=CHECK_TIMEOUT_MS)
    assert await patient.page.evaluate(VIDEO_SENDING) is True

    # less data: the video sender is capped at low_bandwidth_kbps (config.toml: 150)
    low = patient.page.get_by_test_id("toggle-low-data")
    await low.click()
    await expect(low).to_have_attribute("aria-pressed", "true")
    await patient.page.wait_for_function(
        "() => { const pc = window.__pcs[window.__pcs.length - 1];"
        " const s = pc.getSenders().find((x) => x.track && x.track.kind === 'video');"
        " return s && s.getParameters().encodings[0].maxBitrate === 150000 }",
        timeout=CHECK_TIMEOUT_MS,
    )

    # chat is text: markup arrives as the characters typed
    text = "<b>dizzy</b> & <img src=x> since Monday"
    await patient.page.get_by_test_id("chat-text").fill(text)
    await patient.page.get_by_test_id("chat-send").click()
    log = patient.page.get_by_test_id("chat-log")
    await expect(log.locator("li.mine")).to_contain_text(text, timeout=CHECK_TIMEOUT_MS)
    await expect(log.locator("b, img")).to_have_count(0)

    await doctor.page.get_by_test_id("end-visit").click()
    await doctor.page.get_by_test_id("end-visit-confirm").click()
    await expect(patient.page.get_by_test_id("ended")).to_be_visible(timeout=CHECK_TIMEOUT_MS)
    assert patient.errors == []
