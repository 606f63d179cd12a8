"""The front desk (telemed/reception.py) over a real SQLite store: booking, the link's
single use, the pass of the browser that claimed it, expiry, reissue, the clinician's
moves, and compare-and-set when two processes move one visit at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from telemed.accounts import User
from telemed.audit import Outcome
from telemed.clinic import OPERATOR, Actor, Clinic
from telemed.errors import Forbidden, ValidationError
from telemed.reception import LinkRefused, Reception, VisitPolicy
from telemed.settings import StoreSettings
from telemed.store import Store, open_store
from telemed.visits import Visit, VisitState
from tests.conftest import FakeClock

POLICY = VisitPolicy(link_valid_for=timedelta(hours=24))


@dataclass
class Desk:
    reception: Reception
    store: Store
    clock: FakeClock
    doctor: User
    stranger: User  # a doctor, not on the patient's care team
    patient: User

    @property
    def actor(self) -> Actor:
        return Actor.of(self.doctor, "127.0.0.1")


async def open_sqlite(path: Path) -> Store:
    return await open_store(StoreSettings(url=f"sqlite:///{path}", database="telemed"))


@pytest_asyncio.fixture
async def desk(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Desk]:
    store = await open_sqlite(tmp_path / "telemed.db")
    clinic = Clinic(store, clock)

    async def add(role: str, name: str) -> User:
        email = f"{name.lower()}@example.org"
        return await clinic.add_user(OPERATOR, role=role, email=email, name=name, password=None)

    doctor, stranger, patient = await add("doctor", "Dana"), await add("doctor", "Sam"), None
    patient = await add("patient", "Pia")
    await clinic.add_care_team_member(OPERATOR, patient.id, doctor.id)
    try:
        yield Desk(Reception(clinic, POLICY), store, clock, doctor, stranger, patient)
    finally:
        await store.close()


async def booked(desk: Desk) -> tuple[Visit, str]:
    booking = await desk.reception.book(
        desk.actor, patient_id=desk.patient.id, clinician_id=desk.doctor.id
    )
    return booking.visit, booking.token


async def denied(desk: Desk) -> list[tuple[str, str]]:
    return [
        (r.event.actor_id, r.event.action)
        async for r in desk.store.audit_records()
        if r.event.outcome is Outcome.DENIED
    ]


# booking ---------------------------------------------------------------------------------
async def test_only_the_care_team_books_and_only_with_its_own_clinician(desk: Desk) -> None:
    visit, _ = await booked(desk)
    assert visit.state is VisitState.SCHEDULED
    assert visit.link_expires_at == desk.clock.now + timedelta(hours=24)
    with pytest.raises(Forbidden):
        await desk.reception.book(
            Actor.of(desk.stranger, "x"), patient_id=desk.patient.id, clinician_id=desk.doctor.id
        )
    assert (desk.stranger.id, "visit.create") in await denied(desk)
    with pytest.raises(ValidationError, match="care team"):
        await desk.reception.book(
            OPERATOR, patient_id=desk.patient.id, clinician_id=desk.stranger.id
        )


# the link and the pass ---------------------------------------------------------------------
async def test_opening_the_link_does_not_claim_it(desk: Desk) -> None:
    visit, token = await booked(desk)
    seen = await desk.reception.visit_for_link(token)
    assert seen.id == visit.id
    assert seen.link_claimed_at is None
    with pytest.raises(LinkRefused, match="not valid"):
        await desk.reception.visit_for_link("not-the-token")


async def test_the_link_is_single_use_but_the_same_browser_may_claim_again(desk: Desk) -> None:
    visit, token = await booked(desk)
    claimed, first_pass = await desk.reception.claim(token, "10.0.0.1")
    assert claimed.link_claimed_at == desk.clock.now
    assert (await desk.reception.visit_for_pass(visit.id, first_pass)).id == visit.id

    with pytest.raises(LinkRefused, match="another device"):
        await desk.reception.claim(token, "10.0.0.2")  # another browser, no pass
    with pytest.raises(LinkRefused, match="another device"):
        await desk.reception.claim(token, "10.0.0.2", held_pass="guessed")
    assert (desk.patient.id, "visit.link.claim") in await denied(desk)

    _, second_pass = await desk.reception.claim(token, "10.0.0.1", held_pass=first_pass)
    assert (await desk.reception.visit_for_pass(visit.id, second_pass)).id == visit.id
    with pytest.raises(LinkRefused):  # the pass moved on with the new claim
        await desk.reception.visit_for_pass(visit.id, first_pass)
    with pytest.raises(LinkRefused):
        await desk.reception.visit_for_pass(visit.id, "")


async def test_the_link_and_pass_expire(desk: Desk) -> None:
    visit, token = await booked(desk)
    _, held = await desk.reception.claim(token, "x")
    desk.clock.advance(hours=24)
    with pytest.raises(LinkRefused, match="expired"):
        await desk.reception.visit_for_link(token)
    with pytest.raises(LinkRefused, match="expired"):
        await desk.reception.visit_for_pass(visit.id, held)


async def test_reissue_kills_the_old_link_and_pass(desk: Desk) -> None:
    visit, token = await booked(desk)
    _, held = await desk.reception.claim(token, "x")
    desk.clock.advance(hours=20)
    fresh = await desk.reception.reissue_link(desk.actor, visit.id)
    assert fresh.visit.link_expires_at == desk.clock.now + timedelta(hours=24)
    with pytest.raises(LinkRefused):
        await desk.reception.visit_for_link(token)
    with pytest.raises(LinkRefused):
        await desk.reception.visit_for_pass(visit.id, held)
    claimed, new_pass = await desk.reception.claim(fresh.token, "y")  # a new browser may claim
    assert claimed.id == visit.id
    assert (await desk.reception.visit_for_pass(visit.id, new_pass)).id == visit.id
    with pytest.raises(Forbidden):
        await desk.reception.reissue_link(Actor.of(desk.stranger, "x"), visit.id)


# the waiting room and the moves ---------------------------------------------------------------
async def test_the_state_machine_through_the_desk(desk: Desk) -> None:
    visit, token = await booked(desk)
    visit, held = await desk.reception.claim(token, "x")
    arrived = await desk.reception.arrive(visit, "x")
    assert arrived.state is VisitState.WAITING
    assert await desk.reception.arrive(arrived, "x") == arrived  # a return changes nothing
    assert await desk.reception.place_in_queue(arrived) == 1

    later, later_token = await booked(desk)
    desk.clock.advance(minutes=1)
    later = await desk.reception.arrive((await desk.reception.claim(later_token, "y"))[0], "y")
    assert await desk.reception.place_in_queue(later) == 2

    admitted = await desk.reception.admit(desk.actor, visit.id)
    assert admitted.state is VisitState.IN_CALL
    assert await desk.reception.place_in_queue(admitted) == 0
    assert await desk.reception.place_in_queue(later) == 1
    with pytest.raises(ValidationError, match="in_call cannot become in_call"):
        await desk.reception.admit(desk.actor, visit.id)

    back = await desk.reception.send_back(desk.actor, visit.id)
    assert back.waiting_since == arrived.waiting_since
    assert await desk.reception.place_in_queue(back) == 1  # first again: the original place
    assert [v.id for v in await desk.reception.queue(desk.doctor.id)] == [visit.id, later.id]

    with pytest.raises(Forbidden):
        await desk.reception.end(Actor.of(desk.stranger, "x"), visit.id)
    assert (desk.stranger.id, "visit.end") in await denied(desk)
    ended = await desk.reception.end(desk.actor, visit.id)
    assert ended.state is VisitState.ENDED
    with pytest.raises(LinkRefused, match="ended"):
        await desk.reception.visit_for_pass(visit.id, held)
    with pytest.raises(ValidationError):
        await desk.reception.admit(desk.actor, visit.id)
    actions = [r.event.action async for r in desk.store.audit_records()]
    assert actions.count("visit.in_call") == 1
    assert "visit.waiting" in actions
    assert "visit.ended" in actions


# compare and set ---------------------------------------------------------------------------
class Interloper:
    """A store that, before the first write of a visit, lets another process change it
    (after the writer read it): the writer's compare-and-set must lose, and retry."""

    def __init__(self, store: Store, meddle: Any) -> None:
        self._store = store
        self._meddle = meddle
        self.meddled = False
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def replace_visit(self, visit: Visit) -> bool:
        if not self.meddled:
            self.meddled = True
            await self._meddle()
        done = await self._store.replace_visit(visit)
        self.lost += not done
        return done


async def test_a_move_that_loses_the_compare_and_set_is_retried_on_the_new_version(
    desk: Desk, tmp_path: Path
) -> None:
    visit, token = await booked(desk)
    visit = await desk.reception.arrive((await desk.reception.claim(token, "x"))[0], "x")
    other_store = await open_sqlite(tmp_path / "telemed.db")  # another process's connection
    try:
        other = Reception(Clinic(other_store, desk.clock), POLICY)
        meddling = Interloper(desk.store, lambda: other.set_patient_online(visit.id, True))
        racing = Reception(Clinic(meddling, desk.clock), POLICY)  # type: ignore[arg-type]
        admitted = await racing.admit(desk.actor, visit.id)
    finally:
        await other_store.close()
    assert meddling.lost == 1
    stored = await desk.store.get_visit(visit.id)
    assert stored is not None
    assert stored.state is VisitState.IN_CALL  # the move
    assert stored.patient_online  # and the other process's change: nothing lost
    assert stored.version == admitted.version == visit.version + 2


async def test_two_processes_admitting_at_once_admit_once(desk: Desk, tmp_path: Path) -> None:
    visit, token = await booked(desk)
    visit = await desk.reception.arrive((await desk.reception.claim(token, "x"))[0], "x")
    stores = [await open_sqlite(tmp_path / "telemed.db") for _ in range(2)]
    try:
        desks = [Reception(Clinic(s, desk.clock), POLICY) for s in stores]
        results = await asyncio.gather(
            *(d.admit(desk.actor, visit.id) for d in desks), return_exceptions=True
        )
    finally:
        for s in stores:
            await s.close()
    admitted = [r for r in results if isinstance(r, Visit)]
    refused = [r for r in results if isinstance(r, ValidationError)]
    assert len(admitted) == 1, results
    assert len(refused) == 1, results
    stored = await desk.store.get_visit(visit.id)
    assert stored is not None
    assert [t.state for t in stored.transitions].count(VisitState.IN_CALL) == 1
