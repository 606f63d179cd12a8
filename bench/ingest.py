"""Ingestion benchmark: wearable packs through a real Mosquitto into the SQLite store.

    .venv/bin/python bench/ingest.py [--seconds 20] [--devices 100] [--publishers 2]

One run, three phases of `--seconds` each, over the same broker, devices and publishers:

1. ceiling: the publishers at full speed while a bare paho subscriber (MQTT 5, QoS 1, the
   same kind of subscription as the ingestor's, automatic acks) only counts the messages;
2. saturated: the same load while the server's `Ingestor` consumes it, in a process of
   its own as in `telemed serve`, into a SQLite store in a temp folder: the sustained
   stored readings/s, and the ratio to the ceiling;
3. paced: the publishers at a fixed rate, `--paced` (0.8) times what phase 2 sustained
   (or `--rate`): the publish-to-committed latency of a system that keeps up.
Then the store is checked reading by reading: lost and duplicated.

"Full speed" is closed-loop. MQTT gives publishers no back-pressure from subscribers:
the broker acknowledges a publish once it has queued it. An open-loop firehose faster
than the consumer only grows the broker's queue for the consumer's session (or, past
`max_queued_messages`, has it dropped), so its figures depend on the run's length, not
on the ingestor. The publishers, as a whole, keep at most `--credit` messages per
consumer session published but not yet consumed (acknowledged by the subscriber;
committed, for the ingestor), and publish as fast as that allows. The default, 1000, is
the session's Receive Maximum: two batches of 500 messages. Latency at saturation is
then about credit / rate (Little's law): it is reported, but the latency that matters
comes from phase 3.

Processes (subprocesses of this script, `--role ...`, all on 127.0.0.1):
- this coordinator: starts Mosquitto (`MosquittoSupervisor`, dynamic security), enrolls
  the devices (`Enrollment`, with the generated admin credentials), runs the phases,
  measures CPU (psutil), verifies the store and prints;
- `ingest` (x `--ingesters`): the `Ingestor` alone in its process and event loop, as in
  the server, so that its CPU is its own and a profiler can attach to it (`--profile`);
  it keeps its MQTT session from phase 2 to phase 3. One process subscribes plainly, as
  the server does with its embedded broker; several share a `$share/telemed/` group;
- `publish` (x `--publishers`): simulated devices, one MQTT connection each with its own
  credentials, publishing SenML packs of 10 readings at QoS 1, at most `--window`
  unacknowledged packs per device. They speak MQTT 3.1.1 over plain sockets: the load
  generator shares the cores with the system under test and must cost little;
- `count`: the bare subscriber of phase 1.

Every reading is unique: pack k of a device carries its readings at base + 10k + i ms
(i = 0..9, each phase its own base), so a pack's first reading names it. Publishers
record each pack's send time; the ingest process notes when each pack's batch was
committed (`on_stored`); latency is the difference, over the packs sent in the steady
window (after `--warmup`).

The last line printed is JSON; bench/README.md explains each field.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import logging
import math
import mmap
import os
import selectors
import shutil
import signal
import socket
import sqlite3
import struct
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procs import free_port  # bench/procs.py

if TYPE_CHECKING:
    from devices.dynsec import AdminCredentials

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(1, str(ROOT))  # measure the tree this script lives in (a scratch copy too)

PACK = 10  # readings per message
# (name, unit, lowest value) of the 10 records of a pack, one millisecond apart
RECORDS = (
    ("hr", "beat/min", 60),
    ("spo2", "%", 90),
    ("rr", "/min", 12),
    ("temp", "Cel", 36),
    ("sys", "mm[Hg]", 110),
    ("dia", "mm[Hg]", 70),
    ("hr", "beat/min", 61),
    ("spo2", "%", 91),
    ("rr", "/min", 13),
    ("temp", "Cel", 37),
)
CODES = ("8867-4", "2708-6", "9279-1", "8310-5", "8480-6", "8462-4") * 2  # LOINC of RECORDS
PHASE_SPAN = timedelta(hours=2)  # each phase's readings: 2 h of time, all older than 30 min
PHASES = ("ceiling", "saturated", "paced")
CONNECT_TIMEOUT = 15.0
ACK_TIMEOUT = 15.0  # after the publishing time, for the last PUBACKs
DRAIN_MAX = 120.0  # seconds at most waiting for the consumer after the publishers stop
PROGRESS_EVERY = 0.25
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def emit(kind: str, body: object = None) -> None:
    """One line to the coordinator, on stdout."""
    sys.stdout.write(kind if body is None else f"{kind} {json.dumps(body)}")
    sys.stdout.write("\n")
    sys.stdout.flush()


def epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def phase_base_ms(start: datetime, phase: str) -> int:
    """Where a phase's reading times start: disjoint 2 h spans within the 24 h window."""
    back = PHASE_SPAN * (len(PHASES) - PHASES.index(phase)) + timedelta(minutes=30)
    return epoch_ms(start - back) // 1000 * 1000


class Flow:
    """Counters shared through a small mapped file, each slot written by one process:
    slot c, messages consumer c has consumed; slot `consumers` + p, messages publisher p
    has sent. Publishers read them all: the messages published but not yet consumed."""

    def __init__(self, path: Path, consumers: int, publishers: int) -> None:
        self._file = path.open("r+b")
        self.consumers = consumers
        self.slots = consumers + publishers
        self._map = mmap.mmap(self._file.fileno(), 8 * self.slots)

    @staticmethod
    def create(path: Path, consumers: int, publishers: int) -> None:
        path.write_bytes(bytes(8 * (consumers + publishers)))

    def set_consumed(self, consumer: int, n: int) -> None:
        struct.pack_into("<Q", self._map, 8 * consumer, n)

    def set_sent(self, publisher: int, n: int) -> None:
        struct.pack_into("<Q", self._map, 8 * (self.consumers + publisher), n)

    def outstanding(self) -> int:
        counts: tuple[int, ...] = struct.unpack_from(f"<{self.slots}Q", self._map, 0)
        return sum(counts[self.consumers :]) - sum(counts[: self.consumers])

    def close(self) -> None:
        self._map.close()
        self._file.close()


# --- role: publish (simulated devices, MQTT 3.1.1 over plain sockets) ----------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _connect_packet(client_id: str, username: str, password: str) -> bytes:
    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 60)
    body += _utf8(client_id) + _utf8(username) + _utf8(password)
    return b"\x10" + _varint(len(body)) + body


def _pack_template(device_id: str) -> str:
    """A SenML pack with %-slots for the base time and the 10 values."""
    records = []
    for i, (name, unit, _) in enumerate(RECORDS):
        fields = f'"n":"{name}","u":"{unit.replace("%", "%%")}","v":%d'
        if i == 0:
            records.append(f'{{"bn":"urn:dev:{device_id}:","bt":%s,{fields}}}')
        else:
            records.append(f'{{{fields},"t":0.{i:03d}}}')
    return "[" + ",".join(records) + "]"


class SimDevice:
    """One device on its own connection, with up to `window` packs awaiting a PUBACK."""

    def __init__(self, device_id: str, password: str, port: int, base_ms: int) -> None:
        self.id = device_id
        self.base_ms = base_ms
        self.template = _pack_template(device_id)
        self.topic = _utf8(f"telemed/v1/devices/{device_id}/vitals")
        self.sent_at = array.array("d")  # wall time each pack was written, by pack number
        self.inflight: set[int] = set()
        self.acked = 0
        self.next_pid = 1
        self.buffer = b""
        self.max_packs = PHASE_SPAN // timedelta(milliseconds=PACK)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(_connect_packet(device_id, device_id, password))
        connack = b""
        while len(connack) < 4:
            chunk = self.sock.recv(4 - len(connack))
            if not chunk:
                raise RuntimeError(f"device {device_id}: the broker closed the connection")
            connack += chunk
        if connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"device {device_id}: CONNECT refused ({connack.hex()})")

    def room(self, window: int) -> int:
        return max(0, min(window - len(self.inflight), self.max_packs - len(self.sent_at)))

    def send(self, count: int) -> None:
        packets = []
        first = len(self.sent_at)
        for seq in range(first, first + count):
            ms = self.base_ms + seq * PACK
            values = tuple(low + (seq + i) % 7 for i, (_, _, low) in enumerate(RECORDS))
            payload = (self.template % (f"{ms // 1000}.{ms % 1000:03d}", *values)).encode()
            pid = self.next_pid
            self.next_pid = pid % 65535 + 1
            size = _varint(len(self.topic) + 2 + len(payload))
            packets.append(b"\x32" + size + self.topic + struct.pack("!H", pid) + payload)
            self.inflight.add(pid)
        self.sent_at.extend([time.time()] * count)
        self.sock.sendall(b"".join(packets))

    def read_acks(self) -> None:
        """Read what the broker sent: PUBACKs, nothing else."""
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError(f"device {self.id}: the broker closed the connection")
        buf = self.buffer + data
        i = 0
        while len(buf) - i >= 4:
            if buf[i] != 0x40 or buf[i + 1] != 2:
                raise RuntimeError(f"device {self.id}: unexpected MQTT packet 0x{buf[i]:02x}")
            pid = (buf[i + 2] << 8) | buf[i + 3]
            if pid not in self.inflight:
                raise RuntimeError(f"device {self.id}: PUBACK for unknown packet id {pid}")
            self.inflight.discard(pid)
            self.acked += 1
            i += 4
        self.buffer = buf[i:]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()


def role_publish(a: argparse.Namespace) -> None:
    creds = json.loads(Path(a.devices_file).read_text(encoding="utf-8"))[a.first : a.last]
    flow = Flow(Path(a.flow), a.consumers, a.processes)
    devices = [SimDevice(c["id"], c["password"], a.port, a.base_ms) for c in creds]
    stdin = sys.stdin.fileno()
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, None)
    emit("ready")
    if not sel.select(timeout=120) or b"go" not in os.read(stdin, 4096):
        raise RuntimeError("no 'go' from the coordinator within 120 s")
    for d in devices:
        sel.register(d.sock, selectors.EVENT_READ, d)
    cpu0 = time.process_time()
    started = time.monotonic()
    deadline = started + a.seconds
    paced = a.rate / PACK / a.processes  # packs/s of this process; 0: closed loop
    sent = 0
    ready: deque[SimDevice] = deque(devices)  # devices with room in their window
    waiting = set(devices)
    stop = False
    while True:
        now = time.monotonic()
        publishing = not stop and now < deadline
        if (not publishing and all(not d.inflight for d in devices)) or (
            now > deadline + ACK_TIMEOUT
        ):
            break
        if paced:
            budget = int((now - started) * paced) - sent
        else:  # this process's share of the free credit: the others take theirs
            budget = (a.credit - flow.outstanding()) // a.processes
        while publishing and ready and budget > 0:
            d = ready.popleft()
            waiting.discard(d)
            n = min(d.room(a.window), budget, 64)
            if n:
                d.send(n)
                sent += n
                budget -= n
                flow.set_sent(a.slot, sent)
                if d.room(a.window):
                    ready.append(d)
                    waiting.add(d)
        # wake for acks, for the next paced packs (sent every 5 ms: polling faster would
        # cost the cores the system under test needs), or for the consumer freeing credit
        timeout = (0.005 if paced else 0.001) if publishing and ready else 0.05
        for key, _ in sel.select(timeout=timeout):
            if key.data is None:  # "stop", or EOF: the coordinator is gone
                os.read(stdin, 4096)
                stop = True
                sel.unregister(stdin)
                continue
            d = key.data
            d.read_acks()
            if d not in waiting and d.room(a.window):
                ready.append(d)
                waiting.add(d)
    cpu = time.process_time() - cpu0
    devices_out = []
    with open(a.out, "wb") as out:
        for d in devices:
            devices_out.append(
                {"id": d.id, "sent": len(d.sent_at), "acked": d.acked, "offset": out.tell()}
            )
            d.sent_at.tofile(out)
            d.close()
    flow.close()
    emit("result", {"devices": devices_out, "cpu_seconds": cpu})


# --- role: count (the bare subscriber of the ceiling) --------------------------------------


def role_count(a: argparse.Namespace) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    admin = json.loads(Path(a.admin_file).read_text(encoding="utf-8"))
    flow = Flow(Path(a.flow), 1, a.processes)
    count = 0
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        flow.set_consumed(0, count)  # paho acknowledges when this returns

    def on_subscribe(*_: object) -> None:
        subscribed.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-ceiling-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(admin["username"], admin["password"])
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.ReceiveMaximum = a.receive_maximum  # as the ingestor's session
    client.connect("127.0.0.1", a.port, clean_start=True, properties=properties)
    client.loop_start()
    samples: list[tuple[float, int]] = []
    vitals = "telemed/v1/devices/+/vitals"
    try:
        client.subscribe(f"$share/bench-ceiling/{vitals}" if a.shared else vitals, qos=1)
        if not subscribed.wait(CONNECT_TIMEOUT):
            raise RuntimeError("the bare subscriber got no SUBACK")
        stopped = threading.Event()

        def watch_stdin() -> None:  # a line ("stop") or EOF (the coordinator is gone)
            sys.stdin.readline()
            stopped.set()

        threading.Thread(target=watch_stdin, name="stdin", daemon=True).start()
        emit("ready")
        cpu0 = time.process_time()
        end = time.monotonic() + a.max_seconds
        while not stopped.is_set() and time.monotonic() < end:
            samples.append((time.time(), count))
            emit("progress", {"t": samples[-1][0], "consumed": count})
            stopped.wait(PROGRESS_EVERY)
        samples.append((time.time(), count))
    finally:
        client.disconnect()
        client.loop_stop()
        flow.close()
    emit("result", {"samples": samples, "cpu_seconds": time.process_time() - cpu0})


# --- role: ingest (the server's Ingestor, alone in its process) ----------------------------


class CommitLog:
    """`on_stored`: when each batch was committed, and which packs it held (cheaply)."""

    def __init__(self, flow: Flow, slot: int) -> None:
        self.flow = flow
        self.slot = slot
        self.committed = 0  # messages; every message of the benchmark is a full pack
        self.batches: list[tuple[float, int, Sequence[Any]]] = []
        self.store_calls: list[tuple[float, float]] = []  # add_observations: start, end

    def time_store(self, store: Any) -> None:
        """Note when each `add_observations` call starts and ends (the store's share)."""
        add = store.add_observations

        async def timed(observations: Sequence[Any]) -> int:
            start = time.time()
            try:
                return int(await add(observations))
            finally:
                self.store_calls.append((start, time.time()))

        store.add_observations = timed

    async def __call__(self, batch: Sequence[Any]) -> None:
        now = time.time()
        firsts = batch[::PACK]  # a message's readings are kept together, in pack order
        if any(o.taken_at.microsecond % (PACK * 1000) for o in firsts):
            firsts = [o for o in batch if o.taken_at.microsecond % (PACK * 1000) == 0]
        self.batches.append((now, len(batch), firsts))
        self.committed += len(batch) // PACK
        self.flow.set_consumed(self.slot, self.committed)

    def dump(self, path: Path) -> None:
        ids: dict[str, int] = {}
        out = []
        for t, n, firsts in self.batches:
            packs: list[int] = []
            for o in firsts:
                packs += (ids.setdefault(o.device_id, len(ids)), epoch_ms(o.taken_at))
            out.append([t, n, packs])
        body = {"devices": list(ids), "batches": out, "store_calls": self.store_calls}
        path.write_text(json.dumps(body), encoding="utf-8")


async def role_ingest(a: argparse.Namespace, admin: dict[str, str]) -> None:
    from devices.broker import BrokerAccess
    from devices.ingest import Ingestor, IngestSettings
    from telemed.clock import utcnow
    from telemed.store.sqlite import SqliteStore

    access = BrokerAccess("127.0.0.1", a.port, admin["username"], admin["password"], False)
    settings = IngestSettings(
        client_id=a.client_id,
        share_group="telemed" if a.shared else "",  # as telemed/app.py: "" when embedded
        batch_max=a.batch_max,
        batch_wait=a.batch_wait_ms / 1000,
        receive_maximum=a.receive_maximum,
    )
    store = await SqliteStore.open(f"sqlite:///{a.db}")
    flow = Flow(Path(a.flow), a.consumers, a.processes)
    log = CommitLog(flow, a.slot)
    log.time_store(store)
    ingestor = Ingestor(store, utcnow, access, settings, on_stored=log)
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin
    )
    task = asyncio.create_task(ingestor.run(), name="ingest")
    stop = asyncio.create_task(stdin.readline(), name="stdin")  # "stop", or EOF
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await ingestor.connected.wait()
        emit("ready")
        cpu0 = time.process_time()
        async with asyncio.timeout(a.max_seconds):
            while not stop.done():
                if task.done():
                    task.result()  # raises what stopped the ingestor
                    raise RuntimeError("the ingestor stopped")
                s = ingestor.stats
                emit("progress", {"t": time.time(), "consumed": log.committed, "stored": s.stored})
                await asyncio.wait({stop, task}, timeout=PROGRESS_EVERY)
        cpu = time.process_time() - cpu0
    finally:
        for t in (task, stop):
            t.cancel()
        await asyncio.gather(task, stop, return_exceptions=True)
        await store.close()
        flow.close()
    log.dump(Path(a.out))
    s = ingestor.stats
    emit(
        "result",
        {
            "messages": s.messages,
            "stored": s.stored,
            "duplicates": s.duplicates,
            "refused": s.refused,
            "batches": s.batches,
            "store_retries": s.store_retries,
            "reconnects": s.reconnects,
            "cpu_seconds": cpu,
        },
    )


# --- the coordinator -------------------------------------------------------------------------


class Child:
    """A role subprocess: lines in on stdin; `ready`, `progress` and `result` lines out."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.progress: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self._reader = asyncio.create_task(self._read(), name=f"read-{name}")

    @classmethod
    async def start(cls, name: str, tmp: Path, role: str, *args: object) -> Child:
        log_path = tmp / f"{name}.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SCRIPT),
                "--role",
                role,
                *(str(x) for x in args),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,  # Ctrl-C reaches the coordinator, which stops us
            )
        return cls(name, proc, log_path)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                kind, _, body = line.decode().strip().partition(" ")
                if kind == "ready":
                    self.ready.set()
                elif kind == "progress":
                    self.progress.append(json.loads(body))
                elif kind == "result":
                    self.result = json.loads(body)
        finally:
            self.done.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def consumed(self) -> int:
        return int(self.progress[-1]["consumed"]) if self.progress else 0

    def failure(self) -> str:
        tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        return f"{self.name} (pid {self.pid}) failed, exit code {self.proc.returncode}:\n{tail}"

    async def wait_ready(self, within: float = 60.0) -> None:
        waiter = asyncio.create_task(self.ready.wait())
        try:
            await asyncio.wait(
                {waiter, self._reader}, timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        if not self.ready.is_set():
            raise RuntimeError(self.failure())

    def send(self, line: str) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.write(line.encode() + b"\n")

    async def finish(self, within: float) -> dict[str, Any]:
        """Its result, once it has stopped (by itself, or told to)."""
        try:
            async with asyncio.timeout(within):
                await self.done.wait()
                await self.proc.wait()
        except TimeoutError:
            raise RuntimeError(f"{self.name} did not finish within {within:g} s") from None
        if self.result is None or self.proc.returncode != 0:
            raise RuntimeError(self.failure())
        return self.result

    async def close(self) -> None:
        """Stop it if it still runs: EOF on its stdin, then SIGTERM, then SIGKILL."""
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            for signal_it in (None, self.proc.terminate, self.proc.kill):
                if signal_it is not None:
                    with contextlib.suppress(ProcessLookupError):
                        signal_it()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):
                        await self.proc.wait()
                    break
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@dataclass
class Rig:
    args: argparse.Namespace
    tmp: Path
    port: int
    admin_file: Path
    devices_file: Path
    db: Path
    device_ids: list[str]
    broker_pid: int
    broker_log: Path
    started: datetime
    children: list[Child] = field(default_factory=list)
    helpers: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def child(self, name: str, role: str, **options: object) -> Child:
        args = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
        c = await Child.start(name, self.tmp, role, *args)
        self.children.append(c)
        return c

    @staticmethod
    def ingest_client_id(i: int) -> str:
        """Ingest process i keeps its MQTT session across phases, as a restarted server
        resumes its own: a new id would leave the old session in the shared group, and
        Mosquitto keeps handing it its share of the messages while it is away."""
        return f"bench-ingest-{os.getpid()}-{i}"

    def flow(self, phase: str) -> Path:
        return self.tmp / f"{phase}.flow"


@dataclass
class Load:
    """What the publishers did in one phase."""

    phase: str
    go: float  # wall time of the start signal
    window: tuple[float, float]  # the steady window, wall times
    base_ms: int
    sent: dict[str, array.array[float]]  # device id -> send time of each of its packs
    acked_packs: int
    sent_packs: int
    cpu: dict[str, float]  # % of one core in the window, by process
    drain_s: float = 0.0

    @property
    def span(self) -> float:
        return self.window[1] - self.window[0]

    def sent_msgs_per_s(self) -> float:
        w0, w1 = self.window
        return sum(1 for ts in self.sent.values() for t in ts if w0 <= t < w1) / self.span


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), since boot."""
    import psutil  # type: ignore[import-untyped]

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _cpu_seconds(pid: int, main_thread: bool = False) -> float:
    """CPU seconds of a process (or of its first thread: the event loop's, for Python)."""
    import psutil

    try:
        if main_thread:
            thread = next(t for t in psutil.Process(pid).threads() if t.id == pid)
            return float(thread.user_time + thread.system_time)
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, StopIteration):
        return math.nan
    return float(times.user + times.system)


async def enroll(
    tmp: Path, port: int, admin: AdminCredentials, devices: int
) -> tuple[Path, list[dict[str, str]]]:
    """A store with one patient per device, each device enrolled as an operator would."""
    from devices.broker import BrokerAccess
    from devices.enrollment import Enrolled, Enrollment
    from telemed.clinic import OPERATOR, Clinic
    from telemed.clock import utcnow
    from telemed.store.sqlite import SqliteStore

    access = BrokerAccess("127.0.0.1", port, admin.username, admin.password, False)
    db = tmp / "telemed.db"
    store = await SqliteStore.open(f"sqlite:///{db}")
    try:
        clinic = Clinic(store, utcnow)
        enrollment = Enrollment(clinic, access)
        limit = asyncio.Semaphore(8)

        async def one(i: int) -> Enrolled:
            async with limit:
                patient = await clinic.add_user(
                    OPERATOR,
                    role="patient",
                    email=f"bench-{i}@example.org",
                    name=f"Bench Patient {i}",
                    password=None,
                )
                return await enrollment.enroll(OPERATOR, patient.id, "bench-wearable")

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(i)) for i in range(devices)]
    finally:
        await store.close()
    return db, [{"id": t.result().device.id, "password": t.result().password} for t in tasks]


async def publish_phase(
    rig: Rig, phase: str, consumers: Sequence[Child], rate: int, profile: Path | None = None
) -> Load:
    """Run the publishers for --seconds; CPU (and a profile) over the steady window."""
    a = rig.args
    base_ms = phase_base_ms(rig.started, phase)
    publishers = []
    n = len(rig.device_ids)
    for p in range(a.publishers):
        publishers.append(
            await rig.child(
                f"{phase}-publisher-{p}",
                "publish",
                port=rig.port,
                devices_file=rig.devices_file,
                flow=rig.flow(phase),
                slot=p,
                processes=a.publishers,
                consumers=len(consumers),
                first=p * n // a.publishers,
                last=(p + 1) * n // a.publishers,
                seconds=a.seconds,
                window=a.window,
                credit=a.credit * len(consumers),  # --credit is per consumer session
                rate=rate,
                base_ms=base_ms,
                out=rig.tmp / f"{phase}-sent-{p}.bin",
            )
        )
    for c in publishers:
        await c.wait_ready()
    for c in consumers:
        if c.proc.returncode is not None:
            raise RuntimeError(c.failure())
    go = time.time()
    for c in publishers:
        c.send("go")
    window = (go + a.warmup, go + a.seconds)
    pids = {"broker": rig.broker_pid, "coordinator": os.getpid()}
    pids |= {f"consumer-{i}": c.pid for i, c in enumerate(consumers)}
    pids |= {f"publisher-{i}": c.pid for i, c in enumerate(publishers)}
    await asyncio.sleep(max(0.0, window[0] - time.time()))
    cpu0 = {k: _cpu_seconds(pid) for k, pid in pids.items()}
    busy0 = _busy_seconds()
    loop0 = {c.pid: _cpu_seconds(c.pid, main_thread=True) for c in consumers}
    if profile is not None:
        await start_profile(rig, consumers[0].pid, window[1] - window[0], profile)
    await asyncio.sleep(max(0.0, window[1] - time.time()))
    span = window[1] - window[0]
    each = {k: 100 * (_cpu_seconds(pid) - cpu0[k]) / span for k, pid in pids.items()}
    machine = 100 * (_busy_seconds() - busy0) / span
    cpu = {
        "others": max(0.0, machine - sum(each.values())),  # processes not of this run
        "broker": each["broker"],
        "publishers": sum(v for k, v in each.items() if k.startswith("publisher")),
        "consumers": sum(v for k, v in each.items() if k.startswith("consumer")),
        "consumer-loops": sum(
            100 * (_cpu_seconds(c.pid, main_thread=True) - loop0[c.pid]) / span for c in consumers
        ),
    }
    results = [await c.finish(ACK_TIMEOUT + 30) for c in publishers]
    sent: dict[str, array.array[float]] = {}
    acked = total = 0
    for p, result in enumerate(results):
        raw = (rig.tmp / f"{phase}-sent-{p}.bin").read_bytes()
        for d in result["devices"]:
            times = array.array("d")
            times.frombytes(raw[d["offset"] : d["offset"] + 8 * d["sent"]])
            sent[d["id"]] = times
            acked += d["acked"]
            total += d["sent"]
    load = Load(phase, go, window, base_ms, sent, acked, total, cpu)
    load.drain_s = await drain(consumers, total, a.stall)
    return load


async def drain(consumers: Sequence[Child], published: int, stall: float) -> float:
    """Until the consumers have all `published` messages, or no progress for `stall` s."""
    started = last_change = time.monotonic()
    last = -1
    while time.monotonic() - started < DRAIN_MAX:
        have = sum(c.consumed() for c in consumers)
        if have >= published:
            break
        if have != last:
            last, last_change = have, time.monotonic()
        elif time.monotonic() - last_change > stall:
            break
        for c in consumers:
            if c.done.is_set():
                raise RuntimeError(c.failure())
        await asyncio.sleep(PROGRESS_EVERY)
    return time.monotonic() - started


# --- the phases --------------------------------------------------------------------------


def _dropped(log: Path, since: int) -> int:
    """Mosquitto's 'Outgoing messages are being dropped' notices after byte `since`."""
    with contextlib.suppress(FileNotFoundError), log.open("rb") as f:
        f.seek(since)
        return f.read().count(b"are being dropped")
    return 0


def _log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def _rate(samples: Sequence[tuple[float, float]], window: tuple[float, float]) -> float:
    """The slope of a cumulative count over the window, interpolating between samples."""

    def at(t: float) -> float:
        before = samples[0]
        for s in samples:
            if s[0] >= t:
                if s[0] == before[0]:
                    return s[1]
                return before[1] + (s[1] - before[1]) * (t - before[0]) / (s[0] - before[0])
            before = s
        return samples[-1][1]

    return (at(window[1]) - at(window[0])) / (window[1] - window[0])


@dataclass
class Phase:
    load: Load
    consumed_per_s: float  # messages
    dropped_notices: int
    stats: dict[str, Any] = field(default_factory=dict)  # the ingestor's counters
    commits: dict[str, Any] = field(default_factory=dict)  # the CommitLog


async def ceiling_phase(rig: Rig) -> Phase:
    a = rig.args
    mark = _log_size(rig.broker_log)
    Flow.create(rig.flow("ceiling"), 1, a.publishers)
    counter = await rig.child(
        "ceiling-subscriber",
        "count",
        port=rig.port,
        admin_file=rig.admin_file,
        flow=rig.flow("ceiling"),
        processes=a.publishers,
        receive_maximum=a.receive_maximum,
        max_seconds=a.seconds + DRAIN_MAX + 120,
        shared=int(a.ingesters > 1),
    )
    await counter.wait_ready()
    load = await publish_phase(rig, "ceiling", [counter], rate=0)
    counter.send("stop")
    result = await counter.finish(30)
    return Phase(load, _rate(result["samples"], load.window), _dropped(rig.broker_log, mark))


async def ingest_phase(rig: Rig, phase: str, rate: int) -> Phase:
    a = rig.args
    mark = _log_size(rig.broker_log)
    Flow.create(rig.flow(phase), a.ingesters, a.publishers)
    ingesters = []
    for i in range(a.ingesters):
        ingesters.append(
            await rig.child(
                f"{phase}-ingest-{i}",
                "ingest",
                port=rig.port,
                admin_file=rig.admin_file,
                db=rig.db,
                flow=rig.flow(phase),
                slot=i,
                consumers=a.ingesters,
                processes=a.publishers,
                out=rig.tmp / f"{phase}-commits-{i}.json",
                batch_max=a.batch_max,
                batch_wait_ms=a.batch_wait_ms,
                receive_maximum=a.receive_maximum,
                max_seconds=a.seconds + DRAIN_MAX + 120,
                client_id=rig.ingest_client_id(i),
                shared=int(a.ingesters > 1),
            )
        )
    for c in ingesters:
        await c.wait_ready()
    profile = Path(a.profile) if a.profile and phase == "saturated" else None
    load = await publish_phase(rig, phase, ingesters, rate, profile)
    for c in ingesters:
        c.send("stop")
    stats: dict[str, Any] = {}
    for c in ingesters:
        for key, value in (await c.finish(60)).items():
            stats[key] = stats.get(key, 0) + value
    log: dict[str, Any] = {"batches": [], "store_calls": []}
    for i in range(a.ingesters):
        part = json.loads((rig.tmp / f"{phase}-commits-{i}.json").read_text(encoding="utf-8"))
        ids = part["devices"]
        for t, n, packs in part["batches"]:
            named = [(ids[packs[j]], packs[j + 1]) for j in range(0, len(packs), 2)]
            log["batches"].append((t, n, named))
        log["store_calls"] += part["store_calls"]
    log["batches"].sort(key=lambda batch: batch[0])
    cumulative, total = [], 0.0
    for t, n, _ in log["batches"]:
        total += n / PACK
        cumulative.append((t, total))
    rate_msgs = _rate(cumulative, load.window) if cumulative else 0.0
    return Phase(load, rate_msgs, _dropped(rig.broker_log, mark), stats, log)


def latencies(phase: Phase) -> list[float]:
    """Publish-to-commit seconds of each pack sent in the steady window, sorted."""
    load, log = phase.load, phase.commits
    w0, w1 = load.window
    committed: dict[tuple[str, int], float] = {}
    for t, _, packs in log["batches"]:
        for device_id, ms in packs:
            key = (device_id, (ms - load.base_ms) // PACK)
            committed.setdefault(key, t)  # a redelivered pack counts at its first commit
    out = []
    for device_id, times in load.sent.items():
        for seq, sent in enumerate(times):
            if w0 <= sent < w1 and (done := committed.get((device_id, seq))) is not None:
                out.append(done - sent)
    out.sort()
    return out


def store_share(phase: Phase) -> tuple[float, float, float]:
    """Of the steady window: the fraction spent in `add_observations`, and the p50 and
    p99 duration of one call (ms)."""
    w0, w1 = phase.load.window
    calls = [(s, e) for s, e in phase.commits.get("store_calls", []) if w0 <= s < w1]
    busy = sum(min(e, w1) - s for s, e in calls) / (w1 - w0)
    durations = sorted(e - s for s, e in calls)
    return busy, percentile_ms(durations, 0.5), percentile_ms(durations, 0.99)


def percentile_ms(sorted_seconds: Sequence[float], q: float) -> float:
    if not sorted_seconds:
        return math.nan
    return 1000 * sorted_seconds[min(len(sorted_seconds) - 1, int(q * len(sorted_seconds)))]


def verify(db: Path, loads: Sequence[Load]) -> dict[str, int]:
    """Reading by reading: which published readings the store holds, and how often.
    `lost_<phase>` splits `lost` by phase."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        stored_twice = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM observations"
            " GROUP BY device_id, code, taken_at HAVING count(*) > 1)"
        ).fetchone()[0]
        unexpected = 0
        found = dict.fromkeys((load.phase for load in loads), 0)
        for device_id, code, taken_at in conn.execute(
            "SELECT device_id, code, taken_at FROM observations"
        ):
            ms = epoch_ms(datetime.fromisoformat(taken_at))
            for load in loads:
                offset = ms - load.base_ms
                sent = load.sent.get(device_id)
                if sent is not None and 0 <= offset < len(sent) * PACK:
                    if code == CODES[offset % PACK]:
                        found[load.phase] += 1
                        break
            else:
                unexpected += 1
    finally:
        conn.close()
    published = sum(load.sent_packs for load in loads) * PACK
    checked = {
        "published": published,
        "stored": sum(found.values()),
        "lost": published - sum(found.values()),
        "duplicated": int(stored_twice),
        "unexpected": unexpected,
    }
    for load in loads:
        checked[f"lost_{load.phase}"] = load.sent_packs * PACK - found[load.phase]
    return checked


# --- profile ----------------------------------------------------------------------------------


async def start_profile(rig: Rig, pid: int, seconds: float, out: Path) -> None:
    """py-spy on the ingest process for the steady window (collapsed stacks into `out`)."""
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}/usr/local/bin")
    if spy is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    command = f"record --pid {pid} --duration {max(1, int(seconds))} --format raw --threads"
    command += f" --nonblocking --rate {rig.args.profile_rate}"
    if rig.args.profile_gil:  # only the thread holding the GIL, at each sample
        command += " --gil"
    proc = await asyncio.create_subprocess_exec(
        spy,
        *command.split(),
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    rig.helpers.append(proc)  # stopped on the way out if it still runs


def profile_summary(path: Path, top: int = 15) -> list[str]:
    """Collapsed stacks into the share of each thread, and the top functions (self and
    inclusive) of the event-loop thread. py-spy samples idle threads too here (a thread
    waiting in C looks busy), so read the main thread's shares, not the pool threads'."""
    threads: dict[str, int] = {}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    main = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        name = thread.rpartition(": ")[2]
        threads[name] = threads.get(name, 0) + count
        if name != "MainThread" or not frames:
            continue
        main += count
        names = [_frame(f) for f in frames]
        own[names[-1]] = own.get(names[-1], 0) + count
        for n in set(names):
            inclusive[n] = inclusive.get(n, 0) + count
    if not main:
        return ["profile: no samples of the main thread"]
    out = ["samples by thread: " + ", ".join(f"{t} {c}" for t, c in threads.items())]
    out.append(f"main thread (event loop), {main} samples; self time:")
    out += [f"  {100 * c / main:5.1f}%  {n}" for n, c in _top(own, top)]
    out.append("main thread, inclusive time (the event loop's own frames left out):")
    below = {n: c for n, c in inclusive.items() if c < 0.9 * main}
    out += [f"  {100 * c / main:5.1f}%  {n}" for n, c in _top(below, top)]
    return out


def _frame(frame: str) -> str:
    """'Ingestor._accept (devices/ingest.py:180)' -> 'Ingestor._accept (devices/ingest.py)'"""
    function, _, where = frame.partition(" (")
    return f"{function} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else function


def _top(counts: dict[str, int], n: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: -item[1])[:n]


# --- report -----------------------------------------------------------------------------------


def report(
    rig: Rig, ceiling: Phase, saturated: Phase, paced: Phase, checked: dict[str, int]
) -> dict[str, Any]:
    a = rig.args
    sat_lat, paced_lat = latencies(saturated), latencies(paced)
    ceiling_rate = ceiling.consumed_per_s
    ingest_rate = saturated.consumed_per_s
    readings = ingest_rate * PACK
    cpu = saturated.load.cpu
    store_busy, store_p50, store_p99 = store_share(saturated)
    paced_busy, paced_p50, _ = store_share(paced)
    s: dict[str, Any] = {
        "readings_per_s": round(readings),
        "broker_ceiling_msgs_per_s": round(ceiling_rate),
        "ratio": round(ingest_rate / ceiling_rate, 3) if ceiling_rate else None,
        "p50_ms": round(percentile_ms(paced_lat, 0.50), 1),
        "p99_ms": round(percentile_ms(paced_lat, 0.99), 1),
        "lost": checked["lost"],
        "duplicated": checked["duplicated"],
        "seconds": a.seconds,
        "lost_saturated": checked["lost_saturated"],
        "lost_paced": checked["lost_paced"],
        "devices": a.devices,
        "publishers": a.publishers,
        "ingesters": a.ingesters,
        "ingest_msgs_per_s": round(ingest_rate),
        "paced_readings_per_s": round(paced.consumed_per_s * PACK),
        "paced_offered_readings_per_s": round(paced.load.sent_msgs_per_s() * PACK),
        "saturated_p50_ms": round(percentile_ms(sat_lat, 0.50), 1),
        "saturated_p99_ms": round(percentile_ms(sat_lat, 0.99), 1),
        "published_readings": checked["published"],
        "stored_readings": checked["stored"],
        "unexpected_rows": checked["unexpected"],
        "redelivered_absorbed": saturated.stats["duplicates"] + paced.stats["duplicates"],
        "refused": saturated.stats["refused"] + paced.stats["refused"],
        "broker_dropped": sum(p.dropped_notices for p in (ceiling, saturated, paced)) > 0,
        "ingest_cpu_percent": round(cpu["consumers"]),
        "ingest_loop_cpu_percent": round(cpu["consumer-loops"]),
        "broker_cpu_percent": round(cpu["broker"]),
        "publishers_cpu_percent": round(cpu["publishers"]),
        "store_busy_fraction": round(store_busy, 2),
        "store_commit_p50_ms": round(store_p50, 1),
        "store_commit_p99_ms": round(store_p99, 1),
        "ceiling_subscriber_cpu_percent": round(ceiling.load.cpu["consumers"]),
        "ceiling_broker_cpu_percent": round(ceiling.load.cpu["broker"]),
        "paced_ingest_cpu_percent": round(paced.load.cpu["consumers"]),
        "paced_publishers_cpu_percent": round(paced.load.cpu["publishers"]),
        "paced_commit_p50_ms": round(paced_p50, 1),
        "other_processes_cpu_percent": [
            round(p.load.cpu["others"]) for p in (ceiling, saturated, paced)
        ],
        "window_s": round(saturated.load.span, 1),
        "credit": a.credit,
        "window": a.window,
        "batch_max": a.batch_max,
        "batch_wait_ms": a.batch_wait_ms,
        "receive_maximum": a.receive_maximum,
        "cores": os.cpu_count(),
    }
    s["targets_met"] = {
        "readings_per_s>=100000": s["readings_per_s"] >= 100_000,
        "ratio>=0.5": (s["ratio"] or 0) >= 0.5,
        "p99_ms<=250": s["p99_ms"] <= 250,
        "lost==0": s["lost"] == 0,
        "duplicated==0": s["duplicated"] == 0,
    }
    pct = 100 * (os.cpu_count() or 1)
    lines = [
        "",
        f"== ingest benchmark: {a.devices} devices, {a.publishers} publisher processes, "
        f"{a.ingesters} ingest process{'es' if a.ingesters > 1 else ''}, "
        f"{a.seconds:g} s per phase, steady window {s['window_s']} s after {a.warmup:g} s, "
        f"{os.cpu_count()} cores",
        f"1 ceiling   bare paho subscriber: {s['broker_ceiling_msgs_per_s']:,} msgs/s "
        f"(subscriber CPU {s['ceiling_subscriber_cpu_percent']}%, "
        f"broker {s['ceiling_broker_cpu_percent']}%)",
        f"2 saturated ingest: {s['readings_per_s']:,} readings/s = "
        f"{s['ingest_msgs_per_s']:,} msgs/s, {s['ratio']} of the ceiling; latency p50 "
        f"{s['saturated_p50_ms']} ms, p99 {s['saturated_p99_ms']} ms (credit {a.credit} msgs)",
        f"            CPU: ingest {s['ingest_cpu_percent']}% (event loop thread "
        f"{s['ingest_loop_cpu_percent']}%), broker "
        f"{s['broker_cpu_percent']}%, publishers {s['publishers_cpu_percent']}% (of {pct}%); "
        f"store busy {100 * store_busy:.0f}% of the time, commit p50 {s['store_commit_p50_ms']} "
        f"ms, p99 {s['store_commit_p99_ms']} ms",
        f"3 paced     {s['paced_offered_readings_per_s']:,} readings/s offered, "
        f"{s['paced_readings_per_s']:,} stored; latency p50 {s['p50_ms']} ms, "
        f"p99 {s['p99_ms']} ms ({len(paced_lat):,} packs sent in the window)",
        f"            CPU: ingest {s['paced_ingest_cpu_percent']}%, publishers "
        f"{s['paced_publishers_cpu_percent']}%; store busy {100 * paced_busy:.0f}% of the time, "
        f"commit p50 {s['paced_commit_p50_ms']} ms",
        f"store       published {s['published_readings']:,} readings to the ingestor, "
        f"stored {s['stored_readings']:,}: lost {s['lost']:,} ({s['lost_saturated']:,} in 2, "
        f"{s['lost_paced']:,} in 3), duplicated {s['duplicated']}, "
        f"unexpected {s['unexpected_rows']}; redeliveries absorbed "
        f"{s['redelivered_absorbed']}, refused {s['refused']}",
    ]
    if s["broker_dropped"]:
        lines.append(
            "            Mosquitto logged 'Outgoing messages are being dropped': a session's "
            "queue overflowed (max_queued_messages); see bench/README.md"
        )
    others = s["other_processes_cpu_percent"]
    if max(others) > 15:
        lines.append(
            f"            NOISE: other processes used {others[0]}%, {others[1]}%, {others[2]}% "
            "of the CPU in phases 1, 2, 3: compare figures from quiet runs only"
        )
    lines.append(
        "targets     "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in s["targets_met"].items())
    )
    if a.profile and Path(a.profile).exists():
        lines.append(f"profile of the saturated ingest process ({a.profile}):")
        lines += ["  " + line for line in profile_summary(Path(a.profile))]
    print("\n".join(lines))
    return s


# --- the run ----------------------------------------------------------------------------------


async def coordinate(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from devices.broker import MosquittoSupervisor

    supervisor: MosquittoSupervisor | None = None
    rig: Rig | None = None
    try:
        supervisor = MosquittoSupervisor("mosquitto", free_port(), tmp / "var")
        await supervisor.start()
        assert supervisor.pid is not None
        assert supervisor.admin is not None
        print(f"mosquitto pid {supervisor.pid} on 127.0.0.1:{supervisor.port}", flush=True)
        clock = time.monotonic()
        db, devices = await enroll(tmp, supervisor.port, supervisor.admin, a.devices)
        print(f"enrolled {len(devices)} devices in {time.monotonic() - clock:.1f} s", flush=True)
        devices_file = tmp / "devices.json"
        fd = os.open(devices_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(devices, f)
        rig = Rig(
            args=a,
            tmp=tmp,
            port=supervisor.port,
            admin_file=tmp / "var" / "broker-admin.json",
            devices_file=devices_file,
            db=db,
            device_ids=[d["id"] for d in devices],
            broker_pid=supervisor.pid,
            broker_log=supervisor.log_path,
            started=datetime.now(UTC),
        )
        print(f"phase 1/3: broker ceiling, {a.seconds:g} s", flush=True)
        ceiling = await ceiling_phase(rig)
        print(f"phase 2/3: ingest at full speed, {a.seconds:g} s", flush=True)
        saturated = await ingest_phase(rig, "saturated", rate=0)
        rate = a.rate or int(a.paced * saturated.consumed_per_s * PACK)
        print(f"phase 3/3: ingest paced at {rate:,} readings/s, {a.seconds:g} s", flush=True)
        paced = await ingest_phase(rig, "paced", rate=max(rate, PACK))
        checked = await asyncio.to_thread(verify, db, [saturated.load, paced.load])
        return report(rig, ceiling, saturated, paced, checked)
    finally:
        if rig is not None:
            for child in reversed(rig.children):
                await child.close()
            for helper in rig.helpers:
                if helper.returncode is None:
                    helper.terminate()
                await helper.wait()
        if supervisor is not None:
            await supervisor.stop()


async def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # as Ctrl-C
    return await coordinate(a, tmp)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Ingestion benchmark: SenML packs through Mosquitto into SQLite."
    )
    p.add_argument("--seconds", type=float, default=20.0, help="publishing time of each phase")
    p.add_argument("--devices", type=int, default=100, help="enrolled devices (connections)")
    p.add_argument("--publishers", type=int, default=2, help="publisher processes")
    p.add_argument("--ingesters", type=int, default=1, help="ingest processes (>1: shared)")
    p.add_argument("--warmup", type=float, help="seconds left out of each window (20%%, >=2)")
    p.add_argument("--window", type=int, default=20, help="unacknowledged packs per device")
    p.add_argument("--credit", type=int, default=1000, help="full speed: unconsumed msgs/session")
    p.add_argument("--paced", type=float, default=0.8, help="phase 3 rate, x phase 2's")
    p.add_argument("--rate", type=int, default=0, help="phase 3 rate in readings/s instead")
    p.add_argument("--stall", type=float, default=5.0, help="drain ends after s without progress")
    p.add_argument("--profile", help="py-spy the phase-2 ingest process; raw stacks to this file")
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (who bounds one process)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs, data)")
    # the ingestor's settings; defaults as IngestSettings and config.toml
    p.add_argument("--batch-max", type=int, default=5000)
    p.add_argument("--batch-wait-ms", type=float, default=50.0)
    p.add_argument("--receive-maximum", type=int, default=1000)
    # the roles' own arguments
    p.add_argument("--role", choices=("publish", "count", "ingest"), help=argparse.SUPPRESS)
    for name in ("--devices-file", "--admin-file", "--db", "--out", "--flow", "--client-id"):
        p.add_argument(name, help=argparse.SUPPRESS)
    for name in (
        "--port",
        "--first",
        "--last",
        "--slot",
        "--processes",
        "--consumers",
        "--shared",
        "--base-ms",
    ):
        p.add_argument(name, type=int, help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.role is None:
        if min(a.seconds, a.devices, a.publishers, a.ingesters, a.window, a.credit) <= 0:
            p.error("--seconds, --devices, --publishers, --ingesters, --window, --credit: > 0")
        if a.publishers > a.devices:
            p.error("--publishers cannot exceed --devices")
        if a.warmup is None:
            a.warmup = max(2.0, 0.2 * a.seconds)
        if not 0 <= a.warmup < a.seconds:
            p.error("--warmup must be shorter than --seconds")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if a.role == "publish":
        role_publish(a)
    elif a.role == "count":
        role_count(a)
    elif a.role == "ingest":
        admin = json.loads(Path(a.admin_file).read_text(encoding="utf-8"))
        asyncio.run(role_ingest(a, admin))
    else:
        tmp = Path(tempfile.mkdtemp(prefix="telemed-bench-"))
        tmp.chmod(0o711)  # Mosquitto's own user must reach its folder (devices/broker.py)
        try:
            summary = asyncio.run(run(a, tmp))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("stopped: processes ended, temp folder removed", file=sys.stderr)
            return 130
        except RuntimeError as exc:  # a role failed: its log tail says why
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        finally:
            if a.keep:
                print(f"kept {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
