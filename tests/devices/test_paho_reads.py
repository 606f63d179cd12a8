"""devices/paho_reads.py: paho's small reads served from one buffer, every packet read at
once, against a real Mosquitto; and the paho/aiomqtt internals it reaches are still there.
"""

from __future__ import annotations

import asyncio
import inspect

import aiomqtt
import paho.mqtt.client as paho
import pytest

from devices import manual_ack, paho_reads
from devices.inbox import client_with_inbox
from devices.paho_reads import BufferedSocket
from tests.devices.conftest import Rig

TOPIC = "telemed/v1/test/reads"


def test_the_internals_it_reaches_are_still_there() -> None:
    """If this fails, aiomqtt or paho-mqtt changed: update devices/paho_reads.py."""
    assert "self._sock = self._create_socket()" in inspect.getsource(paho.Client.reconnect)
    assert "self._sock.recv(bufsize)" in inspect.getsource(paho.Client._sock_recv)
    # aiomqtt's reader callback reads on while the socket says it holds bytes
    assert "pending()" in inspect.getsource(aiomqtt.Client._on_socket_open)


class Kernel:
    """A non-blocking socket's reads: the chunks given, then EAGAIN or EOF."""

    def __init__(self, *chunks: bytes, eof: bool = False) -> None:
        self.chunks = list(chunks)
        self.eof = eof
        self.sent: list[bytes] = []

    def recv(self, size: int) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)[:size]
        if self.eof:
            return b""
        raise BlockingIOError

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def fileno(self) -> int:
        return 7


def test_small_reads_come_from_one_system_read() -> None:
    sock = BufferedSocket(Kernel(b"\x30\x05hello\x40\x02\x00\x01"))
    assert sock.recv(1) == b"\x30"
    assert sock.pending() == 10
    assert sock.recv(1) == b"\x05"
    assert sock.recv(5) == b"hello"
    assert sock.recv(1) == b"\x40"
    assert sock.recv(100) == b"\x02\x00\x01"  # what the buffer holds, as recv gives
    assert sock.pending() == 0
    assert sock.recvs == 1
    with pytest.raises(BlockingIOError):  # paho reads this as "wait for the socket"
        sock.recv(1)


def test_a_large_read_passes_through_and_eof_reaches_paho() -> None:
    sock = BufferedSocket(Kernel(b"abc", eof=True))
    assert sock.recv(10) == b"abc"
    assert sock.pending() == 0
    assert sock.recv(10) == b""  # the connection closed


def test_the_rest_goes_to_the_socket() -> None:
    kernel = Kernel()
    sock = BufferedSocket(kernel)
    assert sock.send(b"\xc0\x00") == 2
    assert kernel.sent == [b"\xc0\x00"]
    assert sock.fileno() == 7
    assert sock.chunks == []  # any other attribute is the socket's


async def test_a_burst_is_read_whole_and_in_order_with_few_system_reads(rig: Rig) -> None:
    count = 300
    client, inbox = client_with_inbox(
        rig.access.host,
        rig.access.port,
        username=rig.access.username,
        password=rig.access.password,
        identifier="test-reads",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=5.0,
    )
    manual_ack.enable(client)
    paho_reads.buffer_reads(client)
    publisher = rig.admin_client("test-reads-publisher")
    async with client:
        await client.subscribe(TOPIC, qos=1)
        async with publisher:
            await asyncio.gather(
                *(publisher.publish(TOPIC, f"m{i:04d}".encode() * 20, qos=1) for i in range(count))
            )
        got: list[aiomqtt.Message] = []
        async with asyncio.timeout(10):  # the last ones too, though the kernel is empty
            while len(got) < count:
                fresh = [await inbox.get()]
                while not inbox.empty():
                    fresh.append(inbox.get_nowait())
                manual_ack.ack_all(client, [m.mid for m in fresh])  # the broker sends on
                got += fresh
        reads = paho_reads.reads_of(client)
        assert reads is not None
        assert reads.recvs < 2 * count  # paho alone makes about four per packet
    assert [bytes(m.payload) for m in got] == [f"m{i:04d}".encode() * 20 for i in range(count)]  # type: ignore[arg-type]
