"""devices/manual_ack.py against a real Mosquitto: what is acknowledged is never sent again,
what is not is redelivered; and the paho/aiomqtt internals it reaches are where it expects.
"""

from __future__ import annotations

import asyncio
import inspect

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices import manual_ack
from devices.inbox import client_with_inbox
from tests.devices.conftest import Rig

TOPIC = "telemed/v1/test/acks"


async def test_the_internals_it_reaches_are_still_there() -> None:
    """If this fails, aiomqtt or paho-mqtt changed: update devices/manual_ack.py."""
    client = aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5)
    assert isinstance(manual_ack.paho_client(client), paho.Client)
    parameters = list(inspect.signature(paho.Client._packet_queue).parameters)
    assert parameters == ["self", "command", "packet", "mid", "qos", "info"]
    assert "_packet_queue(command, packet, mid, 1)" in inspect.getsource(
        paho.Client._send_command_with_mid
    )


def session(rig: Rig) -> tuple[aiomqtt.Client, asyncio.Queue[aiomqtt.Message]]:
    """A persistent MQTT 5 session whose QoS 1 messages wait for `ack_all`."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 300
    client, inbox = client_with_inbox(
        rig.access.host,
        rig.access.port,
        username=rig.access.username,
        password=rig.access.password,
        identifier="test-acks",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=properties,
        timeout=5.0,
    )
    manual_ack.enable(client)
    return client, inbox


async def take(inbox: asyncio.Queue[aiomqtt.Message], count: int) -> list[aiomqtt.Message]:
    async with asyncio.timeout(10):
        return [await inbox.get() for _ in range(count)]


async def test_acknowledged_in_one_write_are_not_redelivered_the_rest_are(rig: Rig) -> None:
    client, inbox = session(rig)
    async with client:
        await client.subscribe(TOPIC, qos=1)
    publisher = rig.admin_client("test-acks-publisher")
    async with publisher:
        for i in range(6):
            await publisher.publish(TOPIC, f"m{i}".encode(), qos=1)

    client, inbox = session(rig)
    async with client:
        first = await take(inbox, 6)
        assert [bytes(m.payload) for m in first] == [f"m{i}".encode() for i in range(6)]  # type: ignore[arg-type]
        manual_ack.ack_all(client, [m.mid for m in first[:4]])
        manual_ack.ack_all(client, [])
        await client.publish(TOPIC, b"after", qos=1)  # its own ack follows ours on the wire
        (after,) = await take(inbox, 1)
        manual_ack.ack_all(client, [after.mid])
        await client.publish(TOPIC, b"flush", qos=1)
        (flush,) = await take(inbox, 1)
        manual_ack.ack_all(client, [flush.mid])

    client, inbox = session(rig)
    async with client:
        again = await take(inbox, 2)
        assert sorted(bytes(m.payload) for m in again) == [b"m4", b"m5"]  # type: ignore[arg-type]
        manual_ack.ack_all(client, [m.mid for m in again])
        assert inbox.empty()
