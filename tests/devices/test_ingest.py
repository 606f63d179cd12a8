"""Ingestion through a real Mosquitto: stored once, acknowledged after commit, refusals
sent back, duplicates absorbed, the store's outage absorbed by back-pressure."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest

from devices.enrollment import Enrolled
from devices.inbox import unwrapped
from devices.ingest import SWITCH_INTERVAL, Ingestor, IngestSettings, _Batch
from devices.paho_reads import Delivery
from telemed.clock import utcnow
from telemed.errors import StoreUnavailable
from telemed.monitoring import Observation
from tests.devices.conftest import Rig, Stored


def recent() -> int:
    """An absolute time a minute ago: the same payload then means the same readings."""
    return int(utcnow().timestamp()) - 60


def device(enrolled: Enrolled, name: str = "") -> aiomqtt.Client:
    data = enrolled.as_json()
    return aiomqtt.Client(
        data["host"],
        data["port"],
        username=data["username"],
        password=data["password"],
        identifier=name or data["username"],
        timeout=5.0,
    )


async def errors_of(client: aiomqtt.Client, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        async for message in client.messages:
            out.append(json.loads(bytes(message.payload)))  # type: ignore[arg-type]
            if len(out) == count:
                return out
    return out


async def test_a_pack_is_stored_with_the_enrolled_patient(
    rig: Rig, ingesting: tuple[Ingestor, Stored]
) -> None:
    ingestor, stored = ingesting
    enrolled = await rig.enroll()
    async with device(enrolled) as d:
        payload = {"t": 0, "hr": 72, "spo2": 97, "sys": 121, "dia": 79, "temp": 36.8, "rr": 14}
        await d.publish(enrolled.as_json()["topic"], json.dumps(payload), qos=1)
        await stored.committed(ingestor, 1)
    rows = await rig.store.observations(rig.patient_id)
    assert sorted(o.code for o in rows) == sorted(
        ["8867-4", "2708-6", "8480-6", "8462-4", "8310-5", "9279-1"]
    )
    assert {o.patient_id for o in rows} == {rig.patient_id}
    assert {o.device_id for o in rows} == {enrolled.device.id}
    assert ingestor.stats.stored == 6


async def test_bad_records_are_refused_on_the_errors_topic_and_good_ones_kept(
    rig: Rig, ingesting: tuple[Ingestor, Stored]
) -> None:
    ingestor, stored = ingesting
    enrolled = await rig.enroll()
    data = enrolled.as_json()
    pack = [
        {"bn": f"urn:dev:{enrolled.device.id}:", "bt": 0, "n": "hr", "u": "beat/min", "v": 64},
        {"n": "spo2", "u": "%", "v": 250},
        {"n": "sys", "u": "furlongs", "v": 120},
        {"n": "temp", "u": "Cel", "v": 37.2, "t": -30},
    ]
    async with device(enrolled) as d:
        await d.subscribe(data["errors_topic"], qos=1)
        await d.publish(data["topic"], json.dumps(pack), qos=1)
        await d.publish(data["topic"], b"this is not json", qos=1)
        errors = await errors_of(d, 3)
        await stored.committed(ingestor, 2)
    by_record = {(e["record"], e["field"]) for e in errors}
    assert (1, "v") in by_record
    assert (2, "u") in by_record
    assert (None, "payload") in by_record
    assert all(e["device_id"] == enrolled.device.id and e["reason"] for e in errors)
    codes = sorted(o.code for o in await rig.store.observations(rig.patient_id))
    assert codes == ["8310-5", "8867-4"]


async def test_a_redelivered_pack_is_not_stored_twice(
    rig: Rig, ingesting: tuple[Ingestor, Stored]
) -> None:
    ingestor, stored = ingesting
    enrolled = await rig.enroll()
    body = json.dumps([{"bt": recent(), "n": "hr", "v": 70}, {"n": "hr", "t": 1, "v": 71}])
    async with device(enrolled) as d:
        for _ in range(3):  # as a device retrying, or the broker redelivering
            await d.publish(enrolled.as_json()["topic"], body, qos=1)
        await stored.committed(ingestor, 3)
    rows = await rig.store.observations(rig.patient_id)
    assert [o.value for o in rows] == [70.0, 71.0]
    assert ingestor.stats.stored == 2
    assert ingestor.stats.duplicates == 4


async def test_readings_wait_for_the_store_and_none_is_lost(
    rig: Rig, ingesting: tuple[Ingestor, Stored]
) -> None:
    """The store refuses for a while: nothing is acknowledged, nothing is lost."""
    ingestor, stored = ingesting
    enrolled = await rig.enroll()
    await rig.store.get_device(enrolled.device.id)  # warm the ingestor's view of the device
    real = rig.store.add_observations
    failures = 0
    healed = asyncio.Event()

    async def flaky(batch: Sequence[Observation]) -> int:
        nonlocal failures
        if not healed.is_set():
            failures += 1
            if failures == 3:
                healed.set()
            raise StoreUnavailable("disk full (test)")
        return await real(batch)

    rig.store.add_observations = flaky  # type: ignore[method-assign]
    await stream_until_stored(rig, stored, enrolled, 20)
    assert ingestor.stats.store_retries >= 3
    assert len(await real_rows(rig)) == 20


async def test_an_unexpected_store_error_restarts_the_consumer_and_loses_nothing(
    rig: Rig, ingesting: tuple[Ingestor, Stored]
) -> None:
    """A store call failing in a way it should not (not StoreUnavailable) does not stop
    ingestion: the consumer reconnects and the unacknowledged readings come again."""
    ingestor, stored = ingesting
    enrolled = await rig.enroll()
    real = rig.store.add_observations
    failures = 0

    async def faulty(batch: Sequence[Observation]) -> int:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise RuntimeError("a bug (test)")
        return await real(batch)

    rig.store.add_observations = faulty  # type: ignore[method-assign]
    await stream_until_stored(rig, stored, enrolled, 10)
    assert ingestor.stats.faults == 2
    assert len(await real_rows(rig)) == 10


async def real_rows(rig: Rig) -> list[Observation]:
    return await rig.store.observations(rig.patient_id)


async def stream_until_stored(rig: Rig, stored: Stored, enrolled: Enrolled, count: int) -> None:
    """`count` one-reading packs from the device, then wait until all are in the store."""
    async with device(enrolled) as d:
        start = recent()
        for i in range(count):
            pack = [{"bt": start + i, "n": "hr", "v": 60 + i}]
            await d.publish(enrolled.as_json()["topic"], json.dumps(pack), qos=1)
        async with asyncio.timeout(20):
            while len(await real_rows(rig)) < count:
                stored.changed.clear()
                await stored.changed.wait()


async def test_presence_from_the_status_topic_and_the_last_will(
    rig: Rig, ingesting: tuple[Ingestor, Stored]
) -> None:
    ingestor, stored = ingesting
    enrolled = await rig.enroll()
    data = enrolled.as_json()
    will = aiomqtt.Will(data["status_topic"], b"offline", qos=1, retain=True)
    watcher = device(enrolled, "watcher")
    async with watcher:
        await watcher.subscribe(data["errors_topic"], qos=1)
        async with aiomqtt.Client(
            data["host"],
            data["port"],
            username=data["username"],
            password=data["password"],
            identifier="wearable",
            will=will,
            timeout=5.0,
        ) as d:
            await d.publish(data["status_topic"], b"online", qos=1, retain=True)
            await d.publish(data["status_topic"], b"sleepy", qos=1, retain=True)
            [refusal] = await errors_of(watcher, 1)
            assert refusal["field"] == "payload"
            assert "online or offline" in refusal["reason"]
        # a clean disconnect sends no will: the device says offline itself
    assert stored.statuses == [(enrolled.device.id, True)]
    async with device(enrolled, "again") as d:
        await d.publish(data["status_topic"], b"offline", qos=1, retain=True)
        await stored.until(lambda: len(stored.statuses) >= 2)
    assert stored.statuses[-1] == (enrolled.device.id, False)
    assert ingestor.stats.messages >= 3


async def test_the_switch_interval_is_short_while_ingesting_and_put_back_after(
    rig: Rig,
) -> None:
    """The store's thread takes the GIL back from the event loop after every statement:
    the ingestor shortens the interpreter's switch interval while it runs, and only then."""
    before = sys.getswitchinterval()
    assert before > SWITCH_INTERVAL  # the interpreter's default, 5 ms
    ingestor = Ingestor(
        rig.store, utcnow, rig.access, IngestSettings(client_id="test-switch", batch_wait=0.01)
    )
    task = asyncio.create_task(ingestor.run())
    try:
        async with asyncio.timeout(10):
            await ingestor.connected.wait()
        assert sys.getswitchinterval() == SWITCH_INTERVAL
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sys.getswitchinterval() == before


async def test_two_ingestors_put_the_switch_interval_back_once_both_stop(rig: Rig) -> None:
    before = sys.getswitchinterval()
    first, second = (
        Ingestor(rig.store, utcnow, rig.access, IngestSettings(client_id=f"test-switch-{n}"))
        for n in (1, 2)
    )
    one = asyncio.create_task(first.run())
    two = asyncio.create_task(second.run())
    try:
        async with asyncio.timeout(10):
            await first.connected.wait()
            await second.connected.wait()
        one.cancel()
        await asyncio.gather(one, return_exceptions=True)
        assert sys.getswitchinterval() == SWITCH_INTERVAL  # the second still runs
    finally:
        one.cancel()
        two.cancel()
        await asyncio.gather(one, two, return_exceptions=True)
    assert sys.getswitchinterval() == before


async def test_a_message_whose_topic_is_not_utf8_is_ignored_and_acknowledged(rig: Rig) -> None:
    """Messages reach the ingestor as `Delivery` tuples (`devices.inbox.unwrapped`), their
    topic as sent. A broker keeping to MQTT refuses a topic that is not UTF-8; one that
    let it through gets it acknowledged and ignored, and the consumer goes on."""
    ingestor = Ingestor(rig.store, utcnow, rig.access, IngestSettings(client_id="test-topic"))
    batch = _Batch()
    message = Delivery(b"telemed/v1/devices/\xff/vitals", 7, 1, b'{"hr": 60}')
    await ingestor._accept(message, batch)
    assert batch.mids == [7]
    assert batch.observations == []
    assert ingestor.stats.messages == 1


async def test_direct_delivery_fails_naming_what_paho_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = aiomqtt.Client("127.0.0.1", 1)
    assert isinstance(unwrapped(client), asyncio.Queue)  # the installed paho has it

    def reshaped(self: paho.Client, message: paho.MQTTMessage, extra: int) -> None: ...

    monkeypatch.setattr(paho.Client, "_handle_on_message", reshaped)
    with pytest.raises(RuntimeError, match="_handle_on_message"):
        unwrapped(aiomqtt.Client("127.0.0.1", 1))
    monkeypatch.delattr(paho.Client, "_handle_on_message")
    with pytest.raises(RuntimeError, match="_handle_on_message"):
        unwrapped(aiomqtt.Client("127.0.0.1", 1))
