"""The care team's monitoring actions as plain forms (they work without script):
acknowledge or resolve an alert, record a check-in, change the monitoring plan.
A patient records their own check-in from their page."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from telemed.accounts import Role
from telemed.errors import ValidationError
from telemed.monitoring import Threshold
from telemed.web.auth import require
from telemed.web.keys import MONITOR
from telemed.web.middleware import actor
from telemed.web.vitals_view import COLUMNS

routes = web.RouteTableDef()
CONSCIOUSNESS = ("A", "C", "V", "P", "U")


@routes.post("/patients/{patient_id}/alerts/{alert_id}")
async def alert_action(request: web.Request) -> web.Response:
    await require(request, Role.DOCTOR, Role.NURSE)
    form = await request.post()
    monitor, who = request.app[MONITOR], actor(request)
    alert_id = request.match_info["alert_id"]
    action = str(form.get("action", ""))
    if action == "acknowledge":
        await monitor.acknowledge(who, alert_id)
    elif action == "resolve":
        await monitor.resolve(who, alert_id)
    else:
        raise ValidationError("action", "must be acknowledge or resolve")
    raise web.HTTPSeeOther(f"/patients/{request.match_info['patient_id']}#alerts")


def _check_in_fields(form: dict[str, str]) -> tuple[str | None, bool | None]:
    consciousness = form.get("consciousness") or None
    if consciousness is not None and consciousness not in CONSCIOUSNESS:
        raise ValidationError("consciousness", "choose A, C, V, P or U")
    breathing = form.get("oxygen", "")
    if breathing not in ("", "air", "oxygen"):
        raise ValidationError("oxygen", "choose air or oxygen")
    return consciousness, None if not breathing else breathing == "oxygen"


@routes.post("/patients/{patient_id}/check-ins")
async def clinician_check_in(request: web.Request) -> web.Response:
    await require(request, Role.DOCTOR, Role.NURSE)
    form = {k: str(v) for k, v in (await request.post()).items()}
    consciousness, oxygen = _check_in_fields(form)
    patient_id = request.match_info["patient_id"]
    await request.app[MONITOR].check_in(actor(request), patient_id, consciousness, oxygen)
    raise web.HTTPSeeOther(f"/patients/{patient_id}#news2")


@routes.post("/me/check-ins")
async def patient_check_in(request: web.Request) -> web.Response:
    user = await require(request, Role.PATIENT)
    form = {k: str(v) for k, v in (await request.post()).items()}
    consciousness, oxygen = _check_in_fields(form)
    await request.app[MONITOR].check_in(actor(request), user.id, consciousness, oxygen)
    raise web.HTTPSeeOther("/me?checked_in=1")


def _number(form: dict[str, str], field: str) -> float | None:
    text = form.get(field, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValidationError(field, "must be a number") from None


def _minutes(form: dict[str, str], field: str) -> timedelta | None:
    value = _number(form, field)
    return None if value is None else timedelta(minutes=value)


@routes.post("/patients/{patient_id}/monitoring")
async def update_plan(request: web.Request) -> web.Response:
    await require(request, Role.DOCTOR, Role.NURSE)
    form = {k: str(v) for k, v in (await request.post()).items()}
    thresholds: dict[str, Threshold | None] = {}
    for c in COLUMNS:
        low, high = _number(form, f"low-{c.code}"), _number(form, f"high-{c.code}")
        thresholds[c.code] = Threshold(low, high)
    scale = form.get("spo2_scale", "1")
    if scale not in ("1", "2"):
        raise ValidationError("spo2_scale", "must be 1 or 2")
    patient_id = request.match_info["patient_id"]
    await request.app[MONITOR].update_plan(
        actor(request),
        patient_id,
        thresholds=thresholds,
        spo2_scale=int(scale),
        offline_after=_minutes(form, "offline_after_minutes"),
        quiet_period=_minutes(form, "quiet_period_minutes"),
    )
    raise web.HTTPSeeOther(f"/patients/{patient_id}#plan")
