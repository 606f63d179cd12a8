"""FHIR R4 REST: metadata, Patient read and search, Observation (vital signs) and Device
search, Encounter search and the consultation record as Encounter/$everything, AuditEvent
search (admins)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from devices.vitals import VITALS
from telemed import fhir
from telemed.accounts import Role
from telemed.audit import Outcome
from telemed.clock import iso
from telemed.errors import NotFound
from telemed.web.auth import require
from telemed.web.keys import CLINIC, CLOCK, ENROLLMENT, RECORDS, SETTINGS, STORE
from telemed.web.middleware import actor

routes = web.RouteTableDef()
MAX_AUDIT = 1000
# Observation.code.text: the vitals catalogue's plain names ("heart rate"); the coding's
# display stays LOINC's own (telemed.fhir.LOINC_DISPLAY).
VITAL_TEXT = {vital.code: vital.display for vital in VITALS}


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


def _query(request: web.Request) -> fhir.Query:
    return {name: request.query.getall(name) for name in request.query}


def _url(base: str, resource: str, params: Sequence[tuple[str, str]]) -> str:
    return f"{base}/fhir/{resource}?{urlencode(params)}"


@routes.get("/fhir/Observation")
async def search_observations(request: web.Request) -> web.Response:
    """Vital signs of one patient, oldest first, paged by the bundle's `next` link.

    For the patient's care team and the patient themself (never an admin: clinical
    data); every search is audited as observation.search, refusals included.
    """
    await require(request)
    base = request.app[SETTINGS].base_url
    search = fhir.parse_observation_search(_query(request))
    await request.app[CLINIC].clinical_access(
        actor(request), search.patient_id, "observation.search"
    )
    page = await fhir.search_vital_signs(request.app[STORE], search)
    links = [("self", _url(base, "Observation", search.params(search.after)))]
    if page.next is not None:
        links.append(("next", _url(base, "Observation", search.params(page.next))))
    resources = [fhir.observation(sign, base, VITAL_TEXT) for sign in page.signs]
    # `total` only when this one page is the whole result
    whole = search.after is None and page.next is None
    return fhir_json(fhir.bundle(resources, base, links=links, total=whole))


@routes.get("/fhir/Device")
async def search_devices(request: web.Request) -> web.Response:
    """A patient's wearables, revoked ones included (status inactive): for an admin or
    the patient's care team, as on the dashboard; audited as device.list."""
    await require(request)
    base = request.app[SETTINGS].base_url
    patient_id = fhir.patient_param(_query(request))
    devices = await request.app[ENROLLMENT].list(actor(request), patient_id)
    self_link = ("self", _url(base, "Device", [("patient", patient_id)]))
    return fhir_json(fhir.bundle([fhir.device(d, base) for d in devices], base, links=[self_link]))


@routes.get("/fhir/Encounter")
async def search_encounters(request: web.Request) -> web.Response:
    """A patient's video visits, oldest first: for the care team, the patient themself
    and admins (an Encounter is administrative, as the Patient resource is); audited as
    encounter.search."""
    await require(request)
    base = request.app[SETTINGS].base_url
    patient_id = fhir.patient_param(_query(request))
    visits = await fhir.encounters_of_patient(request.app[CLINIC], actor(request), patient_id)
    self_link = ("self", _url(base, "Encounter", [("patient", patient_id)]))
    resources = [fhir.encounter(v, base) for v in visits]
    return fhir_json(fhir.bundle(resources, base, links=[self_link]))


@routes.get("/fhir/Encounter/{visit_id}/$everything")
async def encounter_everything(request: web.Request) -> web.Response:
    """A visit's Encounter and its consultation record. The records office decides who
    reads the record and audits the read (record.read): the care team reads the latest
    draft or the signed note, the patient only a signed one (404 before), an admin only
    through break-glass."""
    await require(request)
    base = request.app[SETTINGS].base_url
    visit_id = request.match_info["visit_id"]
    chart = await request.app[RECORDS].chart(actor(request), visit_id)
    visit = await request.app[STORE].get_visit(visit_id)
    if visit is None:  # the office found it a moment ago: deleted since
        raise NotFound(f"visit {visit_id} does not exist")
    return fhir_json(fhir.encounter_everything(visit, chart, base))
