"""Signaling benchmark: many Socket.IO clients on ONE `telemed serve` process.

    .venv/bin/python bench/signaling.py [--clients 5000] [--pairs 50] [--seconds 20]

One run, two phases over the same load shape, each against one server process:

1. socket.io: `telemed serve` (the real app, SQLite store in a temp folder, rooms in
   process). `--clients` sockets are connected on `/visit`: patients waiting in their
   clinicians' queues (`--per-clinician` each), plus `--pairs` visits in a call (the
   doctor admits, the patient joins). In each pair the patient and the doctor bounce
   `signal` events (ICE candidates) back and forth, `--window` in flight per pair, sent
   as the pages send them: without an acknowledgement (the server answers only a
   refusal, with a `refused` event); `--acks` asks for one with every signal, as the
   pages did before. The clients speak the Socket.IO protocol themselves
   (`RawSocketIO`: Engine.IO v4 frames on an aiohttp WebSocket, one reader task per
   socket), or, with
   `--idle-clients sio` / `--pair-clients sio`, are python-socketio `AsyncClient`s. A
   waiting patient counts as connected once the server's first `visit` reached it (its
   connect work on the server is over), so the measured window starts on a quiet server.
2. baseline: a bare aiohttp WebSocket relay (`--role bare`: a dict of pairs, receive a
   text frame, send it to the other socket) with the same number of idle connections and
   the same pairs bouncing the same payloads.

Each hop carries the monotonic time it was sent (CLOCK_MONOTONIC is one clock for every
process of the machine); a hop's latency is its arrival time minus that. Figures are taken
over the steady window (the phase minus `--warmup`).

Processes (all on 127.0.0.1): this coordinator (seeds the store, starts the servers,
measures CPU with psutil, prints); the server; `--workers` load processes (`--role load`)
holding the clients. The clients share the machine's cores with the server: their CPU is
reported next to the server's, and so is what every other process of the machine used
(`other_cpu_percent`: a shared machine's other jobs take cores from both). `--profile
FILE` runs py-spy on the Socket.IO server during phase 1 and prints its top functions;
`--profile-load FILE` does the same for the first load process.

The last line printed is JSON: clients, p50_ms, p99_ms, msgs_per_s, baseline_msgs_per_s,
baseline_p99_ms, ratio (msgs_per_s / baseline_msgs_per_s), refused (signals answered
`ok: false` or `refused`: 0), CPU figures and the settings. bench/README.md reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from procs import cpu_seconds, free_port  # bench/procs.py

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(1, str(ROOT))

TELEMED = Path(sys.executable).with_name("telemed")
CONNECT_CONCURRENCY = 64
START_TIMEOUT = 60.0
STOP_GRACE = 30.0


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# the plan: who connects, with which cookie ---------------------------------------------------
async def seed(store_url: str, waiting: int, pairs: int, per_clinician: int) -> dict[str, Any]:
    """Clinicians, patients and visits, booked and claimed through `Reception`."""
    from telemed import sessions
    from telemed.clinic import OPERATOR, Clinic
    from telemed.clock import utcnow
    from telemed.reception import Reception, VisitPolicy
    from telemed.settings import StoreSettings
    from telemed.store import open_store

    store = await open_store(StoreSettings(url=store_url, database="telemed"))
    clinic = Clinic(store, utcnow)
    reception = Reception(clinic, VisitPolicy(link_valid_for=timedelta(days=1)))
    n_clinicians = max(1, -(-waiting // per_clinician)) + pairs
    patients = [
        await clinic.add_user(
            OPERATOR, role="patient", email=f"p{i}@bench.example", name=f"P {i}", password=None
        )
        for i in range(20)
    ]
    clinicians = []
    for i in range(n_clinicians):
        user = await clinic.add_user(
            OPERATOR, role="doctor", email=f"d{i}@bench.example", name=f"D {i}", password=None
        )
        for patient in patients:
            await store.add_care_team_member(patient.id, user.id)
        clinicians.append(user)

    async def visit_cookie(n: int, clinician_id: str) -> str:
        booking = await reception.book(
            OPERATOR, patient_id=patients[n % len(patients)].id, clinician_id=clinician_id
        )
        visit, held = await reception.claim(booking.token, "bench")
        return f"{visit.id}.{held}"

    plan: dict[str, Any] = {"waiting": [], "pairs": []}
    for n in range(waiting):
        plan["waiting"].append(await visit_cookie(n, clinicians[n // per_clinician].id))
    for n in range(pairs):
        doctor = clinicians[n_clinicians - pairs + n]
        cookie = await visit_cookie(n, doctor.id)
        sid, session = sessions.start(doctor.id, utcnow(), "bench", mfa_pending=False)
        await store.put_session(session)
        plan["pairs"].append({"visit_id": cookie.split(".")[0], "patient": cookie, "doctor": sid})
    await store.close()
    return plan


# load processes -----------------------------------------------------------------------------
@dataclass
class Tally:
    latencies: list[float]
    received: int = 0
    refused: int = 0  # signals answered `ok: false` (must stay 0)
    window_start: float = 0.0
    window_end: float = 0.0

    def hop(self, sent_ns: int) -> None:
        now = time.monotonic()
        if self.window_start <= now <= self.window_end:
            self.received += 1
            self.latencies.append((time.monotonic_ns() - sent_ns) / 1e6)


class RawSocketIO:
    """A Socket.IO v5 client on a bare aiohttp WebSocket (Engine.IO v4, namespace `/visit`):
    the open packet `0{...}`, namespace connect `40/visit,`, the server's pings `2` answered
    `3`, events `42/visit,[name, data]`, emits with an ack id `42/visit,N[...]` answered
    `43/visit,N[...]`, or without one `42/visit,[...]`. The same frames python-socketio's
    client sends, without its tasks
    per event, its queue and its write loop: thousands of these fit in one load process."""

    PREFIX = "/visit,"

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.handlers: dict[str, Any] = {}
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.welcomed = asyncio.Event()  # the server's first `visit` or `queue`
        self.refused = 0  # acks answered `ok: false`
        self.reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, http: Any, url: str, cookie: str) -> RawSocketIO:
        ws = await http.ws_connect(
            url + "/socket.io/?EIO=4&transport=websocket", headers={"Cookie": cookie}
        )
        client = cls(ws)
        opened = await ws.receive_str()
        if not opened.startswith("0{"):
            raise RuntimeError(f"no Engine.IO open packet: {opened[:80]}")
        await ws.send_str("40" + cls.PREFIX)
        while True:  # the CONNECT answer comes first; nothing is sent before it
            frame = await ws.receive_str()
            if frame.startswith("40" + cls.PREFIX):
                break
            if frame.startswith("44" + cls.PREFIX):
                raise RuntimeError(f"connection refused: {frame[:200]}")
            if frame == "2":
                await ws.send_str("3")
        client.reader = asyncio.create_task(client.read())
        return client

    def on(self, event: str, handler: Any) -> None:
        self.handlers[event] = handler

    async def read(self) -> None:
        ws, n = self.ws, len(self.PREFIX) + 2
        async for message in ws:
            frame = message.data
            if not isinstance(frame, str):
                break
            if frame == "2":
                await ws.send_str("3")
            elif frame.startswith("42" + self.PREFIX):
                event, data = json.loads(frame[n:])
                self.welcomed.set()
                if event == "refused":
                    self.refused += 1
                handler = self.handlers.get(event)
                if handler is not None:
                    await handler(data)  # in order, as the page's handlers run
            elif frame.startswith("43" + self.PREFIX):
                body = frame[n:]
                cut = body.index("[")
                answer = json.loads(body[cut:])[0]
                if not answer.get("ok"):
                    self.refused += 1
                future = self.acks.pop(int(body[:cut]), None)
                if future is not None and not future.done():
                    future.set_result(answer)
            elif frame.startswith("41" + self.PREFIX):
                break

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        """Send an event with an ack id; its answer is counted, not awaited."""
        self.next_id += 1
        await self.ws.send_str(
            f"42{self.PREFIX}{self.next_id}" + json.dumps([event, data], separators=(",", ":"))
        )

    async def send(self, event: str, data: dict[str, Any]) -> None:
        """Send an event without an ack id: only a refusal comes back (`refused`)."""
        frame = json.dumps([event, data], separators=(",", ":"))
        await self.ws.send_str(f"42{self.PREFIX}{frame}")

    async def call(self, event: str, data: dict[str, Any]) -> Any:
        self.next_id += 1
        future = self.acks[self.next_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(
            f"42{self.PREFIX}{self.next_id}" + json.dumps([event, data], separators=(",", ":"))
        )
        async with asyncio.timeout(30):
            return await future

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


class SioPeer:
    """A python-socketio `AsyncClient` with the `RawSocketIO` calls the load needs."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.refused = 0

    @classmethod
    async def open(cls, url: str, cookie: str) -> SioPeer:
        import socketio

        client = socketio.AsyncClient(reconnection=False)
        peer = cls(client)
        client.on("refused", peer._refused, namespace="/visit")
        await client.connect(
            url, headers={"Cookie": cookie}, namespaces=["/visit"], transports=["websocket"],
            wait_timeout=60,
        )  # fmt: skip
        return peer

    def _refused(self, data: Any = None) -> None:
        self.refused += 1

    def on(self, event: str, handler: Any) -> None:
        self.client.on(event, handler, namespace="/visit")

    def _acked(self, answer: Any = None) -> None:
        if not (isinstance(answer, dict) and answer.get("ok")):
            self.refused += 1

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        await self.client.emit(event, data, namespace="/visit", callback=self._acked)

    async def send(self, event: str, data: dict[str, Any]) -> None:
        await self.client.emit(event, data, namespace="/visit")

    async def call(self, event: str, data: dict[str, Any]) -> Any:
        return await self.client.call(event, data, namespace="/visit", timeout=30)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.disconnect()


def candidate_now() -> dict[str, Any]:
    return {"candidate": f"candidate:1 {time.monotonic_ns()} udp"}


async def load_socketio(a: argparse.Namespace, part: dict[str, Any], tally: Tally) -> None:
    import gc

    import aiohttp

    url = a.url
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    idle: list[Any] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect_idle(cookie: str) -> None:
        async with gate:
            if a.idle_clients == "raw":
                client: Any = await RawSocketIO.open(http, url, cookie)
                async with asyncio.timeout(120):  # the server's connect work for it is done
                    await client.welcomed.wait()
            else:
                client = await SioPeer.open(url, cookie)
        idle.append(client)

    async def connect_peer(cookie: str) -> Any:
        if a.pair_clients == "raw":
            return await RawSocketIO.open(http, url, cookie)
        return await SioPeer.open(url, cookie)

    await asyncio.gather(*(connect_idle(f"telemed_visit={c}") for c in part["waiting"]))
    pairs: list[tuple[str, Any, Any]] = []
    for pair in part["pairs"]:
        doctor = await connect_peer(f"telemed_session={pair['doctor']}")
        patient = await connect_peer(f"telemed_visit={pair['patient']}")
        in_call = asyncio.Event()

        async def admitted(data: dict[str, Any], in_call: asyncio.Event = in_call) -> None:
            if data["state"] == "in_call":
                in_call.set()

        patient.on("visit", admitted)
        answer = await doctor.call("admit", {"visit_id": pair["visit_id"]})
        assert answer["ok"], answer
        async with asyncio.timeout(30):
            await in_call.wait()
        answer = await patient.call("join_call", {})
        assert answer["ok"], answer
        pairs.append((pair["visit_id"], patient, doctor))
    # what connecting left behind (handshakes, aiohttp's and our own objects) is kept for
    # the whole run: out of the collector's way, so a full collection does not walk it
    gc.collect()
    gc.freeze()
    emit_print("ready", len(idle) + 2 * len(pairs))
    go = await wait_go()
    tally.window_start, tally.window_end = go["start"], go["end"]

    for visit_id, patient, doctor in pairs:
        for me, body in ((patient, {}), (doctor, {"visit_id": visit_id})):

            async def bounce(
                data: dict[str, Any], me: Any = me, body: dict[str, Any] = body
            ) -> None:
                tally.hop(int(data["candidate"]["candidate"].split()[1]))
                if time.monotonic() < tally.window_end + 1:
                    signal = {**body, "candidate": candidate_now()}
                    await (me.emit if a.acks else me.send)("signal", signal)

            me.on("signal", bounce)
        for _ in range(a.window):
            signal = {"candidate": candidate_now()}
            await (patient.emit if a.acks else patient.send)("signal", signal)
    await asyncio.sleep(max(0.0, tally.window_end - time.monotonic() + 1.5))
    tally.refused = sum(p.refused + d.refused for _, p, d in pairs)
    for _, patient, doctor in pairs:
        await patient.close()
        await doctor.close()
    await asyncio.gather(*(client.close() for client in idle))
    await http.close()


async def load_bare(a: argparse.Namespace, part: dict[str, Any], tally: Tally) -> None:
    import gc

    import aiohttp

    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))  # no pool cap
    sockets: list[Any] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(path: str) -> Any:
        async with gate:
            ws = await http.ws_connect(a.url + path)
        sockets.append(ws)
        return ws

    await asyncio.gather(*(connect("/ws?pair=") for _ in part["waiting"]))
    pairs = [
        (await connect(f"/ws?pair={p['visit_id']}"), await connect(f"/ws?pair={p['visit_id']}"))
        for p in part["pairs"]
    ]
    gc.collect()  # as in the Socket.IO phase
    gc.freeze()
    emit_print("ready", len(sockets))
    go = await wait_go()
    tally.window_start, tally.window_end = go["start"], go["end"]

    async def pump(ws: Any) -> None:
        async for message in ws:
            data = json.loads(message.data)
            tally.hop(int(data["candidate"]["candidate"].split()[1]))
            if time.monotonic() < tally.window_end + 1:
                candidate = {"candidate": f"candidate:1 {time.monotonic_ns()} udp"}
                await ws.send_str(json.dumps({"visit_id": "x", "candidate": candidate}))

    pumps = [asyncio.create_task(pump(ws)) for pair in pairs for ws in pair]
    for first, _ in pairs:
        for _ in range(a.window):
            candidate = {"candidate": f"candidate:1 {time.monotonic_ns()} udp"}
            await first.send_str(json.dumps({"visit_id": "x", "candidate": candidate}))
    await asyncio.sleep(max(0.0, tally.window_end - time.monotonic() + 1.5))
    for ws in sockets:
        await ws.close()
    for task in pumps:
        task.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)
    await http.close()


def emit_print(kind: str, value: Any) -> None:
    sys.stdout.write(json.dumps({kind: value}) + "\n")
    sys.stdout.flush()


async def wait_go() -> dict[str, Any]:
    line = await asyncio.to_thread(sys.stdin.readline)
    go: dict[str, Any] = json.loads(line)
    return go


def role_load(a: argparse.Namespace) -> None:
    import logging

    raise_open_files()
    logging.getLogger("engineio.client").setLevel(logging.CRITICAL)  # teardown chatter
    part = json.loads(Path(a.part).read_text())
    tally = Tally([])
    runner = load_socketio if a.mode == "socketio" else load_bare
    asyncio.run(runner(a, part, tally))
    emit_print(
        "result",
        {"received": tally.received, "refused": tally.refused, "latencies": tally.latencies},
    )


def role_bare(a: argparse.Namespace) -> None:
    """The baseline: a bare aiohttp WebSocket relay between the two sockets of a pair."""
    from aiohttp import WSMsgType, web

    raise_open_files()
    pairs: dict[str, list[web.WebSocketResponse]] = collections.defaultdict(list)

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=65536)
        await ws.prepare(request)
        key = request.query.get("pair", "")
        members = pairs[key] if key else []
        members.append(ws)
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    for other in members:
                        if other is not ws:
                            await other.send_str(message.data)
        finally:
            members.remove(ws)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    web.run_app(app, host="127.0.0.1", port=a.port, print=None, access_log=None)


# the coordinator ----------------------------------------------------------------------------
def wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url}")


def phase(
    a: argparse.Namespace, tmp: Path, mode: str, url: str, server_pid: int, plan: dict[str, Any]
) -> dict[str, Any]:
    parts = []
    for w in range(a.workers):
        part = {"waiting": plan["waiting"][w :: a.workers], "pairs": plan["pairs"][w :: a.workers]}
        path = tmp / f"part-{mode}-{w}.json"
        path.write_text(json.dumps(part))
        parts.append(path)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                "--role",
                "load",
                "--mode",
                mode,
                "--url",
                url,
                "--part",
                str(path),
                "--window",
                str(a.window),
                "--idle-clients",
                a.idle_clients,
                "--pair-clients",
                a.pair_clients,
                *(["--acks"] if a.acks else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for path in parts
    ]
    started = time.monotonic()
    connected = 0
    for worker in workers:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        if not line:
            raise RuntimeError(f"{mode}: a load process died while connecting")
        connected += json.loads(line)["ready"]
    connect_seconds = time.monotonic() - started
    start = time.monotonic() + 1.0 + a.warmup
    end = start + a.seconds - a.warmup
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(json.dumps({"start": start, "end": end}) + "\n")
        worker.stdin.flush()
    time.sleep(max(0.0, start - time.monotonic()))
    profilers = []
    if mode == "socketio" and a.profile:
        profilers.append((start_profile(server_pid, end - start, a.profile), a.profile, "server"))
    if mode == "socketio" and a.profile_load:
        load = workers[0].pid
        profilers.append((start_profile(load, end - start, a.profile_load), a.profile_load, "load"))
    cpu0 = (cpu_seconds([server_pid]), cpu_seconds([w.pid for w in workers]), machine_busy())
    t0 = time.monotonic()
    time.sleep(max(0.0, end - time.monotonic()))
    cpu1 = (cpu_seconds([server_pid]), cpu_seconds([w.pid for w in workers]), machine_busy())
    wall = time.monotonic() - t0
    latencies: list[float] = []
    received = refused = 0
    for worker in workers:
        assert worker.stdout is not None
        for line in worker.stdout:
            if line.startswith('{"result"'):
                result = json.loads(line)["result"]
                received += result["received"]
                refused += result["refused"]
                latencies += result["latencies"]
        worker.wait(timeout=120)
    for profiler, path, title in profilers:
        finish_profile(profiler, path, title)
    span = end - start
    server_cpu, clients_cpu = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    return {
        "connected": connected,
        "connect_seconds": round(connect_seconds, 1),
        "msgs_per_s": round(received / span, 1),
        "refused": refused,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "server_cpu_percent": round(100 * server_cpu / wall, 1),
        "clients_cpu_percent": round(100 * clients_cpu / wall, 1),
        # everything else on the machine (other jobs, this coordinator, py-spy)
        "other_cpu_percent": round(100 * (cpu1[2] - cpu0[2] - server_cpu - clients_cpu) / wall, 1),
    }


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process)."""
    import psutil  # type: ignore[import-untyped]

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def start_profile(pid: int, seconds: float, path: str) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}/usr/local/bin")
    if spy is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return subprocess.Popen(
        [spy, "record", "--nonblocking", "--pid", str(pid), "--duration", str(int(seconds)),
         "--rate", "100", "--format", "raw", "--output", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def finish_profile(profiler: subprocess.Popen[bytes], path: str, title: str) -> None:
    profiler.wait(timeout=120)
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"\nprofile of the {title} process ({total} samples), top self time:")
    for frame, n in own.most_common(15):
        print(f"  {100 * n / total:5.1f}%  {frame[:110]}")
    print("top inclusive:")
    for frame, n in inclusive.most_common(25):
        print(f"  {100 * n / total:5.1f}%  {frame[:110]}")


def stop(process: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE: the figures are taken by then, and a
    server's shutdown is not what this measures."""
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        print(f"{name}: still stopping after {STOP_GRACE:g} s, killed")
        process.kill()
        process.wait()


def coordinate(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    raise_open_files()
    waiting = a.clients - 2 * a.pairs
    store_url = f"sqlite:///{tmp / 'telemed.db'}"
    t0 = time.monotonic()
    plan = asyncio.run(seed(store_url, waiting, a.pairs, a.per_clinician))
    print(f"seeded {waiting} waiting visits and {a.pairs} pairs in {time.monotonic() - t0:.0f} s")

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")},
        "TELEMED_VAR_DIR": str(tmp / "var"),
        "TELEMED_STORE_URL": store_url,
        "TELEMED_SERVER_HOST": "127.0.0.1",
        "TELEMED_SERVER_PORT": str(port),
        "TELEMED_SERVER_PUBLIC_URL": "",
        "TELEMED_MQTT_EMBEDDED": "false",
        "TELEMED_MONITORING_INGEST": "false",
        "TELEMED_DEMO_SEED": "false",
        "TELEMED_LOG_LEVEL": "WARNING",
        # the bounce is closed-loop: the per-connection limit must not be what binds
        "TELEMED_SIGNALING_EVENTS_PER_SECOND": "1000",
        "TELEMED_SIGNALING_EVENT_BURST": "10000",
    }
    log = tmp / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(TELEMED), "--config", str(ROOT / "config.toml"), "serve"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", server, log)
        sio = phase(a, tmp, "socketio", url, server.pid, plan)
    finally:
        stop(server, "telemed serve")
    print(f"socket.io: {sio}")

    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--role", "bare", "--port", str(bare_port)]
    )
    try:
        wait_http(f"http://127.0.0.1:{bare_port}/ws", bare, log)
        base = phase(a, tmp, "bare", f"ws://127.0.0.1:{bare_port}", bare.pid, plan)
    finally:
        stop(bare, "bare relay")
    print(f"bare relay: {base}")
    ratio = sio["msgs_per_s"] / base["msgs_per_s"] if base["msgs_per_s"] else 0.0
    return {
        "clients": sio["connected"],
        "p50_ms": sio["p50_ms"],
        "p99_ms": sio["p99_ms"],
        "msgs_per_s": sio["msgs_per_s"],
        "baseline_msgs_per_s": base["msgs_per_s"],
        "baseline_p50_ms": base["p50_ms"],
        "baseline_p99_ms": base["p99_ms"],
        "ratio": round(ratio, 3),
        "refused": sio["refused"],
        "server_cpu_percent": sio["server_cpu_percent"],
        "clients_cpu_percent": sio["clients_cpu_percent"],
        "other_cpu_percent": sio["other_cpu_percent"],
        "baseline_server_cpu_percent": base["server_cpu_percent"],
        "baseline_clients_cpu_percent": base["clients_cpu_percent"],
        "baseline_other_cpu_percent": base["other_cpu_percent"],
        "connect_seconds": sio["connect_seconds"],
        "pairs": a.pairs,
        "per_clinician": a.per_clinician,
        "idle_clients": a.idle_clients,
        "pair_clients": a.pair_clients,
        "window": a.window,
        "acks": a.acks,
        "workers": a.workers,
        "seconds": a.seconds,
        "cores": os.cpu_count(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "targets_met": sio["connected"] >= 5000 and sio["p99_ms"] <= 50 and ratio >= 0.5,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=5000, help="sockets connected in all")
    p.add_argument("--pairs", type=int, default=50, help="visits in a call, bouncing signals")
    p.add_argument("--window", type=int, default=4, help="signals in flight per pair")
    p.add_argument("--per-clinician", type=int, default=5, help="waiting patients per queue")
    p.add_argument(
        "--idle-clients", choices=("raw", "sio"), default="raw",
        help="waiting patients: raw Socket.IO frames on aiohttp, or python-socketio clients",
    )  # fmt: skip
    p.add_argument(
        "--pair-clients", choices=("raw", "sio"), default="raw",
        help="the peers in a call: raw Socket.IO frames on aiohttp, or python-socketio clients",
    )  # fmt: skip
    p.add_argument(
        "--acks", action="store_true",
        help="every signal asks for an acknowledgement (the pages no longer do)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="load processes")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    p.add_argument("--warmup", type=float, default=4.0, help="seconds not measured")
    p.add_argument("--profile", help="py-spy the Socket.IO server; raw stacks to this file")
    p.add_argument("--profile-load", help="py-spy the first load process; raw stacks to this file")
    p.add_argument("--role", choices=("load", "bare"), help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("socketio", "bare"), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.role == "load":
        role_load(a)
        return 0
    if a.role == "bare":
        role_bare(a)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-signaling-") as folder:
        result = coordinate(a, Path(folder))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
