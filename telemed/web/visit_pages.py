"""The patient's side of a video visit over HTTP: the room page, claiming the link, and
the network check (see docs/visit-protocol.md, the contract with the browser).

The patient has no account: the join link opens the page, the first press on the page
claims the link for this browser, and from then on the `telemed_visit` cookie (the pass)
is what lets this browser back in. Every refusal is said in plain words, in the
patient's language.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from telemed.api_json import media_json
from telemed.clock import iso
from telemed.i18n import Catalogues, Language
from telemed.reception import LinkRefused, Reception
from telemed.visits import (
    VISIT_COOKIE,
    Visit,
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
)
NO_PASS = N_("Open your visit link on this device first.")
TOO_LARGE = N_("The test upload was too large.")


def held_pass(request: web.Request) -> tuple[str, str] | None:
    """(visit_id, pass) from this browser's `telemed_visit` cookie, if it has one."""
    return parse_visit_cookie(request.cookies.get(VISIT_COOKIE))


async def visit_for_cookie(request: web.Request) -> Visit:
    """The open visit this browser's pass lets in; `LinkRefused` otherwise."""
    held = held_pass(request)
    if held is None:
        raise LinkRefused(NO_PASS)
    return await request.app[RECEPTION].visit_for_pass(*held)


def browser_language(request: web.Request) -> Language:
    return request.app[CATALOGUES].choose(None, request.headers.get("Accept-Language"))


async def visit_language(request: web.Request, visit: Visit) -> Language:
    """The patient's language from their record, else the browser's, else English."""
    patient = await request.app[RECEPTION].patient(visit)
    catalogues: Catalogues = request.app[CATALOGUES]
    return catalogues.choose(patient.language, request.headers.get("Accept-Language"))


async def refused_link(reception: Reception, token: str) -> tuple[int, Visit | None]:
    """Why a link was refused, as an HTTP status (404 for a link that never was, 410 for
    one that died, 403 for a live link that refused this browser), and its visit."""
    visit = None
    if token and len(token) <= MAX_TOKEN:
        visit = await reception.store.find_visit_by_link(secret_hash(token))
    if visit is None:
        return 404, None
    if not visit.link_usable(reception.clock()):
        return 410, visit
    return 403, visit


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
        visit = await _visit_for_link(reception, token)
    except LinkRefused as exc:
        return await _gone(request, token, str(exc))
    language = await visit_language(request, visit)
    returning = False
    held = held_pass(request)
    if held is not None and held[0] == visit.id:
        try:
            returning = (await reception.visit_for_pass(*held)).id == visit.id
        except LinkRefused:
            returning = False
    context: dict[str, Any] = {
        **language.template_globals(),
        "lang": language.code,
        "i18n": language.script_json(),
        "claim_url": f"/v/{token}/claim",
        "returning": returning,
        "scheduled_at": iso(visit.scheduled_at),
        "media": media_json(request.app[SETTINGS].visits),
    }
    return render(request, "visit.html", context)


@routes.post("/v/{token}/claim")
async def claim(request: web.Request) -> web.Response:
    """Claim the link for this browser and give it the pass (the same browser may claim
    again: a reload, a reopened link); another browser is refused."""
    token = request.match_info["token"]
    reception = request.app[RECEPTION]
    try:
        linked = await _visit_for_link(reception, token)
    except LinkRefused as exc:
        status, dead = await refused_link(reception, token)
        language = (
            browser_language(request) if dead is None else await visit_language(request, dead)
        )
        return _json_refusal(language, str(exc), status, dead)
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
    lifetime = visit.link_expires_at - request.app[CLOCK]()
    options = cookie_options(request)
    response.set_cookie(
        VISIT_COOKIE,
        visit_cookie_value(visit.id, new_pass),
        max_age=max(1, int(lifetime.total_seconds())),
        httponly=True,
        samesite="Strict",
        secure=options["secure"],
        path="/",
    )
    return response


async def _visit_for_link(reception: Reception, token: str) -> Visit:
    if not token or len(token) > MAX_TOKEN:
        raise LinkRefused(REFUSALS[0])
    return await reception.visit_for_link(token)


async def _gone(request: web.Request, token: str, message: str) -> web.Response:
    """The plain-words page for a link that does not (or no longer) open a visit."""
    status, dead = await refused_link(request.app[RECEPTION], token)
    language = browser_language(request) if dead is None else await visit_language(request, dead)
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
