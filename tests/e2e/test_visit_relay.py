"""Calls through the server's relay, end to end in headless Chromium with fake cameras
and microphones.

- Three participants (doctor, patient, interpreter): the visit starts peer to peer and
  moves to the relay by itself when the doctor admits the interpreter (media.mode auto),
  without a reload; every participant then decodes every other's video and receives
  their sound. The interpreter is a late joiner: their picture of the others comes from
  the keyframes the relay asks of the publishers.
- A recording with both consents: the indicator on every page while it runs, stopped
  at once when the patient withdraws; the file, fetched by the doctor from the record,
  decodes with PyAV (video and audio frames), and the store holds no readable copy.

Every wait is on a condition under a timeout.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import av
import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import OpenParticipant, Participant, Server
from tests.e2e.test_visit_call import (
    CONNECT_TIMEOUT,
    STEP_TIMEOUT,
    book,
    open_doctor,
    patient_joins,
    wait_for_media,
    waiting_room,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

# How many other participants this page decodes a picture of (a remote <video> with a
# size and a participant), and how many of its newest connection's inbound audio
# streams carry bytes.
DECODING = """async ([pictures, sounds]) => {
  const seen = new Set();
  for (const v of document.querySelectorAll('video[data-testid^="remote-video"]')) {
    if (v.videoWidth > 0 && v.dataset.participant) seen.add(v.dataset.participant);
  }
  const pc = window.__pcs && window.__pcs[window.__pcs.length - 1];
  if (!pc) return false;
  let heard = 0;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio" && s.bytesReceived > 0) heard += 1;
  });
  return seen.size >= pictures && heard >= sounds;
}"""


DECODING_STATE = """async () => {
  const tracks = (v) => v.srcObject && v.srcObject.getTracks().map((t) => t.kind + ":" + t.muted);
  const videos = [...document.querySelectorAll('video[data-testid^="remote-video"]')].map(
    (v) => [v.dataset.participant, v.videoWidth, tracks(v)]);
  const pcs = (window.__pcs || []).map((pc) => [pc.connectionState, pc.signalingState]);
  const pc = window.__pcs && window.__pcs[window.__pcs.length - 1];
  const inbound = [];
  if (pc) (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp") inbound.push([s.kind, s.mid, s.bytesReceived, s.framesDecoded]);
  });
  return JSON.stringify({ videos, pcs, inbound });
}"""


async def decodes_everyone(page: Page, others: int) -> None:
    """Poll DECODING (async, which wait_for_function would not await) until it holds."""
    deadline = time.monotonic() + CONNECT_TIMEOUT / 1000
    while not await page.evaluate(DECODING, [others, others]):
        if time.monotonic() > deadline:
            state = await page.evaluate(DECODING_STATE)
            raise AssertionError(f"{page.url}: not decoding {others} others: {state}")
        await page.wait_for_timeout(50)


async def frames_grow(page: Page) -> None:
    """Frames keep arriving on every remote picture (two reads)."""
    count = """() => [...document.querySelectorAll('video[data-testid^="remote-video"]')]
      .map((v) => v.getVideoPlaybackQuality().totalVideoFrames)"""
    before = await page.evaluate(count)
    await page.wait_for_function(
        f"(before) => ({count})().every((n, i) => n > (before[i] || 0))",
        arg=before,
        timeout=STEP_TIMEOUT,
    )


async def in_relayed_call(
    participants: OpenParticipant, server: Server
) -> tuple[str, Participant, Participant]:
    """A visit booked, the patient admitted by the doctor: (visit id, doctor, patient)."""
    visit_id, join_url = book(server)
    doctor = await open_doctor(participants, server)
    patient = await patient_joins(participants, join_url)
    await doctor.page.get_by_test_id(f"admit-{visit_id}").click(timeout=STEP_TIMEOUT)
    await expect(doctor.page).to_have_url(re.compile(rf"/visits/{visit_id}$"))
    return visit_id, doctor, patient


async def interpreter_joins(
    participants: OpenParticipant,
    server: Server,
    visit_id: str,
    doctor: Participant,
    *,
    scripts: tuple[str, ...] = (),
) -> tuple[Participant, str]:
    """An interpreter invited from the command line opens their link, waits, and the
    doctor admits them: (their participant, guest id). `scripts` run before the page's."""
    invited = server.cli(
        "visit", "invite", "--visit", visit_id, "--role", "interpreter", "--name", "Ines Ortiz"
    )
    interpreter = await participants()
    for script in scripts:
        await interpreter.context.add_init_script(script)
    await interpreter.page.goto(str(invited["join_url"]))
    await interpreter.page.get_by_test_id("join").click()
    await expect(waiting_room(interpreter.page)).to_be_visible()
    guest_id = str(invited["guest_id"])
    await doctor.page.get_by_test_id(f"admit-guest-{guest_id}").click(timeout=STEP_TIMEOUT)
    return interpreter, guest_id


async def test_three_participants_through_the_relay_and_a_consented_recording(
    participants: OpenParticipant, server: Server, shots: Path
) -> None:
    visit_id, doctor, patient = await in_relayed_call(participants, server)
    await wait_for_media(doctor.page)
    await wait_for_media(patient.page)
    call_view = doctor.page.get_by_test_id("call-view")
    await expect(call_view).to_have_attribute("data-mode", "p2p")

    # The interpreter, invited from the command line, waits and is admitted.
    interpreter, guest_id = await interpreter_joins(participants, server, visit_id, doctor)
    page = interpreter.page

    # The visit moves to the relay by itself; everyone sees and hears everyone.
    await expect(call_view).to_have_attribute("data-mode", "relay", timeout=STEP_TIMEOUT)
    for person in (doctor, patient, interpreter):
        await decodes_everyone(person.page, 2)
    for person in (doctor, patient, interpreter):
        await frames_grow(person.page)
    pictures = doctor.page.locator('video[data-testid^="remote-video"]')
    assert sorted(
        [await v.get_attribute("data-participant") for v in await pictures.all()]
    ) == sorted(["patient", guest_id])
    await doctor.page.screenshot(path=shots / "visit-relay-doctor.png")
    await page.screenshot(path=shots / "visit-relay-interpreter.png")

    # Recording: the doctor asks, the patient agrees; everyone sees the indicator.
    await doctor.page.get_by_test_id("record-consent").click()
    await expect(patient.page.get_by_test_id("call-note")).to_contain_text(
        "The doctor asks to record this call", timeout=STEP_TIMEOUT
    )
    for person in (doctor, patient, interpreter):
        await expect(person.page.get_by_test_id("recording-indicator")).to_be_hidden()
    await patient.page.get_by_test_id("record-consent").click()
    for person in (doctor, patient, interpreter):
        await expect(person.page.get_by_test_id("recording-indicator")).to_be_visible(
            timeout=STEP_TIMEOUT
        )
    # A few seconds of everyone: a file starts on its publisher's next keyframe, which
    # the recording asked for as it started (bench/relay.py measures how soon one comes).
    await doctor.page.wait_for_timeout(3000)
    for person in (doctor, patient, interpreter):
        await frames_grow(person.page)
    await patient.page.screenshot(path=shots / "visit-relay-recording.png")
    # The patient withdraws: it stops at once, for everyone.
    await patient.page.get_by_test_id("record-consent").click()
    for person in (doctor, patient, interpreter):
        await expect(person.page.get_by_test_id("recording-indicator")).to_be_hidden(
            timeout=STEP_TIMEOUT
        )

    # The recordings are in the visit's record; the doctor plays them back.
    async def recordings() -> list[dict[str, object]]:
        answer = await doctor.page.request.get(f"/api/visits/{visit_id}/record")
        assert answer.ok, await answer.text()
        found = (await answer.json())["attachments"]
        return [a for a in found if a["content_type"] == "video/webm"]

    deadline = time.monotonic() + STEP_TIMEOUT / 1000
    while len(files := await recordings()) < 3 and time.monotonic() < deadline:
        await doctor.page.wait_for_timeout(200)
    assert len(files) == 3, files  # the doctor, the patient and the interpreter
    for attachment in files:
        answer = await doctor.page.request.get(f"/api/attachments/{attachment['id']}")
        assert answer.ok
        frames = {"video": 0, "audio": 0}
        with av.open(io.BytesIO(await answer.body())) as container:
            for frame in container.decode(*container.streams):
                frames["video" if isinstance(frame, av.VideoFrame) else "audio"] += 1
        assert frames["video"] > 0, attachment
        assert frames["audio"] > 0, attachment
    # ...and the store holds them sealed: no WebM (its muxer's name) in the database files
    var_dir = Path(server.env["TELEMED_VAR_DIR"])
    for stored in var_dir.glob("telemed.db*"):  # noqa: ASYNC240 (a test's own files)
        assert b"Lavf" not in stored.read_bytes(), stored  # noqa: ASYNC240
    assert not list((var_dir / "recordings").glob("**/*.webm"))  # noqa: ASYNC240

    for person in (doctor, patient, interpreter):
        assert not person.errors, person.errors
