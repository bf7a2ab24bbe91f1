"""``/ui``: the web console's three static files, served by the broker itself (no CDN).

The page talks to ``/v1`` with the operator's token like any other client; a strict
Content-Security-Policy keeps it to this origin and these files.
"""

from __future__ import annotations

import functools
from pathlib import Path

from aiohttp import web

CONSOLE_DIR = Path(__file__).resolve().parent / "console_files"
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def serve(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("file") or "index.html"
    content_type = _FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.Response(body=_load(name), headers={**_HEADERS, "Content-Type": content_type})


@functools.cache
def _load(name: str) -> bytes:
    return (CONSOLE_DIR / name).read_bytes()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui", serve)
    app.router.add_get("/ui/", serve)
    app.router.add_get("/ui/{file}", serve)
