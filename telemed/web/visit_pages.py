"""The patient's side of a video visit over HTTP: the room page, claiming the link, and
the network check (see docs/visit-protocol.md, the contract with the browser).

The patient has no account: the join link opens the page, the first press on the page
claims the link for this browser, and from then on the `telemed_visit` cookie (the pass)
is what lets this browser back in. Every refusal is said in plain words, in the
patient's language.

A guest's link (`/v/{token}` too) opens the same page in guest mode: the claim sets the
`telemed_guest` cookie instead, and the page says whom the guest joins as. A guest is not
the patient: their page speaks their browser's language.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from aiohttp import web

from telemed.api_json import media_json
from telemed.clock import iso
from telemed.i18n import Catalogues, Language
from telemed.reception import LinkRefused, Reception
from telemed.visits import (
    GUEST_COOKIE,
    VISIT_COOKIE,
    Guest,
    Visit,
    guest_cookie_value,
    parse_guest_cookie,
    parse_visit_cookie,
    secret_hash,
    visit_cookie_value,
)
from telemed.web.auth import render
from telemed.web.keys import CATALOGUES, CLOCK, RECEPTION, SETTINGS
from telemed.web.middleware import cookie_options, source_address

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

UPLOAD_LIMIT = 512 * 1024  # bytes a network check may send in one request
MAX_TOKEN = 128  # a join token is 43 characters; anything far longer is not one
NO_STORE = {"Cache-Control": "no-store"}


def N_(message: str) -> str:  # noqa: N802 (the gettext marker's usual name)
    """Mark a message for the catalogue without translating it here."""
    return message


# What Reception says when it refuses a link or a pass (telemed/reception.py), marked
# here so that the catalogue carries them; tests/telemed/test_visit_pages.py checks
# that every LinkRefused message in reception.py is among them.
REFUSALS = (
    N_("This link is not valid. Ask the clinic to send a new one."),
    N_(
        "This link was already opened on another device. Ask the clinic to send "
        "a new one if that was not you."
    ),
    N_("This link was just opened elsewhere. Ask the clinic."),
    N_("This visit link is no longer valid on this device."),
    N_("This visit has ended. The link no longer works."),
    N_("This visit was cancelled. Ask the clinic for a new time."),
    N_("This link has expired. Ask the clinic to send a new one."),
    N_("The clinic removed you from this visit. The link no longer works."),
)
# What the guest's page says about who they join as (the guest's role, by its value).
GUEST_ROLES = {
    "interpreter": N_("You are joining as the interpreter."),
    "family": N_("You are joining as a family member."),
    "colleague": N_("You are joining as a colleague of the doctor."),
}
NO_PASS = N_("Open your visit link on this device first.")
TOO_LARGE = N_("The test upload was too large.")


def held_pass(request: web.Request) -> tuple[str, str] | None:
    """(visit_id, pass) from this browser's `telemed_visit` cookie, if it has one."""
    return parse_visit_cookie(request.cookies.get(VISIT_COOKIE))


def held_guest_pass(request: web.Request) -> tuple[str, str, str] | None:
    """(visit_id, guest_id, pass) from this browser's `telemed_guest` cookie, if any."""
    return parse_guest_cookie(request.cookies.get(GUEST_COOKIE))


async def visit_for_cookie(request: web.Request) -> Visit:
    """The open visit this browser's pass (the patient's, else a guest's) lets in;
    `LinkRefused` otherwise."""
    reception = request.app[RECEPTION]
    held = held_pass(request)
    guest = held_guest_pass(request)
    if held is not None:
        try:
            return await reception.visit_for_pass(*held)
        except LinkRefused:
            if guest is None:
                raise
    if guest is not None:
        visit, _ = await reception.guest_for_pass(*guest)
        return visit
    raise LinkRefused(NO_PASS)


def browser_language(request: web.Request) -> Language:
    return request.app[CATALOGUES].choose(None, request.headers.get("Accept-Language"))


async def visit_language(request: web.Request, visit: Visit) -> Language:
    """The patient's language from their record, else the browser's, else English."""
    patient = await request.app[RECEPTION].patient(visit)
    catalogues: Catalogues = request.app[CATALOGUES]
    return catalogues.choose(patient.language, request.headers.get("Accept-Language"))


async def dead_link_language(request: web.Request, token: str, dead: Visit | None) -> Language:
    """The language to refuse a link in: the patient's for the patient's link, the
    browser's for anything else (a guest's link, a link that never was)."""
    if dead is None or dead.link_hash != secret_hash(token):
        return browser_language(request)
    return await visit_language(request, dead)


async def refused_link(reception: Reception, token: str) -> tuple[int, Visit | None]:
    """Why a link was refused, as an HTTP status (404 for a link that never was, 410 for
    one that died, 403 for a live link that refused this browser), and its visit."""
    visit = guest = None
    if token and len(token) <= MAX_TOKEN:
        link_hash = secret_hash(token)
        visit = await reception.store.find_visit_by_link(link_hash)
        if visit is None:
            visit = await reception.store.find_visit_by_guest_link(link_hash)
            guest = None if visit is None else _guest_with_link(visit, link_hash)
    if visit is None:
        return 404, None
    if not visit.link_usable(reception.clock()):
        return 410, visit
    if guest is not None and (guest.removed or reception.clock() >= guest.link_expires_at):
        return 410, visit
    return 403, visit


def _guest_with_link(visit: Visit, link_hash: str) -> Guest | None:
    return next((g for g in visit.guests if g.link_hash == link_hash), None)


async def _link(reception: Reception, token: str) -> tuple[Visit, Guest | None]:
    """The visit a link opens, and the guest when it is a guest's link."""
    if not token or len(token) > MAX_TOKEN:
        raise LinkRefused(REFUSALS[0])
    try:
        return await reception.visit_for_link(token), None
    except LinkRefused:
        if await reception.store.find_visit_by_link(secret_hash(token)) is not None:
            raise  # the patient's link, dead: say why
    return await reception.guest_for_link(token)


# the room -------------------------------------------------------------------------------
@routes.get("/v/net/ping")
async def ping(request: web.Request) -> web.Response:
    """A tiny answer for the pre-call check to time (round trip to this server)."""
    try:
        await visit_for_cookie(request)
    except LinkRefused as exc:
        return _json_refusal(browser_language(request), str(exc), 403)
    now = request.app[CLOCK]()
    return web.json_response({"t": int(now.timestamp() * 1000)}, headers=NO_STORE)


@routes.post("/v/net/upload")
async def upload(request: web.Request) -> web.Response:
    """Read up to `UPLOAD_LIMIT` bytes and say how many: the browser times it."""
    try:
        await visit_for_cookie(request)
    except LinkRefused as exc:
        return _json_refusal(browser_language(request), str(exc), 403)
    language = browser_language(request)
    if request.content_length is not None and request.content_length > UPLOAD_LIMIT:
        return _json_refusal(language, TOO_LARGE, 413)
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
        if received > UPLOAD_LIMIT:
            return _json_refusal(language, TOO_LARGE, 413)
    return web.json_response({"bytes": received}, headers=NO_STORE)


@routes.get("/v/{token}")
async def room(request: web.Request) -> web.Response:
    """The patient's room. Opening it claims nothing (link previews fetch it too)."""
    token = request.match_info["token"]
    reception = request.app[RECEPTION]
    try:
        visit, guest = await _link(reception, token)
    except LinkRefused as exc:
        return await _gone(request, token, str(exc))
    if guest is not None:
        language = browser_language(request)
        returning = await _guest_returning(request, visit, guest)
    else:
        language = await visit_language(request, visit)
        returning = await _patient_returning(request, visit)
    context: dict[str, Any] = {
        **language.template_globals(),
        "lang": language.code,
        "i18n": language.script_json(),
        "claim_url": f"/v/{token}/claim",
        "returning": returning,
        "scheduled_at": iso(visit.scheduled_at),
        "media": media_json(request.app[SETTINGS].visits),
        "guest": None
        if guest is None
        else {"role": guest.role.value, "joining_as": GUEST_ROLES[guest.role.value]},
    }
    return render(request, "visit.html", context)


async def _patient_returning(request: web.Request, visit: Visit) -> bool:
    held = held_pass(request)
    if held is None or held[0] != visit.id:
        return False
    try:
        return (await request.app[RECEPTION].visit_for_pass(*held)).id == visit.id
    except LinkRefused:
        return False


async def _guest_returning(request: web.Request, visit: Visit, guest: Guest) -> bool:
    held = held_guest_pass(request)
    if held is None or held[:2] != (visit.id, guest.id):
        return False
    try:
        await request.app[RECEPTION].guest_for_pass(*held)
    except LinkRefused:
        return False
    return True


@routes.post("/v/{token}/claim")
async def claim(request: web.Request) -> web.Response:
    """Claim the link for this browser and give it the pass (the same browser may claim
    again: a reload, a reopened link); another browser is refused."""
    token = request.match_info["token"]
    reception = request.app[RECEPTION]
    try:
        linked, guest = await _link(reception, token)
    except LinkRefused as exc:
        status, dead = await refused_link(reception, token)
        language = await dead_link_language(request, token, dead)
        return _json_refusal(language, str(exc), status, dead)
    if guest is not None:
        return await _claim_guest(request, token, linked)
    language = await visit_language(request, linked)
    held = held_pass(request)
    try:
        visit, new_pass = await reception.claim(
            token, source_address(request), held_pass=held[1] if held else ""
        )
    except LinkRefused as exc:
        status, dead = await refused_link(reception, token)
        log.info("visit link refused visit=%s status=%d", linked.id, status)
        return _json_refusal(language, str(exc), status, dead)
    body = {
        "visit_id": visit.id,
        "state": visit.state.value,
        "language": language.code,
        "media": media_json(request.app[SETTINGS].visits),
    }
    response = web.json_response(body, headers=NO_STORE)
    _set_pass_cookie(
        request,
        response,
        VISIT_COOKIE,
        visit_cookie_value(visit.id, new_pass),
        visit.link_expires_at,
    )
    return response


async def _claim_guest(request: web.Request, token: str, linked: Visit) -> web.Response:
    """A guest's claim: the `telemed_guest` cookie; the page learns whom it is for."""
    reception = request.app[RECEPTION]
    language = browser_language(request)
    held = held_guest_pass(request)
    try:
        visit, guest, new_pass = await reception.claim_guest(
            token, source_address(request), held_pass=held[2] if held else ""
        )
    except LinkRefused as exc:
        status, dead = await refused_link(reception, token)
        log.info("guest link refused visit=%s status=%d", linked.id, status)
        return _json_refusal(language, str(exc), status, dead)
    body = {
        "visit_id": visit.id,
        "state": visit.state.value,
        "language": language.code,
        "media": media_json(request.app[SETTINGS].visits),
        "guest": {"guest_id": guest.id, "role": guest.role.value, "state": guest.state.value},
    }
    response = web.json_response(body, headers=NO_STORE)
    _set_pass_cookie(
        request,
        response,
        GUEST_COOKIE,
        guest_cookie_value(visit.id, guest.id, new_pass),
        guest.link_expires_at,
    )
    return response


def _set_pass_cookie(
    request: web.Request, response: web.Response, name: str, value: str, expires: datetime
) -> None:
    lifetime = expires - request.app[CLOCK]()
    response.set_cookie(
        name,
        value,
        max_age=max(1, int(lifetime.total_seconds())),
        httponly=True,
        samesite="Strict",
        secure=cookie_options(request)["secure"],
        path="/",
    )


async def _gone(request: web.Request, token: str, message: str) -> web.Response:
    """The plain-words page for a link that does not (or no longer) open a visit."""
    status, dead = await refused_link(request.app[RECEPTION], token)
    language = await dead_link_language(request, token, dead)
    context: dict[str, Any] = {
        **language.template_globals(),
        "lang": language.code,
        "message": language.gettext(message),
        "status": status,
    }
    return render(request, "visit_gone.html", context, status=status)


def _json_refusal(
    language: Language, message: str, status: int, dead: Visit | None = None
) -> web.Response:
    """The refusal in the patient's words; for a visit that is over, also its `state`, so
    that the page shows its ended (or cancelled) view rather than an error."""
    body: dict[str, Any] = {"error": language.gettext(message)}
    if status == 410 and dead is not None and not dead.open:
        body["state"] = dead.state.value
    return web.json_response(body, status=status, headers=NO_STORE)
