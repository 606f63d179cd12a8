"""Access log lines that name the route pattern, never the concrete path or query
(which can hold patient ids or visit tokens)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from telemed.web.middleware import REQUEST_ID, route_name


class RouteAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not isinstance(request, web.Request):
            return
        self.logger.info(
            "%s %s %s %.1fms request_id=%s",
            request.method,
            route_name(request),
            response.status,
            time * 1000,
            request.get(REQUEST_ID, "-"),
        )
