"""The on-call console: server-rendered HTML pages on the API port (issue 14).

``add_console(app)`` mounts it on the API's aiohttp app: ``/`` (incidents), ``/incidents/{id}``
(what happened, why it fired, the trajectory, the blast radius, ack / resolve / contain),
``/login`` and ``/static/``. Jinja2 templates and a little plain JavaScript shipped in this
package: no build step, no CDN, works on a machine with no internet, and one language to read.

It must not hold SQL of its own beyond the bounded, parameterised reads of ``data`` (through the
read-only gate), nor a second way to change incidents or controls: it calls the incident desk and
the control board the API calls.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from agentwatch.console.login import Sessions
from agentwatch.console.pages import SESSIONS, add_pages, iso, iso_ms

HERE = Path(__file__).parent
_API_PATHS = ("/v1/", "/ofrep/", "/healthz", "/metrics")


def add_console(app: web.Application, tokens) -> None:
    """Mount the console on ``app`` (the API's), guarded by ``tokens`` (``collector.auth``)."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is HTML-escaped unless a template says otherwise
        undefined=jinja2.StrictUndefined,
    )
    env.filters["iso"] = iso
    env.filters["iso_ms"] = iso_ms
    app[SESSIONS] = Sessions(tokens)
    add_pages(app)
    app.router.add_static("/static/", HERE / "static", append_version=True)
    app.on_response_prepare.append(_page_headers)


async def _page_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The browser's own defences: only our scripts and styles, no framing, no caching of pages
    that show incidents, no MIME sniffing."""
    if request.path.startswith(_API_PATHS):
        return
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self';"
        " base-uri 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
