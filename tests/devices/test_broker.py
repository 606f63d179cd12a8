"""The embedded Mosquitto: a real broker the supervisor starts, restarts and stops."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio

from devices.broker import BrokerError, BrokerProbe, MosquittoSupervisor
from tests.conftest import free_port

HOST = "127.0.0.1"
WAIT = 10.0  # seconds: the most any wait below may take
POLL_EVERY = 0.05


@pytest_asyncio.fixture
async def supervisor(tmp_path: Path) -> AsyncIterator[MosquittoSupervisor]:
    broker = MosquittoSupervisor(binary="mosquitto", port=free_port(), var_dir=tmp_path)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def admin(broker: MosquittoSupervisor) -> dict[str, str]:
    """The server's own broker account: anonymous clients are refused."""
    assert broker.admin is not None
    return {"username": broker.admin.username, "password": broker.admin.password}


async def round_trip(broker: MosquittoSupervisor, topic: str, payload: bytes) -> None:
    """Subscribe, publish and receive one message through the broker."""
    port = broker.port
    async with asyncio.timeout(WAIT), aiomqtt.Client(HOST, port, **admin(broker)) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, payload, qos=1)
        async for message in client.messages:
            assert message.topic.matches(topic)
            assert message.payload == payload
            return


async def retained(broker: MosquittoSupervisor, topic: str) -> bytes | None:
    """The retained message on `topic`, or None if the broker answers without one."""
    async with aiomqtt.Client(HOST, broker.port, **admin(broker)) as client:
        await client.subscribe(topic, qos=1)
        # a marker published after subscribing arrives after any retained message
        marker = f"{topic}/marker"
        await client.subscribe(marker, qos=1)
        await client.publish(marker, b"end", qos=1)
        async with asyncio.timeout(WAIT):
            async for message in client.messages:
                if message.topic.matches(marker):
                    return None
                assert isinstance(message.payload, bytes)
                return message.payload
    return None  # pragma: no cover


async def test_supervisor_runs_a_real_broker(supervisor: MosquittoSupervisor) -> None:
    assert supervisor.pid is not None
    assert alive(supervisor.pid)
    await round_trip(supervisor, "telemed/test/vitals", b'{"hr": 61}')
    await BrokerProbe(HOST, supervisor.port, **admin(supervisor)).check()
    assert supervisor.restarts == 0


async def test_a_killed_broker_is_restarted(supervisor: MosquittoSupervisor) -> None:
    first = supervisor.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    probe = BrokerProbe(HOST, supervisor.port, **admin(supervisor))
    async with asyncio.timeout(WAIT):
        while True:
            if supervisor.restarts == 1 and supervisor.pid != first:
                try:
                    await probe.check()
                except BrokerError:
                    pass  # the new process is not listening yet
                else:
                    break
            await asyncio.sleep(POLL_EVERY)
    assert supervisor.restarts == 1
    assert supervisor.pid is not None
    assert alive(supervisor.pid)
    await round_trip(supervisor, "telemed/test/after-restart", b"ok")


async def test_stop_leaves_no_process_and_a_second_start_works(tmp_path: Path) -> None:
    port = free_port()
    first = MosquittoSupervisor(binary="mosquitto", port=port, var_dir=tmp_path)
    await first.start()
    pid = first.pid
    assert pid is not None
    assert alive(pid)
    await first.stop()
    assert not alive(pid)
    assert first.restarts == 0  # a stop is not a crash

    second = MosquittoSupervisor(binary="mosquitto", port=port, var_dir=tmp_path)
    await second.start()
    try:
        assert second.pid not in (None, pid)
        await BrokerProbe(HOST, port, **admin(second)).check()
        await round_trip(second, "telemed/test/second", b"again")
    finally:
        await second.stop()
    assert second.pid is not None
    assert not alive(second.pid)


async def test_retained_messages_survive_a_restart(tmp_path: Path) -> None:
    """The persistence folder under var_dir is written on stop and read on the next start
    (also when the server runs as root and Mosquitto drops to its own user)."""
    port = free_port()
    first = MosquittoSupervisor(binary="mosquitto", port=port, var_dir=tmp_path)
    await first.start()
    try:
        async with aiomqtt.Client(HOST, port, **admin(first)) as client:
            await client.publish("telemed/test/state", b"kept", qos=1, retain=True)
    finally:
        await first.stop()
    assert (tmp_path / "mosquitto" / "mosquitto.db").is_file(), "nothing was persisted"

    second = MosquittoSupervisor(binary="mosquitto", port=port, var_dir=tmp_path)
    await second.start()
    try:
        assert await retained(second, "telemed/test/state") == b"kept"
    finally:
        await second.stop()


async def test_start_fails_when_the_port_is_taken(tmp_path: Path, mosquitto: int) -> None:
    """Another broker already on the port must not pass for ours."""
    taken = MosquittoSupervisor(binary="mosquitto", port=mosquitto, var_dir=tmp_path)
    try:
        with pytest.raises(BrokerError, match=str(mosquitto)):
            await taken.start()
    finally:
        await taken.stop()


def test_a_missing_binary_says_how_to_install_mosquitto(tmp_path: Path) -> None:
    with pytest.raises(BrokerError) as caught:
        MosquittoSupervisor(binary="no-such-mosquitto", port=free_port(), var_dir=tmp_path)
    message = str(caught.value)
    assert "'no-such-mosquitto' was not found" in message
    assert "apt-get install mosquitto" in message
    assert "brew install mosquitto" in message


async def test_probe_names_the_address_when_nothing_listens() -> None:
    port = free_port()
    with socket.socket() as check:  # really nothing there
        assert check.connect_ex((HOST, port)) != 0
    with pytest.raises(BrokerError, match=f"{HOST}:{port}"):
        await BrokerProbe(HOST, port).check()


async def test_the_embedded_broker_refuses_anonymous_clients(
    supervisor: MosquittoSupervisor,
) -> None:
    with pytest.raises(aiomqtt.MqttError, match="Not authorized|not authori"):
        async with aiomqtt.Client(HOST, supervisor.port, identifier="anonymous-test"):
            pass
