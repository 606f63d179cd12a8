"""A visit on a server whose media.mode is "relay": two participants, and the call goes
through the server from the start (the case of networks where peer to peer never
connects). Both decode each other's video and hear each other; a reload comes back into
the relayed call with a new connection.

Every wait is on a condition under a timeout.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.async_api import expect

from tests.e2e.conftest import OpenParticipant, Server, running_server
from tests.e2e.test_visit_call import STEP_TIMEOUT
from tests.e2e.test_visit_relay import (
    decodes_everyone,
    frames_grow,
    in_relayed_call,
    interpreter_joins,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

LATE_JOINER_MS = 1000  # the product's promise: a late joiner sees the others within 1 s

# For each peer connection of the page (`window.__pcs`, from the participants fixture):
# when ICE connected, and when each inbound video (by mid) first had a frame decoded
# (performance.now(), polled every 20 ms: the figure is late by up to that much).
FIRST_FRAMES = """
(() => {
  window.__firstFrames = [];
  const seen = new Map();
  setInterval(async () => {
    for (const pc of window.__pcs || []) {
      if (pc.signalingState === "closed") continue;
      let entry = seen.get(pc);
      if (!entry) {
        entry = { connected: null, first: {} };
        seen.set(pc, entry);
        window.__firstFrames.push(entry);
      }
      const ice = pc.iceConnectionState;
      if (entry.connected === null && (ice === "connected" || ice === "completed")) {
        entry.connected = performance.now();
      }
      if (entry.connected === null) continue;
      (await pc.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video" && s.framesDecoded > 0
            && !(s.mid in entry.first)) {
          entry.first[s.mid] = performance.now();
        }
      });
    }
  }, 20);
})();
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's own server, relaying every call."""
    with running_server(
        tmp_path_factory.mktemp("telemed-relay"), settings={"TELEMED_MEDIA_MODE": "relay"}
    ) as running:
        yield running


async def test_a_forced_relay_visit_between_two_participants(
    participants: OpenParticipant, server: Server
) -> None:
    visit_id, doctor, patient = await in_relayed_call(participants, server)
    await expect(doctor.page.get_by_test_id("call-view")).to_have_attribute("data-mode", "relay")
    for person in (doctor, patient):
        await decodes_everyone(person.page, 1)
        await frames_grow(person.page)
    # the doctor's picture of the patient is the patient's, named as such
    picture = doctor.page.get_by_test_id("remote-video")
    await expect(picture).to_have_attribute("data-participant", "patient")

    # The patient reloads: a new page, a new connection to the relay, the same call.
    await patient.page.reload()
    await decodes_everyone(patient.page, 1)
    await decodes_everyone(doctor.page, 1)
    await frames_grow(doctor.page)

    # A late joiner: an interpreter comes into the call in progress. The relay asks the
    # publishers for keyframes as they are seated, so the newcomer's pictures start at
    # once instead of at the publishers' next scheduled keyframe (Chrome sends none
    # unasked): from its connection to the server to a decoded frame of each of the two
    # others, within a second.
    interpreter, _ = await interpreter_joins(
        participants, server, visit_id, doctor, scripts=(FIRST_FRAMES,)
    )
    page = interpreter.page
    await decodes_everyone(page, 2)
    await page.wait_for_function(
        "() => { const pc = window.__firstFrames.at(-1);"
        " return pc && Object.keys(pc.first).length >= 2; }",
        timeout=STEP_TIMEOUT,
    )
    waits = await page.evaluate(
        """() => { const pc = window.__firstFrames.at(-1);
        return Object.values(pc.first).map((t) => t - pc.connected); }"""
    )
    assert len(waits) == 2, waits
    assert max(waits) <= LATE_JOINER_MS, f"first frames {waits} ms after connecting"
    for person in (doctor, patient, interpreter):
        assert not person.errors, person.errors
