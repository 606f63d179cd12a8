"""The store contract for sealed consultation records, their data keys, key checks and
break-glass grants, against every adapter (see conftest)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from telemed.errors import Conflict
from telemed.records import (
    BreakGlass,
    RecordHeader,
    SealedAttachment,
    SealedVersion,
    VersionKind,
)
from telemed.sealing import WrappedKey
from telemed.store import Store

from .conftest import NX, Backend

# Where nx-27017 departs from MongoDB's documented behaviour.
NX_BINARY_EQUALITY = (
    "nx-27017 matches no document on equality with a BSON binary value (find "
    "{wrapped: b'...'} finds nothing, so every compare-and-set on the wrapped bytes "
    "misses); MongoDB compares binary data by subtype, length and bytes"
)

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
# every byte value, NULs and high bytes included, as sealed values are
ALL_BYTES = bytes(range(256))


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def header(
    id: str = "r1", *, patient: str = "p1", created_at: datetime = T0, rev: int = 1
) -> RecordHeader:
    return RecordHeader(
        id=id, patient_id=patient, clinician_id="c1", created_at=created_at, rev=rev
    )


def version(
    id: str = "v1",
    *,
    record: str = "r1",
    number: int = 1,
    kind: VersionKind = VersionKind.NOTE,
    fields: dict[str, bytes] | None = None,
) -> SealedVersion:
    return SealedVersion(
        id=id,
        record_id=record,
        number=number,
        patient_id="p1",
        kind=kind,
        author_id="c1",
        created_at=at(number * 1000 + 7),
        key_id=f"k-{id}",
        fields={"soap": b"\x01sealed-" + id.encode()} if fields is None else fields,
    )


def attachment(
    id: str, *, record: str = "r1", created_at: datetime = T0, body: bytes = b"\x01body"
) -> SealedAttachment:
    return SealedAttachment(
        id=id,
        record_id=record,
        patient_id="p1",
        author_id="c1",
        created_at=created_at,
        content_type="image/png",
        size=len(body),
        key_id=f"k-{id}",
        name=b"\x01name\x00" + id.encode(),
        body=body,
    )


def key(
    id: str, *, patient: str = "p1", kek: str = "kek-a", wrapped: bytes | None = None
) -> WrappedKey:
    return WrappedKey(
        id=id,
        patient_id=patient,
        kek_id=kek,
        wrapped=(b"\x00\xff" + kek.encode() + id.encode()) if wrapped is None else wrapped,
        created_at=at(250),
    )


def grant(
    id: str, *, admin: str = "a1", patient: str = "p1", opened_at: datetime = T0
) -> BreakGlass:
    return BreakGlass(
        id=id,
        admin_id=admin,
        patient_id=patient,
        reason="unconscious in the emergency room",
        opened_at=opened_at,
        expires_at=opened_at + timedelta(hours=4),
    )


# record headers ---------------------------------------------------------------------
async def test_a_record_header_reads_back_whole(store: Store) -> None:
    signed = RecordHeader(
        id="r1",
        patient_id="p1",
        clinician_id="c1",
        created_at=at(123),
        rev=3,
        versions=("v1", "v2"),
        signed_version=2,
        signed_by="c1",
        signed_at=at(4567),
    )
    await store.add_record(signed)
    await store.add_record(header("r2"))
    assert await store.get_record("r1") == signed
    assert await store.get_record("r2") == header("r2")
    assert await store.get_record("nope") is None


async def test_record_ids_are_unique(store: Store) -> None:
    await store.add_record(header("r1"))
    with pytest.raises(Conflict):
        await store.add_record(header("r1", patient="p2"))
    assert await store.get_record("r1") == header("r1")


async def test_replace_record_compares_and_sets_on_rev(store: Store) -> None:
    await store.add_record(header("r1"))
    second = dataclasses.replace(header("r1"), rev=2, versions=("v1",))
    assert await store.replace_record(second)
    assert await store.get_record("r1") == second
    # written against rev 1 by someone who had not seen rev 2: refused, nothing changed
    stale = dataclasses.replace(header("r1"), rev=2, versions=("v9",), signed_version=1)
    assert not await store.replace_record(stale)
    assert await store.get_record("r1") == second
    # a rev that skips ahead does not match either
    assert not await store.replace_record(dataclasses.replace(second, rev=4))
    assert await store.get_record("r1") == second
    # nor does an unknown record: replace never inserts
    assert not await store.replace_record(header("r9", rev=2))
    assert await store.get_record("r9") is None
    third = dataclasses.replace(
        second, rev=3, signed_version=1, signed_by="c1", signed_at=at(60_000)
    )
    assert await store.replace_record(third)
    assert await store.get_record("r1") == third


async def test_replace_record_stores_the_header_whole(store: Store) -> None:
    await store.add_record(header("r1"))
    await store.add_record(header("r2", created_at=at(1)))
    moved = RecordHeader(
        id="r1",
        patient_id="p2",
        clinician_id="c2",
        created_at=at(5),
        rev=2,
        versions=("v1", "v2", "v3"),
        signed_version=3,
        signed_by="c2",
        signed_at=at(9_999),
    )
    assert await store.replace_record(moved)
    assert await store.get_record("r1") == moved
    assert await store.list_records("p1") == [header("r2", created_at=at(1))]
    assert await store.list_records("p2") == [moved]


async def test_only_one_of_two_racing_record_writers_wins(store: Store) -> None:
    await store.add_record(header("r1"))
    a = dataclasses.replace(header("r1"), rev=2, versions=("va",))
    b = dataclasses.replace(header("r1"), rev=2, versions=("vb",))
    results = await asyncio.gather(store.replace_record(a), store.replace_record(b))
    assert sorted(results) == [False, True]
    assert await store.get_record("r1") == (a if results[0] else b)


async def test_records_list_by_patient_in_creation_order_then_id(store: Store) -> None:
    await store.add_record(header("r3", created_at=at(2)))
    await store.add_record(header("r2", created_at=at(1)))
    await store.add_record(header("r1", created_at=at(2)))
    await store.add_record(header("r0", created_at=at(3)))
    await store.add_record(header("r4", patient="p2", created_at=at(0)))
    assert [h.id for h in await store.list_records("p1")] == ["r2", "r1", "r3", "r0"]
    assert await store.list_records("p2") == [header("r4", patient="p2", created_at=at(0))]
    assert await store.list_records("nobody") == []


# versions -----------------------------------------------------------------------------
async def test_a_version_reads_back_whole_with_its_bytes_exact(store: Store) -> None:
    fields = {
        "soap": ALL_BYTES,
        "diagnoses": b"\x00",
        "prescriptions": b"\x00\x00\xff\xfe" * 1000,
        "chat": b"",
    }
    note = dataclasses.replace(version("v1", fields=fields), attachment_ids=("att-2", "att-1"))
    addendum = version("v2", number=2, kind=VersionKind.ADDENDUM, fields={"addendum": b"\xff" * 33})
    await store.add_record_version(note)
    await store.add_record_version(addendum)
    got = await store.record_versions(["v1", "v2"])
    assert got == [note, addendum]
    assert dict(got[0].fields) == fields
    assert all(type(v) is bytes for v in got[0].fields.values())
    assert got[1].kind is VersionKind.ADDENDUM


async def test_a_version_without_fields_reads_back(store: Store) -> None:
    empty = version("v1", fields={})
    await store.add_record_version(empty)
    assert await store.record_versions(["v1"]) == [empty]


async def test_version_ids_are_unique(store: Store) -> None:
    await store.add_record_version(version("v1"))
    with pytest.raises(Conflict):
        await store.add_record_version(version("v1", number=2, fields={"soap": b"other"}))
    assert await store.record_versions(["v1"]) == [version("v1")]


async def test_record_versions_come_in_the_order_asked_skipping_unknown_ids(
    store: Store,
) -> None:
    for n in (1, 2, 3):
        await store.add_record_version(version(f"v{n}", number=n))
    got = await store.record_versions(["v3", "nope", "v1", "v2"])
    assert [v.id for v in got] == ["v3", "v1", "v2"]
    assert got == [version("v3", number=3), version("v1", number=1), version("v2", number=2)]
    assert await store.record_versions(["nope"]) == []
    assert await store.record_versions([]) == []


# attachments --------------------------------------------------------------------------
async def test_an_attachment_reads_back_with_its_bytes_exact(store: Store) -> None:
    body = ALL_BYTES * 4096  # 1 MiB of every byte value
    a = attachment("att-1", body=body, created_at=at(321))
    await store.add_attachment(a)
    got = await store.get_attachment("att-1")
    assert got == a
    assert got is not None
    assert type(got.body) is bytes
    assert type(got.name) is bytes
    assert got.body == body
    assert await store.get_attachment("nope") is None


async def test_attachment_ids_are_unique(store: Store) -> None:
    await store.add_attachment(attachment("att-1"))
    with pytest.raises(Conflict):
        await store.add_attachment(attachment("att-1", body=b"other"))
    assert await store.get_attachment("att-1") == attachment("att-1")


async def test_attachments_list_by_record_in_creation_order_then_id(store: Store) -> None:
    await store.add_attachment(attachment("b", created_at=at(2)))
    await store.add_attachment(attachment("c", created_at=at(1)))
    await store.add_attachment(attachment("a", created_at=at(2)))
    await store.add_attachment(attachment("d", record="r2", created_at=at(0)))
    assert [a.id for a in await store.list_attachments("r1")] == ["c", "a", "b"]
    assert await store.list_attachments("r2") == [attachment("d", record="r2", created_at=at(0))]
    assert await store.list_attachments("nope") == []


# data keys ----------------------------------------------------------------------------
async def test_data_keys_read_back_by_id(store: Store) -> None:
    k1 = dataclasses.replace(key("k1"), wrapped=ALL_BYTES, format=2)
    await store.add_data_key(k1)
    await store.add_data_key(key("k2", patient="p2"))
    assert await store.get_data_keys(["k1", "k2", "nope"]) == {
        "k1": k1,
        "k2": key("k2", patient="p2"),
    }
    got = await store.get_data_keys({"k1"})
    assert got == {"k1": k1}
    assert type(got["k1"].wrapped) is bytes
    assert await store.get_data_keys([]) == {}
    assert await store.get_data_keys(["nope"]) == {}


async def test_data_key_ids_are_unique(store: Store) -> None:
    await store.add_data_key(key("k1"))
    with pytest.raises(Conflict):
        await store.add_data_key(key("k1", kek="kek-b"))
    assert await store.get_data_keys(["k1"]) == {"k1": key("k1")}


async def test_data_keys_under_a_kek_page_by_id(store: Store) -> None:
    for n in (5, 1, 4, 2, 3):
        await store.add_data_key(key(f"k{n}"))
    await store.add_data_key(key("k0", kek="kek-b"))
    await store.add_data_key(key("k6", kek="kek-b"))
    assert [k.id for k in await store.data_keys_under("kek-a")] == ["k1", "k2", "k3", "k4", "k5"]
    first = await store.data_keys_under("kek-a", limit=2)
    assert first == [key("k1"), key("k2")]
    second = await store.data_keys_under("kek-a", after=first[-1].id, limit=2)
    assert [k.id for k in second] == ["k3", "k4"]
    third = await store.data_keys_under("kek-a", after=second[-1].id, limit=2)
    assert [k.id for k in third] == ["k5"]
    assert await store.data_keys_under("kek-a", after="k5", limit=2) == []
    # `after` need not be a stored id
    assert [k.id for k in await store.data_keys_under("kek-a", after="k2x")] == ["k3", "k4", "k5"]
    assert [k.id for k in await store.data_keys_under("kek-b")] == ["k0", "k6"]
    assert await store.data_keys_under("kek-z") == []
    assert await store.data_keys_under("kek-a", limit=0) == []


async def test_rewrap_changes_only_keys_still_wrapped_as_read(
    backend: Backend, store: Store
) -> None:
    if backend.name == NX:
        pytest.skip(NX_BINARY_EQUALITY)
    for n in (1, 2, 3, 4):
        await store.add_data_key(key(f"k{n}"))
    read = {k.id: k for k in await store.data_keys_under("kek-a")}

    def rewrapped(k: WrappedKey) -> WrappedKey:
        return dataclasses.replace(
            k, kek_id="kek-b", wrapped=b"\xfe\x00new" + k.id.encode(), format=2
        )

    # another rotation re-wrapped k2 after it was read (same KEK, other bytes)
    other = dataclasses.replace(read["k2"], wrapped=b"\x00other")
    assert await store.rewrap_data_keys([(read["k2"], other)]) == 1
    changes = [(read[i], rewrapped(read[i])) for i in ("k1", "k2", "k3")]
    # and k4's "old" names the wrong KEK: not the stored key either
    changes.append((dataclasses.replace(read["k4"], kek_id="kek-x"), rewrapped(read["k4"])))
    assert await store.rewrap_data_keys(changes) == 2
    assert await store.get_data_keys(["k1", "k2", "k3", "k4"]) == {
        "k1": rewrapped(read["k1"]),
        "k2": other,
        "k3": rewrapped(read["k3"]),
        "k4": read["k4"],
    }
    assert [k.id for k in await store.data_keys_under("kek-b")] == ["k1", "k3"]
    assert [k.id for k in await store.data_keys_under("kek-a")] == ["k2", "k4"]
    assert await store.count_data_keys() == {"kek-a": 2, "kek-b": 2}
    # the same changes again: nothing is still `old`
    assert await store.rewrap_data_keys(changes) == 0
    assert await store.rewrap_data_keys([]) == 0
    # a key that is gone is not brought back
    gone = key("k9", patient="p9")
    assert await store.rewrap_data_keys([(gone, rewrapped(gone))]) == 0
    assert await store.get_data_keys(["k9"]) == {}


async def test_rewrapping_keys_that_are_gone_changes_nothing(store: Store) -> None:
    await store.add_data_key(key("k1"))
    gone = [key("k8"), key("k9", patient="p2")]
    changes = [(k, dataclasses.replace(k, kek_id="kek-b", wrapped=b"\x00new")) for k in gone]
    assert await store.rewrap_data_keys(changes) == 0
    assert await store.get_data_keys(["k1", "k8", "k9"]) == {"k1": key("k1")}
    assert await store.count_data_keys() == {"kek-a": 1}


async def test_data_keys_are_counted_by_kek(store: Store) -> None:
    assert await store.count_data_keys() == {}
    for n in (1, 2, 3):
        await store.add_data_key(key(f"k{n}"))
    await store.add_data_key(key("k4", kek="kek-b", patient="p2"))
    assert await store.count_data_keys() == {"kek-a": 3, "kek-b": 1}
    await store.delete_data_keys("p2")
    assert await store.count_data_keys() == {"kek-a": 3}  # a KEK that wraps none is absent


async def test_deleting_a_patients_data_keys_leaves_the_others(store: Store) -> None:
    await store.add_data_key(key("k1"))
    await store.add_data_key(key("k2", kek="kek-b"))
    await store.add_data_key(key("k3", patient="p2"))
    await store.add_data_key(key("k4", patient="p3", kek="kek-b"))
    assert await store.delete_data_keys("p1") == 2
    assert await store.get_data_keys(["k1", "k2", "k3", "k4"]) == {
        "k3": key("k3", patient="p2"),
        "k4": key("k4", patient="p3", kek="kek-b"),
    }
    assert [k.id for k in await store.data_keys_under("kek-a")] == ["k3"]
    assert await store.delete_data_keys("p1") == 0
    assert await store.delete_data_keys("nobody") == 0
    # nothing of a destroyed key is left behind to block its id
    await store.add_data_key(key("k1"))
    assert await store.get_data_keys(["k1"]) == {"k1": key("k1")}


# key checks ---------------------------------------------------------------------------
async def test_a_key_check_is_kept_once(store: Store) -> None:
    assert await store.key_checks() == {}
    assert await store.put_key_check("kek-a", b"\x00check-a\xff")
    assert not await store.put_key_check("kek-a", b"another")  # the first one stays
    assert await store.put_key_check("kek-b", ALL_BYTES)
    checks = await store.key_checks()
    assert checks == {"kek-a": b"\x00check-a\xff", "kek-b": ALL_BYTES}
    assert all(type(v) is bytes for v in checks.values())


async def test_a_deleted_key_check_can_be_put_again(store: Store) -> None:
    assert await store.put_key_check("kek-a", b"old")
    assert await store.put_key_check("kek-b", b"b")
    await store.delete_key_check("kek-a")
    assert await store.key_checks() == {"kek-b": b"b"}
    await store.delete_key_check("kek-a")  # absent: nothing to do
    await store.delete_key_check("nope")
    assert await store.put_key_check("kek-a", b"new")
    assert await store.key_checks() == {"kek-a": b"new", "kek-b": b"b"}


async def test_of_two_racing_key_checks_one_is_kept(store: Store) -> None:
    results = await asyncio.gather(
        store.put_key_check("kek-a", b"first"), store.put_key_check("kek-a", b"second")
    )
    assert sorted(results) == [False, True]
    assert await store.key_checks() == {"kek-a": b"first" if results[0] else b"second"}


# break-glass --------------------------------------------------------------------------
async def test_a_break_glass_grant_reads_back_whole(store: Store) -> None:
    g = dataclasses.replace(grant("g1", opened_at=at(1_234)), expires_at=at(3_600_567))
    await store.add_break_glass(g)
    assert await store.break_glass_grants() == [g]
    with pytest.raises(Conflict):
        await store.add_break_glass(grant("g1", patient="p2"))
    assert await store.break_glass_grants() == [g]


async def test_break_glass_grants_filter_and_come_newest_first(store: Store) -> None:
    await store.add_break_glass(grant("g1", opened_at=at(0)))
    await store.add_break_glass(grant("g2", opened_at=at(5)))
    await store.add_break_glass(grant("g3", opened_at=at(5)))  # a tie: higher id first
    await store.add_break_glass(grant("g4", admin="a2", opened_at=at(3)))
    await store.add_break_glass(grant("g5", patient="p2", opened_at=at(9)))
    await store.add_break_glass(grant("g6", admin="a2", patient="p2", opened_at=at(1)))

    async def ids(**filters: str) -> list[str]:
        return [g.id for g in await store.break_glass_grants(**filters)]

    assert await ids() == ["g5", "g3", "g2", "g4", "g6", "g1"]
    assert await ids(patient_id="p1") == ["g3", "g2", "g4", "g1"]
    assert await ids(admin_id="a2") == ["g4", "g6"]
    assert await ids(patient_id="p2", admin_id="a2") == ["g6"]
    assert await ids(patient_id="p2", admin_id="a1") == ["g5"]
    assert await ids(patient_id="nobody") == []
    assert (await store.break_glass_grants(patient_id="p2"))[0] == grant(
        "g5", patient="p2", opened_at=at(9)
    )
