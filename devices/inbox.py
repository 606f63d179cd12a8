"""An aiomqtt client whose incoming queue we hold ourselves.

aiomqtt's `client.messages` iterator wraps each wait in a task of its own and leaves that
task pending when the waiter is cancelled. A consumer that stops reading on a time-out
(a batch deadline) would leak one task each time. aiomqtt lets the caller choose the
queue class (`queue_type`), so we hand it one that tells us its instance and read that
queue directly: `asyncio.Queue.get` is safe to cancel.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, TypeVar

import aiomqtt
import paho.mqtt.client as paho

from devices.manual_ack import paho_client
from devices.paho_reads import Delivery, read_publishes


def client_with_inbox(
    hostname: str, port: int, **kwargs: Any
) -> tuple[aiomqtt.Client, asyncio.Queue[aiomqtt.Message]]:
    made: list[asyncio.Queue[aiomqtt.Message]] = []

    class Inbox(asyncio.Queue[aiomqtt.Message]):
        def __init__(self, maxsize: int = 0) -> None:
            super().__init__(maxsize)
            made.append(self)

    client = aiomqtt.Client(hostname, port, queue_type=Inbox, **kwargs)
    if len(made) != 1:
        raise RuntimeError("aiomqtt did not create its queue from queue_type")
    return client, made[0]


M = TypeVar("M")


async def receive(client: aiomqtt.Client, inbox: asyncio.Queue[M], within: float) -> M | None:
    """The next message, or None after `within` seconds; raise `MqttError` once the
    connection is gone (checked whenever the wait runs out)."""
    try:
        async with asyncio.timeout(within):
            return await inbox.get()
    except TimeoutError:
        if not paho_client(client).is_connected():
            raise aiomqtt.MqttError("the connection to the broker was lost") from None
        return None


def unwrapped(client: aiomqtt.Client) -> asyncio.Queue[Delivery]:
    """A queue of the client's incoming messages as `Delivery` tuples, put there straight
    from paho's reading; call before connecting, after `paho_reads.buffer_reads`.

    Two ways lead there:
    - the PUBLISH packets that lie whole in the socket's buffer, nearly all of them, are
      read there (`paho_reads.read_publishes`: 2 µs a message against paho's 17);
    - the few that paho reads itself (the first of each system read, one cut by it) go
      through its packet handler, whose `_handle_on_message` is replaced on the
      instance by a put on the queue. That skips what paho's own does (the topic
      decoded three times, two mutexes, an empty table of per-topic callbacks walked)
      and aiomqtt's `Message` with its validated `Topic` (4 µs a message down to 0.4).
      None of it is needed here: the event loop's thread is the only one running paho,
      no per-topic callback is set, and the broker checked the topic.
    This fails at once, naming it, if an upgrade moves what it replaces
    (tests/devices/test_ingest.py and test_paho_reads.py deliver through both ways)."""
    inner = paho_client(client)
    method = getattr(type(inner), "_handle_on_message", None)
    if method is None or list(inspect.signature(method).parameters) != ["self", "message"]:
        raise RuntimeError(
            "paho-mqtt: Client._handle_on_message(message) is gone or changed; "
            "devices/inbox.py must be updated for this paho version"
        )
    inbox: asyncio.Queue[Delivery] = asyncio.Queue()
    put = inbox.put_nowait

    def handle_on_message(message: paho.MQTTMessage) -> None:
        put(Delivery(message._topic, message.mid, message.qos, bytes(message.payload)))  # noqa: SLF001

    setattr(inner, "_handle_on_message", handle_on_message)  # noqa: B010 (a method, on mypy's view)
    read_publishes(client, put)
    return inbox
