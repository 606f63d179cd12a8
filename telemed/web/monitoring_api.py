"""The JSON API of remote monitoring: alerts, NEWS2, the monitoring plan, check-ins.

Handlers reach the service through `request.app[MONITOR]`; access rules and audit live
in `devices.monitor.Monitor`. State-changing calls from a browser session carry the
X-CSRF-Token header (the csrf middleware enforces it); bearer-token calls need none.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from devices import alerts
from telemed.api_json import alert_json, optional_iso
from telemed.clock import iso
from telemed.errors import ValidationError
from telemed.monitoring import AlertState, CheckIn, MonitoringPlan, Threshold
from telemed.web.auth import require
from telemed.web.keys import MONITOR
from telemed.web.middleware import actor

routes = web.RouteTableDef()

# ?state= values; "active" is open or acknowledged
STATE_FILTERS: dict[str, frozenset[AlertState]] = {
    **{s.value: frozenset({s}) for s in AlertState},
    "active": frozenset({AlertState.OPEN, AlertState.ACKNOWLEDGED}),
}
PLAN_FIELDS = ("thresholds", "spo2_scale", "offline_after_minutes", "quiet_period_minutes")
CHECK_IN_FIELDS = ("consciousness", "on_oxygen")


def _limits(t: Threshold | None) -> dict[str, float | None]:
    return {"low": None, "high": None} if t is None else {"low": t.low, "high": t.high}


def plan_json(plan: MonitoringPlan) -> dict[str, Any]:
    """Every vital the server knows, with its threshold (nulls: none) and the default."""
    defaults = alerts.default_thresholds(plan.spo2_scale)
    codes = sorted({*alerts.known_codes(), *plan.thresholds})
    return {
        "patient_id": plan.patient_id,
        "thresholds": {
            code: {
                "name": alerts.vital_name(code),
                "unit": alerts.unit_shown(code),
                **_limits(plan.thresholds.get(code)),
                "default": _limits(defaults.get(code)),
            }
            for code in codes
        },
        "spo2_scale": plan.spo2_scale,
        "offline_after_minutes": int(plan.offline_after.total_seconds() // 60),
        "quiet_period_minutes": int(plan.quiet_period.total_seconds() // 60),
        "updated_by": plan.updated_by or None,
        "updated_at": optional_iso(plan.updated_at),
    }


def check_in_json(c: CheckIn) -> dict[str, Any]:
    return {
        "id": c.id,
        "patient_id": c.patient_id,
        "taken_at": iso(c.taken_at),
        "entered_by": c.entered_by,
        "entered_by_role": c.entered_by_role,
        "consciousness": c.consciousness,
        "on_oxygen": c.on_oxygen,
    }


async def json_object(request: web.Request, fields: tuple[str, ...]) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ValidationError("body", "must be JSON") from None
    return object_with(body, fields)


def object_with(body: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """`body` if it is a JSON object holding only these fields; else a refusal naming why."""
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    for key in body:
        if key not in fields:
            raise ValidationError(str(key), f"is not accepted here (use {', '.join(fields)})")
    return body


def _thresholds(value: Any) -> dict[str, Threshold | None]:
    if not isinstance(value, dict):
        raise ValidationError("thresholds", 'must be an object such as {"8867-4": {"low": 45}}')
    parsed: dict[str, Threshold | None] = {}
    for code, limits in value.items():
        if limits is None:
            parsed[code] = None  # back to the default
            continue
        if not isinstance(limits, dict):
            raise ValidationError(
                f"thresholds.{code}", 'must be {"low": number|null, "high": number|null} or null'
            )
        for key in limits:
            if key not in ("low", "high"):
                raise ValidationError(f"thresholds.{code}.{key}", "is not low or high")
        parsed[code] = alerts.clean_threshold(code, limits.get("low"), limits.get("high"))
    return parsed


@routes.get("/api/patients/{patient_id}/alerts")
async def list_alerts(request: web.Request) -> web.Response:
    await require(request)
    wanted = request.query.getall("state", [])
    states: set[AlertState] | None = None
    if wanted:
        states = set()
        for name in wanted:
            if name not in STATE_FILTERS:
                raise ValidationError("state", f"must be one of {', '.join(STATE_FILTERS)}")
            states |= STATE_FILTERS[name]
    found = await request.app[MONITOR].alerts(
        actor(request), request.match_info["patient_id"], states
    )
    return web.json_response({"alerts": [alert_json(a) for a in found]})


@routes.post("/api/alerts/{alert_id}/acknowledge")
async def acknowledge_alert(request: web.Request) -> web.Response:
    await require(request)
    alert = await request.app[MONITOR].acknowledge(actor(request), request.match_info["alert_id"])
    return web.json_response(alert_json(alert))


@routes.post("/api/alerts/{alert_id}/resolve")
async def resolve_alert(request: web.Request) -> web.Response:
    await require(request)
    alert = await request.app[MONITOR].resolve(actor(request), request.match_info["alert_id"])
    return web.json_response(alert_json(alert))


@routes.get("/api/patients/{patient_id}/news2")
async def news2(request: web.Request) -> web.Response:
    await require(request)
    body = await request.app[MONITOR].news2(actor(request), request.match_info["patient_id"])
    return web.json_response(body)


@routes.get("/api/patients/{patient_id}/monitoring")
async def get_monitoring(request: web.Request) -> web.Response:
    await require(request)
    plan = await request.app[MONITOR].plan(actor(request), request.match_info["patient_id"])
    return web.json_response(plan_json(plan))


@routes.put("/api/patients/{patient_id}/monitoring")
async def put_monitoring(request: web.Request) -> web.Response:
    """Change what is given: `thresholds` by LOINC code ({"low", "high"}: null is no limit
    on that side; the code mapped to null: back to the default), `spo2_scale` (1 or 2),
    `offline_after_minutes`, `quiet_period_minutes`."""
    await require(request)
    body = await json_object(request, PLAN_FIELDS)
    offline = body.get("offline_after_minutes")
    quiet = body.get("quiet_period_minutes")
    plan = await request.app[MONITOR].update_plan(
        actor(request),
        request.match_info["patient_id"],
        thresholds=_thresholds(body["thresholds"]) if "thresholds" in body else None,
        spo2_scale=alerts.clean_scale(body["spo2_scale"]) if "spo2_scale" in body else None,
        offline_after=None
        if offline is None
        else alerts.clean_duration("offline_after_minutes", offline, alerts.OFFLINE_AFTER_RANGE),
        quiet_period=None
        if quiet is None
        else alerts.clean_duration("quiet_period_minutes", quiet, alerts.QUIET_PERIOD_RANGE),
    )
    return web.json_response(plan_json(plan))


@routes.post("/api/patients/{patient_id}/check-ins")
async def post_check_in(request: web.Request) -> web.Response:
    """`consciousness` (A, C, V, P or U) and/or `on_oxygen` (true or false)."""
    await require(request)
    body = await json_object(request, CHECK_IN_FIELDS)
    consciousness = body.get("consciousness")
    on_oxygen = body.get("on_oxygen")
    if on_oxygen is not None and not isinstance(on_oxygen, bool):
        raise ValidationError("on_oxygen", "must be true or false")
    entry = await request.app[MONITOR].check_in(
        actor(request),
        request.match_info["patient_id"],
        consciousness=None if consciousness is None else alerts.clean_consciousness(consciousness),
        on_oxygen=on_oxygen,
    )
    return web.json_response(check_in_json(entry), status=201)
