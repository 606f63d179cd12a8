"""The backup archive: records come back exactly, and whatever is altered, cut, moved or
appended is refused with the error that says so, never read back silently.

Most tamper tests use a small archive (`chunk_bytes=64`, some twenty chunks) so that every
byte offset can be cut or flipped; the same checks then run at the real 1 MiB chunk size
on the offsets where chunks meet. `stored_chunks` parses the layout the module documents,
independently of the module, to know where each chunk's length, nonce and tag lie.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemed.archive import (
    CHUNK_BYTES,
    FORMAT,
    KEY_PREFIX,
    MAGIC,
    MAX_SEALED_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    ArchiveError,
    ArchiveHeader,
    ArchiveReader,
    ArchiveSummary,
    ArchiveWriter,
    BackupKeyError,
    NewerFormat,
    NotAnArchive,
    Tampered,
    Truncated,
    WrongKey,
    decode_key,
    encode_key,
    load_key_file,
    new_backup_key,
    read_archive,
    read_header,
    write_archive,
)
from telemed.errors import TelemedError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = datetime(2026, 11, 29, 9, 0, 0, 123456, tzinfo=UTC)
VERSION = "0.1.0"
SMALL_CHUNK = 64
REFUSALS = (Truncated, Tampered, WrongKey)  # what a cut or flipped chunk region may raise


# helpers -------------------------------------------------------------------------------
def build(records: list[bytes], *, key: bytes = KEY, chunk_bytes: int = CHUNK_BYTES) -> bytes:
    out = io.BytesIO()
    with ArchiveWriter(
        out, key, server_version=VERSION, created_at=NOW, chunk_bytes=chunk_bytes
    ) as writer:
        for record in records:
            writer.add(record)
    return out.getvalue()


def read_all(data: bytes, key: bytes = KEY) -> list[bytes]:
    return list(read_archive(io.BytesIO(data), key))


def read_until_refused(data: bytes, key: bytes = KEY) -> tuple[list[bytes], ArchiveError]:
    """The records yielded before the reader raised, and what it raised; fail the test if
    it read to the end without an error."""
    got: list[bytes] = []
    try:
        for record in read_archive(io.BytesIO(data), key):
            got.append(record)
    except ArchiveError as exc:
        return got, exc
    pytest.fail(f"read all {len(got)} records of a damaged archive without an error")


@dataclass(frozen=True, slots=True)
class Stored:
    """Where one stored chunk lies: its length field at `start`, nonce at `nonce`, ciphertext
    from `nonce + 12`, tag in the last 16 bytes before `end`."""

    start: int
    nonce: int
    end: int


def header_end(data: bytes) -> int:
    return data.index(b"\n", len(MAGIC)) + 1


def stored_chunks(data: bytes) -> list[Stored]:
    """The chunks of a well-formed archive, parsed from the documented layout."""
    position = header_end(data)
    chunks = []
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        chunks.append(Stored(position, position + 4, position + 4 + length))
        position += 4 + length
    assert position == len(data)
    return chunks


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def with_header(body: dict[str, object] | str) -> bytes:
    line = body if isinstance(body, str) else json.dumps(body)
    return MAGIC + line.encode() + b"\n"


def header_body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "format": FORMAT,
        "archive_id": "0123456789abcdef0123456789abcdef",
        "created_at": "2026-11-29T09:00:00.123Z",
        "server_version": VERSION,
        "compression": "zlib",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def small_records() -> list[bytes]:
    """Records of 0 to 150 random bytes, about twenty 64-byte chunks of them; some span
    several chunks."""
    rng = random.Random(7)
    return [b"", b"x"] + [rng.randbytes(rng.randrange(0, 150)) for _ in range(12)] + [b""]


@pytest.fixture(scope="module")
def small() -> bytes:
    return build(small_records(), chunk_bytes=SMALL_CHUNK)


@pytest.fixture(scope="module")
def large_records() -> list[bytes]:
    """Random (incompressible) records filling four real chunks, the last one partly."""
    rng = random.Random(11)
    return [rng.randbytes(n) for n in (700_000, 5, 1_500_000, 0, 1_200_000)]


@pytest.fixture(scope="module")
def large(large_records: list[bytes]) -> bytes:
    return build(large_records)


# round trips ---------------------------------------------------------------------------
def test_records_of_every_size_come_back_exactly(tmp_path: Path) -> None:
    rng = random.Random(3)
    records = [
        b"",
        b"\x00",
        b"{}",
        *(json.dumps({"n": i, "note": "x" * (i % 50)}).encode() for i in range(2000)),
        rng.randbytes(CHUNK_BYTES - 4),  # with its length prefix, exactly one chunk
        rng.randbytes(CHUNK_BYTES),
        rng.randbytes(CHUNK_BYTES + 1),
        b"",
        rng.randbytes(3 * CHUNK_BYTES + 17),  # over several chunks
        bytes(2 * CHUNK_BYTES),  # compresses to almost nothing
        b"y",
    ]
    path = tmp_path / "backup.tmbk"
    with path.open("wb") as out:
        summary = write_archive(out, iter(records), KEY, server_version=VERSION, created_at=NOW)
    assert summary.records == len(records)
    assert summary.size == path.stat().st_size
    assert summary.chunks >= 8
    with path.open("rb") as handle:
        reader = ArchiveReader(handle, KEY)
        assert reader.header == summary.header
        assert list(reader) == records


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(st.binary(max_size=300), max_size=25),
    chunk_bytes=st.integers(min_value=1, max_value=96),
)
def test_any_records_round_trip_at_any_chunk_size(records: list[bytes], chunk_bytes: int) -> None:
    data = build(records, chunk_bytes=chunk_bytes)
    assert read_all(data) == records
    assert (
        len(stored_chunks(data)) == (4 * len(records) + sum(map(len, records))) // chunk_bytes + 1
    )


def test_an_empty_archive_is_one_empty_final_chunk() -> None:
    out = io.BytesIO()
    summary = write_archive(out, [], KEY, server_version=VERSION, created_at=NOW)
    assert summary.records == 0
    assert summary.chunks == 1
    assert len(stored_chunks(out.getvalue())) == 1
    assert read_all(out.getvalue()) == []


def test_the_header_is_plaintext_json_with_the_documented_fields() -> None:
    out = io.BytesIO()
    summary = write_archive(
        out, [b"secret vitals"] * 100, KEY, server_version="9.8.7", created_at=NOW
    )
    data = out.getvalue()
    assert data.startswith(b"TELEMED-BACKUP\n")
    line = data[len(MAGIC) : header_end(data)]
    assert line.endswith(b"\n")
    body = json.loads(line)
    assert body["format"] == FORMAT == 1
    assert body["compression"] == "zlib"
    assert body["server_version"] == "9.8.7"
    assert body["created_at"] == "2026-11-29T09:00:00.123Z"
    assert len(body["archive_id"]) == 32
    int(body["archive_id"], 16)
    assert summary.header == ArchiveHeader(
        1, body["archive_id"], datetime(2026, 11, 29, 9, 0, 0, 123000, tzinfo=UTC), "9.8.7", "zlib"
    )
    assert b"secret vitals" not in data
    assert len(data) < 100 * len(b"secret vitals")  # compressed before it was sealed


def test_each_archive_gets_its_own_id_and_nonces() -> None:
    archives = [build([b"same"] * 40, chunk_bytes=8) for _ in range(2)]
    ids = {read_header(io.BytesIO(data)).archive_id for data in archives}
    assert len(ids) == 2
    chunks = [data[c.nonce : c.end] for data in archives for c in stored_chunks(data)]
    nonces = {chunk[:NONCE_BYTES] for chunk in chunks}
    assert len(chunks) == 2 * (40 * 8 // 8 + 1)
    assert len(nonces) == len(chunks)


def test_created_at_is_stored_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    out = io.BytesIO()
    write_archive(out, [], KEY, server_version=VERSION, created_at=NOW.astimezone(paris))
    assert read_header(io.BytesIO(out.getvalue())).created_at == NOW.replace(microsecond=123000)
    assert b'"created_at":"2026-11-29T09:00:00.123Z"' in out.getvalue()


def test_read_header_needs_no_key_and_stops_after_the_header(small: bytes) -> None:
    handle = io.BytesIO(small)
    header = read_header(handle)
    assert header.format == FORMAT
    assert header.server_version == VERSION
    assert handle.tell() == header_end(small)


# streaming -----------------------------------------------------------------------------
class CountingSink:
    def __init__(self) -> None:
        self.size = 0
        self.largest = 0

    def write(self, data: bytes, /) -> int:
        self.size += len(data)
        self.largest = max(self.largest, len(data))
        return len(data)


def test_the_writer_writes_chunks_as_records_come_without_holding_the_archive() -> None:
    sink = CountingSink()
    written_when_asked: list[int] = []
    rng = random.Random(5)

    def records() -> Iterator[bytes]:
        for _ in range(16):  # 4 MiB in all
            written_when_asked.append(sink.size)
            yield rng.randbytes(CHUNK_BYTES // 4)

    summary = write_archive(sink, records(), KEY, server_version=VERSION, created_at=NOW)
    # once 2 MiB were handed over, at least one full chunk was already in the file
    assert written_when_asked[8] > CHUNK_BYTES
    assert written_when_asked[-1] > 3 * CHUNK_BYTES
    assert sink.largest <= MAX_SEALED_BYTES
    assert summary.size == sink.size


class CountingSource:
    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)
        self.read_so_far = 0
        self.largest = 0

    def read(self, size: int, /) -> bytes:
        self.largest = max(self.largest, size)
        data = self._file.read(size)
        self.read_so_far += len(data)
        return data


def test_the_reader_yields_records_before_it_read_the_whole_archive(
    large: bytes, large_records: list[bytes]
) -> None:
    source = CountingSource(large)
    records = read_archive(source, KEY)
    assert next(records) == large_records[0]
    assert source.read_so_far < len(large) // 2
    assert list(records) == large_records[1:]
    assert source.read_so_far == len(large)
    assert source.largest <= MAX_SEALED_BYTES


class TrickleSource:
    """A pipe that hands over at most 7 bytes a read."""

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def read(self, size: int, /) -> bytes:
        return self._file.read(min(size, 7))


class TrickleSink:
    """An unbuffered file that takes at most 5 bytes a write."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes, /) -> int:
        self.data += data[:5]
        return min(len(data), 5)


def test_short_reads_and_writes_are_completed() -> None:
    records = [b"", b"abc" * 100, os.urandom(500)]
    sink = TrickleSink()
    write_archive(sink, records, KEY, server_version=VERSION, created_at=NOW)
    assert list(read_archive(TrickleSource(bytes(sink.data)), KEY)) == records
    assert read_all(bytes(sink.data)) == records


# the writer's own rules ----------------------------------------------------------------
def test_a_writer_that_fails_leaves_an_archive_that_reads_as_truncated() -> None:
    out = io.BytesIO()

    def back_up() -> None:
        with ArchiveWriter(out, KEY, server_version=VERSION, created_at=NOW) as writer:
            writer.add(b"one")
            writer.add(os.urandom(CHUNK_BYTES + 10))  # one chunk is out
            raise RuntimeError("the store went away")

    with pytest.raises(RuntimeError, match="the store went away"):
        back_up()
    got, exc = read_until_refused(out.getvalue())
    assert isinstance(exc, Truncated)
    assert str(exc).startswith("the archive ends after chunk 0 ")
    assert "before its final chunk" in str(exc)
    # chunk 0 opens only as a non-final chunk, and nothing follows it: refused, unread
    assert got == []


def test_a_finished_writer_takes_nothing_more() -> None:
    writer = ArchiveWriter(io.BytesIO(), KEY, server_version=VERSION, created_at=NOW)
    assert isinstance(writer.finish(), ArchiveSummary)
    with pytest.raises(ArchiveError, match="after finish"):
        writer.add(b"late")
    with pytest.raises(ArchiveError, match="already finished"):
        writer.finish()


def test_the_writer_refuses_a_naive_time_and_an_oversized_chunk() -> None:
    with pytest.raises(ArchiveError, match="created_at: must be timezone-aware"):
        ArchiveWriter(
            io.BytesIO(), KEY, server_version=VERSION, created_at=NOW.replace(tzinfo=None)
        )
    with pytest.raises(ArchiveError, match="chunk_bytes"):
        ArchiveWriter(
            io.BytesIO(), KEY, server_version=VERSION, created_at=NOW, chunk_bytes=CHUNK_BYTES + 1
        )


def test_records_are_read_once(small: bytes) -> None:
    reader = ArchiveReader(io.BytesIO(small), KEY)
    assert list(reader) == small_records()
    with pytest.raises(ArchiveError, match="once only"):
        iter(reader)


def test_a_key_of_the_wrong_size_is_refused_before_anything_is_written() -> None:
    out = io.BytesIO()
    with pytest.raises(BackupKeyError, match="16 bytes, but a backup key is 32 bytes"):
        ArchiveWriter(out, KEY[:16], server_version=VERSION, created_at=NOW)  # not AES-128
    assert out.getvalue() == b""
    with pytest.raises(BackupKeyError, match="16 bytes"):
        ArchiveReader(io.BytesIO(build([])), KEY[:16])


# the wrong key, an altered header ------------------------------------------------------
def test_the_wrong_key_is_told_at_the_first_chunk_and_nothing_is_read(large: bytes) -> None:
    got, exc = read_until_refused(large, OTHER_KEY)
    assert got == []
    assert type(exc) is WrongKey
    assert str(exc) == (
        "chunk 0 does not open: this is not the backup key the archive was written with, "
        "or the archive's start (its header or first chunk) was altered"
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"server_version":"0.1.0"', b'"server_version":"0.1.1"'),
        (b'"created_at":"2026-11-29T09:00:00.123Z"', b'"created_at":"2026-11-28T09:00:00.123Z"'),
        (b'"format":1,', b'"format":1 ,'),  # the same JSON, other bytes
    ],
)
def test_an_altered_header_field_fails_the_first_chunk(
    small: bytes, old: bytes, new: bytes
) -> None:
    assert small.count(old) == 1
    altered = small.replace(old, new)
    read_header(io.BytesIO(altered))  # still a well-formed header
    got, exc = read_until_refused(altered)
    assert got == []
    assert type(exc) is WrongKey
    assert "or the archive's start (its header or first chunk) was altered" in str(exc)


def test_an_altered_archive_id_fails_the_first_chunk(small: bytes) -> None:
    archive_id = read_header(io.BytesIO(small)).archive_id.encode()
    other = bytes(reversed(archive_id))
    got, exc = read_until_refused(small.replace(archive_id, other))
    assert (got, type(exc)) == ([], WrongKey)


def test_every_flipped_header_byte_is_refused_before_any_record(small: bytes) -> None:
    for offset in range(header_end(small)):
        for mask in (0x01, 0x20, 0x80):
            got, exc = read_until_refused(flip(small, offset, mask))
            assert got == [], offset
            if offset < len(MAGIC):
                assert type(exc) is NotAnArchive, (offset, exc)
            else:
                assert type(exc) in (NotAnArchive, NewerFormat, WrongKey, Truncated), (offset, exc)


# flipped bytes in the chunks -----------------------------------------------------------
def records_before(records: list[bytes], chunk_index: int, chunk_bytes: int) -> int:
    """How many records lie wholly in the chunks before `chunk_index`."""
    stream = 0
    count = 0
    for record in records:
        stream += 4 + len(record)
        if stream > chunk_index * chunk_bytes:
            break
        count += 1
    return count


def test_every_flipped_chunk_byte_is_refused(small: bytes) -> None:
    records = small_records()
    chunks = stored_chunks(small)
    assert len(chunks) >= 12
    for index, chunk in enumerate(chunks):
        expected = records[: records_before(records, index, SMALL_CHUNK)]
        for offset in range(chunk.start, chunk.end):
            for mask in (0x01, 0x80):
                got, exc = read_until_refused(flip(small, offset, mask))
                # never a record of the flipped chunk, nor of any after it
                assert got == expected[: len(got)], (index, offset)
                if offset < chunk.nonce:  # the length field
                    assert isinstance(exc, REFUSALS), (offset, exc)
                elif index == 0:
                    assert type(exc) is WrongKey, (offset, exc)
                else:
                    assert type(exc) is Tampered, (offset, exc)
                    assert f"chunk {index} (at byte {chunk.start}) does not open" in str(exc)
                    assert got == expected


def test_a_record_is_not_yielded_before_its_chunk_passed_its_tag() -> None:
    # 60-byte records: with their length prefix, one record fills one 64-byte chunk
    records = [bytes([i]) * 60 for i in range(8)]
    data = build(records, chunk_bytes=SMALL_CHUNK)
    chunks = stored_chunks(data)
    assert len(chunks) == 9  # and a final, empty one
    for index, chunk in enumerate(chunks[:-1]):
        got, exc = read_until_refused(flip(data, chunk.end - 1))  # the tag's last byte
        assert got == records[:index]
        assert type(exc) is (WrongKey if index == 0 else Tampered)


def test_a_record_over_several_chunks_waits_for_its_last_chunk() -> None:
    # the record stream: a at 0-13, b at 14-217 (chunks 0 to 3), c at 218-321 (3 to 5)
    records = [b"a" * 10, b"b" * 200, b"c" * 100]
    data = build(records, chunk_bytes=SMALL_CHUNK)
    chunks = stored_chunks(data)
    assert len(chunks) == 6
    for index in (1, 2, 3):
        got, exc = read_until_refused(flip(data, chunks[index].end - 1))
        assert got == [b"a" * 10]
        assert type(exc) is Tampered
    for index in (4, 5):
        got, exc = read_until_refused(flip(data, chunks[index].end - 1))
        assert got == records[:2]
        assert type(exc) is Tampered


def test_flipped_bytes_in_full_size_chunks_are_refused(
    large: bytes, large_records: list[bytes]
) -> None:
    chunks = stored_chunks(large)
    assert len(chunks) == 4
    for index, chunk in enumerate(chunks):
        middle = (chunk.nonce + NONCE_BYTES + chunk.end) // 2
        for offset in (chunk.nonce, middle, chunk.end - TAG_BYTES, chunk.end - 1):
            got, exc = read_until_refused(flip(large, offset))
            assert type(exc) is (WrongKey if index == 0 else Tampered), (index, offset)
            assert got == large_records[: len(got)]
            assert sum(4 + len(r) for r in got) <= index * CHUNK_BYTES
        for offset in range(chunk.start, chunk.nonce):
            got, exc = read_until_refused(flip(large, offset, 0xFF))
            assert isinstance(exc, REFUSALS), (index, offset)


# truncation ----------------------------------------------------------------------------
def test_an_archive_cut_at_any_offset_is_truncated(small: bytes) -> None:
    records = small_records()
    for cut in range(len(small)):
        got, exc = read_until_refused(small[:cut])
        assert type(exc) is Truncated, (cut, exc)
        assert got == records[: len(got)], cut
        if cut < header_end(small):
            assert got == []
            with pytest.raises(Truncated, match="empty|ends inside its header"):
                read_header(io.BytesIO(small[:cut]))


def test_a_full_size_archive_cut_where_chunks_meet_is_truncated(
    large: bytes, large_records: list[bytes]
) -> None:
    chunks = stored_chunks(large)
    cuts = {0, 1, len(MAGIC) - 1, len(MAGIC), len(MAGIC) + 1, header_end(large) - 1}
    for chunk in chunks:
        cuts |= {chunk.start, chunk.start + 1, chunk.start + 3, chunk.nonce, chunk.nonce + 1}
        cuts |= {(chunk.nonce + chunk.end) // 2, chunk.end - TAG_BYTES, chunk.end - 1}
    cuts.discard(len(large))
    assert chunks[-1].start in cuts  # just before the final chunk
    for cut in sorted(cuts):
        got, exc = read_until_refused(large[:cut])
        assert type(exc) is Truncated, (cut, exc)
        assert got == large_records[: len(got)]
    got, exc = read_until_refused(large[: chunks[-1].start])
    assert str(exc) == (
        f"the archive ends after chunk {len(chunks) - 2} (at byte {chunks[-1].start}), "
        "before its final chunk: it was cut short"
    )
    got, exc = read_until_refused(large[: chunks[1].start + 100])
    assert str(exc) == (
        f"chunk 1 (at byte {chunks[1].start}) is cut short: 96 of "
        f"{chunks[1].end - chunks[1].nonce} bytes: the archive was cut short (or its length "
        "field altered)"
    )


def test_an_archive_cut_after_its_header_says_so(small: bytes) -> None:
    _, exc = read_until_refused(small[: header_end(small)])
    assert type(exc) is Truncated
    assert "ends after its header" in str(exc)
    _, exc = read_until_refused(b"")
    assert str(exc) == "the archive is empty (0 bytes): it was cut short, or never written"


# chunks moved, repeated, appended ------------------------------------------------------
def pieces(data: bytes) -> tuple[bytes, list[bytes]]:
    chunks = stored_chunks(data)
    return data[: header_end(data)], [data[c.start : c.end] for c in chunks]


def test_reordered_chunks_are_tampered(small: bytes) -> None:
    header, chunks = pieces(small)
    swapped = [chunks[0], chunks[2], chunks[1], *chunks[3:]]
    got, exc = read_until_refused(header + b"".join(swapped))
    assert type(exc) is Tampered
    assert "chunk 1 " in str(exc)
    assert "reordered" in str(exc)
    got, exc = read_until_refused(header + b"".join([chunks[1], chunks[0], *chunks[2:]]))
    assert (got, type(exc)) == ([], WrongKey)


def test_a_duplicated_chunk_is_tampered(small: bytes) -> None:
    header, chunks = pieces(small)
    got, exc = read_until_refused(header + b"".join([*chunks[:3], chunks[2], *chunks[3:]]))
    assert type(exc) is Tampered
    assert "chunk 3 " in str(exc)


def test_a_dropped_chunk_is_tampered(small: bytes) -> None:
    header, chunks = pieces(small)
    got, exc = read_until_refused(header + b"".join([*chunks[:4], *chunks[5:]]))
    assert type(exc) is Tampered
    assert "chunk 4 " in str(exc)


def test_a_final_chunk_moved_forward_is_tampered(small: bytes) -> None:
    header, chunks = pieces(small)
    _, exc = read_until_refused(header + b"".join([*chunks[:3], chunks[-1]]))
    assert type(exc) is Tampered
    assert "chunk 3 " in str(exc)


def test_a_chunk_from_another_archive_under_the_same_key_is_tampered(small: bytes) -> None:
    header, chunks = pieces(small)
    _, theirs = pieces(build(small_records(), chunk_bytes=SMALL_CHUNK))
    assert theirs[2] != chunks[2]
    _, exc = read_until_refused(header + b"".join([*chunks[:2], theirs[2], *chunks[3:]]))
    assert type(exc) is Tampered
    assert "chunk 2 " in str(exc)


@pytest.mark.parametrize("extra", [b"\x00", b"junk", b"\x00" * 200])
def test_data_after_the_final_chunk_is_tampered(small: bytes, extra: bytes) -> None:
    got, exc = read_until_refused(small + extra)
    assert type(exc) is Tampered
    last = len(stored_chunks(small)) - 1
    assert str(exc) == (
        f"data after the end: bytes follow the final chunk (chunk {last}) from byte {len(small)} on"
    )


def test_a_repeated_final_chunk_or_a_second_archive_after_the_end_is_tampered(
    small: bytes,
) -> None:
    header, chunks = pieces(small)
    for data in (small + chunks[-1], small + small):
        _, exc = read_until_refused(data)
        assert type(exc) is Tampered
        assert str(exc).startswith("data after the end")


def test_an_impossible_chunk_length_is_tampered(small: bytes) -> None:
    start = header_end(small)
    for length in (0, NONCE_BYTES + TAG_BYTES - 1, MAX_SEALED_BYTES + 1, 0xFFFFFFFF):
        altered = small[:start] + length.to_bytes(4, "big") + small[start + 4 :]
        _, exc = read_until_refused(altered)
        assert type(exc) is Tampered
        assert f"says it is {length} bytes long" in str(exc)


# not an archive, a newer format --------------------------------------------------------
def test_a_newer_format_asks_for_an_upgrade() -> None:
    data = with_header(header_body(format=2, compression="zstd")) + b"\x00" * 40
    message = "archive format 2 is newer than this server reads (1): upgrade the server first"
    with pytest.raises(NewerFormat) as caught:
        read_header(io.BytesIO(data))
    assert str(caught.value) == message
    with pytest.raises(NewerFormat, match="upgrade the server first"):
        ArchiveReader(io.BytesIO(data), KEY)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"PK\x03\x04 a zip file" + bytes(100), "does not start with TELEMED-BACKUP"),
        (b'{"format": 1}\n', "does not start with TELEMED-BACKUP"),
        (b"TELEMED-BACKUP\r\n{}\n", "does not start with TELEMED-BACKUP"),
        (with_header("not json"), "header line is not valid JSON"),
        (with_header("[1, 2]"), "header line is not a JSON object"),
        (MAGIC + b"\xff\xfe{}\n", "header line is not valid JSON"),
        (MAGIC + b"{" + b" " * 70_000, "header line is longer than 65536 bytes"),
        (with_header(header_body(format=None)), "header has no field format"),
        (with_header(header_body(format="1")), "header field format is not an integer"),
        (with_header(header_body(format=True)), "header field format is not an integer"),
        (with_header(header_body(format=0)), "header field format is 0"),
        (with_header(header_body(archive_id=None)), "header has no field archive_id"),
        (with_header(header_body(archive_id="42")), "archive_id is not 32 hex digits"),
        (with_header(header_body(created_at="yesterday")), "created_at is not an ISO 8601"),
        (with_header(header_body(created_at="2026-11-29T09:00:00")), "created_at has no time"),
        (with_header(header_body(server_version=7)), "server_version is not a string"),
        (with_header(header_body(compression="gzip")), "compression is 'gzip'"),
    ],
)
def test_what_is_not_an_archive_is_told_so(data: bytes, says: str) -> None:
    with pytest.raises(NotAnArchive, match="^not a telemed backup: ") as caught:
        read_header(io.BytesIO(data))
    assert says in str(caught.value)
    with pytest.raises(NotAnArchive):
        ArchiveReader(io.BytesIO(data), KEY)


def test_a_valid_header_may_carry_fields_this_server_does_not_know() -> None:
    header = read_header(io.BytesIO(with_header(header_body(note="from the future"))))
    assert header.archive_id == "0123456789abcdef0123456789abcdef"


def test_the_errors_are_distinct_archive_errors() -> None:
    classes = (NotAnArchive, NewerFormat, WrongKey, Tampered, Truncated)
    assert len(set(classes)) == 5
    for cls in classes:
        assert issubclass(cls, ArchiveError)
        assert not any(issubclass(cls, other) for other in classes if other is not cls)
    assert issubclass(ArchiveError, TelemedError)
    assert issubclass(BackupKeyError, TelemedError)


# keys ----------------------------------------------------------------------------------
def test_a_new_key_is_32_random_bytes() -> None:
    first, second = new_backup_key(), new_backup_key()
    assert len(first) == len(second) == 32
    assert first != second


def test_a_key_text_round_trips_and_is_recognizable() -> None:
    key = new_backup_key()
    text = encode_key(key)
    assert KEY_PREFIX == "tmbk1:"
    assert text.startswith(KEY_PREFIX)
    assert len(text) == len("tmbk1:") + 44
    assert decode_key(text) == key
    assert decode_key(f"  {text}\n") == key  # as pasted


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "does not start with 'tmbk1:'"),
        ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "does not start with 'tmbk1:'"),
        ("tmbk2:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "does not start with 'tmbk1:'"),
        ("kek-1=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "does not start with 'tmbk1:'"),
        ("tmbk1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8", "is not valid base64"),
        ("tmbk1:AAECAwQFBgcICQoLDA0O DxAREhMUFRYXGBkaGxwdHh8=", "is not valid base64"),
        ("tmbk1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8é", "is not valid base64"),
        ("tmbk1:AAECAwQFBgcICQoLDA0ODw==", "decodes to 16 bytes, but a backup key is 32"),
        ("tmbk1:", "decodes to 0 bytes"),
    ],
)
def test_a_key_text_that_is_not_a_backup_key_is_refused(text: str, says: str) -> None:
    with pytest.raises(BackupKeyError, match="^backup key: ") as caught:
        decode_key(text)
    assert says in str(caught.value)
    assert "AAECAwQFBgcICQoLDA0O" not in str(caught.value)  # never shows the key


def test_encode_key_refuses_a_key_of_the_wrong_size() -> None:
    with pytest.raises(BackupKeyError, match="31 bytes"):
        encode_key(KEY[:31])


def write_key_file(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_key_file_readable_by_its_owner_only_is_loaded(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "backup.key", encode_key(KEY) + "\n", 0o600)
    assert load_key_file(path) == KEY
    assert load_key_file(str(path)) == KEY
    assert load_key_file(write_key_file(tmp_path / "ro.key", encode_key(KEY), 0o400)) == KEY


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_a_key_file_others_may_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path / "backup.key", encode_key(KEY), mode)
    with pytest.raises(BackupKeyError) as caught:
        load_key_file(path)
    assert str(caught.value) == (
        f"backup key file {path}: the group or others may access it (mode {mode:o}); "
        f"run chmod 600 {path}"
    )


def test_a_missing_or_malformed_key_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.key"
    with pytest.raises(BackupKeyError, match=f"^backup key file {re.escape(str(missing))} not"):
        load_key_file(missing)
    wrong = write_key_file(tmp_path / "records.json", '{"keys": []}', 0o600)
    with pytest.raises(BackupKeyError) as caught:
        load_key_file(wrong)
    assert str(caught.value).startswith(
        f"backup key file {wrong}: backup key: does not start with 'tmbk1:'"
    )
    binary = tmp_path / "binary.key"
    binary.write_bytes(b"\xff" * 32)
    binary.chmod(0o600)
    with pytest.raises(BackupKeyError, match="not plain ASCII text"):
        load_key_file(binary)
    with pytest.raises(BackupKeyError, match="cannot read it"):
        load_key_file(tmp_path)  # a folder
