"""The ingestor decodes the next batch while one commits, and commits one batch at a time,
in arrival order (so that acknowledgements keep that order); a batch that is due while the
store is busy takes in what arrives until the store is free."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from devices.ingest import Ingestor, IngestSettings
from telemed.clock import utcnow
from telemed.monitoring import Observation
from tests.devices.conftest import Rig, Stored
from tests.devices.test_ingest import device, real_rows, recent


async def test_the_next_batch_is_decoded_while_one_commits_and_commits_after_it(
    rig: Rig, ingesting: tuple[Ingestor, Stored]
) -> None:
    ingestor, stored = ingesting
    enrolled = await rig.enroll()
    await rig.store.get_device(enrolled.device.id)
    real = rig.store.add_observations
    gate, started, decoded = asyncio.Event(), asyncio.Event(), asyncio.Event()
    events: list[tuple[str, float]] = []
    accepted = 0

    def clock() -> datetime:  # the ingestor reads it once per message, then decodes it
        nonlocal accepted
        accepted += 1
        if accepted == 4:
            decoded.set()
        return utcnow()

    async def slow(batch: Sequence[Observation]) -> int:
        first = batch[0].value
        events.append(("start", first))
        started.set()
        if first == 60.0:
            await gate.wait()  # the first batch's commit takes as long as the test says
        try:
            return await real(batch)
        finally:
            events.append(("end", first))

    rig.store.add_observations = slow  # type: ignore[method-assign]
    ingestor.clock = clock
    topic = enrolled.as_json()["topic"]
    start = recent()
    async with device(enrolled) as d:
        await d.publish(topic, json.dumps([{"bt": start, "n": "hr", "v": 60}]), qos=1)
        async with asyncio.timeout(10):
            await started.wait()
        for i in range(1, 4):
            pack = [{"bt": start + i, "n": "hr", "v": 60 + i}]
            await d.publish(topic, json.dumps(pack), qos=1)
        async with asyncio.timeout(10):
            await decoded.wait()  # while the first batch is still committing
        assert events == [("start", 60.0)]
        assert ingestor.stats.batches == 0
        gate.set()
        async with asyncio.timeout(10):
            while len(await real_rows(rig)) < 4:
                stored.changed.clear()
                await stored.changed.wait()
    # one commit at a time, in order; what arrived during the first is the second batch
    assert events == [("start", 60.0), ("end", 60.0), ("start", 61.0), ("end", 61.0)]
    assert sorted(o.value for o in await real_rows(rig)) == [60.0, 61.0, 62.0, 63.0]
    assert ingestor.stats.stored == 4


async def test_a_batch_half_full_goes_to_an_idle_store_at_once(rig: Rig) -> None:
    """Under a steady load the batches stay short: once a batch holds half of `batch_max`
    and the store is free, it commits without waiting for `batch_wait` (an hour here)."""
    enrolled = await rig.enroll()
    stored = Stored()
    settings = IngestSettings(client_id="test-half", batch_max=20, batch_wait=3600)
    ingestor = Ingestor(rig.store, utcnow, rig.access, settings, on_stored=stored)
    topic = enrolled.as_json()["topic"]
    start = recent()
    async with running(ingestor), device(enrolled) as d:
        # 4 readings, then 6 more: 10 = batch_max / 2
        await d.publish(topic, json.dumps(pack(start, 60, 4)), qos=1)
        await d.publish(topic, json.dumps(pack(start + 10, 70, 6)), qos=1)
        await until_stored(rig, stored, 10)
    assert ingestor.stats.batches == 1
    assert ingestor.stats.stored == 10


@contextlib.asynccontextmanager
async def running(ingestor: Ingestor) -> AsyncIterator[None]:
    """`ingestor` consuming, once subscribed; cancelled and awaited on the way out."""
    task = asyncio.create_task(ingestor.run())
    try:
        async with asyncio.timeout(10):
            await ingestor.connected.wait()
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until_stored(rig: Rig, stored: Stored, count: int) -> None:
    async with asyncio.timeout(10):
        while len(await real_rows(rig)) < count:
            stored.changed.clear()
            await stored.changed.wait()


def pack(start: int, value: int, readings: int) -> list[dict[str, object]]:
    """`readings` heart rates, a second apart from `start`."""
    return [{"bt": start + i, "n": "hr", "v": value + i} for i in range(readings)]


async def test_a_batch_half_full_waits_while_the_store_commits(rig: Rig) -> None:
    """While the store commits, the next batch takes in what arrives (up to `batch_max`),
    however full: one commit at a time, the batch size following the store's pace."""
    enrolled = await rig.enroll()
    real = rig.store.add_observations
    gate = asyncio.Event()
    sizes: list[int] = []

    async def slow(batch: Sequence[Observation]) -> int:
        sizes.append(len(batch))
        if len(sizes) == 1:
            await gate.wait()
        return await real(batch)

    rig.store.add_observations = slow  # type: ignore[method-assign]
    stored = Stored()
    settings = IngestSettings(client_id="test-half-busy", batch_max=20, batch_wait=0.2)
    taken = asyncio.Event()
    accepted = 0

    def clock() -> datetime:  # read once per message, before it is decoded into the batch
        nonlocal accepted
        accepted += 1
        if accepted == 4:  # the last message: decoded into the batch before any await
            taken.set()
        return utcnow()

    ingestor = Ingestor(rig.store, clock, rig.access, settings, on_stored=stored)
    topic = enrolled.as_json()["topic"]
    start = recent()
    async with running(ingestor), device(enrolled) as d:
        await d.publish(topic, json.dumps(pack(start, 60, 10)), qos=1)  # half: commits
        for i in range(3):  # 15 readings while that commit waits
            await d.publish(topic, json.dumps(pack(start + 20 + 5 * i, 70, 5)), qos=1)
        async with asyncio.timeout(10):
            await taken.wait()  # all four decoded, the first batch still committing
        gate.set()
        await until_stored(rig, stored, 25)
    assert sizes == [10, 15]
