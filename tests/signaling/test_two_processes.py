"""Two real `telemed serve` processes sharing one SQLite store and one Redis: the doctor
on one, the patient on the other, and the visit works as if they shared a process."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import socketio

from telemed.clinic import Clinic
from telemed.clock import utcnow
from telemed.reception import Reception, visit_policy
from telemed.settings import StoreSettings, VisitSettings
from telemed.store import open_store
from tests.conftest import ROOT, free_port
from tests.signaling.conftest import VisitSocket

TELEMED = Path(sys.executable).with_name("telemed")
PASSWORD = "correct horse battery staple"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
BURST = 100
CHAT = "the pain is worse at night"


@dataclass(frozen=True, slots=True)
class Node:
    url: str
    log: Path
    process: subprocess.Popen[bytes]


@dataclass(frozen=True, slots=True)
class Cluster:
    nodes: tuple[Node, Node]
    doctor_email: str
    cookie: str  # the patient's `telemed_visit` value
    visit_id: str

    def logs(self) -> str:
        return "\n".join(n.log.read_text(errors="replace") for n in self.nodes)


def _cli(config: Path, env: dict[str, str], *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        [str(TELEMED), "--config", str(config), *args, "--json"],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _id(output: str) -> str:
    match = re.search(r'"(?:id|visit_id)": "([0-9a-f]+)"', output)
    assert match, output
    return match.group(1)


def _wait_healthy(node: Node) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            pytest.fail(f"telemed serve exited early:\n{node.log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(node.url + "/healthz", timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    pytest.fail(f"telemed serve did not answer:\n{node.log.read_text(errors='replace')}")


@pytest.fixture
def cluster(tmp_path: Path, mosquitto: int, redis_server: str) -> Iterator[Cluster]:
    config = tmp_path / "config.toml"
    config.write_text((ROOT / "config.toml").read_text(encoding="utf-8"), encoding="utf-8")
    store_file = tmp_path / "shared.db"
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")},
        "TELEMED_STORE_URL": f"sqlite:///{store_file}",
        "TELEMED_SERVER_HOST": "127.0.0.1",
        "TELEMED_SERVER_PUBLIC_URL": "",
        "TELEMED_MQTT_EMBEDDED": "false",
        "TELEMED_MQTT_PORT": str(mosquitto),
        "TELEMED_MONITORING_INGEST": "false",
        "TELEMED_DEMO_SEED": "false",
        "TELEMED_SIGNALING_REDIS_URL": redis_server,
        "TELEMED_LOG_LEVEL": "DEBUG",  # nothing of a chat may reach even these
    }
    env = {**base, "TELEMED_VAR_DIR": str(tmp_path / "var-cli")}
    doctor = _id(
        _cli(config, env, "user", "add", "--role", "doctor", "--email", "dr@example.org",
             "--name", "Dr Who", "--password-stdin", stdin=PASSWORD + "\n")
    )  # fmt: skip
    patient = _id(
        _cli(config, env, "user", "add", "--role", "patient", "--email", "pat@example.org",
             "--name", "Pat Ient", "--password-stdin", stdin=PASSWORD + "\n")
    )  # fmt: skip
    _cli(config, env, "care-team", "add", "--patient", patient, "--clinician", doctor)
    created = _cli(config, env, "visit", "create", "--patient", patient, "--doctor", doctor)
    token = re.search(r"/v/([A-Za-z0-9_-]+)", created)
    assert token, created
    visit_id, held_pass = asyncio.run(_claim(store_file, token.group(1)))

    nodes: list[Node] = []
    try:
        for n in (1, 2):
            port = free_port()
            log = tmp_path / f"node{n}.log"
            node_env = {
                **base,
                "TELEMED_VAR_DIR": str(tmp_path / f"var{n}"),  # one server per var folder
                "TELEMED_SERVER_PORT": str(port),
            }
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(TELEMED), "--config", str(config), "serve"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=node_env,
                )
            nodes.append(Node(f"http://127.0.0.1:{port}", log, process))
        for node in nodes:
            _wait_healthy(node)
        yield Cluster((nodes[0], nodes[1]), "dr@example.org", f"{visit_id}.{held_pass}", visit_id)
    finally:
        for node in nodes:
            node.process.terminate()
            try:
                node.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=STOP_TIMEOUT)


async def _claim(store_file: Path, token: str) -> tuple[str, str]:
    """Claim the link as the patient's first press on the room page does (same store)."""
    store = await open_store(StoreSettings(url=f"sqlite:///{store_file}", database="telemed"))
    try:
        reception = Reception(Clinic(store, utcnow), visit_policy(_visit_settings()))
        visit, held_pass = await reception.claim(token, "test")
        return visit.id, held_pass
    finally:
        await store.close()


def _visit_settings() -> VisitSettings:
    return VisitSettings(
        link_valid_hours=24, low_bandwidth_kbps=150, low_bandwidth_height=240,
        audio_only_below_kbps=100,
    )  # fmt: skip


async def _session_cookie(base_url: str, email: str) -> str:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base_url, cookie_jar=jar) as http:
        async with http.get("/login") as page:
            html = await page.text()
        match = re.search(r'name="csrf_token" value="([^"]+)"', html)
        assert match, "no CSRF token on the login page"
        form = {"email": email, "password": PASSWORD, "csrf_token": match.group(1)}
        async with http.post("/login", data=form, allow_redirects=False) as answer:
            assert answer.status in (302, 303), await answer.text()
            return answer.cookies["telemed_session"].value


@pytest_asyncio.fixture
async def opened() -> AsyncIterator[list[VisitSocket]]:
    sockets: list[VisitSocket] = []
    yield sockets
    for socket in sockets:
        await socket.close()


def candidate(side: str, n: int) -> dict[str, Any]:
    return {"candidate": f"candidate:{side}{n} 1 udp 1 192.0.2.1 {40000 + n} typ host"}


async def test_a_visit_split_across_two_processes(
    cluster: Cluster, opened: list[VisitSocket]
) -> None:
    one, two = cluster.nodes
    session = await _session_cookie(one.url, cluster.doctor_email)
    doctor, patient = VisitSocket(), VisitSocket()
    opened.extend([doctor, patient])
    await doctor.connect(one.url, f"telemed_session={session}")  # the doctor on process 1
    await patient.connect(two.url, f"telemed_visit={cluster.cookie}")  # the patient on 2
    vid = cluster.visit_id

    assert (await patient.next("visit"))["state"] == "waiting"
    queue = await doctor.until("queue", lambda q: any(v["patient_online"] for v in q["visits"]))
    assert [v["visit_id"] for v in queue["visits"]] == [vid]  # emitted by process 2

    admitted = await doctor.call("admit", {"visit_id": vid})
    assert admitted["ok"], admitted
    await patient.until("visit", lambda v: v["state"] == "in_call")  # across Redis
    joined = await patient.call("join_call", {})
    assert joined["ok"], joined
    peer = joined["peer"]  # the shared roster; the name from the store (another process)
    assert (peer["role"], peer["participant"], peer["sid"]) == (
        "clinician",
        "clinician",
        doctor.sid,
    )
    assert peer["name"]
    assert (await doctor.until("peer", lambda p: p["present"]))["sid"] == patient.sid

    offer = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"}
    answer = {"type": "answer", "sdp": "v=0\r\no=- 2 1 IN IP4 0.0.0.0\r\n"}
    assert (await doctor.call("signal", {"visit_id": vid, "description": offer}))["ok"]
    assert (await patient.next("signal"))["description"] == offer
    assert (await patient.call("signal", {"description": answer}))["ok"]
    assert (await doctor.next("signal"))["description"] == answer

    # bursts both ways at once, not waiting for acknowledgements: each side's in order
    acks = [await patient.fire("signal", {"candidate": candidate("p", n)}) for n in range(BURST)]
    acks += [
        await doctor.fire("signal", {"visit_id": vid, "candidate": candidate("d", n)})
        for n in range(BURST)
    ]
    at_doctor = [(await doctor.next("signal"))["candidate"]["candidate"] for _ in range(BURST)]
    at_patient = [(await patient.next("signal"))["candidate"]["candidate"] for _ in range(BURST)]
    assert at_doctor == [candidate("p", n)["candidate"] for n in range(BURST)]
    assert at_patient == [candidate("d", n)["candidate"] for n in range(BURST)]
    async with asyncio.timeout(10):
        assert all(a["ok"] for a in [await f for f in acks])

    assert (await patient.call("chat", {"text": CHAT}))["ok"]
    assert (await doctor.next("chat"))["text"] == CHAT

    assert (await doctor.call("send_back", {"visit_id": vid}))["ok"]
    assert await patient.next("call_over") == {"visit_id": vid, "reason": "sent_back"}
    assert (await patient.until("visit", lambda v: v["state"] == "waiting"))["place"] == 1
    refused = await patient.call("signal", {"candidate": candidate("p", 999)})
    assert refused == {"ok": False, "error": "not in this visit's call"}  # the room closed

    assert (await doctor.call("end", {"visit_id": vid}))["ok"]
    assert (await patient.until("visit", lambda v: v["state"] == "ended"))["place"] == 0
    await patient.wait_gone()  # disconnected by process 1, through Redis
    again = VisitSocket()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await again.connect(two.url, f"telemed_visit={cluster.cookie}")
    assert CHAT not in cluster.logs()
