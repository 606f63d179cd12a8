"""Video visits for the clinic: book, list, re-send the link, cancel; invite and remove
guests; the call view page.

The rules and the audit live in `telemed.reception.Reception`. A join link is shown once,
in the answer that creates it; the clinic re-issues one (the old one dies) if it is lost.
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from telemed.accounts import Role
from telemed.api_json import guest_json, patient_json, visit_json
from telemed.clock import truncate
from telemed.errors import ValidationError
from telemed.reception import booking_json, invitation_json
from telemed.web.auth import render, require
from telemed.web.keys import RECEPTION, RECORDS, SETTINGS, STORE, VISIT_ROOMS
from telemed.web.middleware import actor
from telemed.web.monitoring_api import json_object
from telemed.web.vitals_view import DASHBOARD

routes = web.RouteTableDef()

CLINICIANS = (Role.DOCTOR, Role.NURSE)


def _when(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("at", "must be a time such as 2026-12-01T09:30:00Z")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError("at", "must be a time such as 2026-12-01T09:30:00Z") from None
    if moment.tzinfo is None:
        raise ValidationError("at", "must carry a time zone (Z or +01:00)")
    return truncate(moment)


def _text(body: dict[str, object], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise ValidationError(key, "must be a string")
    return value


@routes.post("/api/visits")
async def create_visit(request: web.Request) -> web.Response:
    """Book a visit; `doctor_id` defaults to the clinician asking."""
    user = await require(request, *CLINICIANS)
    body = await json_object(request, ("patient_id", "doctor_id", "at"))
    patient_id = _text(body, "patient_id")
    if not patient_id:
        raise ValidationError("patient_id", "is required")
    booking = await request.app[RECEPTION].book(
        actor(request),
        patient_id=patient_id,
        clinician_id=_text(body, "doctor_id", user.id) or user.id,
        at=_when(body.get("at")),
    )
    data = booking_json(booking, request.app[SETTINGS].base_url)
    return web.json_response(data, status=201, headers={"Cache-Control": "no-store"})


@routes.get("/api/visits")
async def list_visits(request: web.Request) -> web.Response:
    """One patient's visits (`?patient=ID`), or the asking clinician's open queue."""
    user = await require(request, *CLINICIANS)
    reception = request.app[RECEPTION]
    patient_id = request.query.get("patient")
    if patient_id:
        visits = await reception.visits_of_patient(actor(request), patient_id)
    else:
        visits = await reception.queue(user.id)
    return web.json_response({"visits": [visit_json(v) for v in visits]})


@routes.get("/api/visits/{visit_id}")
async def get_visit(request: web.Request) -> web.Response:
    await require(request, *CLINICIANS)
    visit = await request.app[RECEPTION].visit_for_clinician(
        actor(request), request.match_info["visit_id"], "visit.read"
    )
    return web.json_response(visit_json(visit))


@routes.post("/api/visits/{visit_id}/link")
async def reissue_link(request: web.Request) -> web.Response:
    await require(request, *CLINICIANS)
    booking = await request.app[RECEPTION].reissue_link(
        actor(request), request.match_info["visit_id"]
    )
    await request.app[VISIT_ROOMS].visit_changed(booking.visit, pass_revoked=True)
    data = booking_json(booking, request.app[SETTINGS].base_url)
    return web.json_response(data, headers={"Cache-Control": "no-store"})


@routes.post("/api/visits/{visit_id}/guests")
async def invite_guest(request: web.Request) -> web.Response:
    """Invite a guest (`{"role", "name"}`): their own join link, shown once."""
    await require(request, *CLINICIANS)
    body = await json_object(request, ("role", "name"))
    for key in ("role", "name"):
        if key not in body:
            raise ValidationError(key, "is required")
    invitation = await request.app[RECEPTION].invite(
        actor(request), request.match_info["visit_id"], role=body["role"], name=body["name"]
    )
    await request.app[VISIT_ROOMS].visit_changed(invitation.visit)
    full = invitation_json(invitation, request.app[SETTINGS].base_url)
    data = {k: full[k] for k in ("guest_id", "role", "name", "join_url", "expires_at", "state")}
    return web.json_response(data, status=201, headers={"Cache-Control": "no-store"})


@routes.delete("/api/visits/{visit_id}/guests/{guest_id}")
async def remove_guest(request: web.Request) -> web.Response:
    """Remove a guest: their link and pass die, and they leave the call."""
    await require(request, *CLINICIANS)
    visit, guest = await request.app[RECEPTION].remove_guest(
        actor(request), request.match_info["visit_id"], request.match_info["guest_id"]
    )
    await request.app[VISIT_ROOMS].guest_removed(visit, guest)
    return web.json_response(guest_json(guest))


@routes.post("/api/visits/{visit_id}/cancel")
async def cancel_visit(request: web.Request) -> web.Response:
    await require(request, *CLINICIANS)
    visit = await request.app[RECEPTION].cancel(actor(request), request.match_info["visit_id"])
    await request.app[VISIT_ROOMS].visit_changed(visit)
    return web.json_response(visit_json(visit))


@routes.post("/api/visits/{visit_id}/no-show")
async def no_show(request: web.Request) -> web.Response:
    await require(request, *CLINICIANS)
    visit = await request.app[RECEPTION].mark_no_show(
        actor(request), request.match_info["visit_id"]
    )
    await request.app[VISIT_ROOMS].visit_changed(visit)
    return web.json_response(visit_json(visit))


@routes.get("/visits/{visit_id}")
async def call_view(request: web.Request) -> web.Response:
    """The clinician's call view: the patient's video beside their details and vitals,
    and the consultation record's editor (static/js/record.js, over the records API)."""
    user = await require(request, *CLINICIANS)
    reception = request.app[RECEPTION]
    visit = await reception.visit_for_clinician(
        actor(request), request.match_info["visit_id"], "visit.open"
    )
    patient = await reception.patient(visit)
    policy = request.app[RECORDS].policy
    shown = visit_json(visit)
    context = {
        "visit": shown,
        "patient": patient_json(patient),
        "guests": [
            {k: g[k] for k in ("guest_id", "name", "role", "state", "waiting_since", "online")}
            for g in shown["guests"]
            if g["state"] != "removed"
        ],
        "max_guests": reception.policy.max_participants - 2,
        "columns": DASHBOARD,
        "record": {
            "can_sign": user.role is Role.DOCTOR,
            "accept": ",".join(sorted(policy.attachment_types)),
            "kinds": ", ".join(sorted(t.split("/")[-1].upper() for t in policy.attachment_types)),
            "max_bytes": policy.attachment_max_bytes,
            "max_size": _size(policy.attachment_max_bytes),
            "people": await _team_names(request, visit.patient_id, user.id),
        },
    }
    return render(request, "call.html", context)


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):g} MiB"
    return f"{count / 1024:g} KiB"


async def _team_names(request: web.Request, patient_id: str, me: str) -> dict[str, str]:
    """The names of the care team, by id: the editor shows who wrote each version."""
    store = request.app[STORE]
    names: dict[str, str] = {}
    for member_id in {*await store.care_team(patient_id), me}:
        member = await store.get_user(member_id)
        if member is not None:
            names[member_id] = member.name
    return names


@routes.post("/admin/waiting-message")
async def set_waiting_message(request: web.Request) -> web.StreamResponse:
    await require(request, Role.ADMIN)
    form = await request.post()
    message = form.get("message", "")
    await request.app[RECEPTION].set_waiting_message(
        actor(request), message if isinstance(message, str) else ""
    )
    raise web.HTTPSeeOther("/admin?done=waiting_message")
