"""The JSON API for integrations and the dashboard's own scripts.

Bearer tokens and browser sessions follow the same access rules as the pages.
"""

from __future__ import annotations

from aiohttp import web

from telemed.api_json import patient_json, user_json
from telemed.web.auth import require
from telemed.web.keys import CLINIC
from telemed.web.middleware import actor

routes = web.RouteTableDef()


@routes.get("/api/me")
async def me(request: web.Request) -> web.Response:
    return web.json_response(user_json(await require(request)))


@routes.get("/api/patients")
async def list_patients(request: web.Request) -> web.Response:
    await require(request)
    patients = await request.app[CLINIC].patients_for(actor(request))
    return web.json_response({"patients": [patient_json(p) for p in patients]})


@routes.get("/api/patients/{patient_id}")
async def get_patient(request: web.Request) -> web.Response:
    await require(request)
    patient = await request.app[CLINIC].read_patient(
        actor(request), request.match_info["patient_id"]
    )
    return web.json_response(patient_json(patient))
