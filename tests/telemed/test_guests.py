"""Guests of a video visit (an interpreter, family, a colleague): the domain's states and
names, and the front desk's invite, claim, arrive, admit, send back and remove over a
real SQLite store, with their audit entries and the limit of participants."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from telemed.audit import Outcome
from telemed.clinic import OPERATOR, Actor, Clinic
from telemed.errors import Forbidden, NotFound, ValidationError
from telemed.reception import LinkRefused, Reception, VisitPolicy
from telemed.visits import (
    MAX_GUEST_NAME,
    Guest,
    GuestRole,
    GuestState,
    InvalidGuestMove,
    Visit,
    VisitState,
    guest_name,
    guest_role,
    parse_guest_cookie,
    secret_hash,
    visit_from_doc,
    visit_to_doc,
)
from tests.telemed.test_reception import (
    POLICY,
    Desk,
    Interloper,
    booked,
    denied,
    desk,
    open_sqlite,
)
from tests.telemed.test_visits import T0
from tests.telemed.test_visits import visit as make

__all__ = ["desk"]  # the fixture, used here by name


# the domain ---------------------------------------------------------------------------------
def guest(n: int = 1, state: GuestState = GuestState.INVITED) -> Guest:
    return Guest(
        id=f"g{n}",
        role=GuestRole.INTERPRETER,
        name=f"Guest {n}",
        link_hash=secret_hash(f"guest-token-{n}"),
        link_expires_at=T0 + timedelta(hours=24),
        invited_at=T0,
        invited_by="doc",
        state=state,
    )


def test_a_guest_moves_only_as_documented() -> None:
    g = guest()
    waiting = g.move(GuestState.WAITING, T0 + timedelta(minutes=1))
    assert waiting.waiting_since == T0 + timedelta(minutes=1)
    in_call = waiting.move(GuestState.IN_CALL, T0 + timedelta(minutes=2))
    assert in_call.admitted_at == T0 + timedelta(minutes=2)
    back = in_call.move(GuestState.WAITING, T0 + timedelta(minutes=3))
    assert back.waiting_since == T0 + timedelta(minutes=1)  # the first arrival is kept
    with pytest.raises(InvalidGuestMove):
        g.move(GuestState.IN_CALL, T0)  # not before waiting
    gone = dataclasses.replace(back, pass_hash="x", online=True).move(GuestState.REMOVED, T0)
    assert (gone.removed, gone.pass_hash, gone.online) == (True, "", False)
    for to in GuestState:
        with pytest.raises(InvalidGuestMove):
            gone.move(to, T0)


def test_sending_the_patient_back_sends_the_guests_in_the_call_back_too() -> None:
    visit = make().move(VisitState.WAITING, T0, "patient").move(VisitState.IN_CALL, T0, "doc")
    visit = visit.with_guest(guest(1, GuestState.IN_CALL)).with_guest(guest(2))
    back = visit.move(VisitState.WAITING, T0 + timedelta(minutes=5), "doc")
    assert [g.state for g in back.guests] == [GuestState.WAITING, GuestState.INVITED]
    assert back.guests[0].waiting_since == T0 + timedelta(minutes=5)


def test_a_visit_with_guests_survives_its_document_form() -> None:
    visit = make().with_guest(
        dataclasses.replace(
            guest(1).move(GuestState.WAITING, T0),
            link_claimed_at=T0,
            pass_hash=secret_hash("p"),
            online=True,
        )
    )
    visit = visit.with_guest(guest(2).move(GuestState.REMOVED, T0))
    assert visit_from_doc(visit_to_doc(visit)) == visit
    old = visit_to_doc(make())
    del old["guests"]  # a visit stored before guests existed
    assert visit_from_doc(old).guests == ()


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", "name: is required"),
        ("   ", "name: is required"),
        ("x" * (MAX_GUEST_NAME + 1), "name: is longer than 80"),
        ("Ana\x00", "name: must not hold control"),
        ("Ana\u202egnirts", "name: must not hold control"),
        (42, "name: must be a string"),
    ],
)
def test_a_guests_name_is_checked(value: object, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        guest_name(value)


def test_names_and_roles_that_pass() -> None:
    assert guest_name("  Ana \t María  ") == "Ana María"
    assert guest_name("x" * MAX_GUEST_NAME) == "x" * MAX_GUEST_NAME
    assert guest_role("family") is GuestRole.FAMILY
    with pytest.raises(ValidationError, match="role: must be one of interpreter, family"):
        guest_role("plumber")


def test_the_guest_cookie_round_trips_and_refuses_other_shapes() -> None:
    assert parse_guest_cookie("v1.g1.pass") == ("v1", "g1", "pass")
    assert parse_guest_cookie("v1.g1.pa.ss") == ("v1", "g1", "pa.ss")
    for bad in (None, "", "v1.g1", "v1..pass", ".g1.pass", "v1.g1." + "p" * 200, "v.gü.p"):
        assert parse_guest_cookie(bad) is None, bad


# the front desk -----------------------------------------------------------------------------
async def invited(desk: Desk, visit: Visit, role: str = "interpreter") -> tuple[Guest, str]:
    invitation = await desk.reception.invite(desk.actor, visit.id, role=role, name="Ines")
    return invitation.guest, invitation.token


async def actions(desk: Desk, outcome: Outcome = Outcome.SUCCESS) -> list[tuple[str, str]]:
    return [
        (r.event.action, r.event.detail)
        async for r in desk.store.audit_records()
        if r.event.outcome is outcome and r.event.action.startswith("visit.guest")
    ]


async def in_call(desk: Desk) -> Visit:
    visit, token = await booked(desk)
    claimed, _ = await desk.reception.claim(token, "p")
    await desk.reception.arrive(claimed, "p")
    return await desk.reception.admit(desk.actor, visit.id)


async def test_the_care_team_invites_a_guest_with_a_link_of_their_own(desk: Desk) -> None:
    visit, patient_token = await booked(desk)
    g, token = await invited(desk, visit)
    assert g.role is GuestRole.INTERPRETER
    assert g.state is GuestState.INVITED
    assert g.invited_by == desk.doctor.id
    assert g.invited_at == desk.clock.now
    assert g.link_expires_at == visit.link_expires_at
    assert g.link_hash == secret_hash(token) != visit.link_hash
    stored = await desk.store.get_visit(visit.id)
    assert stored is not None
    assert stored.guests == (g,)
    assert token not in str(visit_to_doc(stored))  # only the hash is kept
    assert await desk.store.find_visit_by_guest_link(secret_hash(token)) == stored
    # the guest's link is not the patient's, and the patient's is not a guest's
    with pytest.raises(LinkRefused, match="not valid"):
        await desk.reception.visit_for_link(token)
    with pytest.raises(LinkRefused, match="not valid"):
        await desk.reception.guest_for_link(patient_token)
    assert ("visit.guest.invite", f"guest={g.id} role=interpreter state=invited") in (
        await actions(desk)
    )
    assert "Ines" not in str(await actions(desk))  # the audit holds ids, never the name


async def test_only_the_care_team_invites_and_refusals_name_the_field(desk: Desk) -> None:
    visit, _ = await booked(desk)
    with pytest.raises(Forbidden):
        await desk.reception.invite(
            Actor.of(desk.stranger, "x"), visit.id, role="family", name="Fran"
        )
    assert (desk.stranger.id, "visit.guest.invite") in await denied(desk)
    with pytest.raises(ValidationError, match="role:"):
        await desk.reception.invite(desk.actor, visit.id, role="boss", name="B")
    with pytest.raises(ValidationError, match="name:"):
        await desk.reception.invite(desk.actor, visit.id, role="family", name=" ")
    with pytest.raises(NotFound):
        await desk.reception.invite(desk.actor, "nosuchvisit", role="family", name="Fran")
    await desk.reception.invite(OPERATOR, visit.id, role="colleague", name="Dr Col")  # the CLI
    await desk.reception.cancel(desk.actor, visit.id)
    with pytest.raises(ValidationError, match="visit: is cancelled"):
        await desk.reception.invite(desk.actor, visit.id, role="family", name="Fran")


async def test_a_call_holds_at_most_max_participants(desk: Desk) -> None:
    visit, _ = await booked(desk)
    first, _ = await invited(desk, visit)
    await invited(desk, visit, "family")
    with pytest.raises(ValidationError, match="guests: a call has at most 4 participants"):
        await invited(desk, visit, "colleague")
    await desk.reception.remove_guest(desk.actor, visit.id, first.id)  # frees a place
    await invited(desk, visit, "colleague")
    stored = await desk.store.get_visit(visit.id)
    assert stored is not None
    assert len(stored.guests) == 3
    assert len(stored.present_guests) == 2

    small = Reception(desk.reception.clinic, VisitPolicy(timedelta(hours=24), max_participants=3))
    other, _ = await booked(desk)
    await small.invite(desk.actor, other.id, role="family", name="One")
    with pytest.raises(ValidationError, match="at most 3 participants .* and 1 guests"):
        await small.invite(desk.actor, other.id, role="family", name="Two")


async def test_the_guests_link_is_single_use_but_the_same_browser_may_claim_again(
    desk: Desk,
) -> None:
    visit, _ = await booked(desk)
    g, token = await invited(desk, visit)
    seen, found = await desk.reception.guest_for_link(token)
    assert (seen.id, found.id, found.link_claimed_at) == (visit.id, g.id, None)  # not claimed

    _, claimed, first_pass = await desk.reception.claim_guest(token, "10.0.0.1")
    assert claimed.link_claimed_at == desk.clock.now
    assert (await desk.reception.guest_for_pass(visit.id, g.id, first_pass))[1].id == g.id

    with pytest.raises(LinkRefused, match="another device"):
        await desk.reception.claim_guest(token, "10.0.0.2")  # a second browser
    with pytest.raises(LinkRefused, match="another device"):
        await desk.reception.claim_guest(token, "10.0.0.2", held_pass="guessed")
    assert ("visit.guest.link.claim", f"guest={g.id} already claimed by another browser") in (
        await actions(desk, Outcome.DENIED)
    )

    _, _, second_pass = await desk.reception.claim_guest(token, "10.0.0.1", held_pass=first_pass)
    assert (await desk.reception.guest_for_pass(visit.id, g.id, second_pass))[1].id == g.id
    with pytest.raises(LinkRefused):  # the old pass died with the new claim
        await desk.reception.guest_for_pass(visit.id, g.id, first_pass)
    with pytest.raises(LinkRefused):  # nor does a guest's pass open the patient's seat
        await desk.reception.visit_for_pass(visit.id, second_pass)
    claims = [a for a, _ in await actions(desk) if a == "visit.guest.link.claim"]
    assert len(claims) == 2


async def test_the_guests_link_expires_with_the_visits(desk: Desk) -> None:
    visit, _ = await booked(desk)
    g, token = await invited(desk, visit)
    _, _, held = await desk.reception.claim_guest(token, "x")
    desk.clock.advance(hours=24)
    with pytest.raises(LinkRefused, match="expired"):
        await desk.reception.guest_for_link(token)
    with pytest.raises(LinkRefused, match="expired"):
        await desk.reception.guest_for_pass(visit.id, g.id, held)


async def test_a_removed_guests_link_and_pass_are_dead(desk: Desk) -> None:
    visit, _ = await booked(desk)
    g, token = await invited(desk, visit)
    _, _, held = await desk.reception.claim_guest(token, "x")
    _, removed = await desk.reception.remove_guest(desk.actor, visit.id, g.id)
    assert removed.state is GuestState.REMOVED
    assert removed.removed_at == desk.clock.now
    for attempt in (
        desk.reception.guest_for_link(token),
        desk.reception.claim_guest(token, "x", held_pass=held),
        desk.reception.guest_for_pass(visit.id, g.id, held),
    ):
        with pytest.raises(LinkRefused, match="removed you"):
            await attempt
    with pytest.raises(ValidationError, match="guest: a guest who is removed"):
        await desk.reception.remove_guest(desk.actor, visit.id, g.id)
    assert ("visit.guest.remove", f"guest={g.id} role=interpreter state=removed") in (
        await actions(desk)
    )


async def test_ending_the_visit_kills_every_guests_link(desk: Desk) -> None:
    visit = await in_call(desk)
    g, token = await invited(desk, visit)
    _, _, held = await desk.reception.claim_guest(token, "x")
    await desk.reception.end(desk.actor, visit.id)
    with pytest.raises(LinkRefused, match="has ended"):
        await desk.reception.guest_for_link(token)
    with pytest.raises(LinkRefused, match="has ended"):
        await desk.reception.guest_for_pass(visit.id, g.id, held)
    with pytest.raises(ValidationError, match="visit: is ended"):
        await desk.reception.admit_guest(desk.actor, visit.id, g.id)


async def test_a_guest_waits_then_is_admitted_only_into_a_call_in_progress(desk: Desk) -> None:
    visit, patient_token = await booked(desk)
    g, token = await invited(desk, visit)
    seen, _, held = await desk.reception.claim_guest(token, "x")
    _, found = await desk.reception.guest_for_pass(visit.id, g.id, held)
    seen, arrived = await desk.reception.guest_arrive(seen, found, "x")
    assert arrived.state is GuestState.WAITING
    assert arrived.waiting_since == desk.clock.now
    assert seen.state is VisitState.SCHEDULED  # the guest's arrival is not the patient's
    with pytest.raises(ValidationError, match="state: the visit is scheduled: admit the patient"):
        await desk.reception.admit_guest(desk.actor, visit.id, g.id)

    claimed, _ = await desk.reception.claim(patient_token, "p")
    await desk.reception.arrive(claimed, "p")
    await desk.reception.admit(desk.actor, visit.id)
    with pytest.raises(Forbidden):
        await desk.reception.admit_guest(Actor.of(desk.stranger, "x"), visit.id, g.id)
    desk.clock.advance(minutes=2)
    _, admitted = await desk.reception.admit_guest(desk.actor, visit.id, g.id)
    assert admitted.state is GuestState.IN_CALL
    assert admitted.admitted_at == desk.clock.now
    with pytest.raises(ValidationError, match="guest: a guest who is in_call"):
        await desk.reception.admit_guest(desk.actor, visit.id, g.id)
    with pytest.raises(NotFound):
        await desk.reception.admit_guest(desk.actor, visit.id, "nosuchguest")

    desk.clock.advance(minutes=1)
    _, back = await desk.reception.send_back_guest(desk.actor, visit.id, g.id)
    assert back.state is GuestState.WAITING
    assert back.waiting_since == arrived.waiting_since  # kept across the call
    # a rejoin (the guest's page reloads) changes nothing
    visit_now, again = await desk.reception.guest_arrive(
        *(await desk.reception.guest_for_pass(visit.id, g.id, held)), "x"
    )
    assert again == back
    assert [a for a, _ in await actions(desk)] == [
        "visit.guest.invite",
        "visit.guest.link.claim",
        "visit.guest.waiting",
        "visit.guest.admit",
        "visit.guest.send_back",
    ]
    assert (desk.stranger.id, "visit.guest.admit") in await denied(desk)


async def test_a_guest_move_that_loses_the_compare_and_set_keeps_the_other_change(
    desk: Desk, tmp_path: Path
) -> None:
    """Another process marks the patient online between our read and our write: the
    guest's admission is retried on the new version, and neither change is lost."""
    visit = await in_call(desk)
    g, token = await invited(desk, visit)
    seen, _, held = await desk.reception.claim_guest(token, "x")
    await desk.reception.guest_arrive(
        *(await desk.reception.guest_for_pass(visit.id, g.id, held)), "x"
    )
    before = await desk.store.get_visit(visit.id)
    assert before is not None
    other_store = await open_sqlite(tmp_path / "telemed.db")  # another process's connection
    try:
        other = Reception(Clinic(other_store, desk.clock), POLICY)
        meddling = Interloper(desk.store, lambda: other.set_patient_online(visit.id, True))
        racing = Reception(Clinic(meddling, desk.clock), POLICY)  # type: ignore[arg-type]
        admitted, _ = await racing.admit_guest(desk.actor, visit.id, g.id)
    finally:
        await other_store.close()
    assert meddling.lost == 1
    stored = await desk.store.get_visit(visit.id)
    assert stored is not None
    assert stored.guests[0].state is GuestState.IN_CALL  # the move
    assert stored.patient_online  # and the other process's change
    assert stored.version == admitted.version == before.version + 2


async def test_two_processes_admitting_a_guest_at_once_admit_once(
    desk: Desk, tmp_path: Path
) -> None:
    visit = await in_call(desk)
    g, token = await invited(desk, visit)
    _, _, held = await desk.reception.claim_guest(token, "x")
    await desk.reception.guest_arrive(
        *(await desk.reception.guest_for_pass(visit.id, g.id, held)), "x"
    )
    stores = [await open_sqlite(tmp_path / "telemed.db") for _ in range(2)]
    try:
        desks = [Reception(Clinic(s, desk.clock), POLICY) for s in stores]
        results = await asyncio.gather(
            *(d.admit_guest(desk.actor, visit.id, g.id) for d in desks), return_exceptions=True
        )
    finally:
        for s in stores:
            await s.close()
    assert sum(isinstance(r, tuple) for r in results) == 1, results
    assert sum(isinstance(r, ValidationError) for r in results) == 1, results
    admits = [a for a, _ in await actions(desk) if a == "visit.guest.admit"]
    assert len(admits) == 1
