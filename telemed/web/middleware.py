"""Middlewares: errors and metrics, who is calling, CSRF, and security headers.

Order (outermost first): `observe` turns every failure into a page or a JSON error and
counts it; `authenticate` finds the session or bearer token; `csrf` refuses a
state-changing request from a browser session without the session's token.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from telemed import sessions
from telemed.accounts import User
from telemed.clinic import Actor
from telemed.errors import (
    Conflict,
    Forbidden,
    NotFound,
    StoreUnavailable,
    Unauthenticated,
    ValidationError,
)
from telemed.keyring import KeyringError
from telemed.records_office import RecordUnreadable
from telemed.sessions import Session
from telemed.tokens import token_hash
from telemed.web.keys import CLOCK, METRICS, SESSION_POLICY, SETTINGS, STORE

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

USER = web.RequestKey("user", User)
SESSION = web.RequestKey("session", Session)
VIA_TOKEN = web.RequestKey("via_token", bool)
REQUEST_ID = web.RequestKey("request_id", str)
LOGIN_CSRF_COOKIE = "telemed_login_csrf"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SOCKETIO_PATH = "/socket.io/"


def wants_json(request: web.Request) -> bool:
    return request.path.startswith(("/api/", "/fhir/")) or request.path in (
        "/api",
        "/fhir",
    )


def route_name(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


def source_address(request: web.Request) -> str:
    return request.remote or "unknown"


def actor(request: web.Request) -> Actor:
    return Actor.of(request[USER], source_address(request))


def error_response(request: web.Request, status: int, message: str) -> web.Response:
    """The error a person or a program is shown; never internals."""
    if request.path.startswith("/fhir"):
        code = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found"}.get(
            status, "exception"
        )
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": message}],
        }
        return web.json_response(outcome, status=status, content_type="application/fhir+json")
    if wants_json(request):
        return web.json_response({"error": message}, status=status)
    session: Session | None = request.get(SESSION)
    context = {
        "status": status,
        "message": message,
        "user": request.get(USER),
        "csrf_token": session.csrf_token if session else "",
    }
    try:
        return aiohttp_jinja2.render_template("error.html", request, context, status=status)
    except Exception:
        log.exception("error page failed to render request_id=%s", request.get(REQUEST_ID))
        return web.Response(text=message, status=status)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            if exc.status == 404 and not (exc.text or "").strip().startswith("{"):
                return error_response(request, 404, "Nothing here: the page was not found.")
            if exc.status == 405:
                return error_response(request, 405, "That method is not allowed here.")
            raise
        except ValidationError as exc:
            status = 400
            return error_response(request, 400, str(exc))
        except Unauthenticated as exc:
            status = 401
            response = error_response(request, 401, str(exc))
            response.headers["WWW-Authenticate"] = 'Bearer realm="telemed"'
            return response
        except Forbidden as exc:
            status = 403
            return error_response(request, 403, str(exc) or "Not allowed.")
        except NotFound as exc:
            status = 404
            return error_response(request, 404, str(exc) or "Not found.")
        except Conflict as exc:
            status = 409
            return error_response(request, 409, str(exc))
        except RecordUnreadable as exc:
            # erased: gone for good; otherwise a key or the stored data is wrong (an
            # operator's problem, said plainly, never answered with partial content)
            status = 410 if exc.erased else 500
            log.error("record unreadable request_id=%s erased=%s", request_id, exc.erased)
            return error_response(request, status, str(exc))
        except KeyringError as exc:
            status = 503
            log.error("keyring error request_id=%s: %s", request_id, exc)
            return error_response(request, 503, str(exc))
        except StoreUnavailable:
            status = 503
            log.exception("store unavailable request_id=%s", request_id)
            return error_response(
                request, 503, f"The service is unavailable. Reference: {request_id}"
            )
        except Exception:
            status = 500
            log.exception("unhandled error request_id=%s route=%s", request_id, route_name(request))
            return error_response(
                request, 500, f"Something went wrong on our side. Reference: {request_id}"
            )
    finally:
        metrics = request.app[METRICS]
        route = route_name(request)
        metrics.requests.labels(request.method, route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    store = request.app[STORE]
    bearer = _bearer(request)
    if bearer is not None:
        token = await store.find_token(token_hash(bearer))
        user = await store.get_user(token.user_id) if token and token.active else None
        if user is None or not user.active:
            raise Unauthenticated("The bearer token is unknown or revoked.")
        request[USER] = user
        request[VIA_TOKEN] = True
        return await handler(request)

    session, user = await session_user(request.app, request.cookies.get(sessions.COOKIE))
    if session is not None:
        request[SESSION] = session
        if user is not None:
            request[USER] = user
    return await handler(request)


async def session_user(app: web.Application, sid: str | None) -> tuple[Session | None, User | None]:
    """The live session for a cookie's id and, once fully signed in, its user.

    An expired session is deleted; each use moves the idle deadline (written at most once
    a minute). The user is None while the second factor is still owed.
    """
    if not sid:
        return None, None
    store = app[STORE]
    session = await store.get_session(sessions.session_key(sid))
    if session is None:
        return None, None
    now = app[CLOCK]()
    policy = app[SESSION_POLICY]
    if policy.expired(session, now):
        await store.delete_session(session.key)
        return None, None
    user = await store.get_user(session.user_id)
    if user is None or not user.active:
        return None, None
    if policy.needs_touch(session, now):
        session = sessions.touched(session, now)
        await store.put_session(session)
    return session, None if session.mfa_pending else user


@web.middleware
async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in UNSAFE or request.get(VIA_TOKEN):
        return await handler(request)
    if request.path.startswith(SOCKETIO_PATH):
        # Engine.IO's long-polling POSTs (the fallback when WebSocket is blocked) carry no
        # form token; Engine.IO refuses any other site's Origin itself, and a connection
        # is authenticated at connect from the session or visit cookie
        return await handler(request)
    expected: str | None
    session = request.get(SESSION)
    if session is not None:
        expected = session.csrf_token
    else:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    supplied = request.headers.get("X-CSRF-Token")
    if supplied is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await request.post()
        value = form.get("csrf_token")
        supplied = value if isinstance(value, str) else None
    if not expected or not supplied or not hmac.compare_digest(expected, supplied):
        log.info("csrf refused route=%s", route_name(request))
        if request.path.startswith("/api/"):
            return error_response(
                request,
                403,
                "a signed-in request that changes something needs the session's CSRF token "
                "in the X-CSRF-Token header (the pages carry it as data-csrf); a script "
                "uses a bearer token instead (telemed token create)",
            )
        return error_response(
            request,
            403,
            "This form has expired or did not come from this site. Reload the page and try again.",
        )
    return await handler(request)


def csrf_token_for(request: web.Request, response_cookies: dict[str, str]) -> str:
    """The token a form must carry: the session's, or a login cookie's (double submit)."""
    session: Session | None = request.get(SESSION)
    if session is not None:
        return session.csrf_token
    token = str(request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32))
    response_cookies[LOGIN_CSRF_COOKIE] = token
    return token


CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, error pages and static files included."""
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Permissions-Policy"] = "camera=(self), microphone=(self), geolocation=()"
    if request.app[SETTINGS].server.tls_cert or request.secure:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    if not request.path.startswith("/static/"):
        headers["Cache-Control"] = "no-store"


def cookie_options(request: web.Request) -> dict[str, Any]:
    secure = bool(request.app[SETTINGS].server.tls_cert) or request.secure
    return {"httponly": True, "samesite": "Lax", "secure": secure, "path": "/"}
