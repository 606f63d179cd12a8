"""Enrolling and revoking wearables from the patient page (the care team's action)."""

from __future__ import annotations

from aiohttp import web

from devices.dynsec import DynsecError
from telemed.accounts import Role
from telemed.errors import StoreUnavailable
from telemed.web.auth import render, require
from telemed.web.keys import ENROLLMENT
from telemed.web.middleware import actor, error_response

routes = web.RouteTableDef()


@routes.post("/patients/{patient_id}/devices")
async def enroll(request: web.Request) -> web.Response:
    await require(request, Role.DOCTOR, Role.NURSE)
    form = await request.post()
    patient_id = request.match_info["patient_id"]
    try:
        enrolled = await request.app[ENROLLMENT].enroll(
            actor(request), patient_id, str(form.get("kind", ""))
        )
    except DynsecError as exc:
        raise StoreUnavailable(f"the MQTT broker refused the enrollment: {exc}") from exc
    response = render(
        request,
        "device_enrolled.html",
        {"credentials": enrolled.as_json(), "patient_id": patient_id},
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.post("/devices/{device_id}/revoke")
async def revoke(request: web.Request) -> web.StreamResponse:
    await require(request, Role.DOCTOR, Role.NURSE)
    try:
        device = await request.app[ENROLLMENT].revoke(
            actor(request), request.match_info["device_id"]
        )
    except DynsecError as exc:
        return error_response(
            request, 503, f"The MQTT broker did not confirm the revocation: {exc}"
        )
    raise web.HTTPSeeOther(f"/patients/{device.patient_id}")
