"""The clinic's front desk for video visits: booking, join links, the waiting room, and
the doctor's admit / send back / end; guests (an interpreter, family, a colleague) invited
into the call with their own links, admitted, sent back and removed. Each act is audited.

The web pages, the Socket.IO visit rooms and the CLI all call these, so the rules live in
one place. Visits change by compare-and-set on their version, so two server processes
serving one visit (the doctor on one, the patient on the other) never lose a move.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from telemed.accounts import Patient, Role, new_id
from telemed.api_json import guest_json, join_url, visit_json
from telemed.audit import Outcome
from telemed.clinic import Actor, Clinic
from telemed.errors import Forbidden, NotFound, StoreUnavailable, ValidationError
from telemed.settings import VisitSettings
from telemed.visits import (
    Guest,
    GuestState,
    InvalidGuestMove,
    InvalidMove,
    PreCheck,
    QualitySample,
    RecordingConsent,
    Transition,
    Visit,
    VisitState,
    guest_name,
    guest_role,
    new_secret,
    places,
    secret_hash,
    secret_matches,
)

log = logging.getLogger(__name__)

WAITING_MESSAGE = "waiting_room_message"  # clinic setting an admin changes at run time
MAX_WAITING_MESSAGE = 500
UPDATE_ATTEMPTS = 16  # each lost compare-and-set means another process moved the visit


class LinkRefused(Exception):
    """A join link or pass that does not (or no longer) open a visit. The message is
    what the patient is told: plain words, and nothing about other visits."""


@dataclass(frozen=True, slots=True)
class VisitPolicy:
    link_valid_for: timedelta  # after the scheduled time
    max_participants: int = 4  # in one call: the clinician, the patient and the guests


@dataclass(frozen=True, slots=True)
class Invitation:
    visit: Visit
    guest: Guest
    token: str  # the guest's join link's secret, shown once


@dataclass(frozen=True, slots=True)
class Booking:
    visit: Visit
    token: str  # the join link's secret, shown once


def visit_policy(settings: VisitSettings) -> VisitPolicy:
    return VisitPolicy(
        link_valid_for=timedelta(hours=settings.link_valid_hours),
        max_participants=settings.max_participants,
    )


def booking_json(booking: Booking, base_url: str) -> dict[str, Any]:
    """A new visit and its join link, as the CLI and the API show it once."""
    return {**visit_json(booking.visit), "join_url": join_url(base_url, booking.token)}


def invitation_json(invitation: Invitation, base_url: str) -> dict[str, Any]:
    """A new guest and their join link, as the CLI and the API show it once."""
    return {
        **guest_json(invitation.guest),
        "visit_id": invitation.visit.id,
        "join_url": join_url(base_url, invitation.token),
    }


def patient_actor(visit: Visit, source: str) -> Actor:
    """The patient acting through their visit link (they have no session)."""
    return Actor(visit.patient_id, Role.PATIENT.value, source)


GUEST = "guest"  # the audit log's role of a guest acting through their link


def guest_actor(guest: Guest, source: str) -> Actor:
    """A guest acting through their link (they have no account: their guest id)."""
    return Actor(guest.id, GUEST, source)


class Reception:
    def __init__(self, clinic: Clinic, policy: VisitPolicy) -> None:
        self.clinic = clinic
        self.store = clinic.store
        self.clock = clinic.clock
        self.policy = policy

    # booking ----------------------------------------------------------------------
    async def book(
        self,
        actor: Actor,
        *,
        patient_id: str,
        clinician_id: str,
        at: datetime | None = None,
    ) -> Booking:
        """A new visit and its join link. The actor is the operator or a clinician of
        the patient's care team; the visit's clinician must be on that team too."""
        await self._require_care_team(actor, patient_id, "visit.create")
        clinician = await self.store.get_user(clinician_id)
        if clinician is None or not clinician.active:
            raise ValidationError("doctor", f"no active user has id {clinician_id}")
        if not clinician.role.is_clinician:
            raise ValidationError("doctor", f"user {clinician_id} is not a clinician")
        if clinician.id not in await self.store.care_team(patient_id):
            raise ValidationError("doctor", "is not on the patient's care team")
        now = self.clock()
        scheduled = now if at is None else at
        if scheduled + self.policy.link_valid_for <= now:
            raise ValidationError("at", "is so far in the past that the link would be dead")
        token = new_secret()
        visit = Visit(
            id=new_id(),
            patient_id=patient_id,
            clinician_id=clinician.id,
            scheduled_at=scheduled,
            created_at=now,
            created_by=actor.id,
            link_hash=secret_hash(token),
            link_expires_at=scheduled + self.policy.link_valid_for,
        )
        visit = dataclasses.replace(
            visit, transitions=(Transition(VisitState.SCHEDULED, now, actor.id),)
        )
        await self.store.add_visit(visit)
        await self._audit(actor, "visit.create", visit)
        return Booking(visit, token)

    async def reissue_link(self, actor: Actor, visit_id: str) -> Booking:
        """A new join link for an open visit (the old one dies, and so does the pass of
        the browser that claimed it): for a patient who lost the message or the phone."""
        visit = await self.visit_for_clinician(
            actor, visit_id, "visit.link.reissue", audit_success=False
        )
        token = new_secret()
        now = self.clock()

        def reissued(v: Visit) -> Visit:
            if not v.open:
                raise ValidationError("visit", f"is {v.state.value}: its link cannot return")
            return dataclasses.replace(
                v,
                link_hash=secret_hash(token),
                link_claimed_at=None,
                pass_hash="",
                link_expires_at=max(v.link_expires_at, now + self.policy.link_valid_for),
            )

        visit = await self._update(visit.id, reissued)
        await self._audit(actor, "visit.link.reissue", visit)
        return Booking(visit, token)

    # the patient's link -------------------------------------------------------------
    async def visit_for_link(self, token: str) -> Visit:
        """The visit a join link opens, without claiming it; `LinkRefused` otherwise."""
        visit = await self.store.find_visit_by_link(secret_hash(token))
        if visit is None:
            raise LinkRefused("This link is not valid. Ask the clinic to send a new one.")
        self._check_link_alive(visit)
        return visit

    async def claim(self, token: str, source: str, *, held_pass: str = "") -> tuple[Visit, str]:
        """Claim a join link for this browser: the visit and a new pass for it. A browser
        that already holds the link's pass (a reload, a reopened link) claims it again."""
        visit = await self.visit_for_link(token)
        if visit.link_claimed_at is not None and not secret_matches(held_pass, visit.pass_hash):
            await self.clinic.audit(
                patient_actor(visit, source),
                "visit.link.claim",
                Outcome.DENIED,
                patient_id=visit.patient_id,
                entity=f"Visit/{visit.id}",
                detail="already claimed by another browser",
            )
            raise LinkRefused(
                "This link was already opened on another device. Ask the clinic to send "
                "a new one if that was not you."
            )
        new_pass = new_secret()
        now = self.clock()

        def claimed(v: Visit) -> Visit:
            self._check_link_alive(v)
            if v.link_hash != visit.link_hash or v.pass_hash != visit.pass_hash:
                raise LinkRefused("This link was just opened elsewhere. Ask the clinic.")
            return dataclasses.replace(v, link_claimed_at=now, pass_hash=secret_hash(new_pass))

        visit = await self._update(visit.id, claimed)
        await self._audit(patient_actor(visit, source), "visit.link.claim", visit)
        return visit, new_pass

    async def visit_for_pass(self, visit_id: str, held_pass: str) -> Visit:
        """The open visit a browser's pass lets in; `LinkRefused` otherwise."""
        visit = await self.store.get_visit(visit_id)
        if visit is None or not secret_matches(held_pass, visit.pass_hash):
            raise LinkRefused("This visit link is no longer valid on this device.")
        self._check_link_alive(visit)
        return visit

    def _check_link_alive(self, visit: Visit) -> None:
        if visit.state is VisitState.ENDED:
            raise LinkRefused("This visit has ended. The link no longer works.")
        if not visit.open:
            raise LinkRefused("This visit was cancelled. Ask the clinic for a new time.")
        if self.clock() >= visit.link_expires_at:
            raise LinkRefused("This link has expired. Ask the clinic to send a new one.")

    # guests --------------------------------------------------------------------------
    async def invite(
        self, actor: Actor, visit_id: str, *, role: object, name: object
    ) -> Invitation:
        """A guest for an open visit, and their own join link (it expires with the
        visit's). The actor is the operator or a clinician of the patient's care team. A
        call holds at most `policy.max_participants`: the clinician, the patient and the
        guests not removed."""
        chosen, shown = guest_role(role), guest_name(name)
        await self.visit_for_clinician(actor, visit_id, "visit.guest.invite", audit_success=False)
        token = new_secret()
        now = self.clock()
        guest_id = new_id()
        most = self.policy.max_participants

        def invited(v: Visit) -> Visit:
            if not v.open:
                raise ValidationError("visit", f"is {v.state.value}: nobody can join it now")
            if 2 + len(v.present_guests) + 1 > most:
                raise ValidationError(
                    "guests",
                    f"a call has at most {most} participants (the clinician, the patient "
                    f"and {most - 2} guests): remove a guest before inviting another",
                )
            return v.with_guest(
                Guest(
                    id=guest_id,
                    role=chosen,
                    name=shown,
                    link_hash=secret_hash(token),
                    link_expires_at=v.link_expires_at,
                    invited_at=now,
                    invited_by=actor.id,
                )
            )

        visit = await self._update(visit_id, invited)
        guest = visit.guest(guest_id)
        assert guest is not None
        await self._audit_guest(actor, "visit.guest.invite", visit, guest)
        return Invitation(visit, guest, token)

    async def guest_for_link(self, token: str) -> tuple[Visit, Guest]:
        """The visit and the guest a guest's join link opens, without claiming it;
        `LinkRefused` otherwise."""
        link_hash = secret_hash(token)
        visit = await self.store.find_visit_by_guest_link(link_hash)
        guest = (
            None
            if visit is None
            else next((g for g in visit.guests if g.link_hash == link_hash), None)
        )
        if visit is None or guest is None:
            raise LinkRefused("This link is not valid. Ask the clinic to send a new one.")
        self._check_guest_alive(visit, guest)
        return visit, guest

    async def claim_guest(
        self, token: str, source: str, *, held_pass: str = ""
    ) -> tuple[Visit, Guest, str]:
        """Claim a guest's link for this browser: a new pass for it. A browser that holds
        the guest's pass already claims it again; another browser is refused."""
        visit, guest = await self.guest_for_link(token)
        if guest.link_claimed_at is not None and not secret_matches(held_pass, guest.pass_hash):
            await self.clinic.audit(
                guest_actor(guest, source),
                "visit.guest.link.claim",
                Outcome.DENIED,
                patient_id=visit.patient_id,
                entity=f"Visit/{visit.id}",
                detail=f"guest={guest.id} already claimed by another browser",
            )
            raise LinkRefused(
                "This link was already opened on another device. Ask the clinic to send "
                "a new one if that was not you."
            )
        new_pass = new_secret()
        now = self.clock()

        def claimed(v: Visit) -> Visit:
            g = v.guest(guest.id)
            if g is None or g.pass_hash != guest.pass_hash:
                raise LinkRefused("This link was just opened elsewhere. Ask the clinic.")
            self._check_guest_alive(v, g)
            return v.with_guest(
                dataclasses.replace(g, link_claimed_at=now, pass_hash=secret_hash(new_pass))
            )

        visit = await self._update(visit.id, claimed)
        guest = self._guest_of(visit, guest.id)
        await self._audit_guest(guest_actor(guest, source), "visit.guest.link.claim", visit, guest)
        return visit, guest, new_pass

    async def guest_for_pass(
        self, visit_id: str, guest_id: str, held_pass: str
    ) -> tuple[Visit, Guest]:
        """The open visit and the guest a browser's guest pass lets in; `LinkRefused`
        otherwise."""
        visit = await self.store.get_visit(visit_id)
        guest = None if visit is None else visit.guest(guest_id)
        if visit is None or guest is None or not secret_matches(held_pass, guest.pass_hash):
            if guest is not None and guest.removed:
                raise LinkRefused(
                    "The clinic removed you from this visit. The link no longer works."
                )
            raise LinkRefused("This visit link is no longer valid on this device.")
        self._check_guest_alive(visit, guest)
        return visit, guest

    def _check_guest_alive(self, visit: Visit, guest: Guest) -> None:
        self._check_link_alive(visit)
        if guest.removed:
            raise LinkRefused("The clinic removed you from this visit. The link no longer works.")
        if self.clock() >= guest.link_expires_at:
            raise LinkRefused("This link has expired. Ask the clinic to send a new one.")

    async def guest_arrive(self, visit: Visit, guest: Guest, source: str) -> tuple[Visit, Guest]:
        """The guest is in the waiting room: a first arrival moves invited -> waiting; a
        return keeps the state (and `waiting_since`)."""
        if guest.state is not GuestState.INVITED:
            return visit, guest
        now = self.clock()
        moved = False

        def arrived(v: Visit) -> Visit:
            nonlocal moved  # another page of the guest's may have arrived first
            g = self._guest_of(v, guest.id)
            self._check_guest_alive(v, g)
            moved = g.state is GuestState.INVITED
            return v.with_guest(g.move(GuestState.WAITING, now)) if moved else v

        visit = await self._update(visit.id, arrived)
        guest = self._guest_of(visit, guest.id)
        if moved:
            await self._audit_guest(guest_actor(guest, source), "visit.guest.waiting", visit, guest)
        return visit, guest

    async def set_guest_online(self, visit_id: str, guest_id: str, online: bool) -> Visit:
        def marked(v: Visit) -> Visit:
            g = v.guest(guest_id)
            if g is None or g.online == online or (online and g.removed):
                return v
            return v.with_guest(dataclasses.replace(g, online=online))

        return await self._update(visit_id, marked)

    async def admit_guest(self, actor: Actor, visit_id: str, guest_id: str) -> tuple[Visit, Guest]:
        """waiting -> in_call. Only into a call in progress: the visit must be `in_call`
        (the doctor admitted the patient first)."""

        def ready(v: Visit) -> None:
            if v.state is not VisitState.IN_CALL:
                raise ValidationError(
                    "state",
                    f"the visit is {v.state.value}: admit the patient first (a guest joins "
                    "a call in progress)",
                )

        return await self._guest_move(
            actor, visit_id, guest_id, GuestState.IN_CALL, "visit.guest.admit", ready
        )

    async def send_back_guest(
        self, actor: Actor, visit_id: str, guest_id: str
    ) -> tuple[Visit, Guest]:
        """in_call -> waiting: the guest waits until admitted again."""
        return await self._guest_move(
            actor, visit_id, guest_id, GuestState.WAITING, "visit.guest.send_back"
        )

    async def remove_guest(self, actor: Actor, visit_id: str, guest_id: str) -> tuple[Visit, Guest]:
        """-> removed: the guest's link and pass die; they leave the call."""
        return await self._guest_move(
            actor, visit_id, guest_id, GuestState.REMOVED, "visit.guest.remove"
        )

    async def _guest_move(
        self,
        actor: Actor,
        visit_id: str,
        guest_id: str,
        to: GuestState,
        action: str,
        check: Callable[[Visit], None] | None = None,
    ) -> tuple[Visit, Guest]:
        await self.visit_for_clinician(actor, visit_id, action, audit_success=False)
        now = self.clock()

        def moved(v: Visit) -> Visit:
            g = v.guest(guest_id)
            if g is None:
                raise NotFound(f"visit {visit_id} has no guest {guest_id}")
            if not v.open:
                raise ValidationError("visit", f"is {v.state.value}: its guests' links are dead")
            if check is not None:
                check(v)
            try:
                return v.with_guest(g.move(to, now))
            except InvalidGuestMove as exc:
                raise ValidationError("guest", str(exc)) from None

        visit = await self._update(visit_id, moved)
        guest = self._guest_of(visit, guest_id)
        await self._audit_guest(actor, action, visit, guest)
        return visit, guest

    @staticmethod
    def _guest_of(visit: Visit, guest_id: str) -> Guest:
        guest = visit.guest(guest_id)
        if guest is None:
            raise NotFound(f"visit {visit.id} has no guest {guest_id}")
        return guest

    async def _audit_guest(self, actor: Actor, action: str, visit: Visit, guest: Guest) -> None:
        """Ids, the guest's role and state; never the guest's name."""
        await self._audit(
            actor,
            action,
            visit,
            detail=f"guest={guest.id} role={guest.role.value} state={guest.state.value}",
        )

    # the waiting room ----------------------------------------------------------------
    async def arrive(self, visit: Visit, source: str) -> Visit:
        """The patient is in the waiting room (or back in the call they were in): a first
        arrival moves scheduled -> waiting; a return keeps the place and the state."""
        if visit.state is not VisitState.SCHEDULED:
            return visit
        actor = patient_actor(visit, source)
        now = self.clock()
        moved = False

        def arrived(v: Visit) -> Visit:
            nonlocal moved  # another page of the patient's may have arrived first
            self._check_link_alive(v)  # or the clinic cancelled it meanwhile
            moved = v.state is VisitState.SCHEDULED
            return v.move(VisitState.WAITING, now, actor.id) if moved else v

        visit = await self._update(visit.id, arrived)
        if moved:
            await self._audit(actor, "visit.waiting", visit)
        return visit

    async def record_precheck(self, visit: Visit, precheck: PreCheck, source: str) -> Visit:
        visit = await self._update(visit.id, lambda v: dataclasses.replace(v, precheck=precheck))
        await self._audit(
            patient_actor(visit, source),
            "visit.precheck",
            visit,
            detail=f"recommendation={precheck.recommendation.value}",
        )
        return visit

    async def set_patient_online(self, visit_id: str, online: bool) -> Visit:
        return await self._update(visit_id, lambda v: dataclasses.replace(v, patient_online=online))

    async def set_recording_consent(
        self, actor: Actor, visit_id: str, side: str, given: bool
    ) -> Visit:
        """The patient or the clinician, in the call, agrees to recording or withdraws;
        stored with the visit and audited. Only during a call."""

        def said(v: Visit) -> Visit:
            if v.state is not VisitState.IN_CALL:
                raise ValidationError("consent", f"the visit is {v.state.value}, not in a call")
            by = "patient" if side == "patient" else actor.id
            return v.with_consent(RecordingConsent(side, given, self.clock(), by))

        visit = await self._update(visit_id, said)
        what = "given" if given else "withdrawn"
        await self._audit(actor, "visit.recording_consent", visit, detail=f"{side} {what}")
        return visit

    async def record_quality(self, visit_id: str, sample: QualitySample) -> Visit:
        """Saved with the visit; not audited (it is about the link, not the patient)."""
        return await self._update(visit_id, lambda v: v.with_quality(sample))

    async def queue(self, clinician_id: str) -> list[Visit]:
        """The clinician's visits that are waiting or in a call, oldest arrival first."""
        visits = await self.store.list_visits(
            clinician_id=clinician_id, states={VisitState.WAITING, VisitState.IN_CALL}
        )
        return sorted(visits, key=_arrival)

    async def place_in_queue(self, visit: Visit) -> int:
        """1 for the next patient the doctor sees; 0 when not waiting."""
        return places(await self.queue(visit.clinician_id)).get(visit.id, 0)

    async def waiting_message(self) -> str:
        return await self.store.get_setting(WAITING_MESSAGE) or ""

    async def set_waiting_message(self, actor: Actor, message: str) -> None:
        await self.clinic._require_admin(actor, "clinic.waiting_message")
        text = " ".join(message.split())
        if len(text) > MAX_WAITING_MESSAGE:
            raise ValidationError("message", f"is longer than {MAX_WAITING_MESSAGE} characters")
        await self.store.put_setting(WAITING_MESSAGE, text)
        await self.clinic.audit(actor, "clinic.waiting_message", detail=f"{len(text)} characters")

    # the clinician's moves -------------------------------------------------------------
    async def admit(self, actor: Actor, visit_id: str) -> Visit:
        return await self._clinician_move(actor, visit_id, VisitState.IN_CALL, "visit.admit")

    async def send_back(self, actor: Actor, visit_id: str) -> Visit:
        return await self._clinician_move(actor, visit_id, VisitState.WAITING, "visit.send_back")

    async def end(self, actor: Actor, visit_id: str) -> Visit:
        return await self._clinician_move(actor, visit_id, VisitState.ENDED, "visit.end")

    async def cancel(self, actor: Actor, visit_id: str) -> Visit:
        return await self._clinician_move(actor, visit_id, VisitState.CANCELLED, "visit.cancel")

    async def mark_no_show(self, actor: Actor, visit_id: str) -> Visit:
        return await self._clinician_move(actor, visit_id, VisitState.NO_SHOW, "visit.no_show")

    async def _clinician_move(
        self, actor: Actor, visit_id: str, to: VisitState, action: str
    ) -> Visit:
        await self.visit_for_clinician(actor, visit_id, action, audit_success=False)
        return await self._move(actor, visit_id, to)  # the move is audited

    async def visit_for_clinician(
        self, actor: Actor, visit_id: str, action: str, *, audit_success: bool = True
    ) -> Visit:
        """The visit, if the actor is the operator or a clinician of the patient's care
        team. Refusals are audited (a visit id alone reveals nothing), and so is the
        access unless the caller audits what it does next."""
        visit = await self.store.get_visit(visit_id)
        if visit is None:
            raise NotFound(f"visit {visit_id} does not exist")
        await self._require_care_team(actor, visit.patient_id, action, visit_id=visit.id)
        if audit_success:
            await self._audit(actor, action, visit)
        return visit

    async def visits_of_patient(self, actor: Actor, patient_id: str) -> list[Visit]:
        await self._require_care_team(actor, patient_id, "visit.list")
        return await self.store.list_visits(patient_id=patient_id)

    async def patient(self, visit: Visit) -> Patient:
        patient = await self.store.get_patient(visit.patient_id)
        if patient is None:
            raise NotFound(f"patient {visit.patient_id} does not exist")
        return patient

    # plumbing ----------------------------------------------------------------------
    async def _require_care_team(
        self, actor: Actor, patient_id: str, action: str, *, visit_id: str = ""
    ) -> None:
        if actor.is_operator:
            if await self.store.get_patient(patient_id) is None:
                raise ValidationError("patient", f"no patient has id {patient_id}")
            return
        user = actor.user
        if (
            user is not None
            and user.active
            and user.role.is_clinician
            and user.id in await self.store.care_team(patient_id)
        ):
            return
        await self.clinic.audit(
            actor,
            action,
            Outcome.DENIED,
            patient_id=patient_id,
            entity=f"Visit/{visit_id}" if visit_id else f"Patient/{patient_id}",
            detail="not on the care team",
        )
        raise Forbidden("this patient is not in your care")

    async def _move(self, actor: Actor, visit_id: str, to: VisitState) -> Visit:
        now = self.clock()
        try:
            visit = await self._update(visit_id, lambda v: v.move(to, now, actor.id))
        except InvalidMove as exc:
            raise ValidationError("state", str(exc)) from None
        await self._audit(actor, f"visit.{to.value}", visit)
        return visit

    async def _update(self, visit_id: str, change: Callable[[Visit], Visit]) -> Visit:
        """Apply `change` to the stored visit by compare-and-set, retrying when another
        process moved it first (`change` sees the newest version each time)."""
        for _ in range(UPDATE_ATTEMPTS):
            current = await self.store.get_visit(visit_id)
            if current is None:
                raise NotFound(f"visit {visit_id} does not exist")
            changed = dataclasses.replace(change(current), version=current.version + 1)
            if await self.store.replace_visit(changed):
                return changed
        raise StoreUnavailable(f"visit {visit_id}: lost {UPDATE_ATTEMPTS} updates in a row")

    async def _audit(self, actor: Actor, action: str, visit: Visit, *, detail: str = "") -> None:
        await self.clinic.audit(
            actor,
            action,
            patient_id=visit.patient_id,
            entity=f"Visit/{visit.id}",
            detail=detail or f"state={visit.state.value}",
        )


def _arrival(visit: Visit) -> tuple[datetime, str]:
    return (visit.waiting_since or visit.scheduled_at, visit.id)
