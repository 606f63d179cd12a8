"""Manual acknowledgement of QoS 1 messages, which aiomqtt does not expose.

Why this module exists: at-least-once delivery end to end means the broker may forget a
reading only after the store has committed it. paho-mqtt supports that (`manual_ack_set`,
`ack`), but aiomqtt 2.x creates the paho client itself and keeps it in the private
attribute `_client`. This is the only place that reaches in; tests/devices/
test_manual_ack.py fails loudly if an aiomqtt or paho upgrade moves it.
"""

from __future__ import annotations

import aiomqtt
import paho.mqtt.client as paho


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
