"""devices/paho_reads.py: paho's small reads served from one buffer, every packet read at
once, against a real Mosquitto; and the paho/aiomqtt internals it reaches are still there.
"""

from __future__ import annotations

import asyncio
import inspect
import struct

import aiomqtt
import paho.mqtt._packet as paho_packet
import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from devices import manual_ack, paho_reads
from devices.inbox import client_with_inbox, unwrapped
from devices.paho_reads import BufferedSocket, Delivery
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


# --- PUBLISH packets read from the buffer (read_publishes) ------------------------------


def publish(
    topic: bytes, payload: bytes, qos: int = 1, mid: int = 1, properties: bytes | None = b"\x00"
) -> bytes:
    """A PUBLISH packet as a broker writes it; `properties` None for MQTT 3.1.1."""
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    body += (properties or b"") + payload
    return bytes([0x30 | qos << 1]) + VariableByteIntegers.encode(len(body)) + body


def taken(data: bytes, mqtt5: bool = True) -> tuple[list[Delivery], int]:
    """What `take_publishes` hands over from a buffer holding `data`, and what is left."""
    sock = BufferedSocket(Kernel(data))
    sock.recv(0)  # the system read: the whole of `data` is in the buffer
    got: list[Delivery] = []
    sock.take_publishes(mqtt5, got.append)
    return got, sock.pending()


def test_whole_publishes_are_taken_in_order_and_the_rest_left_to_paho() -> None:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.UserProperty = ("a", "b")
    properties.MessageExpiryInterval = 30
    packed = properties.pack()  # type: ignore[no-untyped-call]
    first = publish(b"t/1", b"[1]", mid=7)
    second = publish(b"t/2", b"x" * 300, mid=65535, properties=packed)  # 2-byte length
    third = publish(b"t/3", b"", qos=0)
    rest = b"\x90\x03\x00\x01\x01" + publish(b"t/4", b"later")  # a SUBACK, then more
    got, left = taken(first + second + third + rest)
    assert got == [
        Delivery(b"t/1", 7, 1, b"[1]"),
        Delivery(b"t/2", 65535, 1, b"x" * 300),
        Delivery(b"t/3", 0, 0, b""),
    ]
    assert left == len(rest)  # paho reads the SUBACK, then the next call takes t/4
    got, left = taken(publish(b"a/b", b"v3", mid=3, properties=None), mqtt5=False)
    assert (got, left) == ([Delivery(b"a/b", 3, 1, b"v3")], 0)


@pytest.mark.parametrize(
    "data",
    [
        publish(b"t", b"half")[:-1],  # not whole yet
        b"\x32",  # the command byte alone
        b"\x32\xff\xff",  # the remaining length cut short
        b"\x32\xff\xff\xff\xff\x01" + b"x" * 10,  # a remaining length of 5 bytes
        publish(b"t", b"", qos=2),  # QoS 2: paho's, with its PUBREC
        b"\x36\x05\x00\x01t\x00\x01",  # QoS 3
        b"\x32\x01\x00",  # shorter than a topic length
        b"\x32\x05\x00\x09abc",  # the topic runs past the packet
        b"\x32\x04\x00\x01t\x00",  # the packet id cut short
        b"\x32\x05\x00\x01t\x00\x01",  # MQTT 5 without its properties' length
        b"\x32\x07\x00\x01t\x00\x01\x05\x01",  # properties running past the packet
        b"\xd0\x00",  # a PINGRESP
    ],
)
def test_anything_else_is_left_whole_in_the_buffer(data: bytes) -> None:
    assert taken(data) == ([], len(data))


def test_an_empty_topic_is_paho_s_to_refuse_under_mqtt_3() -> None:
    data = publish(b"", b"x", mid=7, properties=None)
    assert taken(data, mqtt5=False) == ([], len(data))
    with pytest.raises(MalformedPacket):
        paho_packet.decode_publish(data[0], data[2:], paho.MQTTv311)
    # MQTT 5 allows it (a topic alias would name it): paho delivers it, and so does this
    assert taken(publish(b"", b"x", mid=7)) == ([Delivery(b"", 7, 1, b"x")], 0)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.binary(min_size=1, max_size=300),
    payload=st.binary(max_size=20_000),
    qos=st.integers(0, 1),
    mid=st.integers(1, 65535),
    properties=st.sampled_from([b"\x00", b"\x02\x01\x01", b"\x05\x02\x00\x00\x00\x1e", None]),
)
def test_what_is_taken_is_what_paho_decodes(
    topic: bytes, payload: bytes, qos: int, mid: int, properties: bytes | None
) -> None:
    data = publish(topic, payload, qos, mid, properties)
    mqtt5 = properties is not None
    (got,), left = taken(data + b"\xd0\x00", mqtt5)
    assert left == 2
    length = len(data) - 1
    while len(VariableByteIntegers.encode(length)) + length != len(data) - 1:
        length -= 1
    version = paho.MQTTv5 if mqtt5 else paho.MQTTv311
    paho_read = paho_packet.decode_publish(data[0], data[len(data) - length :], version)
    assert got == Delivery(paho_read.topic, paho_read.mid, paho_read.qos, paho_read.payload)


async def test_publishes_go_to_the_inbox_and_everything_else_to_paho() -> None:
    """The ingest client's reads (`devices.inbox.unwrapped`): whole PUBLISH packets go
    to the queue from the buffer, what paho reads itself (the first packet of a system
    read, a PINGRESP) goes its way, and a malformed packet is paho's protocol error."""
    client = aiomqtt.Client("127.0.0.1", 1, protocol=aiomqtt.ProtocolVersion.V5)
    paho_reads.buffer_reads(client)
    inbox = unwrapped(client)
    inner = manual_ack.paho_client(client)
    pingresp = b"\xd0\x00"
    packets = [publish(f"t/{i}".encode(), f"m{i}".encode(), mid=i + 1) for i in range(5)]
    kernel = Kernel(b"".join(packets[:3]) + pingresp + b"".join(packets[3:]) + b"\x32\x01\x00")
    inner._sock = BufferedSocket(kernel)  # noqa: SLF001
    inner._state = paho._ConnectionState.MQTT_CS_CONNECTED  # noqa: SLF001
    results = [inner._packet_read()]  # noqa: SLF001 (paho's: packet 0 fills the buffer)
    inner._last_bytes_received = 0.0  # noqa: SLF001
    results.append(inner._packet_read())  # noqa: SLF001 (packets 1 and 2, from the buffer)
    assert inbox.qsize() == 3  # both in one read: paho's own reader takes one a call
    assert inner._last_bytes_received > 0.0  # noqa: SLF001 (the keepalive saw them come)
    results += [inner._packet_read() for _ in range(3)]  # noqa: SLF001
    assert results[:4] == [paho.MQTT_ERR_SUCCESS] * 4
    assert results[4] == paho.MQTT_ERR_PROTOCOL  # the last one, malformed
    got = [inbox.get_nowait() for _ in range(inbox.qsize())]
    assert got == [Delivery(f"t/{i}".encode(), i + 1, 1, f"m{i}".encode()) for i in range(5)]
    inner._sock = None  # noqa: SLF001


@pytest.mark.parametrize("moved", ["_packet_read", "_in_packet", "_last_bytes_received"])
async def test_reading_publishes_fails_naming_what_paho_moved(moved: str) -> None:
    client = aiomqtt.Client("127.0.0.1", 1)
    inner = manual_ack.paho_client(client)
    with pytest.MonkeyPatch.context() as m:
        if moved == "_packet_read":  # a new signature, on the class where it is looked up
            m.setattr(paho.Client, "_packet_read", lambda self, extra: None)
        else:
            m.delattr(inner, moved)
        with pytest.raises(RuntimeError, match=moved):
            paho_reads.read_publishes(client, print)
