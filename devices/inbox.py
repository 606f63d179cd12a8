"""An aiomqtt client whose incoming queue we hold ourselves.

aiomqtt's `client.messages` iterator wraps each wait in a task of its own and leaves that
task pending when the waiter is cancelled. A consumer that stops reading on a time-out
(a batch deadline) would leak one task each time. aiomqtt lets the caller choose the
queue class (`queue_type`), so we hand it one that tells us its instance and read that
queue directly: `asyncio.Queue.get` is safe to cancel.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt

from devices.manual_ack import paho_client


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


async def receive(
    client: aiomqtt.Client, inbox: asyncio.Queue[aiomqtt.Message], within: float
) -> aiomqtt.Message | None:
    """The next message, or None after `within` seconds; raise `MqttError` once the
    connection is gone (checked whenever the wait runs out)."""
    try:
        async with asyncio.timeout(within):
            return await inbox.get()
    except TimeoutError:
        if not paho_client(client).is_connected():
            raise aiomqtt.MqttError("the connection to the broker was lost") from None
        return None
