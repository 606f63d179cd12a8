"""The backup archive: an encrypted, authenticated, streamed container of records.

Records are opaque bytes here (the backup writes JSON lines). They are sealed with
AES-256-GCM under a 32-byte backup key that the operator keeps apart from the server:
whoever holds an archive but not its key learns only what the header says.

Layout (FORMAT 1):

- header, plaintext: `MAGIC` (`b"TELEMED-BACKUP\\n"`), then one line holding a JSON object
  with `format`, `archive_id` (128 random bits, hex), `created_at` (RFC 3339, UTC),
  `server_version` and `compression` ("zlib"), ended by `\\n`. It is not encrypted, but
  its exact bytes are authenticated: their SHA-256 is in every chunk's associated data.
- chunks, then nothing: each chunk is stored as
  `length (4 bytes, big-endian) | nonce (12) | ciphertext and tag (16)`, where `length`
  counts the nonce, ciphertext and tag. Its plaintext is a run of at most `CHUNK_BYTES`
  bytes of the record stream (each record as `length (4 bytes, big-endian) | bytes`; a
  record may run over several chunks), compressed with zlib, then sealed under a fresh
  random nonce with the associated data (header digest, chunk index, final flag). The
  writer always ends with a chunk flagged final, possibly empty.

So a reader refuses, each with its own `ArchiveError`: a chunk altered, reordered,
duplicated or taken from another archive (`Tampered`, or `WrongKey` for the first chunk,
which cannot tell a wrong key from an altered header or first chunk); an archive cut
anywhere, even between chunks (`Truncated`); bytes after the final chunk (`Tampered`).

Reading is streamed: a record is yielded once every chunk it lies in has passed its tag
check (as final or not, which the reader knows once it saw whether anything follows),
never before; but an error can come after earlier records were yielded, so a restore
must not commit anything until the iteration ended without an error. Reading and
writing are blocking file I/O: the server calls them from a worker thread.

Random 96-bit nonces keep AES-GCM safe for about 2**32 chunks under one key: at 1 MiB a
chunk, millions of full-size backups.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from telemed.clock import iso, parse_iso
from telemed.errors import TelemedError

MAGIC = b"TELEMED-BACKUP\n"
FORMAT = 1
COMPRESSION = "zlib"
KEY_BYTES = 32  # AES-256
KEY_PREFIX = "tmbk1:"
NONCE_BYTES = 12
TAG_BYTES = 16
CHUNK_BYTES = 1 << 20  # plaintext of a chunk (before compression), at most
MAX_RECORD_BYTES = 0xFFFF_FFFF  # what a 4-byte length prefix can say
MAX_HEADER_BYTES = 64 * 1024  # the JSON line, newline included
# the longest stored chunk: zlib's worst case for CHUNK_BYTES (it adds well under 1%)
MAX_SEALED_BYTES = NONCE_BYTES + CHUNK_BYTES + CHUNK_BYTES // 64 + 1024 + TAG_BYTES

_LENGTH_BYTES = 4
_AAD_LABEL = b"telemed-backup-chunk|"
T = TypeVar("T")


class ArchiveError(TelemedError):
    """An archive cannot be read (or written); the message says why in plain words."""


class NotAnArchive(ArchiveError):
    """The file does not start with a backup header: wrong magic, or a header that does
    not parse."""


class NewerFormat(ArchiveError):
    """The archive was written in a format newer than this server reads."""


class WrongKey(ArchiveError):
    """The first chunk fails its tag check: the wrong backup key, or the archive's start
    (its header or first chunk) was altered. The two look the same to the reader."""


class Tampered(ArchiveError):
    """A chunk after the first fails its tag check (altered, reordered, duplicated or from
    another archive), a length field is impossible, or data follows the final chunk."""


class Truncated(ArchiveError):
    """The archive ends before its final chunk: cut in the header, between chunks or
    inside a chunk."""


class BackupKeyError(TelemedError):
    """A backup key (its bytes, its text form or its file) is refused; the message names
    what is wrong and never shows the key."""


class Readable(Protocol):
    """A binary file open for reading (a file, a pipe, `io.BytesIO`)."""

    def read(self, size: int, /) -> bytes: ...


class Writable(Protocol):
    """A binary file open for writing."""

    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True, slots=True)
class ArchiveHeader:
    format: int
    archive_id: str  # 32 hex digits
    created_at: datetime  # timezone-aware, UTC
    server_version: str  # the version of the server that wrote it
    compression: str  # "zlib"


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    """What a finished writer wrote."""

    header: ArchiveHeader
    records: int
    chunks: int  # the final chunk included
    size: int  # bytes written, header included


# keys ----------------------------------------------------------------------------------
def new_backup_key() -> bytes:
    """A fresh random 256-bit backup key."""
    return AESGCM.generate_key(256)


def encode_key(key: bytes) -> str:
    """The text form of a backup key, `tmbk1:` then base64: recognizable when pasted."""
    _check_key(key)
    return KEY_PREFIX + base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """The key that `encode_key` wrote (surrounding whitespace ignored); anything else is
    refused with a message naming what is wrong: the prefix, the base64 or the length."""
    text = text.strip()
    if not text.startswith(KEY_PREFIX):
        raise BackupKeyError(
            f"backup key: does not start with {KEY_PREFIX!r}, so it is not a backup key "
            "(a backup key reads tmbk1: then 44 base64 characters)"
        )
    body = text[len(KEY_PREFIX) :]
    try:
        key = base64.b64decode(body.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise BackupKeyError(
            f"backup key: the text after {KEY_PREFIX!r} is not valid base64 (was it cut or "
            "wrapped when copied?)"
        ) from None
    if len(key) != KEY_BYTES:
        raise BackupKeyError(
            f"backup key: decodes to {len(key)} bytes, but a backup key is {KEY_BYTES} "
            "(was it cut when copied?)"
        )
    return key


def load_key_file(path: Path | str) -> bytes:
    """The backup key in a text file written as `encode_key` does. Refuse a file that the
    group or others may access (it must be chmod 600), and name the file in every error."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if mode & 0o077:
                raise BackupKeyError(
                    f"backup key file {path}: the group or others may access it (mode "
                    f"{mode & 0o777:o}); run chmod 600 {path}"
                )
            data = handle.read(4096)
    except FileNotFoundError:
        raise BackupKeyError(f"backup key file {path} not found") from None
    except OSError as exc:
        raise BackupKeyError(f"backup key file {path}: cannot read it: {exc}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise BackupKeyError(
            f"backup key file {path}: not a backup key (it is not plain ASCII text)"
        ) from None
    try:
        return decode_key(text)
    except BackupKeyError as exc:
        raise BackupKeyError(f"backup key file {path}: {exc}") from None


def _check_key(key: bytes) -> AESGCM:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        size = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
        raise BackupKeyError(f"backup key: {size}, but a backup key is {KEY_BYTES} bytes")
    return AESGCM(key)


# header --------------------------------------------------------------------------------
def encode_header(header: ArchiveHeader) -> bytes:
    """The header's exact bytes: the magic, then its JSON line."""
    body = {
        "format": header.format,
        "archive_id": header.archive_id,
        "created_at": iso(header.created_at),
        "server_version": header.server_version,
        "compression": header.compression,
    }
    return MAGIC + json.dumps(body, separators=(",", ":")).encode("ascii") + b"\n"


def read_header(file: Readable) -> ArchiveHeader:
    """The header of the archive at the file's position, without the key; the file is
    left just after it. Raise `NotAnArchive`, `NewerFormat` or `Truncated`."""
    return _read_header(file)[0]


def _read_header(file: Readable) -> tuple[ArchiveHeader, bytes]:
    start = _read_exact(file, len(MAGIC))
    if start != MAGIC:
        if not start:
            raise Truncated("the archive is empty (0 bytes): it was cut short, or never written")
        if MAGIC.startswith(start):
            raise Truncated(
                f"the archive ends inside its header (after {len(start)} bytes): it was cut short"
            )
        raise NotAnArchive("not a telemed backup: it does not start with TELEMED-BACKUP")
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = file.read(1)
        if not byte:
            raise Truncated(
                f"the archive ends inside its header (after {len(MAGIC) + len(line)} bytes): "
                "it was cut short"
            )
        line += byte
        if len(line) > MAX_HEADER_BYTES:
            raise NotAnArchive(
                f"not a telemed backup: its header line is longer than {MAX_HEADER_BYTES} bytes"
            )
    return _parse_header(bytes(line)), MAGIC + bytes(line)


def _parse_header(line: bytes) -> ArchiveHeader:
    try:
        body = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise NotAnArchive("not a telemed backup: its header line is not valid JSON") from None
    if not isinstance(body, dict):
        raise NotAnArchive("not a telemed backup: its header line is not a JSON object")
    fmt = _field(body, "format", int)
    if fmt > FORMAT:
        raise NewerFormat(
            f"archive format {fmt} is newer than this server reads ({FORMAT}): "
            "upgrade the server first"
        )
    if fmt < 1:
        raise NotAnArchive(f"not a telemed backup: header field format is {fmt}")
    archive_id = _field(body, "archive_id", str)
    if len(archive_id) != 32 or any(c not in "0123456789abcdef" for c in archive_id):
        raise NotAnArchive("not a telemed backup: header field archive_id is not 32 hex digits")
    try:
        created_at = datetime.fromisoformat(_field(body, "created_at", str))
    except ValueError:
        raise NotAnArchive(
            "not a telemed backup: header field created_at is not an ISO 8601 time"
        ) from None
    if created_at.tzinfo is None:
        raise NotAnArchive("not a telemed backup: header field created_at has no time zone")
    compression = _field(body, "compression", str)
    if compression != COMPRESSION:
        raise NotAnArchive(
            f"not a telemed backup: header field compression is {compression!r}, "
            f"this server reads {COMPRESSION!r} only"
        )
    server_version = _field(body, "server_version", str)
    return ArchiveHeader(fmt, archive_id, created_at.astimezone(UTC), server_version, compression)


def _field(body: dict[str, Any], name: str, kind: type[T]) -> T:
    if name not in body:
        raise NotAnArchive(f"not a telemed backup: its header has no field {name}")
    value = body[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        what = "an integer" if kind is int else "a string"
        raise NotAnArchive(f"not a telemed backup: header field {name} is not {what}")
    return value


def _chunk_aad(header_digest: bytes, index: int, final: bool) -> bytes:
    # fixed-width parts, so no two (header, index, final) give the same bytes
    return _AAD_LABEL + header_digest + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


# writing -------------------------------------------------------------------------------
class ArchiveWriter:
    """Writes an archive to `file` as records are added; holds at most one chunk.

    The header is written at once. `finish()` writes the final chunk; until then the
    archive reads as truncated. Used as a context manager, it finishes on a clean exit
    only: an exception leaves the archive unfinished, so it can never pass for whole.
    `chunk_bytes` (at most `CHUNK_BYTES`) is smaller only in tests.
    """

    def __init__(
        self,
        file: Writable,
        key: bytes,
        *,
        server_version: str,
        created_at: datetime,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self._aead = _check_key(key)
        if created_at.tzinfo is None:
            raise ArchiveError("archive created_at: must be timezone-aware")
        if not 1 <= chunk_bytes <= CHUNK_BYTES:
            raise ArchiveError(f"archive chunk_bytes: must be 1 to {CHUNK_BYTES}")
        self.header = ArchiveHeader(
            FORMAT, secrets.token_hex(16), parse_iso(iso(created_at)), server_version, COMPRESSION
        )
        header_bytes = encode_header(self.header)
        self._file = file
        self._digest = hashlib.sha256(header_bytes).digest()
        self._chunk_bytes = chunk_bytes
        self._pending = bytearray()
        self._index = 0
        self._records = 0
        self._finished = False
        self._write(header_bytes)
        self._size = len(header_bytes)

    def add(self, record: bytes) -> None:
        """Append one record; full chunks are sealed and written as they fill."""
        if self._finished:
            raise ArchiveError("archive: cannot add a record after finish()")
        if len(record) > MAX_RECORD_BYTES:
            raise ArchiveError(
                f"archive record {self._records}: {len(record)} bytes, more than the "
                f"{MAX_RECORD_BYTES} a record may hold"
            )
        self._feed(len(record).to_bytes(_LENGTH_BYTES, "big"))
        self._feed(record)
        self._records += 1

    def finish(self) -> ArchiveSummary:
        """Write the final chunk (what is pending, possibly nothing)."""
        if self._finished:
            raise ArchiveError("archive: already finished")
        self._seal(final=True)
        self._finished = True
        return ArchiveSummary(self.header, self._records, self._index, self._size)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None and not self._finished:
            self.finish()

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = self._chunk_bytes - len(self._pending)
            self._pending += view[:room]
            view = view[room:]
            if len(self._pending) == self._chunk_bytes:
                self._seal(final=False)

    def _seal(self, *, final: bool) -> None:
        nonce = os.urandom(NONCE_BYTES)
        aad = _chunk_aad(self._digest, self._index, final)
        sealed = self._aead.encrypt(nonce, zlib.compress(self._pending), aad)
        self._pending.clear()
        length = NONCE_BYTES + len(sealed)
        self._write(length.to_bytes(_LENGTH_BYTES, "big"))
        self._write(nonce)
        self._write(sealed)
        self._size += _LENGTH_BYTES + length
        self._index += 1

    def _write(self, data: bytes) -> None:
        while data:  # a raw (unbuffered) file may write less than it was given
            data = data[self._file.write(data) :]


def write_archive(
    file: Writable,
    records: Iterable[bytes],
    key: bytes,
    *,
    server_version: str,
    created_at: datetime,
) -> ArchiveSummary:
    """Write `records` (consumed one at a time) as a whole archive to `file`."""
    writer = ArchiveWriter(file, key, server_version=server_version, created_at=created_at)
    for record in records:
        writer.add(record)
    return writer.finish()


# reading -------------------------------------------------------------------------------
class ArchiveReader:
    """Reads the header at once (raising `NotAnArchive`, `NewerFormat` or `Truncated`);
    iterating yields the records, each once its chunks passed their tag checks. Iterate
    to the end without an error before trusting any of them: see the module's notes."""

    def __init__(self, file: Readable, key: bytes) -> None:
        self._aead = _check_key(key)
        self._file = file
        self.header, header_bytes = _read_header(file)
        self._digest = hashlib.sha256(header_bytes).digest()
        self._offset = len(header_bytes)
        self._started = False

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise ArchiveError("archive: its records can be read once only")
        self._started = True
        return self._records()

    def _records(self) -> Iterator[bytes]:
        pending = bytearray()
        index = 0
        prefix = _read_exact(self._file, _LENGTH_BYTES)
        while True:
            if not prefix:
                where = f"after chunk {index - 1}" if index else "after its header"
                raise Truncated(
                    f"the archive ends {where} (at byte {self._offset}), before its final "
                    "chunk: it was cut short"
                )
            start = self._offset
            sealed = self._read_sealed(index, prefix)
            prefix = _read_exact(self._file, _LENGTH_BYTES)  # nothing more: this one is final
            final = not prefix
            plain = self._open(index, start, sealed, final)
            pending += self._decompress(index, plain)
            del plain
            used = 0
            while len(pending) - used >= _LENGTH_BYTES:
                size = int.from_bytes(pending[used : used + _LENGTH_BYTES], "big")
                if len(pending) - used - _LENGTH_BYTES < size:
                    break
                used += _LENGTH_BYTES
                yield bytes(pending[used : used + size])
                used += size
            del pending[:used]
            if final:
                if pending:
                    raise ArchiveError(
                        f"chunk {index}: the final chunk ends inside a record (the archive "
                        "was written wrong)"
                    )
                return
            index += 1

    def _read_sealed(self, index: int, prefix: bytes) -> bytes:
        if len(prefix) < _LENGTH_BYTES:
            raise Truncated(
                f"chunk {index} is cut short: {len(prefix)} of its {_LENGTH_BYTES} length bytes "
                f"(at byte {self._offset}): the archive was cut short"
            )
        length = int.from_bytes(prefix, "big")
        if not NONCE_BYTES + TAG_BYTES <= length <= MAX_SEALED_BYTES:
            raise Tampered(
                f"chunk {index} (at byte {self._offset}) says it is {length} bytes long, which "
                "no chunk is: the archive was altered"
            )
        sealed = _read_exact(self._file, length)
        if len(sealed) < length:
            raise Truncated(
                f"chunk {index} (at byte {self._offset}) is cut short: {len(sealed)} of "
                f"{length} bytes: the archive was cut short (or its length field altered)"
            )
        self._offset += _LENGTH_BYTES + length
        return sealed

    def _open(self, index: int, start: int, sealed: bytes, final: bool) -> bytes:
        try:
            return self._decrypt(index, sealed, final)
        except InvalidTag:
            pass
        # explain the failure: does the chunk open under the other final flag?
        try:
            self._decrypt(index, sealed, not final)
        except InvalidTag:
            pass
        else:
            if final:
                raise Truncated(
                    f"the archive ends after chunk {index} (at byte {self._offset}), before "
                    "its final chunk: it was cut short"
                ) from None
            raise Tampered(
                f"data after the end: bytes follow the final chunk (chunk {index}) from "
                f"byte {self._offset} on"
            ) from None
        if index == 0:
            raise WrongKey(
                "chunk 0 does not open: this is not the backup key the archive was written "
                "with, or the archive's start (its header or first chunk) was altered"
            ) from None
        raise Tampered(
            f"chunk {index} (at byte {start}) does not open: it was altered, reordered, "
            "duplicated or taken from another archive"
        ) from None

    def _decrypt(self, index: int, sealed: bytes, final: bool) -> bytes:
        aad = _chunk_aad(self._digest, index, final)
        return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)

    @staticmethod
    def _decompress(index: int, data: bytes) -> bytes:
        inflater = zlib.decompressobj()
        try:
            plain = inflater.decompress(data, CHUNK_BYTES + 1)
        except zlib.error:
            plain = b""
        if not inflater.eof or inflater.unused_data or len(plain) > CHUNK_BYTES:
            raise ArchiveError(
                f"chunk {index}: authentic, but not a zlib stream of at most {CHUNK_BYTES} "
                "bytes (the archive was written wrong)"
            )
        return plain


def read_archive(file: Readable, key: bytes) -> Iterator[bytes]:
    """The records of the archive in `file`: see `ArchiveReader`."""
    return iter(ArchiveReader(file, key))


def _read_exact(file: Readable, size: int) -> bytes:
    """`size` bytes, or fewer only at the end of the file (a pipe may return less)."""
    data = file.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = file.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
