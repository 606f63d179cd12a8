"""Buffered reads for paho's socket: one `recv` per 64 KB instead of about four per packet.

Why this module exists: paho reads a packet a few bytes at a time (the command byte, each
byte of the remaining length, then the rest), and each read is a `recv` system call. At
thousands of PUBLISH packets a second that is a sixth of the ingest loop's time. Wrapped
here, the socket reads what the kernel has, up to 64 KB, and serves paho's small reads
from that buffer.

The wrapper says how many bytes it holds through `pending()`, the method that TLS
sockets have: paho's own loop and aiomqtt's reader callback both go on reading while
`pending()` is above zero, so packets left in the buffer when the kernel's is empty are
still read at once. Everything else goes to the socket itself.

It reaches into paho: the socket is made by `Client._create_socket`, replaced on the
instance here. tests/devices/test_paho_reads.py fails loudly if an upgrade moves it.

`read_publishes` goes one step further, for the ingest client: the QoS 0 and 1 PUBLISH
packets that lie whole in the buffer are taken from it in one pass, each handed over as
a `Delivery` (topic, packet id, QoS, payload), without paho's per-packet state machine,
its `MQTTMessage` (with a `threading.Condition` each) and its debug log line: 17 µs a
message in paho, 2 here (20,000 packets through `_packet_read` in one process).
Whatever else comes (another packet type, a QoS 2 PUBLISH, a packet not yet whole,
anything malformed) stays in the buffer for paho's own reader, which handles and
reports it as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from devices.manual_ack import paho_client

READ_SIZE = 65536


class Delivery(NamedTuple):
    """An incoming PUBLISH, as ingestion reads it."""

    topic: bytes  # as sent: UTF-8 if the broker keeps to MQTT
    mid: int  # the packet id (0 at QoS 0)
    qos: int
    payload: bytes


class BufferedSocket:
    """A socket (plain or TLS) whose `recv` is served from a buffer of its last reads."""

    def __init__(self, sock: Any) -> None:  # noqa: ANN401 (paho's SocketLike)
        self._sock = sock
        self._buffer = b""
        self._at = 0
        self.recvs = 0  # system reads, for tests

    def recv(self, size: int) -> bytes:
        if self._at >= len(self._buffer):
            data: bytes = self._sock.recv(READ_SIZE)  # BlockingIOError and b"" (EOF) go to paho
            self.recvs += 1
            if len(data) <= size:
                self._buffer, self._at = b"", 0
                return data
            self._buffer, self._at = data, 0
        start = self._at
        self._at = min(start + size, len(self._buffer))
        return self._buffer[start : self._at]

    def take_publishes(self, mqtt5: bool, deliver: Callable[[Delivery], None]) -> int:
        """Hand over the QoS 0 and 1 PUBLISH packets that lie whole at the head of the
        buffer, in order, and drop them from it; stop at the first other thing (left to
        paho). How many were taken. MQTT 5 properties are skipped unread (paho would
        refuse malformed ones; a broker writes none): ingestion reads none, and a broker
        sends no topic alias to a client that allows none (ours)."""
        buffer, at = self._buffer, self._at
        end = len(buffer)
        taken = 0
        while at < end:
            command = buffer[at]
            qos = (command >> 1) & 3
            if command >> 4 != 3 or qos > 1:  # PUBLISH (type 3) at QoS 0 or 1
                break
            remaining = _variable_int(buffer, at + 1, end)
            if remaining is None:
                break  # not yet whole, or more than 4 bytes (paho refuses it)
            length, start = remaining
            stop = start + length
            if stop > end or length < 2:
                break
            topic_end = start + 2 + (buffer[start] << 8 | buffer[start + 1])
            if topic_end == start + 2 and not mqtt5:
                break  # an empty topic: MQTT 3.1.1 forbids it (paho refuses the packet)
            mid = 0
            position = topic_end
            if qos:
                position += 2
                if position > stop:
                    break
                mid = buffer[topic_end] << 8 | buffer[topic_end + 1]
            if mqtt5:  # the properties' length, then the properties
                properties = _variable_int(buffer, position, stop)
                if properties is None:
                    break
                position = properties[1] + properties[0]
            if position > stop:
                break
            deliver(Delivery(buffer[start + 2 : topic_end], mid, qos, buffer[position:stop]))
            taken += 1
            at = stop
        self._at = at
        return taken

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buffer) - self._at + inner

    def send(self, data: bytes) -> int:
        return int(self._sock.send(data))

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401
        return getattr(self._sock, name)


def _variable_int(buffer: bytes, at: int, end: int) -> tuple[int, int] | None:
    """MQTT's Variable Byte Integer at `at` (1 to 4 bytes, 7 bits each, least significant
    first): its value and where it ends, or None if it runs to `end` or past 4 bytes."""
    value = shift = 0
    while at < end and shift < 28:
        byte = buffer[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7
    return None


def buffer_reads(client: aiomqtt.Client) -> None:
    """Make each socket `client`'s paho client opens (on every reconnect) a BufferedSocket."""
    inner = paho_client(client)
    create = inner._create_socket  # noqa: SLF001 (see the module docstring)

    def create_buffered() -> BufferedSocket:
        return BufferedSocket(create())

    inner._create_socket = create_buffered  # type: ignore[method-assign,assignment]  # noqa: SLF001


def read_publishes(client: aiomqtt.Client, deliver: Callable[[Delivery], None]) -> None:
    """Make `client`'s paho client hand its QoS 0 and 1 PUBLISH packets to `deliver`
    straight from the buffer of its BufferedSocket (see the module docstring and
    `BufferedSocket.take_publishes`); everything else, and a packet paho is in the middle
    of, goes through paho's `_packet_read` as before. Call with `buffer_reads`, before
    connecting. Fails at once, naming it, if paho no longer has what this relies on."""
    inner = paho_client(client)
    read = getattr(type(inner), "_packet_read", None)
    state = getattr(inner, "_in_packet", None)
    if (
        read is None
        or list(inspect.signature(read).parameters) != ["self"]
        or not isinstance(state, dict)
        or "command" not in state
        or not hasattr(inner, "_last_bytes_received")
        or not callable(getattr(paho, "time_func", None))
    ):
        raise RuntimeError(
            "paho-mqtt: Client._packet_read(), its _in_packet state or "
            "_last_bytes_received is gone or changed; devices/paho_reads.py must be "
            "updated for this paho version"
        )
    original = inner._packet_read  # noqa: SLF001
    mqtt5 = inner._protocol == paho.MQTTv5  # noqa: SLF001
    clock = paho.time_func

    def packet_read() -> MQTTErrorCode:
        sock = inner._sock  # noqa: SLF001
        if (
            inner._in_packet["command"] == 0  # noqa: SLF001 (no packet half read by paho)
            and isinstance(sock, BufferedSocket)
            and sock.take_publishes(mqtt5, deliver)
        ):
            inner._last_bytes_received = clock()  # noqa: SLF001 (as paho's read sets it)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return original()

    inner._packet_read = packet_read  # type: ignore[method-assign]  # noqa: SLF001


def reads_of(client: aiomqtt.Client) -> BufferedSocket | None:
    """The buffered socket of a connected client, or None."""
    sock = paho_client(client)._sock  # noqa: SLF001
    return sock if isinstance(sock, BufferedSocket) else None
