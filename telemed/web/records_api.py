"""Consultation records over HTTP: the JSON API, attachments, and the patient's summary.

The rules (who reads, who writes, break-glass, erasure) and the audit live in
`telemed.records_office.RecordsOffice`, reached through `request.app[RECORDS]`; these
handlers read the request, call it, and shape the answer. Every answer holding clinical
content says `Cache-Control: no-store`.

State-changing calls from a browser session carry the X-CSRF-Token header (the csrf
middleware enforces it). An upload must carry it in that header too: a form field would
make the middleware read the whole body as a form, under the app's 1 MiB limit, before
this handler could stream it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, hdrs, web

from telemed.accounts import Role
from telemed.errors import ValidationError
from telemed.records import (
    NOTE_JSON_FIELDS,
    attachment_json,
    break_glass_json,
    chart_json,
    note_from_json,
)
from telemed.summary import VisitSummary, long_date, medicine_lines, render_pdf, visit_summary
from telemed.web.auth import render, require
from telemed.web.keys import CLOCK, RECORDS, STORE
from telemed.web.middleware import actor
from telemed.web.monitoring_api import object_with

routes = web.RouteTableDef()

NO_STORE = {"Cache-Control": "no-store"}
JSON_MAX_BYTES = 1024 * 1024  # a note, with its chat transcript, fits well within this
UPLOAD_CHUNK = 64 * 1024


# reading the request -------------------------------------------------------------------
async def json_body(request: web.Request, fields: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object sent, read up to `JSON_MAX_BYTES`; a refusal names the problem."""
    too_large = ValidationError("body", f"is larger than {JSON_MAX_BYTES // 1024} KiB")
    if request.content_length is not None and request.content_length > JSON_MAX_BYTES:
        raise too_large
    data = bytearray()
    async for chunk in request.content.iter_chunked(UPLOAD_CHUNK):
        data += chunk
        if len(data) > JSON_MAX_BYTES:
            raise too_large
    try:
        body = json.loads(data)
    except ValueError:  # UnicodeDecodeError included
        raise ValidationError("body", "must be JSON") from None
    return object_with(body, fields)


def _version(body: dict[str, Any], key: str) -> int | None:
    """A version number the client sent (None when it sent none)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(key, "must be a whole number")
    if value < 0:
        raise ValidationError(key, "must not be negative")
    return value


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise ValidationError(key, "must be a string")
    return value


def _ids(body: dict[str, Any], key: str) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(key, "must be a list of attachment ids")
    return list(dict.fromkeys(value))  # each once, in order


def _declared_type(part: BodyPartReader) -> str:
    declared = part.headers.get(hdrs.CONTENT_TYPE, "")
    kind = declared.split(";", 1)[0].strip().lower()
    if not kind:
        raise ValidationError("content_type", "the file part must declare its type")
    return kind


async def _file_part(request: web.Request, limit: int) -> tuple[str, str, bytes]:
    """(name, declared type, content) of the `file` part, read in chunks and refused as
    soon as it passes `limit` bytes: nothing of a refused file is kept."""
    if request.content_type != "multipart/form-data":
        raise ValidationError("body", "must be multipart/form-data with a part named file")
    if request.content.at_eof():
        raise ValidationError(
            "file",
            "is missing (send it as multipart/form-data, with the CSRF token in the "
            "X-CSRF-Token header)",
        )
    # the app's client_max_size (1 MiB) guards every other route; this one streams, and
    # aiohttp's own per-part guard is set to the attachment limit for this request only
    try:
        reader = await request.clone(client_max_size=limit).multipart()
        found: BodyPartReader | None = None
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "file":
                found = part
                break
            await part.release()  # another field: skipped, unread
        if found is None:
            raise ValidationError("file", "is missing: send one multipart part named file")
        content_type = _declared_type(found)
        chunks: list[bytes] = []
        size = 0
        while chunk := await found.read_chunk(UPLOAD_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ValidationError("file", f"is larger than {limit // 1024} KiB")
            chunks.append(chunk)
    except ValueError as exc:  # a malformed multipart body
        raise ValidationError("body", f"is not valid multipart/form-data ({exc})") from None
    return found.filename or "", content_type, b"".join(chunks)


def _json(data: Any, *, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=NO_STORE)


# the record ----------------------------------------------------------------------------
@routes.get("/api/visits/{visit_id}/record")
async def get_record(request: web.Request) -> web.Response:
    """The record as the asker may see it: the care team the latest note (version 0 and
    no note before the first save), the patient their signed note and its addenda."""
    await require(request)
    chart = await request.app[RECORDS].chart(actor(request), request.match_info["visit_id"])
    return _json(chart_json(chart))


@routes.get("/api/visits/{visit_id}/record/history")
async def get_history(request: web.Request) -> web.Response:
    """Every version, for the care team (and an admin through break-glass)."""
    await require(request, Role.DOCTOR, Role.NURSE, Role.ADMIN)
    chart = await request.app[RECORDS].chart(
        actor(request), request.match_info["visit_id"], history=True
    )
    return _json(chart_json(chart, history=True))


@routes.post("/api/visits/{visit_id}/record")
async def save_note(request: web.Request) -> web.Response:
    """Save the whole note as a new version. `base_version`: the version the edit began
    from (a newer one saved meanwhile answers 409). `attachments`: the ids to keep (by
    default, those of the version before)."""
    await require(request)
    body = await json_body(request, NOTE_JSON_FIELDS)
    base_version = _version(body, "base_version")
    attachments = _ids(body, "attachments")
    note = note_from_json(body)
    chart = await request.app[RECORDS].save_note(
        actor(request),
        request.match_info["visit_id"],
        note,
        base_version=base_version,
        attachment_ids=attachments,
    )
    return _json(chart_json(chart), status=201)


@routes.post("/api/visits/{visit_id}/record/sign")
async def sign(request: web.Request) -> web.Response:
    """Sign `version`, the latest: after this, only addenda."""
    await require(request)
    body = await json_body(request, ("version",))
    version = _version(body, "version")
    if version is None:
        raise ValidationError("version", "is required: the version you read and sign")
    chart = await request.app[RECORDS].sign(actor(request), request.match_info["visit_id"], version)
    return _json(chart_json(chart))


@routes.post("/api/visits/{visit_id}/record/addenda")
async def add_addendum(request: web.Request) -> web.Response:
    await require(request)
    body = await json_body(request, ("text",))
    chart = await request.app[RECORDS].add_addendum(
        actor(request), request.match_info["visit_id"], _text(body, "text")
    )
    return _json(chart_json(chart), status=201)


# attachments ---------------------------------------------------------------------------
@routes.post("/api/visits/{visit_id}/record/attachments")
async def upload_attachment(request: web.Request) -> web.Response:
    """multipart/form-data with one part named `file`; its declared type must be one the
    clinic accepts, and its content must be of that type. The note gains it as a new
    version: read the record again before the next edit (its `version` moved on)."""
    await require(request)
    office = request.app[RECORDS]
    # refuse an outsider (audited) before reading their upload
    await office.check_write(actor(request), request.match_info["visit_id"], "attachment.write")
    name, content_type, content = await _file_part(request, office.policy.attachment_max_bytes)
    attachment = await office.attach(
        actor(request), request.match_info["visit_id"], name, content_type, content
    )
    return _json(attachment_json(attachment), status=201)


@routes.get("/api/attachments/{attachment_id}")
async def download_attachment(request: web.Request) -> web.Response:
    await require(request)
    meta, content = await request.app[RECORDS].attachment(
        actor(request), request.match_info["attachment_id"]
    )
    return web.Response(
        body=content,
        content_type=meta.content_type,
        headers={
            hdrs.CONTENT_DISPOSITION: f"attachment; filename*=UTF-8''{quote(meta.name, safe='')}",
            "X-Content-Type-Options": "nosniff",
            **NO_STORE,
        },
    )


# a patient's records, break-glass, erasure ---------------------------------------------
@routes.get("/api/patients/{patient_id}/records")
async def list_records(request: web.Request) -> web.Response:
    """Every record of the patient the asker may read (a patient: the signed ones)."""
    await require(request)
    charts = await request.app[RECORDS].charts_of_patient(
        actor(request), request.match_info["patient_id"]
    )
    return _json({"records": [chart_json(c) for c in charts]})


@routes.post("/api/patients/{patient_id}/break-glass")
async def open_break_glass(request: web.Request) -> web.Response:
    """An admin's emergency read access to one patient's records, for a stated reason."""
    await require(request)
    body = await json_body(request, ("reason",))
    grant = await request.app[RECORDS].break_glass(
        actor(request), request.match_info["patient_id"], _text(body, "reason")
    )
    return _json(break_glass_json(grant, request.app[CLOCK]()), status=201)


@routes.get("/api/patients/{patient_id}/break-glass")
async def list_break_glass(request: web.Request) -> web.Response:
    """Who broke the glass on this patient's records, when and why: the care team sees."""
    await require(request)
    grants = await request.app[RECORDS].break_glass_grants(
        actor(request), request.match_info["patient_id"]
    )
    now = request.app[CLOCK]()
    return _json({"break_glass": [break_glass_json(g, now) for g in grants]})


@routes.post("/api/patients/{patient_id}/erase")
async def erase_patient(request: web.Request) -> web.Response:
    """Crypto-shredding of one patient's records: `request` names the erasure request,
    `confirm` repeats the patient's id."""
    await require(request)
    patient_id = request.match_info["patient_id"]
    body = await json_body(request, ("request", "confirm"))
    reference, confirm = _text(body, "request"), _text(body, "confirm")
    who = actor(request)
    # the office refuses (and audits) anyone who may not erase before looking at the
    # input; the confirmation is checked for those who may
    if who.is_admin and confirm != patient_id:
        raise ValidationError("confirm", "must repeat the patient's id exactly")
    destroyed = await request.app[RECORDS].erase_patient(who, patient_id, reference)
    return _json({"patient_id": patient_id, "data_keys_destroyed": destroyed})


# the patient's summary -----------------------------------------------------------------
async def _summary(request: web.Request) -> VisitSummary:
    """The summary of the note the asker may read (RecordsOffice.chart decides, audited)."""
    await require(request)
    visit_id = request.match_info["visit_id"]
    chart = await request.app[RECORDS].chart(actor(request), visit_id)
    store = request.app[STORE]
    header = chart.header
    patient = await store.get_patient(header.patient_id)
    doctor = await store.get_user(header.signed_by or header.clinician_id)
    visit = await store.get_visit(visit_id)
    return visit_summary(
        chart,
        patient.name if patient else "",
        doctor.name if doctor else "",
        visit_at=visit.scheduled_at if visit else None,
    )


@routes.get("/visits/{visit_id}/summary")
async def summary_page(request: web.Request) -> web.Response:
    """The printable page: for the patient (signed records only) and their care team."""
    summary = await _summary(request)
    context = {"summary": summary, "long_date": long_date, "medicine_lines": medicine_lines}
    response = render(request, "summary.html", context)
    response.headers.update(NO_STORE)
    return response


@routes.get("/visits/{visit_id}/summary.pdf")
async def summary_pdf(request: web.Request) -> web.Response:
    summary = await _summary(request)
    content = await asyncio.to_thread(render_pdf, summary)
    file_name = f"visit-summary-{summary.visit_at:%Y-%m-%d}.pdf"
    return web.Response(
        body=content,
        content_type="application/pdf",
        headers={hdrs.CONTENT_DISPOSITION: f'attachment; filename="{file_name}"', **NO_STORE},
    )
