"""Regression case capture and the post-incident review in the console.

- ``POST /incidents/{id}/capture`` (the form on the incident page, admin token): capture the
  incident's regression case with what the agent should have done, through
  ``agentwatch.api.review.capture`` as ``POST /v1/incidents/{id}/case`` does.
- ``GET /incidents/{id}/review``: the five questions answered from the data and the suggested
  policy change as a diff (``agentwatch.api.review.review_of``, as ``GET .../review``).

The incident page shows whether its case was captured: ``add_capture_pages`` adds a middleware
that hands the page's template the case (``case``: the case, or None) without a change to the
page's own handler.
"""

from __future__ import annotations

import re
import warnings

import aiohttp_jinja2
from aiohttp import web

from agentwatch.api.review import capture, cases_of, review_of
from agentwatch.api.web import collector_of
from agentwatch.console import pages as console
from analyzer.incidents.cases import MAX_EXPECTED
from collector.auth import OPEN
from collector.store import StoreError, StoreUnavailable

_INCIDENT_PAGE = re.compile(r"^/incidents/([A-Za-z0-9_.:-]{1,128})$")


def add_capture_pages(app: web.Application) -> None:
    app.router.add_post("/incidents/{id}/capture", capture_form)
    app.router.add_get("/incidents/{id}/review", review_page)
    app.middlewares.append(_case_on_incident_page)


@web.middleware
async def _case_on_incident_page(request: web.Request, handler):
    """The incident page's template gets ``case`` (None when none was captured); on a store
    error it gets nothing, and the page says nothing about a case rather than "not captured"."""
    match = _INCIDENT_PAGE.match(request.path) if request.method == "GET" else None
    if match:
        try:
            case = await cases_of(collector_of(request)).of_incident(match[1])
        except (StoreError, StoreUnavailable):
            pass
        else:
            context = dict(request.get(aiohttp_jinja2.REQUEST_CONTEXT_KEY) or {})
            with warnings.catch_warnings():  # aiohttp_jinja2 reads the context by a string key
                warnings.simplefilter("ignore", web.NotAppKeyWarning)
                request[aiohttp_jinja2.REQUEST_CONTEXT_KEY] = {**context, "case": case}
    return await handler(request)


async def capture_form(request: web.Request) -> web.Response:
    session, form = await console._form(request)
    incident = await console._incident(request, OPEN)
    target = f"/incidents/{incident['incident_id']}#capture"
    expected = (form.get("expected") or "").strip()
    if not expected:
        session.flash = "Not captured: say what the agent should have done."
        raise web.HTTPSeeOther(target)
    try:
        await capture(collector_of(request), OPEN, incident, expected[:MAX_EXPECTED],
                      session.actor)  # fmt: skip
        session.flash = "Captured as a regression case."
    except (StoreError, StoreUnavailable) as exc:
        session.flash = f"Not captured: {exc}"
    raise web.HTTPSeeOther(target)


async def review_page(request: web.Request) -> web.Response:
    session, principal = console._who(request)
    incident = await console._incident(request, principal)
    found = await console._stored(review_of(collector_of(request), principal, incident))
    case = await console._stored(
        cases_of(collector_of(request)).of_incident(incident["incident_id"])
    )
    return console._render("review.html", request, {
        "i": incident, "review": found, "case": case, "session": session,
        "can_change": console.may_change(principal),
    })  # fmt: skip
