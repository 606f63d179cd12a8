"""FHIR R4 REST: metadata, Patient read and search, AuditEvent search (admins)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from telemed import fhir
from telemed.accounts import Role
from telemed.audit import Outcome
from telemed.clock import iso
from telemed.web.auth import require
from telemed.web.keys import CLINIC, CLOCK, SETTINGS, STORE
from telemed.web.middleware import actor

routes = web.RouteTableDef()
MAX_AUDIT = 1000


def fhir_json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, content_type=fhir.MEDIA_TYPE)


@routes.get("/fhir/metadata")
async def metadata(request: web.Request) -> web.Response:
    base = request.app[SETTINGS].base_url
    return fhir_json(fhir.capability_statement(base, iso(request.app[CLOCK]())))


@routes.get("/fhir/Patient")
async def search_patients(request: web.Request) -> web.Response:
    await require(request)
    base = request.app[SETTINGS].base_url
    patients = await request.app[CLINIC].patients_for(actor(request))
    return fhir_json(fhir.bundle([fhir.patient(p, base) for p in patients], base))


@routes.get("/fhir/Patient/{patient_id}")
async def read_patient(request: web.Request) -> web.Response:
    await require(request)
    base = request.app[SETTINGS].base_url
    patient = await request.app[CLINIC].read_patient(
        actor(request), request.match_info["patient_id"]
    )
    return fhir_json(fhir.patient(patient, base))


@routes.get("/fhir/AuditEvent")
async def search_audit(request: web.Request) -> web.Response:
    await require(request, Role.ADMIN)
    base = request.app[SETTINGS].base_url
    patient_id = request.query.get("patient", "").removeprefix("Patient/") or None
    records = [
        r async for r in request.app[STORE].audit_records(patient_id=patient_id, limit=MAX_AUDIT)
    ]
    await request.app[CLINIC].audit(
        actor(request),
        "audit.search",
        Outcome.SUCCESS,
        patient_id=patient_id or "",
        entity="AuditEvent",
        detail=f"count={len(records)}",
    )
    return fhir_json(fhir.bundle([fhir.audit_event(r, base) for r in records], base))
