"""A video visit whose patient really loses the network for a few seconds, and recovers
by itself.

`context.set_offline` (test_visit_call.py) cuts HTTP and WebSockets but not WebRTC media
on loopback. Here the patient's Chromium runs inside a Linux network namespace that the
test makes: a veth pair, 10.213.N.1/30 on the host side and 10.213.N.2 inside, no other
route. Everything the patient's browser sends, the signaling socket and the call's media,
crosses that veth (checked on the selected ICE candidate pair). The network then goes
away for a few seconds, two ways (`Cut`): the namespace's end of the veth goes down (the
Wi-Fi drops out), or every packet is silently dropped with the link left up (a dead
router upstream). The test checks that the media really stopped, brings the network back
and waits, with no click on either side, for the call to come back: frames decoded again
both ways, the visit still `in_call`, the patient never sent to the waiting room. A link
that goes down makes the page reconnect its socket, hence a new peer connection; a silent
cut is recovered by rtc.js's ICE restart on the same one. The test's log tells how long
each step took (run with `-rP` to see it).

The server listens on 0.0.0.0 so that the doctor's browser (in the root namespace)
reaches it on 127.0.0.1, a secure context, and its signaling never depends on the veth;
the patient reaches it on http://10.213.N.1:PORT, which Chromium is told to treat as
secure (`--unsafely-treat-insecure-origin-as-secure`): getUserMedia needs a secure
context, and a plain-HTTP origin keeps the test free of certificates.

Needs root and iproute2 (`ip netns`); skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from playwright.async_api import Browser, ViewportSize, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.e2e.conftest import (
    CHROMIUM_ARGS,
    CSP_REPORTER,
    RTC_RECORDER,
    Participant,
    Server,
    new_participant,
    running_server,
)
from tests.e2e.test_visit_call import (
    STEP_TIMEOUT,
    book,
    media_flows,
    open_doctor,
    patient_joins,
    patient_sees_the_end,
    wait_for_media,
    waiting_room,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

log = logging.getLogger(__name__)

IP_TIMEOUT = 10.0  # s: one `ip` command
CUT_SECONDS = 8.0  # s: how long the patient's network stays down (the scenario itself)
AFTER_STALL_SECONDS = 3.0  # s: at least this much of the cut comes after the media stalled
STALL_TIMEOUT = 15.0  # s: the doctor's side notices the media stopped
RECOVER_TIMEOUT = 45.0  # s: media both ways again after the network is back

# Predicates for `wait_for_function` over what ICE_LOG and CALL_STATS record.
LOST = """(since) => (window.__ice || []).some((e) => e.at >= since
  && (e.state === "disconnected" || e.state === "failed"))"""
VIDEO_BACK = """([pc, frames]) => { const c = window.__call;
  return c !== null && c.state === "connected" && (c.pc !== pc || c.framesDecoded > frames); }"""
SETTLED = """([pc, ufrag]) => { const c = window.__call;
  return c !== null && c.state === "connected" && c.signaling === "stable"
    && (c.pc > pc || c.ufrag !== ufrag); }"""

# Logs every ICE connection state of every peer connection a page makes into
# `window.__ice` as {pc, state, at} (installed after RTC_RECORDER, so that `pc` is the
# connection's index in `window.__pcs`), and when the page's WebSockets (Socket.IO's)
# open and close into `window.__ws` as {event, at}.
ICE_LOG = """
(() => {
  const NativeSocket = window.WebSocket;
  window.__ws = [];
  window.WebSocket = new Proxy(NativeSocket, {
    construct(target, args, newTarget) {
      const ws = Reflect.construct(target, args, newTarget);
      for (const event of ["open", "close"]) {
        ws.addEventListener(event, () => window.__ws.push({ event: event, at: Date.now() }));
      }
      return ws;
    },
  });
  const Recorded = window.RTCPeerConnection;
  if (!Recorded || !window.__pcs) return;
  window.__ice = [];
  window.RTCPeerConnection = new Proxy(Recorded, {
    construct(target, args, newTarget) {
      const pc = Reflect.construct(target, args, newTarget);
      const index = window.__pcs.length - 1;
      pc.addEventListener("iceconnectionstatechange", () => {
        window.__ice.push({ pc: index, state: pc.iceConnectionState, at: Date.now() });
      });
      return pc;
    },
  });
})();
"""

# `window.__callStats()`: the newest open peer connection, read from getStats now: its
# states, the video frames decoded, the addresses of the selected candidate pair and both
# sides' ICE username fragments as this side has them (both new after an ICE restart).
# Sampled into `window.__call` four times a second, for `wait_for_function`.
CALL_STATS = """
window.__call = null;
window.__callStats = async () => {
  const pcs = window.__pcs || [];
  let index = pcs.length - 1;
  while (index >= 0 && pcs[index].signalingState === "closed") index -= 1;
  if (index < 0) return null;
  const pc = pcs[index];
  const report = await pc.getStats();
  let pair = null;
  let frames = 0;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      pair = report.get(s.selectedCandidatePairId) || pair;
    } else if (s.type === "inbound-rtp" && s.kind === "video") {
      frames += s.framesDecoded || 0;
    }
  });
  const local = pair ? report.get(pair.localCandidateId) : null;
  const remote = pair ? report.get(pair.remoteCandidateId) : null;
  const ufrag = (d) => ((d ? d.sdp : "").match(/a=ice-ufrag:(\\S+)/) || [])[1] || null;
  return {
    pc: index,
    pcs: pcs.length,
    ice: pc.iceConnectionState,
    state: pc.connectionState,
    signaling: pc.signalingState,
    framesDecoded: frames,
    local: local ? local.address || local.ip || null : null,
    remote: remote ? remote.address || remote.ip || null : null,
    ufrag: ufrag(pc.localDescription),
    remoteUfrag: ufrag(pc.remoteDescription),
  };
};
setInterval(async () => {
  window.__call = await window.__callStats();
}, 250);
"""


# The patient's network namespace ------------------------------------------------------


class Cut(enum.Enum):
    """How the patient's network goes away."""

    # The Wi-Fi drops: the interface goes down. Chromium sees it (`offline` fires), so
    # the page's Socket.IO client drops its socket at once and reconnects when the link is
    # back: a new `sid`, hence a new peer connection (docs/visit-protocol.md).
    LINK_DOWN = "link-down"
    # The path dies silently (a dead router upstream): the interface stays up with its
    # address, every packet is dropped. The signaling socket just stalls; ICE notices the
    # media stop and rtc.js restarts ICE on the same peer connection.
    SILENT = "silent"


@dataclass(frozen=True, slots=True)
class PatientNet:
    """A network namespace joined to the root namespace by a veth pair."""

    ip: str  # the `ip` binary
    ns: str
    host_if: str  # in the root namespace, `host_addr`
    ns_if: str  # inside `ns`, `ns_addr`
    host_addr: str
    ns_addr: str
    subnet: str

    def run(self, *args: str) -> None:
        command = [self.ip, *args]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")

    def cut(self, how: Cut) -> None:
        if how is Cut.LINK_DOWN:
            self.run("-n", self.ns, "link", "set", self.ns_if, "down")
        else:
            # Nothing leaves (blackhole) and, with strict reverse-path filtering, nothing
            # from the host side gets in: the link and the address stay as they are.
            self.run("-n", self.ns, "route", "replace", "blackhole", self.subnet)

    def restore(self, how: Cut) -> None:
        if how is Cut.LINK_DOWN:
            self.run("-n", self.ns, "link", "set", self.ns_if, "up")
        else:
            self.run(
                "-n", self.ns, "route", "replace", self.subnet, "dev", self.ns_if,
                "proto", "kernel", "scope", "link", "src", self.ns_addr,
            )  # fmt: skip


def _free_subnet(ip: str) -> int:
    """A third octet N such that no address of 10.213.N.0/30 is in use here."""
    start = os.getpid() % 250
    for step in range(250):
        n = (start + step) % 250 + 1
        shown = subprocess.run(
            [ip, "-4", "-o", "addr", "show", "to", f"10.213.{n}.0/30"],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT,
            check=False,
        )
        if shown.returncode == 0 and not shown.stdout.strip():
            return n
    pytest.fail("no free 10.213.N.0/30 subnet for the patient's network namespace")


@pytest.fixture(scope="module")
def patient_net() -> Iterator[PatientNet]:
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    if ip is None:
        pytest.skip("`ip` (iproute2) is not installed: the test needs `ip netns`")
    if os.geteuid() != 0:
        pytest.skip(f"`ip netns add` needs root (running as uid {os.geteuid()})")
    tag = str(os.getpid())  # unique per run: parallel sessions do not collide
    n = _free_subnet(ip)
    net = PatientNet(
        ip=ip,
        ns=f"telemed-net-{tag}",
        host_if=f"tmh{tag}",
        ns_if=f"tmn{tag}",
        host_addr=f"10.213.{n}.1",
        ns_addr=f"10.213.{n}.2",
        subnet=f"10.213.{n}.0/30",
    )
    try:
        net.run("netns", "add", net.ns)
    except RuntimeError as exc:
        pytest.skip(f"network namespaces are not permitted here: {exc}")
    try:
        net.run("link", "add", net.host_if, "type", "veth", "peer", "name", net.ns_if)
        net.run("link", "set", net.ns_if, "netns", net.ns)
        net.run("addr", "add", f"{net.host_addr}/30", "dev", net.host_if)
        net.run("link", "set", net.host_if, "up")
        net.run("-n", net.ns, "addr", "add", f"{net.ns_addr}/30", "dev", net.ns_if)
        net.run("-n", net.ns, "link", "set", "lo", "up")
        net.run("netns", "exec", net.ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=1")
        # The /30's own route is the only one inside: the patient reaches the host side
        # and nothing else. It comes back by itself when the link comes back up.
        net.run("-n", net.ns, "link", "set", net.ns_if, "up")
        yield net
    finally:
        # Deleting one end of a veth deletes both; the namespace goes last.
        for args in (["link", "del", net.host_if], ["netns", "del", net.ns]):
            subprocess.run(
                [ip, *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
            )


# A server both namespaces reach ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetServer:
    server: Server  # base_url: the doctor's (127.0.0.1)
    patient_url: str  # the patient's origin, on the veth


@pytest.fixture(scope="module")
def net_server(
    tmp_path_factory: pytest.TempPathFactory, patient_net: PatientNet
) -> Iterator[NetServer]:
    patient_url = f"http://{patient_net.host_addr}:{{port}}"
    with running_server(
        tmp_path_factory.mktemp("telemed-net"),
        host="0.0.0.0",  # the patient's namespace reaches it over the veth
        public_url=patient_url,  # join links point at the veth
        people=(
            ("doctor", "dr.net@example.org", "Dr Nell Network"),
            ("patient", "pat.net@example.org", "Pat Veth"),
            ("patient", "sam.net@example.org", "Sam Elsewhere"),
        ),
    ) as server:
        port = urlsplit(server.base_url).port
        yield NetServer(server, patient_url.format(port=port))


@pytest.fixture
def server(net_server: NetServer) -> Server:
    """This module's server (the failure report hook shows its log)."""
    return net_server.server


# Two browsers: the doctor's in the root namespace, the patient's in theirs -------------


@dataclass(frozen=True, slots=True)
class Browsers:
    doctor: Browser
    patient: Browser


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browsers(
    chromium_executable: Path,
    patient_net: PatientNet,
    net_server: NetServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Browsers]:
    # Playwright talks to the browser over a pipe (inherited file descriptors), so a
    # wrapper that execs Chromium inside the namespace is all it takes.
    wrapper = tmp_path_factory.mktemp("netns-chromium") / "chromium-in-netns"
    run_inside = f"{patient_net.ip} netns exec {patient_net.ns} {chromium_executable}"
    wrapper.write_text(f'#!/bin/sh\nexec {run_inside} "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    async with async_playwright() as playwright:
        doctor = await playwright.chromium.launch(
            executable_path=str(chromium_executable), headless=True, args=CHROMIUM_ARGS
        )
        try:
            patient = await playwright.chromium.launch(
                executable_path=str(wrapper),
                headless=True,
                args=[
                    *CHROMIUM_ARGS,
                    f"--unsafely-treat-insecure-origin-as-secure={net_server.patient_url}",
                ],
            )
            try:
                yield Browsers(doctor, patient)
            finally:
                await patient.close()
        finally:
            await doctor.close()


Opener = Callable[[], Awaitable[Participant]]


@pytest_asyncio.fixture(loop_scope="module")
async def openers(
    browsers: Browsers, net_server: NetServer, viewport: ViewportSize
) -> AsyncIterator[tuple[Opener, Opener]]:
    """(open the doctor's page, open the patient's page), each in a fresh context with
    WebRTC connections recorded; all closed after the test."""
    opened: list[Participant] = []

    def opener(browser: Browser, base_url: str) -> Opener:
        async def open_participant() -> Participant:
            person = await new_participant(
                browser, base_url, viewport, (CSP_REPORTER, RTC_RECORDER, ICE_LOG, CALL_STATS)
            )
            opened.append(person)
            return person

        return open_participant

    try:
        yield (
            opener(browsers.doctor, net_server.server.base_url),
            opener(browsers.patient, net_server.patient_url),
        )
    finally:
        for person in opened:
            await person.context.close()


# Helpers --------------------------------------------------------------------------------


Stats = dict[str, Any]


async def call_stats(person: Participant) -> Stats:
    stats: Stats | None = await person.page.evaluate("window.__callStats()")
    assert stats is not None, "the page has no open peer connection"
    return stats


async def wait_in(person: Participant, what: str, limit: float, predicate: str, arg: Any) -> float:
    """Wait until `predicate(arg)` holds in the person's page; the seconds it took."""
    start = time.monotonic()
    try:
        await person.page.wait_for_function(predicate, arg=arg, timeout=limit * 1000)
    except PlaywrightTimeoutError:
        pytest.fail(f"{what}: not within {limit:g} s")
    return time.monotonic() - start


async def ice_states_since(person: Participant, since_ms: float) -> list[str]:
    states: list[str] = await person.page.evaluate(
        "(since) => (window.__ice || []).filter((e) => e.at >= since).map((e) => e.state)",
        since_ms,
    )
    return states


async def socket_events_since(person: Participant, since_ms: float) -> list[str]:
    events: list[str] = await person.page.evaluate(
        "(since) => window.__ws.filter((e) => e.at >= since).map((e) => e.event)", since_ms
    )
    return events


def ice_restarted(before: Stats, doctor: Stats, patient: Stats, patient_before: Stats) -> bool:
    """Both sides on the peer connections they had, with new ICE credentials that the
    other side has too (the restart's offer and answer went through)."""
    return (
        doctor["pc"] == before["pc"]
        and patient["pc"] == patient_before["pc"]
        and doctor["ufrag"] != before["ufrag"]
        and patient["ufrag"] != patient_before["ufrag"]
        and doctor["remoteUfrag"] == patient["ufrag"]
        and patient["remoteUfrag"] == doctor["ufrag"]
        and doctor["signaling"] == patient["signaling"] == "stable"
    )


@pytest.mark.parametrize("cut", list(Cut), ids=[c.value for c in Cut])
async def test_the_call_recovers_when_the_patients_network_really_drops(
    openers: tuple[Opener, Opener],
    server: Server,
    net_server: NetServer,
    patient_net: PatientNet,
    cut: Cut,
) -> None:
    open_doctor_page, open_patient_page = openers
    visit_id, join_url = book(server)
    assert urlsplit(join_url).netloc == urlsplit(net_server.patient_url).netloc, join_url
    doctor = await open_doctor(open_doctor_page, server)
    patient = await patient_joins(open_patient_page, join_url)
    await doctor.page.goto(f"/visits/{visit_id}")
    await doctor.page.get_by_test_id(f"admit-{visit_id}").click(timeout=STEP_TIMEOUT)
    await wait_for_media(doctor.page)
    await wait_for_media(patient.page)

    # The call's media goes over the veth: the patient's end of the selected candidate
    # pair is the namespace's address, the doctor's end the host side's.
    patient_before = await call_stats(patient)
    doctor_before = await call_stats(doctor)
    assert patient_before["local"] == patient_net.ns_addr, patient_before
    assert patient_before["remote"] == patient_net.host_addr, patient_before
    assert doctor_before["local"] == patient_net.host_addr, doctor_before
    assert doctor_before["remote"] == patient_net.ns_addr, doctor_before

    # The cut, held for CUT_SECONDS (the scenario itself, not a wait for a result) and
    # at least AFTER_STALL_SECONDS past the doctor's ICE noticing it, long enough for
    # rtc.js to give up on the old path (it restarts ICE after 2 s disconnected).
    cut_ms: float = await doctor.page.evaluate("Date.now()")
    cut_at = time.monotonic()
    patient_net.cut(cut)
    try:
        noticed = await wait_in(
            doctor, "the doctor's ICE notices the cut", STALL_TIMEOUT, LOST, cut_ms
        )
        doctor_stalled, patient_stalled = await call_stats(doctor), await call_stats(patient)
        await asyncio.sleep(max(CUT_SECONDS - (time.monotonic() - cut_at), AFTER_STALL_SECONDS))
        doctor_still, patient_still = await call_stats(doctor), await call_stats(patient)
        for stalled, still in ((doctor_stalled, doctor_still), (patient_stalled, patient_still)):
            assert (
                stalled["pc"] != still["pc"] or still["framesDecoded"] == stalled["framesDecoded"]
            ), f"video kept arriving while the patient's network was down: {stalled} -> {still}"
    finally:
        down_for = time.monotonic() - cut_at
        restored_at = time.monotonic()
        patient_net.restore(cut)

    # The network is back; nobody clicks anything. First the video comes back (on
    # whichever connection), then the call settles: either a new peer connection on both
    # sides, or the same ones with an ICE restart that both sides agree on.
    video_after = await wait_in(
        doctor,
        "video from the patient again",
        RECOVER_TIMEOUT,
        VIDEO_BACK,
        [doctor_still["pc"], doctor_still["framesDecoded"]],
    )
    settled_after = video_after
    for person, before in ((doctor, doctor_before), (patient, patient_before)):
        settled_after += await wait_in(
            person,
            "the call settles (a new peer connection or an ICE restart)",
            RECOVER_TIMEOUT,
            SETTLED,
            [before["pc"], before["ufrag"]],
        )
    d, p = await call_stats(doctor), await call_stats(patient)
    new_pc = d["pc"] > doctor_before["pc"] and p["pc"] > patient_before["pc"]
    restarted = ice_restarted(doctor_before, d, p, patient_before)
    assert new_pc or restarted, ("the two sides do not agree on the call", d, p)
    await media_flows(doctor.page)
    await media_flows(patient.page)
    flowing_after = time.monotonic() - restored_at
    how = "ICE restart" if restarted else "new peer connection"
    patient_sockets = await socket_events_since(patient, cut_ms)
    log.warning(
        "cut %s held %.1f s (the doctor's ICE left 'connected' after %.1f s); after the "
        "network came back: video at the doctor after %.1f s, call settled after %.1f s "
        "by %s, media both ways after %.1f s; doctor ICE since the cut %s, patient ICE "
        "since the cut %s, patient's WebSocket since the cut %s",
        cut.value,
        down_for,
        noticed,
        video_after,
        settled_after,
        how,
        flowing_after,
        await ice_states_since(doctor, cut_ms),
        await ice_states_since(patient, cut_ms),
        patient_sockets,
    )
    # The media goes over the veth again, and the visit never left the call.
    after = await call_stats(patient)
    assert after["local"] == patient_net.ns_addr, after
    if cut is Cut.LINK_DOWN:
        # Chromium saw the link go: Socket.IO reconnected, a new sid, a new connection.
        assert how == "new peer connection", (d, p, patient_sockets)
        assert "close" in patient_sockets, patient_sockets
    else:
        # The socket only stalled: the same connection, recovered by rtc.js's restart.
        assert how == "ICE restart", (d, p, patient_sockets)
        assert "close" not in patient_sockets, patient_sockets
    call_view = doctor.page.get_by_test_id("call-view")
    await expect(call_view).to_have_attribute("data-call", "connected", timeout=STEP_TIMEOUT)
    await expect(waiting_room(patient.page)).to_be_hidden()
    await expect(patient.page.get_by_test_id("remote-video")).to_be_visible()
    state = await doctor.page.request.get(f"/api/visits/{visit_id}")
    assert (await state.json())["state"] == "in_call"

    await doctor.page.get_by_test_id("end-visit").click()
    await doctor.page.get_by_test_id("end-visit-confirm").click()
    await patient_sees_the_end(patient.page)
    assert doctor.errors == []
