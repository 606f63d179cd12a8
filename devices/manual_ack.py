"""Manual acknowledgement of QoS 1 messages, which aiomqtt does not expose.

Why this module exists: at-least-once delivery end to end means the broker may forget a
reading only after the store has committed it. paho-mqtt supports that (`manual_ack_set`,
`ack`), but aiomqtt 2.x creates the paho client itself and keeps it in the private
attribute `_client`. This is the only place that reaches in; tests/devices/
test_manual_ack.py fails loudly if an aiomqtt or paho upgrade moves it.

`ack_all` acknowledges a committed batch in one write. paho's `ack` queues one packet per
message, and each queued packet costs a write to paho's wake-up socket, a call into the
event loop from "another thread", a writer registered and removed, and a `send` of its
own: about as much as decoding the message. `ack_all` queues the same PUBACK bytes,
concatenated, through paho's private `_packet_queue` (the method `ack` itself ends in);
the same test pins its signature.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import aiomqtt
import paho.mqtt.client as paho

_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id (MQTT 5: Success)


def paho_client(client: aiomqtt.Client) -> paho.Client:
    inner = getattr(client, "_client", None)
    if not isinstance(inner, paho.Client):
        raise RuntimeError(
            "aiomqtt.Client no longer keeps its paho client in `_client`: "
            "devices/manual_ack.py must be updated for this aiomqtt version"
        )
    return inner


def enable(client: aiomqtt.Client) -> None:
    """Call before connecting: paho then leaves every QoS 1 PUBACK to `ack`."""
    paho_client(client).manual_ack_set(True)


def ack(client: aiomqtt.Client, mid: int) -> None:
    """Send the PUBACK for message `mid` (QoS 1). Acks must go in arrival order."""
    rc = paho_client(client).ack(mid, 1)
    if rc != paho.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttError(f"PUBACK for message {mid} failed: {paho.error_string(rc)}")


def ack_all(client: aiomqtt.Client, mids: Sequence[int]) -> None:
    """Send the PUBACKs for messages `mids` (QoS 1), in this order, in one write: the bytes
    `ack` would send one by one."""
    if not mids:
        return
    inner = paho_client(client)
    packet = b"".join([_PUBACK.pack(paho.PUBACK, 2, mid) for mid in mids])
    rc = inner._packet_queue(paho.PUBACK, packet, 0, 0)
    if rc != paho.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttError(f"PUBACK for {len(mids)} messages failed: {paho.error_string(rc)}")
