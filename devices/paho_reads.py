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
"""

from __future__ import annotations

from typing import Any

import aiomqtt

from devices.manual_ack import paho_client

READ_SIZE = 65536


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

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buffer) - self._at + inner

    def send(self, data: bytes) -> int:
        return int(self._sock.send(data))

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401
        return getattr(self._sock, name)


def buffer_reads(client: aiomqtt.Client) -> None:
    """Make each socket `client`'s paho client opens (on every reconnect) a BufferedSocket."""
    inner = paho_client(client)
    create = inner._create_socket  # noqa: SLF001 (see the module docstring)

    def create_buffered() -> BufferedSocket:
        return BufferedSocket(create())

    inner._create_socket = create_buffered  # type: ignore[method-assign,assignment]  # noqa: SLF001


def reads_of(client: aiomqtt.Client) -> BufferedSocket | None:
    """The buffered socket of a connected client, or None."""
    sock = paho_client(client)._sock  # noqa: SLF001
    return sock if isinstance(sock, BufferedSocket) else None
