"""Sign-in, second factor, sign-out, and two-factor enrolment."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web

from telemed import sessions, totp
from telemed.accounts import Role, User
from telemed.audit import Outcome
from telemed.clinic import Actor
from telemed.errors import Forbidden, Unauthenticated
from telemed.login import attempt_login
from telemed.throttle import second_factor_key
from telemed.web.keys import CLINIC, CLOCK, METRICS, SETTINGS, STORE, THROTTLE_POLICY
from telemed.web.middleware import (
    SESSION,
    USER,
    cookie_options,
    csrf_token_for,
    error_response,
    source_address,
    wants_json,
)

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

ENROL_PATH = "/account/2fa"


def landing(user: User) -> str:
    return {Role.ADMIN: "/admin", Role.PATIENT: "/me"}.get(user.role, "/dashboard")


def _safe_next(value: str | None) -> str:
    """Only same-site paths: never an open redirect."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return ""


async def must_enrol_2fa(request: web.Request, user: User) -> bool:
    if user.totp_secret or user.role is Role.PATIENT:
        return False
    default = request.app[SETTINGS].security.require_2fa_for_clinicians
    return await request.app[CLINIC].require_2fa(default)


async def require(request: web.Request, *roles: Role) -> User:
    """The signed-in user, if their role is one of `roles` (any role when none given)."""
    user: User | None = request.get(USER)
    if user is None:
        if wants_json(request):
            raise Unauthenticated("sign in, or send a bearer token")
        raise web.HTTPFound("/login?next=" + quote(request.path_qs, safe="/?=&"))
    if request.path != ENROL_PATH and await must_enrol_2fa(request, user):
        if wants_json(request):
            raise Forbidden("two-factor sign-in must be set up first, in the web pages")
        raise web.HTTPFound(ENROL_PATH)
    if roles and user.role not in roles:
        await request.app[CLINIC].audit(
            Actor.of(user, source_address(request)),
            "page.open",
            Outcome.DENIED,
            entity=request.path,
            detail="role not allowed",
        )
        raise Forbidden("Your role does not give access to this page.")
    return user


def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """Render a page with the CSRF token and the signed-in user in its context."""
    cookies: dict[str, str] = {}
    context = {
        "csrf_token": csrf_token_for(request, cookies),
        "user": request.get(USER),
        **context,
    }
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    for name, value in cookies.items():
        response.set_cookie(name, value, **cookie_options(request))
    return response


async def _start_session(
    request: web.Request, response: web.StreamResponse, user: User, *, mfa_pending: bool
) -> None:
    """A new session id on every sign-in step (no fixation), the old one removed."""
    store = request.app[STORE]
    old = request.get(SESSION)
    if old is not None:
        await store.delete_session(old.key)
    sid, session = sessions.start(
        user.id, request.app[CLOCK](), source_address(request), mfa_pending=mfa_pending
    )
    await store.put_session(session)
    opts = cookie_options(request)
    response.set_cookie(sessions.COOKIE, sid, **opts)
    response.del_cookie("telemed_login_csrf", path="/")


@routes.get("/login")
async def login_page(request: web.Request) -> web.Response:
    user = request.get(USER)
    if user is not None:
        raise web.HTTPFound(landing(user))
    return render(
        request,
        "login.html",
        {"next": _safe_next(request.query.get("next")), "email": "", "error": ""},
    )


@routes.post("/login")
async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    email = str(form.get("email", "")).strip()
    password = str(form.get("password", ""))
    nxt = _safe_next(str(form.get("next", "")))
    errors = []
    if not email:
        errors.append("E-mail address is required.")
    if not password:
        errors.append("Password is required.")
    if errors:
        return render(
            request,
            "login.html",
            {"next": nxt, "email": email, "error": " ".join(errors)},
            status=400,
        )
    result = await attempt_login(
        request.app[CLINIC],
        request.app[THROTTLE_POLICY],
        email,
        password,
        source_address(request),
    )
    metrics = request.app[METRICS]
    if result.user is None:
        metrics.logins.labels("throttled" if result.retry_after else "failure").inc()
        response = render(
            request,
            "login.html",
            {"next": nxt, "email": email, "error": result.message},
            status=429 if result.retry_after else 401,
        )
        if result.retry_after:
            response.headers["Retry-After"] = str(int(result.retry_after.total_seconds()) + 1)
        return response
    user = result.user
    if user.totp_secret:
        response = web.HTTPFound("/login/second-factor" + (f"?next={quote(nxt)}" if nxt else ""))
        await _start_session(request, response, user, mfa_pending=True)
        metrics.logins.labels("second_factor").inc()
        raise response
    metrics.logins.labels("success").inc()
    response = web.HTTPFound(nxt or landing(user))
    await _start_session(request, response, user, mfa_pending=False)
    raise response


async def _pending_user(request: web.Request) -> User:
    session = request.get(SESSION)
    if session is None or not session.mfa_pending:
        raise web.HTTPFound("/login")
    user = await request.app[STORE].get_user(session.user_id)
    if user is None:
        raise web.HTTPFound("/login")
    return user


@routes.get("/login/second-factor")
async def second_factor_page(request: web.Request) -> web.Response:
    await _pending_user(request)
    return render(
        request, "second_factor.html", {"next": _safe_next(request.query.get("next")), "error": ""}
    )


@routes.post("/login/second-factor")
async def second_factor_submit(request: web.Request) -> web.StreamResponse:
    user = await _pending_user(request)
    form = await request.post()
    code = str(form.get("code", "")).strip()
    nxt = _safe_next(str(form.get("next", "")))
    clinic, store = request.app[CLINIC], request.app[STORE]
    policy, now = request.app[THROTTLE_POLICY].account, request.app[CLOCK]()
    key = second_factor_key(user.id)  # apart from the password's: a right password
    # must not reset the count of wrong codes
    state = await store.get_throttle(key)
    actor = Actor.of(user, source_address(request))
    if policy.wait(state, now):
        await clinic.audit(actor, "login.second_factor", Outcome.DENIED, detail="throttled")
        return render(
            request,
            "second_factor.html",
            {"next": nxt, "error": "Too many wrong codes: wait a while and try again."},
            status=429,
        )
    if not code:
        return render(
            request, "second_factor.html", {"next": nxt, "error": "Code is required."}, status=400
        )
    step = totp.accept_code(user.totp_secret, code, user.totp_last_step, now)
    updated: User | None = None
    how = ""
    if step is not None:
        updated, how = dataclasses.replace(user, totp_last_step=step), "totp"
    else:
        remaining = totp.use_recovery_code(user.recovery_codes, code)
        if remaining is not None:
            updated, how = dataclasses.replace(user, recovery_codes=remaining), "recovery code"
    if updated is None:
        await store.put_throttle(policy.failed(key, state, now))
        await clinic.audit(actor, "login.second_factor", Outcome.FAILURE, detail="wrong code")
        request.app[METRICS].logins.labels("failure").inc()
        return render(
            request,
            "second_factor.html",
            {"next": nxt, "error": "That code is not right, or was already used."},
            status=401,
        )
    await store.update_user(updated)
    await store.delete_throttle(key)
    await clinic.audit(actor, "login.second_factor", detail=how)
    request.app[METRICS].logins.labels("success").inc()
    response = web.HTTPFound(nxt or landing(user))
    await _start_session(request, response, updated, mfa_pending=False)
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    session = request.get(SESSION)
    response = web.HTTPFound("/login")
    if session is not None:
        await request.app[STORE].delete_session(session.key)
        user = request.get(USER)
        if user is not None:
            await request.app[CLINIC].audit(Actor.of(user, source_address(request)), "logout")
    response.del_cookie(sessions.COOKIE, path="/")
    raise response


@routes.get(ENROL_PATH)
async def enrol_page(request: web.Request) -> web.Response:
    user = await require(request)
    if user.role is Role.PATIENT:
        raise Forbidden("Two-factor sign-in is for clinicians and admins.")
    if user.totp_secret:
        return render(
            request,
            "enrol_2fa.html",
            {"enrolled": True, "recovery_codes": [], "remaining": len(user.recovery_codes)},
        )
    secret = totp.new_secret()
    return render(request, "enrol_2fa.html", _enrol_context(user, secret, ""))


def _enrol_context(user: User, secret: str, error: str) -> dict[str, Any]:
    uri = totp.provisioning_uri(secret, user.email)
    return {
        "enrolled": False,
        "secret": secret,
        "qr_svg": totp.qr_svg(uri),
        "error": error,
        "required": False,
    }


@routes.post(ENROL_PATH)
async def enrol_submit(request: web.Request) -> web.Response:
    user = await require(request)
    if user.role is Role.PATIENT:
        raise Forbidden("Two-factor sign-in is for clinicians and admins.")
    if user.totp_secret:
        return error_response(request, 409, "Two-factor sign-in is already set up.")
    form = await request.post()
    secret = str(form.get("secret", ""))
    code = str(form.get("code", ""))
    if len(secret) < 32 or not secret.isalnum():
        return render(
            request,
            "enrol_2fa.html",
            _enrol_context(user, totp.new_secret(), "secret: start again"),
            status=400,
        )
    step = totp.accept_code(secret, code, 0, request.app[CLOCK]())
    if step is None:
        return render(
            request,
            "enrol_2fa.html",
            _enrol_context(
                user, secret, "code: that is not the code your app shows now; try the next one"
            ),
            status=400,
        )
    codes = totp.new_recovery_codes()
    updated = dataclasses.replace(
        user,
        totp_secret=secret,
        totp_last_step=step,
        recovery_codes=tuple(totp.hash_recovery_code(c) for c in codes),
    )
    await request.app[STORE].update_user(updated)
    await request.app[CLINIC].audit(Actor.of(user, source_address(request)), "2fa.enrol")
    return render(
        request,
        "enrol_2fa.html",
        {"enrolled": True, "recovery_codes": codes, "remaining": len(codes)},
    )
