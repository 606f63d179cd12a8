"""MongoDB observation layouts: the time-series layout's key log, and choosing a layout.

The key-log tests run over nx-27017 (which makes a plain collection when asked for a
time-series one: `timeseries_over_plain` runs the time-series code path over it, with no
unique index to fall back on) and over a real MongoDB when `TELEMED_TEST_MONGODB_URI` is
set (a real time-series collection). A writer's crash is a failed step: the driver call
of that step raises, as it would when the connection drops, and the store is abandoned.
Leases are dated by an injected clock; nothing here waits on time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect, DuplicateKeyError

from telemed.errors import StoreUnavailable
from telemed.monitoring import Observation
from telemed.settings import ConfigError, StoreSettings, load_settings
from telemed.store import open_store
from telemed.store.mongo import (
    OBSERVATION_KEYS,
    OBSERVATION_LEASE,
    OBSERVATIONS,
    MongoStore,
    ObservationLayout,
)

from .conftest import MONGODB, MONGODB_URI_ENV, NX

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 3, 1, 9, 30, 15, 123000, tzinfo=UTC)
HEART_RATE = "8867-4"
SPO2 = "59408-5"
UNITS = {HEART_RATE: "/min", SPO2: "%"}
MS = timedelta(milliseconds=1)
WAIT = 30.0  # seconds: a bound on each wait for another task, never a pace


def reading(
    seconds: float, *, code: str = HEART_RATE, value: float = 72.0, device_id: str = "d1"
) -> Observation:
    return Observation(
        patient_id="p1",
        device_id=device_id,
        code=code,
        value=value,
        unit=UNITS[code],
        taken_at=T0 + timedelta(seconds=seconds),
        received_at=T0 + timedelta(seconds=seconds + 2),
    )


def in_order(observations: list[Observation]) -> list[Observation]:
    return sorted(observations, key=lambda o: (o.taken_at, o.device_id, o.code))


@dataclass
class FakeClock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


class Pauses:
    """`key_waits` that tell the test when a store first pauses for another writer."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()

    def __iter__(self) -> Iterator[float]:
        self.waiting.set()
        for _ in range(int(WAIT / 0.01)):
            yield 0.01


class Gate:
    """Stands in for a driver call: holds the first call until released, then makes it;
    later calls go straight through."""

    def __init__(self, call: Any) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self._call = call

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
        return await self._call(*args, **kwargs)


def failing(*args: Any, **kwargs: Any) -> Any:
    raise AutoReconnect("connection closed (a simulated crash)")


@dataclass
class Server:
    """A MongoDB server with fresh databases, and a raw client to look inside them."""

    name: str
    uri: str
    raw: AsyncMongoClient[dict[str, Any]]
    database: str = field(default_factory=lambda: f"telemed_test_{uuid.uuid4().hex}")
    databases: set[str] = field(default_factory=set)
    stores: list[MongoStore] = field(default_factory=list)

    async def open(
        self,
        clock: FakeClock | None = None,
        *,
        layout: str = ObservationLayout.TIMESERIES,
        key_waits: Any = (),
        over_plain: bool | None = None,
        database: str | None = None,
    ) -> MongoStore:
        """A store; by default the time-series layout (over nx-27017's plain collection)."""
        database = database or self.database
        self.databases.add(database)
        store = await MongoStore.open(
            self.uri,
            database,
            observation_layout=layout,
            clock=clock or FakeClock(),
            key_waits=key_waits,
            timeseries_over_plain=self.name == NX if over_plain is None else over_plain,
        )
        self.stores.append(store)
        return store

    async def documents(self, collection: str) -> list[dict[str, Any]]:
        return await self.raw[self.database][collection].find({}).to_list()

    async def key_states(self) -> list[str]:
        return sorted(entry["state"] for entry in await self.documents(OBSERVATION_KEYS))

    async def collection_info(self, name: str) -> dict[str, Any] | None:
        cursor = await self.raw[self.database].list_collections()
        return next((info for info in await cursor.to_list() if info["name"] == name), None)


@pytest_asyncio.fixture(
    params=[
        pytest.param(NX, marks=pytest.mark.mongo),
        pytest.param(MONGODB, marks=pytest.mark.mongo),
    ]
)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    name: str = request.param
    if name == NX:
        uri: str = request.getfixturevalue("nx_uri")
    else:
        uri = os.environ.get(MONGODB_URI_ENV, "")
        if not uri:
            pytest.skip(f"{MONGODB_URI_ENV} is not set: no real MongoDB to test against")
    raw: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=5_000
    )
    server = Server(name, uri, raw)
    try:
        yield server
    finally:
        for store in server.stores:
            await store.close()
        for database in server.databases:
            await raw.drop_database(database)
        await raw.close()


@pytest.fixture
def nx_only(server: Server) -> None:
    if server.name != NX:
        pytest.skip("nx-27017 makes a plain collection when asked for a time-series one")


@pytest.fixture
def mongodb_only(server: Server) -> None:
    if server.name != MONGODB:
        pytest.skip("only a real MongoDB makes a time-series collection")


# the key log --------------------------------------------------------------------------


async def test_the_time_series_layout_has_no_unique_index_to_fall_back_on(
    server: Server,
) -> None:
    store = await server.open()
    assert store.observation_layout == ObservationLayout.TIMESERIES
    assert await store.add_observations([reading(1)]) == 1

    indexes = await server.raw[server.database][OBSERVATIONS].index_information()
    assert not [name for name, index in indexes.items() if index.get("unique")]
    [doc] = await server.documents(OBSERVATIONS)
    assert doc["meta"] == {"patient_id": "p1", "device_id": "d1", "code": HEART_RATE}
    assert doc["taken_at"] == T0 + timedelta(seconds=1)  # a BSON date
    # nothing but the key log stops a second copy: the collection itself takes one
    copy = {name: value for name, value in doc.items() if name != "_id"}
    await server.raw[server.database][OBSERVATIONS].insert_one(copy)
    assert len(await server.documents(OBSERVATIONS)) == 2


async def test_duplicates_in_a_batch_and_across_batches_are_stored_once(server: Server) -> None:
    store = await server.open()
    first = [reading(1), reading(2), reading(1), reading(3, code=SPO2), reading(2)]
    assert await store.add_observations(first) == 3
    second = [reading(3, code=SPO2), reading(4), reading(1, value=99.0)]
    assert await store.add_observations(second) == 1
    assert await store.add_observations(first + second) == 0

    expected = in_order([reading(1), reading(2), reading(3, code=SPO2), reading(4)])
    assert await store.observations("p1") == expected
    assert len(await server.documents(OBSERVATIONS)) == 4
    assert await server.key_states() == ["committed"] * 4


async def test_a_crash_before_the_readings_are_written_is_redelivered_whole(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys logged, readings not written: the redelivery, after the lease, writes them."""
    clock = FakeClock()
    batch = [reading(n, code=code) for n in range(3) for code in (HEART_RATE, SPO2)]
    crashed = await server.open(clock)
    monkeypatch.setattr(crashed._observations, "insert_many", failing)
    with pytest.raises(StoreUnavailable):
        await crashed.add_observations(batch)
    assert await server.documents(OBSERVATIONS) == []
    assert await server.key_states() == ["pending"] * 6

    restarted = await server.open(clock)  # another writer: the crashed one's lease is live
    with pytest.raises(StoreUnavailable, match="still being stored by another writer"):
        await restarted.add_observations(batch)
    assert await server.documents(OBSERVATIONS) == []

    clock.advance(OBSERVATION_LEASE)
    assert await restarted.add_observations(batch) == 6
    assert await restarted.observations("p1") == in_order(batch)
    assert await server.key_states() == ["committed"] * 6
    assert await restarted.add_observations(batch) == 0


async def test_a_crash_after_the_readings_before_the_commit_doubles_nothing(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    batch = [reading(n) for n in range(3)]
    crashed = await server.open(clock)
    monkeypatch.setattr(crashed._observation_keys, "update_many", failing)
    with pytest.raises(StoreUnavailable):
        await crashed.add_observations(batch)
    assert len(await server.documents(OBSERVATIONS)) == 3
    assert await server.key_states() == ["pending"] * 3

    clock.advance(OBSERVATION_LEASE)
    other = await server.open(clock)
    assert await other.add_observations([*batch, reading(3)]) == 1  # only the new one
    assert await other.observations("p1") == [*batch, reading(3)]
    assert len(await server.documents(OBSERVATIONS)) == 4
    assert await server.key_states() == ["committed"] * 4


async def test_a_half_written_batch_is_completed_without_doubles(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unordered insert stored part of the batch before the connection dropped."""
    clock = FakeClock()
    batch = [reading(n) for n in range(4)]
    crashed = await server.open(clock)
    insert_many = crashed._observations.insert_many

    async def half(docs: list[dict[str, Any]], **kwargs: Any) -> Any:
        await insert_many(docs[:2], **kwargs)
        raise AutoReconnect("connection closed (a simulated crash)")

    monkeypatch.setattr(crashed._observations, "insert_many", half)
    with pytest.raises(StoreUnavailable):
        await crashed.add_observations(batch)
    assert len(await server.documents(OBSERVATIONS)) == 2

    clock.advance(OBSERVATION_LEASE)
    other = await server.open(clock)
    assert await other.add_observations(list(reversed(batch))) == 2
    assert await other.observations("p1") == batch
    assert len(await server.documents(OBSERVATIONS)) == 4


async def test_the_owner_retries_its_failed_batch_without_waiting_for_its_lease(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await server.open(FakeClock())  # the clock never moves
    batch = [reading(n) for n in range(3)]
    with monkeypatch.context() as patch:
        patch.setattr(store._observations, "insert_many", failing)
        with pytest.raises(StoreUnavailable):
            await store.add_observations(batch)
    assert await store.add_observations(batch) == 3
    assert await store.observations("p1") == batch
    assert await server.key_states() == ["committed"] * 3


async def test_a_lease_is_live_to_its_last_millisecond(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    crashed = await server.open(clock)
    monkeypatch.setattr(crashed._observations, "insert_many", failing)
    with pytest.raises(StoreUnavailable):
        await crashed.add_observations([reading(1)])

    other = await server.open(clock)
    clock.advance(OBSERVATION_LEASE - MS)
    with pytest.raises(StoreUnavailable):
        await other.add_observations([reading(1)])
    clock.advance(MS)
    assert await other.add_observations([reading(1)]) == 1


async def test_a_live_lease_fails_the_batch_once_the_rest_is_stored(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    crashed = await server.open(clock)
    monkeypatch.setattr(crashed._observations, "insert_many", failing)
    with pytest.raises(StoreUnavailable):
        await crashed.add_observations([reading(1)])

    other = await server.open(clock)
    with pytest.raises(StoreUnavailable, match="1 of the batch's readings"):
        await other.add_observations([reading(1), reading(2)])
    assert await other.observations("p1") == [reading(2)]
    assert await server.key_states() == ["committed", "pending"]

    clock.advance(OBSERVATION_LEASE)
    assert await other.add_observations([reading(1), reading(2)]) == 1
    assert await other.observations("p1") == [reading(1), reading(2)]


async def test_another_writer_s_live_batch_is_waited_for(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes handed the same redelivery: the second waits for the first's commit."""
    clock = FakeClock()
    batch = [reading(n) for n in range(3)]
    first = await server.open(clock)
    gate = Gate(first._observations.insert_many)
    monkeypatch.setattr(first._observations, "insert_many", gate)
    pauses = Pauses()
    second = await server.open(clock, key_waits=pauses)

    async with asyncio.timeout(WAIT):
        writing = asyncio.create_task(first.add_observations(batch))
        await gate.entered.wait()  # the first holds the keys, its readings not yet written
        waiting = asyncio.create_task(second.add_observations(batch))
        await pauses.waiting.wait()  # the second found them held and pauses
        gate.release.set()
        assert await writing == 3
        assert await waiting == 0
    assert await first.observations("p1") == batch
    assert len(await server.documents(OBSERVATIONS)) == 3


async def test_concurrent_calls_of_one_store_never_take_each_other_s_keys(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's own lease does not let a second call take keys a first call holds."""
    store = await server.open(FakeClock())
    gate = Gate(store._observations.insert_many)
    monkeypatch.setattr(store._observations, "insert_many", gate)
    batch = [reading(n) for n in range(3)]

    async with asyncio.timeout(WAIT):
        writing = asyncio.create_task(store.add_observations(batch))
        await gate.entered.wait()
        with pytest.raises(StoreUnavailable, match="3 of the batch's readings"):
            await store.add_observations([*batch, reading(3)])  # no pauses: fails at once
        gate.release.set()
        assert await writing == 3
    assert await store.observations("p1") == [*batch, reading(3)]
    assert len(await server.documents(OBSERVATIONS)) == 4


async def test_a_writer_that_outlived_its_lease_does_not_commit(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stalls past its lease; another takes its keys over. The stalled one must
    neither commit the keys the other now holds nor report its batch stored."""
    clock = FakeClock()
    slow = await server.open(clock)
    slow_gate = Gate(slow._observations.insert_many)
    monkeypatch.setattr(slow._observations, "insert_many", slow_gate)
    batch = [reading(n) for n in range(2)]

    async with asyncio.timeout(WAIT):
        stalled = asyncio.create_task(slow.add_observations(batch))
        await slow_gate.entered.wait()
        clock.advance(OBSERVATION_LEASE)
        other = await server.open(clock)
        other_gate = Gate(other._observations.insert_many)
        monkeypatch.setattr(other._observations, "insert_many", other_gate)
        taking_over = asyncio.create_task(other.add_observations(batch))
        await other_gate.entered.wait()  # the other has claimed the keys and looked
        slow_gate.release.set()
        with pytest.raises(StoreUnavailable, match="lost the lease on 2 keys"):
            await stalled
        assert await server.key_states() == ["pending"] * 2
        other_gate.release.set()
        assert await taking_over == 2
    assert await server.key_states() == ["committed"] * 2
    # the window documented in `_add_through_key_log`: the stalled insert landed after
    # the take-over had looked, so each reading is stored twice
    assert len(await server.documents(OBSERVATIONS)) == 4


async def test_both_layouts_read_the_same(server: Server) -> None:
    batch = [
        reading(n / 2, code=(HEART_RATE, SPO2)[n % 2], device_id=f"d{n % 3}", value=60.0 + n)
        for n in range(30)
    ]
    batch += [reading(5, device_id="d9", value=1.0), reading(5, device_id="d8", value=2.0)]
    plain = await server.open(
        layout=ObservationLayout.PLAIN, database=f"telemed_test_{uuid.uuid4().hex}"
    )
    timeseries = await server.open()
    assert plain.observation_layout == ObservationLayout.PLAIN
    assert timeseries.observation_layout == ObservationLayout.TIMESERIES
    for store in (plain, timeseries):
        assert await store.add_observations(batch) == len(batch)
        assert await store.add_observations(batch[:5]) == 0

    since, until = T0 + timedelta(seconds=3), T0 + timedelta(seconds=11)
    queries: list[dict[str, Any]] = [
        {},
        {"code": SPO2},
        {"since": since},
        {"until": until, "newest_first": True},
        {"code": HEART_RATE, "since": since, "until": until, "limit": 4},
        {"limit": 7, "newest_first": True},
    ]
    for query in queries:
        assert await timeseries.observations("p1", **query) == await plain.observations(
            "p1", **query
        ), query
    assert await timeseries.latest_observations("p1") == await plain.latest_observations("p1")
    assert await timeseries.observations("p1") == in_order(batch)


# choosing the layout ------------------------------------------------------------------


@pytest.mark.usefixtures("mongodb_only")
async def test_auto_makes_a_time_series_collection(server: Server) -> None:
    store = await server.open(layout=ObservationLayout.AUTO, over_plain=False)
    assert store.observation_layout == ObservationLayout.TIMESERIES
    info = await server.collection_info(OBSERVATIONS)
    assert info is not None
    assert info["type"] == "timeseries"
    options = info["options"]["timeseries"]
    assert (options["timeField"], options["metaField"]) == ("taken_at", "meta")
    assert options["granularity"] == "seconds"

    assert await store.add_observations([reading(1), reading(1)]) == 1
    assert await server.key_states() == ["committed"]
    again = await server.open(layout=ObservationLayout.AUTO, over_plain=False)
    assert again.observation_layout == ObservationLayout.TIMESERIES
    with pytest.raises(StoreUnavailable, match="observation_layout: 'plain'"):
        await server.open(layout=ObservationLayout.PLAIN, over_plain=False)


@pytest.mark.usefixtures("nx_only")
async def test_auto_on_a_server_without_time_series_is_plain(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="telemed.store.mongo"):
        store = await server.open(layout=ObservationLayout.AUTO, over_plain=False)
    assert store.observation_layout == ObservationLayout.PLAIN
    assert "makes no time-series collection" in caplog.text
    assert await store.add_observations([reading(1), reading(1)]) == 1
    assert await server.documents(OBSERVATION_KEYS) == []
    [doc] = await server.documents(OBSERVATIONS)
    assert doc["device_id"] == "d1"  # the plain shape, keyed by its unique index:
    copy = {name: value for name, value in doc.items() if name != "_id"}
    with pytest.raises(DuplicateKeyError):
        await server.raw[server.database][OBSERVATIONS].insert_one(copy)


@pytest.mark.usefixtures("nx_only")
async def test_timeseries_required_of_a_server_without_it_fails_at_open(server: Server) -> None:
    settings = StoreSettings(
        url=server.uri, database=server.database, observation_layout="timeseries"
    )
    server.databases.add(server.database)
    with pytest.raises(StoreUnavailable, match="'timeseries', but this server made a plain"):
        await open_store(settings)


async def test_an_existing_plain_collection_stays_plain(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    old = await server.open(layout=ObservationLayout.PLAIN, over_plain=False)
    assert old.observation_layout == ObservationLayout.PLAIN
    assert await old.add_observations([reading(1)]) == 1

    with caplog.at_level(logging.INFO, logger="telemed.store.mongo"):
        store = await server.open(layout=ObservationLayout.AUTO, over_plain=False)
    assert store.observation_layout == ObservationLayout.PLAIN
    assert "keeping the existing plain collection" in caplog.text
    assert await store.add_observations([reading(1), reading(2)]) == 1
    assert await store.observations("p1") == [reading(1), reading(2)]
    info = await server.collection_info(OBSERVATIONS)
    assert info is not None
    assert info["type"] == "collection"
    with pytest.raises(StoreUnavailable, match="already holds a plain observations collection"):
        await server.open(layout=ObservationLayout.TIMESERIES, over_plain=False)


async def test_an_unknown_layout_is_refused(server: Server) -> None:
    with pytest.raises(StoreUnavailable, match="store.observation_layout: expected one of"):
        await server.open(layout="columnar")


# configuration ------------------------------------------------------------------------


def test_the_layout_is_configured_in_the_store_section() -> None:
    config = ROOT / "config.toml"
    assert load_settings(config, {}).store.observation_layout == "auto"
    env = {"TELEMED_STORE_OBSERVATION_LAYOUT": "plain"}
    assert load_settings(config, env).store.observation_layout == "plain"
    with pytest.raises(ConfigError, match="store.observation_layout: expected one of"):
        load_settings(config, {"TELEMED_STORE_OBSERVATION_LAYOUT": "columnar"})
