"""Operations: liveness, readiness (store and broker), Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from telemed.web.keys import PROBES, REGISTRY

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
PROBE_TIMEOUT = 3.0


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    failures: dict[str, str] = {}
    for probe in request.app[PROBES]:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await probe.check()
        except TimeoutError:
            failures[probe.name] = f"no answer within {PROBE_TIMEOUT:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure is a reason to report
            failures[probe.name] = str(exc) or type(exc).__name__
    if failures:
        log.warning("not ready: %s", ", ".join(sorted(failures)))
        return web.json_response({"status": "unavailable", "failures": failures}, status=503)
    return web.json_response({"status": "ready", "checks": [p.name for p in request.app[PROBES]]})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response
