"""Compressed static text: the patient's room must load over a weak mobile link.

aiohttp serves static files as they are. This middleware turns on aiohttp's own
gzip (or deflate, negotiated from Accept-Encoding; `Vary` says so) for the static scripts,
styles and other text files. A file with a precompressed sibling (`.gz`, `.br`) is still
served as that sibling, by aiohttp, and a byte-range request gets the plain bytes.

Pages are left alone on purpose: an HTML page carries a secret (its CSRF token) next to
text an attacker may choose (a path), which is what compression side channels (BREACH)
need; the static files carry no secret.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from aiohttp import hdrs, web
from aiohttp.web_response import ContentCoding

from telemed.web.middleware import Handler

STATIC_PREFIX = "/static/"
TEXT_SUFFIXES = frozenset({".css", ".js", ".mjs", ".json", ".map", ".svg", ".txt"})


def compressible(request: web.Request) -> bool:
    if not request.path.startswith(STATIC_PREFIX) or hdrs.RANGE in request.headers:
        return False
    return PurePosixPath(request.path).suffix.lower() in TEXT_SUFFIXES


@web.middleware
async def compress_static(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if compressible(request):
        accepted = request.headers.get(hdrs.ACCEPT_ENCODING, "").lower()
        # gzip when the client takes it (aiohttp would pick deflate first), else whatever
        # aiohttp negotiates
        response.enable_compression(ContentCoding.gzip if "gzip" in accepted else None)
        if "accept-encoding" not in response.headers.get(hdrs.VARY, "").lower():
            response.headers.add(hdrs.VARY, hdrs.ACCEPT_ENCODING)  # for caches on the way
    return response
