"""Vital-sign series for the patient page's charts, downsampled on the server."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from telemed.clock import iso
from telemed.errors import ValidationError
from telemed.series import MAX_POINTS, RANGES, downsample
from telemed.web.auth import require
from telemed.web.keys import CLINIC, CLOCK, STORE
from telemed.web.middleware import actor

routes = web.RouteTableDef()
MAX_ROWS = 200_000  # a week of one reading every 3 s; more is refused, not truncated


@routes.get("/api/patients/{patient_id}/series")
async def series(request: web.Request) -> web.Response:
    """`?code=LOINC&range=1h|24h|7d` → points [t, low, mean, high, count], oldest first."""
    await require(request)
    patient_id = request.match_info["patient_id"]
    code = request.query.get("code", "")
    if not code:
        raise ValidationError("code", "give a LOINC code, e.g. 8867-4")
    span = RANGES.get(request.query.get("range", "24h"))
    if span is None:
        raise ValidationError("range", "must be one of " + ", ".join(RANGES))
    await request.app[CLINIC].clinical_access(actor(request), patient_id, "observation.read")
    end = request.app[CLOCK]()
    start = end - span
    rows = await request.app[STORE].observations(
        patient_id, code=code, since=start, until=end, limit=MAX_ROWS
    )
    points = downsample(rows, start, end, MAX_POINTS)
    body: dict[str, Any] = {
        "patient_id": patient_id,
        "code": code,
        "unit": rows[0].unit if rows else None,
        "start": iso(start),
        "end": iso(end),
        "readings": len(rows),
        "points": [[p.t, p.low, p.mean, p.high, p.count] for p in points],
    }
    return web.json_response(body)
