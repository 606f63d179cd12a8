"""Ingestion: wearable vitals from MQTT into the store, at least once, never twice.

- One persistent MQTT 5 session per server process (stable client id, clean start off,
  a session expiry), subscribed at QoS 1 through a shared subscription
  (`$share/telemed/...`) so that several processes split the stream.
- Messages are decoded as they arrive and grouped into batches; a batch is committed in
  one store transaction, and only then are its messages acknowledged (manual PUBACK, in
  arrival order). A crash before the acknowledgement makes the broker deliver them again;
  the store's unique key (device, code, time) absorbs the repeats.
- One batch commits while the next one is decoded: the store works in its thread (SQLite
  leaves the GIL while it writes) as the event loop decodes. A batch starts to commit only
  once the one before it is committed and acknowledged, so acknowledgements keep the
  arrival order; until then it takes in what arrives (up to `batch_max`), so that the
  batch size follows the store's pace. A batch that holds half of `batch_max` goes to a
  free store at once: under a steady load commits stay short (at 80 % of the saturated
  rate in bench/ingest.py, the readings' latency p50 went from 64-70 ms to 34-52, and no
  p99 above 250 ms in 11 runs against 5 in 16), and a saturated store still gets full
  batches.
- Back-pressure: the session's Receive Maximum bounds how many unacknowledged messages
  the broker sends. While the store is slow or down, acknowledgements stop, so the broker
  stops sending and keeps the rest; memory stays bounded.
- Refusals go back to the device on its `errors` topic; the valid readings of the same
  pack are kept. One bad message never stops the consumer.
- The connection is re-established with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices import manual_ack, paho_properties, paho_reads
from devices.broker import BrokerAccess
from devices.dynsec import topic
from devices.inbox import receive, unwrapped
from devices.paho_reads import Delivery
from devices.payloads import decode_rows
from devices.readings import Refusal
from telemed.clock import Clock
from telemed.errors import StoreUnavailable
from telemed.monitoring import Device, Observation, observations_from_rows
from telemed.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

VITALS = "telemed/v1/devices/+/vitals"
STATUS = "telemed/v1/devices/+/status"
DEVICE_CACHE_SECONDS = 60.0
MAX_BACKOFF = 30.0
IDLE_CHECK = 1.0  # seconds between connection checks while no message comes
STORE_POLL = 0.005  # seconds between looks at a commit in progress, when a batch is due
# The store's thread must take the GIL back from the busy event loop after each statement
# it runs: at the interpreter's default switch interval (5 ms) a 5,000-reading commit
# waited 450 ms on a loaded 2-core machine, at 1 ms about 110 ms, for 35 ms of work.
SWITCH_INTERVAL = 0.001
_running = 0  # ingestors running in this process (the switch interval is the process's)
_switch_before = 0.005

OnStored = Callable[[Sequence[Observation]], Awaitable[None]]
OnStatus = Callable[[Device, bool, datetime], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class IngestSettings:
    client_id: str  # stable per process: the broker keeps its session by this id
    share_group: str = "telemed"
    batch_max: int = 5000  # readings in one commit
    batch_wait: float = 0.05  # seconds a batch stays open after its first message
    receive_maximum: int = 1000  # unacknowledged messages the broker may send us
    session_expiry: int = 7 * 24 * 3600  # seconds the broker keeps our session offline
    max_age: timedelta = timedelta(hours=24)
    max_skew: timedelta = timedelta(minutes=2)
    max_bytes: int = 16384


@dataclass
class IngestStats:
    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    batches: int = 0
    store_retries: int = 0
    reconnects: int = 0
    faults: int = 0  # unexpected errors the consumer restarted after


@dataclass
class _Batch:
    observations: list[Observation] = field(default_factory=list)
    mids: list[int] = field(default_factory=list)
    refusals: list[tuple[str, Refusal]] = field(default_factory=list)
    opened: float = 0.0

    def __len__(self) -> int:
        return len(self.mids)


class Ingestor:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        broker: BrokerAccess,
        settings: IngestSettings,
        on_stored: OnStored | None = None,
        on_status: OnStatus | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.broker = broker
        self.settings = settings
        self.on_stored = on_stored
        self.on_status = on_status
        self.stats = IngestStats()
        self.connected = asyncio.Event()  # set while subscribed
        self._devices: dict[str, tuple[float, Device]] = {}

    # the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        """Consume until cancelled, reconnecting with capped backoff. While any ingestor
        runs, the interpreter's switch interval is at most SWITCH_INTERVAL; the last one
        to stop puts back what was there."""
        global _switch_before, _running
        if _running == 0:
            _switch_before = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_before, SWITCH_INTERVAL))
        _running += 1
        try:
            await self._run()
        finally:
            _running -= 1
            if _running == 0:
                sys.setswitchinterval(_switch_before)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            faulted = False
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                log.warning("ingest: MQTT connection lost (%s); retrying in %.1f s", exc, backoff)
            except Exception:
                # A fault of ours, or a store call failing in a way it should not: what was
                # not acknowledged comes again once reconnected. Stopping here would stop
                # every device's vitals until a restart; a fault that repeats backs off.
                faulted = True
                self.stats.faults += 1
                log.exception("ingest: unexpected error; reconnecting in %.1f s", backoff)
            finally:
                subscribed = self.connected.is_set()
                self.connected.clear()
            if subscribed and not faulted:  # it worked: retry soon, back off only if it fails
                backoff = 0.5
            self.stats.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _client(self) -> tuple[aiomqtt.Client, asyncio.Queue[Delivery]]:
        b, s = self.broker, self.settings
        paho_properties.share_tables()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = s.session_expiry
        properties.ReceiveMaximum = s.receive_maximum
        client = aiomqtt.Client(
            b.host,
            b.port,
            username=b.username or None,
            password=b.password or None,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
            tls_params=aiomqtt.TLSParameters() if b.tls else None,
            timeout=10.0,
        )
        manual_ack.enable(client)
        paho_reads.buffer_reads(client)
        return client, unwrapped(client)

    async def _session(self) -> None:
        client, inbox = self._client()
        async with client:
            group = self.settings.share_group
            for topic_filter in (VITALS, STATUS):
                # Mosquitto (2.0) does not save shared subscriptions: after a broker restart
                # a $share one exists only once we subscribe again, and what devices send
                # before that is dropped. One process needs no group, and its subscription
                # is restored with its session.
                await client.subscribe(
                    f"$share/{group}/{topic_filter}" if group else topic_filter, qos=1
                )
            self.connected.set()
            log.info("ingest: subscribed to vitals and status, group %s", group)
            await self._consume(client, inbox)

    async def _consume(self, client: aiomqtt.Client, inbox: asyncio.Queue[Delivery]) -> None:
        """Batches: open on the first message, commit when full, when half full with the
        store free, or `batch_wait` later. The inbox holds at most Receive Maximum
        messages: the broker waits for our acks."""
        batch = _Batch()
        committing: asyncio.Task[None] | None = None  # the batch before `batch`
        try:
            while True:
                if not batch:
                    message = await receive(client, inbox, IDLE_CHECK)
                    if committing is not None and committing.done():
                        done = committing
                        committing = None
                        done.result()  # raise what stopped it, if anything did
                    if message is None:
                        continue
                    batch.opened = time.monotonic()
                else:
                    message = inbox.get_nowait() if not inbox.empty() else None
                    if message is None:
                        wait = batch.opened + self.settings.batch_wait - time.monotonic()
                        if committing is not None and not committing.done():
                            # the store still commits the batch before: this one takes
                            # what arrives meanwhile rather than leave it to the next
                            wait = max(wait, STORE_POLL)
                        if wait > 0:
                            message = await receive(client, inbox, wait)
                    if message is None:
                        if committing is not None and not committing.done():
                            continue
                        batch, full = _Batch(), batch
                        committing = await self._hand_over(client, full, committing)
                        continue
                await self._accept(message, batch)
                size = len(batch.observations)
                if size >= self.settings.batch_max or (
                    size >= self.settings.batch_max // 2
                    and (committing is None or committing.done())
                ):
                    batch, full = _Batch(), batch
                    committing = await self._hand_over(client, full, committing)
        except aiomqtt.MqttError:
            if committing is not None:
                with contextlib.suppress(aiomqtt.MqttError):  # its acks had nowhere to go
                    await committing
            await self._keep_received(inbox, batch)
            raise
        finally:
            if committing is not None and not committing.done():
                committing.cancel()
                await asyncio.gather(committing, return_exceptions=True)

    async def _hand_over(
        self, client: aiomqtt.Client, batch: _Batch, committing: asyncio.Task[None] | None
    ) -> asyncio.Task[None]:
        """Start committing `batch` once the batch before it is committed and acknowledged
        (acks go in arrival order); the caller goes on decoding meanwhile."""
        if committing is not None:
            await committing
        return asyncio.create_task(self._commit(client, batch), name="ingest-commit")

    async def _keep_received(self, inbox: asyncio.Queue[Delivery], batch: _Batch) -> None:
        """The connection is gone: store what arrived, unacknowledged. A broker that lives
        sends it again (the dedupe key absorbs it); one that died may have lost it."""
        while not inbox.empty():
            await self._accept(inbox.get_nowait(), batch)
        if batch.observations:
            observations = batch.observations
            new = await self._with_store_retry(lambda: self.store.add_observations(observations))
            self.stats.stored += new
            self.stats.duplicates += len(observations) - new

    # one message ----------------------------------------------------------------------
    async def _accept(self, message: Delivery, batch: _Batch) -> None:
        self.stats.messages += 1
        if message.qos > 0:
            batch.mids.append(message.mid)
        try:
            parts = message.topic.decode("utf-8").split("/")
        except UnicodeDecodeError:  # not UTF-8: a broker keeping to MQTT refuses it
            parts = []
        if len(parts) != 5 or parts[4] not in ("vitals", "status"):
            log.warning("ingest: message on an unexpected topic ignored")
            return
        device = await self._device(parts[3])
        if device is None or not device.active:
            self.stats.refused += 1
            log.warning("ingest: message from unknown or revoked device %s ignored", parts[3])
            return
        raw = message.payload
        now = self.clock()
        if parts[4] == "status":
            await self._status(device, raw, now, batch)
            return
        s = self.settings
        rows, refusals = decode_rows(
            raw, now=now, max_age=s.max_age, max_skew=s.max_skew, max_bytes=s.max_bytes
        )
        device_id = device.id
        batch.observations += observations_from_rows(device.patient_id, device_id, rows, now)
        for refusal in refusals:
            batch.refusals.append((device_id, refusal))

    async def _status(self, device: Device, raw: bytes, now: datetime, batch: _Batch) -> None:
        """`online` or `offline` (the device's will): written before its ack goes out."""
        text = raw.decode("utf-8", errors="replace").strip().lower()
        if text not in ("online", "offline"):
            reason = "payload: status must be the text online or offline"
            batch.refusals.append((device.id, Refusal(None, "payload", reason)))
            return
        if self.on_status is not None:
            on_status = self.on_status
            await self._with_store_retry(lambda: on_status(device, text == "online", now))

    async def _device(self, device_id: str) -> Device | None:
        cached = self._devices.get(device_id)
        if cached is not None and time.monotonic() - cached[0] < DEVICE_CACHE_SECONDS:
            return cached[1]
        device = await self._with_store_retry(lambda: self.store.get_device(device_id))
        if device is not None:
            self._devices[device_id] = (time.monotonic(), device)
        return device

    async def _with_store_retry(self, op: Callable[[], Awaitable[T]]) -> T:
        backoff = 0.1
        while True:
            try:
                return await op()
            except StoreUnavailable as exc:
                self.stats.store_retries += 1
                log.warning("ingest: store unavailable (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    # one batch ------------------------------------------------------------------------
    async def _commit(self, client: aiomqtt.Client, batch: _Batch) -> None:
        """Store, then acknowledge, then tell devices what was refused."""
        if batch.observations:
            observations = batch.observations
            new = await self._with_store_retry(lambda: self.store.add_observations(observations))
            self.stats.stored += new
            self.stats.duplicates += len(observations) - new
        manual_ack.ack_all(client, batch.mids)
        self.stats.batches += 1
        self.stats.refused += len(batch.refusals)
        if batch.refusals:
            await asyncio.gather(
                *(self._refuse(client, device_id, r) for device_id, r in batch.refusals)
            )
        if self.on_stored is not None and batch.observations:
            try:
                await self.on_stored(batch.observations)
            except Exception:
                log.exception("ingest: live feed failed (the readings are stored)")

    @staticmethod
    async def _refuse(client: aiomqtt.Client, device_id: str, refusal: Refusal) -> None:
        body = {
            "device_id": device_id,
            "record": refusal.record,
            "field": refusal.field,
            "name": refusal.name,
            "reason": refusal.reason,
        }
        try:
            await client.publish(topic(device_id, "errors"), json.dumps(body), qos=1)
        except aiomqtt.MqttError:
            log.warning("ingest: could not send a refusal to device %s", device_id)
