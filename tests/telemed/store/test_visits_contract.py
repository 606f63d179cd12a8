"""The store contract for video visits, against every adapter (see conftest)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from telemed.errors import Conflict
from telemed.store import Store
from telemed.visits import (
    Guest,
    GuestRole,
    GuestState,
    PreCheck,
    QualitySample,
    Recommendation,
    Transition,
    Visit,
    VisitState,
    secret_hash,
)

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def visit(n: int, *, clinician: str = "c1", patient: str = "p1", at: datetime = T0) -> Visit:
    return Visit(
        id=f"v{n}",
        patient_id=patient,
        clinician_id=clinician,
        scheduled_at=at,
        created_at=T0,
        created_by=clinician,
        link_hash=secret_hash(f"token-{n}"),
        link_expires_at=at + timedelta(hours=24),
        transitions=(Transition(VisitState.SCHEDULED, T0, clinician),),
    )


async def test_a_visit_reads_back_whole(store: Store) -> None:
    full = dataclasses.replace(
        visit(1).move(VisitState.WAITING, T0 + timedelta(minutes=1), "patient"),
        link_claimed_at=T0 + timedelta(seconds=30),
        pass_hash=secret_hash("pass"),
        patient_online=True,
        precheck=PreCheck(True, False, 83.5, 420.0, Recommendation.VIDEO, T0),
        quality=(QualitySample(T0, "patient", 120.0, 1.5, 300.0, 150.0, False),),
    )
    await store.add_visit(full)
    assert await store.get_visit("v1") == full
    assert await store.find_visit_by_link(secret_hash("token-1")) == full
    assert await store.find_visit_by_link(secret_hash("token-2")) is None
    assert await store.get_visit("nope") is None


async def test_ids_and_links_are_unique(store: Store) -> None:
    await store.add_visit(visit(1))
    with pytest.raises(Conflict):
        await store.add_visit(visit(1))
    with pytest.raises(Conflict):
        await store.add_visit(dataclasses.replace(visit(2), link_hash=visit(1).link_hash))


async def test_replace_compares_and_sets_on_the_version(store: Store) -> None:
    await store.add_visit(visit(1))
    waiting = dataclasses.replace(visit(1).move(VisitState.WAITING, T0, "patient"), version=2)
    assert await store.replace_visit(waiting)
    stale = dataclasses.replace(visit(1).move(VisitState.CANCELLED, T0, "c1"), version=2)
    assert not await store.replace_visit(stale)  # someone moved it first
    assert await store.get_visit("v1") == waiting
    assert not await store.replace_visit(dataclasses.replace(visit(9), version=2))


async def test_only_one_of_two_racing_writers_wins(store: Store) -> None:
    await store.add_visit(visit(1))
    a = dataclasses.replace(visit(1).move(VisitState.WAITING, T0, "patient"), version=2)
    b = dataclasses.replace(visit(1).move(VisitState.CANCELLED, T0, "c1"), version=2)
    results = await asyncio.gather(store.replace_visit(a), store.replace_visit(b))
    assert sorted(results) == [False, True]
    assert await store.get_visit("v1") == (a if results[0] else b)


async def test_a_new_link_replaces_the_old_one(store: Store) -> None:
    await store.add_visit(visit(1))
    relinked = dataclasses.replace(visit(1), link_hash=secret_hash("fresh"), version=2)
    assert await store.replace_visit(relinked)
    assert await store.find_visit_by_link(secret_hash("token-1")) is None
    assert await store.find_visit_by_link(secret_hash("fresh")) == relinked


async def test_lists_filter_and_order_by_time_then_id(store: Store) -> None:
    later = T0 + timedelta(hours=1)
    await store.add_visit(visit(3, at=later))
    await store.add_visit(visit(2))
    await store.add_visit(visit(1))
    await store.add_visit(visit(4, clinician="c2", patient="p2"))
    ended = dataclasses.replace(visit(5).move(VisitState.ENDED, T0, "c1"))
    await store.add_visit(ended)
    assert [v.id for v in await store.list_visits()] == ["v1", "v2", "v4", "v5", "v3"]
    assert [v.id for v in await store.list_visits(clinician_id="c1")] == ["v1", "v2", "v5", "v3"]
    assert [v.id for v in await store.list_visits(patient_id="p2")] == ["v4"]
    open_ = await store.list_visits(
        clinician_id="c1", states={VisitState.SCHEDULED, VisitState.WAITING}
    )
    assert [v.id for v in open_] == ["v1", "v2", "v3"]
    assert await store.list_visits(states=set()) == []
    assert [v.id for v in await store.list_visits(states={VisitState.ENDED})] == ["v5"]


def guest(n: int, state: GuestState = GuestState.INVITED) -> Guest:
    return Guest(
        id=f"g{n}",
        role=GuestRole.FAMILY,
        name=f"Guest {n}",
        link_hash=secret_hash(f"guest-{n}"),
        link_expires_at=T0 + timedelta(hours=24),
        invited_at=T0,
        invited_by="c1",
        state=state,
    )


async def test_a_visit_is_found_by_any_of_its_guests_links(store: Store) -> None:
    with_guests = visit(1).with_guest(guest(1)).with_guest(guest(2, GuestState.REMOVED))
    await store.add_visit(with_guests)
    await store.add_visit(visit(2))
    assert await store.find_visit_by_guest_link(secret_hash("guest-1")) == with_guests
    assert await store.find_visit_by_guest_link(secret_hash("guest-2")) == with_guests
    assert await store.find_visit_by_guest_link(secret_hash("guest-3")) is None
    assert await store.find_visit_by_guest_link(secret_hash("token-1")) is None  # the patient's
    assert await store.find_visit_by_link(secret_hash("guest-1")) is None

    invited = dataclasses.replace(with_guests.with_guest(guest(3)), version=2)
    assert await store.replace_visit(invited)
    assert await store.find_visit_by_guest_link(secret_hash("guest-3")) == invited
    assert await store.find_visit_by_guest_link(secret_hash("guest-1")) == invited
    stale = dataclasses.replace(visit(1).with_guest(guest(4)), version=2)
    assert not await store.replace_visit(stale)  # lost the compare and set: nothing changed
    assert await store.find_visit_by_guest_link(secret_hash("guest-4")) is None
    assert await store.get_visit("v1") == invited
