"""The console's pages and forms: the incidents list and one incident with its trajectory.

Handlers stay thin, as on the API: they check who asks (``login``), read through the incident
repository and the read-only gate (``data``), change state through the same incident desk and
control board as ``/v1/incidents/{id}/ack|resolve`` and ``/v1/control``, and render a template.
Nothing a person typed is echoed back: messages after a form are fixed texts or our own errors,
kept in the session for the next page (autoescaped by Jinja2 like everything else).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from time import time_ns
from urllib.parse import quote

import aiohttp_jinja2
import orjson
from aiohttp import web

from agentwatch.api.gameday import StepRefused, name_off_rails_step
from agentwatch.api.incidents import LOCK
from agentwatch.api.web import collector_of
from agentwatch.console import data
from agentwatch.console.login import (
    COOKIE,
    NEW_SESSION,
    ConsoleSession,
    Sessions,
    form_token_ok,
    local_path,
    may_change,
    same_origin,
    set_cookie,
)
from analyzer.containment.actions import contained_event
from analyzer.containment.control import ControlError, Scope
from analyzer.engine import IncidentNotStored
from analyzer.incidents.lifecycle import StatusConflict, UnknownIncident
from analyzer.incidents.model import SEVERITIES
from analyzer.incidents.repository import MAX_LIMIT, STATUS_FILTERS, IncidentQuery
from collector.auth import OPEN, Principal
from collector.store import StoreError, StoreUnavailable

SESSIONS = web.AppKey("console_sessions", Sessions)
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")  # as the API's
FILTERS = ("class", "detector", "service", "agent")
LIST_LIMIT = 200
RECENT_TOOL_CALLS = 5  # the page opens at the last five tool calls before the off-rails step

#: contain buttons: action -> (mode, the incident's fields that make the scope)
CONTAIN = {
    "pause_session": ("paused", ("session",)),
    "quarantine_user": ("quarantined", ("user",)),
    "open_tool_circuit": ("circuit_open", ("service", "agent", "tool")),
    "pause_agent": ("paused", ("service", "agent")),
    "kill_agent": ("killed", ("service", "agent")),
}
_FIELD = {"session": "session_id", "user": "user_id", "tool": "tool", "trace": "trace_id",
          "service": "service", "agent": "agent"}  # fmt: skip


def add_pages(app: web.Application) -> None:
    r = app.router
    r.add_get("/", incidents_page)
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/incidents/{id}", incident_page)
    r.add_get("/incidents/{id}/affected.csv", affected_csv)
    r.add_post("/incidents/{id}/ack", ack)
    r.add_post("/incidents/{id}/resolve", resolve)
    r.add_post("/incidents/{id}/contain", contain)
    r.add_post("/incidents/{id}/off-rails-step", off_rails_step)
    from agentwatch.console import golden, search  # lazy: both use this module's page helpers

    golden.add_golden_pages(app)  # /incidents/{id}/golden, /sessions/{id}/golden
    search.add_search_pages(app)  # /sessions, /sessions/{id}, /traces/{id}
    from agentwatch.console.capture import add_capture_pages  # lazy: uses this module's helpers

    add_capture_pages(app)  # /incidents/{id}/capture, /incidents/{id}/review


# --- who asks --------------------------------------------------------------------------------


class _Redirect(Exception):
    pass


def _who(request: web.Request, change: bool = False):
    """(session, principal) of a logged-in browser; else a redirect to the login page (GET) or
    403 (a form). A form also needs the session's form token and a same-origin browser."""
    found = request.app[SESSIONS].find(request)
    if found is None:
        if change:
            raise web.HTTPForbidden(text="log in first: your console session ended")
        raise web.HTTPSeeOther(f"/login?next={_quote(request.path_qs)}")
    return found


async def _form(request: web.Request) -> tuple[ConsoleSession, dict]:
    session, principal = _who(request, change=True)
    form = await request.post()
    if not same_origin(request) or not form_token_ok(session, form.get("csrf")):
        raise web.HTTPForbidden(text="this form did not come from this console (reload the page)")
    if not may_change(principal):
        raise web.HTTPForbidden(text="a reader's token only reads: ack, resolve and contain need"
                                     " the API token")  # fmt: skip
    return session, form


def _quote(path: str) -> str:
    return quote(path, safe="")


# --- login -----------------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    target = local_path(request.query.get("next"))
    return aiohttp_jinja2.render_template(
        "login.html", request, {"next": target, "error": "", "open": _is_open(request)}
    )


def _is_open(request: web.Request) -> bool:
    return request.app[SESSIONS].principal(None) is OPEN


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    target = local_path(form.get("next"))
    if not same_origin(request):
        raise web.HTTPForbidden(text="log in from this console's own page")
    sessions = request.app[SESSIONS]
    address = request.remote or ""
    if sessions.throttle.blocked(address):
        raise web.HTTPTooManyRequests(
            text="too many wrong tokens from this address: try again in a minute",
            headers={"Retry-After": "60"},
        )
    token = (form.get("token") or "").strip() or None
    actor = " ".join((form.get("actor") or "").split())[:100] or "console"
    if not isinstance(sessions.principal(token), Principal):
        sessions.throttle.failed(address)
        response = aiohttp_jinja2.render_template(
            "login.html", request,
            {"next": target, "error": "That token does not open the console.", "open": False},
        )  # fmt: skip
        response.set_status(401)
        return response
    response = web.HTTPSeeOther(target)
    set_cookie(request, response, sessions.open(token, actor))
    raise response


async def logout(request: web.Request) -> web.Response:
    session, _ = _who(request, change=True)
    form = await request.post()
    if not same_origin(request) or not form_token_ok(session, form.get("csrf")):
        raise web.HTTPForbidden(text="this form did not come from this console")
    request.app[SESSIONS].close(request.cookies.get(COOKIE, ""))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


# --- the incidents list ----------------------------------------------------------------------


async def incidents_page(request: web.Request) -> web.Response:
    session, principal = _who(request)
    q = request.query
    status = q.get("status") or "active"
    severity = (q.get("severity") or "").upper()
    if status not in STATUS_FILTERS or (severity and severity not in SEVERITIES):
        raise web.HTTPBadRequest(
            text=f"status is one of {', '.join(STATUS_FILTERS)}; severity one of"
            f" {', '.join(SEVERITIES)}"
        )
    chosen = {name: q.get(name, "")[:200] for name in FILTERS}
    query = IncidentQuery(
        statuses=STATUS_FILTERS[status],
        severity=severity or None,
        labels=tuple((name, value) for name, value in chosen.items() if value),
        reader_tenant=principal.tenant,
        limit=min(LIST_LIMIT, MAX_LIMIT),
    )
    rows = await _stored(collector_of(request).incident_repository.listed(query))
    context = {
        "incidents": rows,
        "status": status,
        "severity": severity,
        "chosen": chosen,
        "statuses": list(STATUS_FILTERS),
        "severities": SEVERITIES,
        "limit": LIST_LIMIT,
        "session": session,
        "now": _now(),
    }
    template = "incident_rows.html" if q.get("fragment") == "rows" else "incidents.html"
    return _render(template, request, context)


async def _stored(call):
    try:
        return await call
    except StoreUnavailable as exc:
        raise web.HTTPServiceUnavailable(text=f"store unavailable: {exc}") from None
    except StoreError as exc:
        raise web.HTTPInternalServerError(text=f"query failed: {exc}") from None


# --- one incident ----------------------------------------------------------------------------


async def _incident(request: web.Request, principal) -> dict:
    incident_id = request.match_info["id"]
    repository = collector_of(request).incident_repository
    row = await _stored(repository.current(incident_id)) if _ID.match(incident_id) else None
    if row is None or principal.tenant not in (None, row.get("tenant")):
        raise web.HTTPNotFound(text=f"no incident {incident_id}")
    try:
        row["evidence"] = orjson.loads(row.get("evidence") or "[]")
    except orjson.JSONDecodeError:
        row["evidence"] = [row.get("evidence")]
    row["timeline"] = await _stored(repository.timeline(incident_id))
    return row


async def incident_page(request: web.Request) -> web.Response:
    session, principal = _who(request)
    collector = collector_of(request)
    incident = await _incident(request, principal)
    run = await _stored(data.trajectory(collector, principal, incident))
    steps = run.steps
    affected = await _stored(data.blast_radius(collector, principal, incident))
    flagged = next((s.index for s in steps if s.row["SpanId"] == incident["span_id"]), None)
    tools_before = [s.index for s in steps if s.kind == "tool" and s.index < (flagged or 0)]
    recent = set(tools_before[-RECENT_TOOL_CALLS:])
    evidence = incident["evidence"] if isinstance(incident["evidence"], list) else []
    why = (
        evidence[0] if evidence and isinstance(evidence[0], dict) and "why" in evidence[0] else None
    )
    flash, session.flash = session.flash, ""  # shown once
    context = {
        "i": incident,
        "why": why,
        "evidence_json": [orjson.dumps(e, option=orjson.OPT_INDENT_2).decode() for e in evidence],
        "steps": steps,
        "total_steps": run.total,
        "flagged": flagged,
        "recent": recent,
        "scroll_to": min(recent) if recent else flagged,
        "curve": curve(steps, flagged),
        "affected": affected,
        "users": sorted({a.user for a in affected if a.user}),
        "running": sum(a.running for a in affected),
        "running_minutes": data.STILL_RUNNING_MINUTES,
        "controls": _controls_for(collector, incident),
        "contain": _contain_choices(incident),
        "can_change": may_change(principal),
        "session": session,
        "flash": flash,
        "now": _now(),
    }
    return _render("incident.html", request, context)


def _render(template: str, request: web.Request, context: dict) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context)
    if NEW_SESSION in request:  # an open console's first page: the session its forms need
        set_cookie(request, response, request[NEW_SESSION])
    return response


def _controls_for(collector, incident: dict) -> list[dict]:
    """Controls in force that this incident set or that name its session, user, trace or agent."""
    board = collector.control
    if board is None:
        return []
    mine = []
    for control in board.table.all():
        s = control.scope
        if s.tenant not in ("", incident["tenant"]):
            continue
        if (
            control.incident_id == incident["incident_id"]
            or any(
                getattr(s, name) and getattr(s, name) == incident[column]
                for name, column in _FIELD.items()
                if name in ("session", "user", "trace")
            )
            or (s.agent and s.agent == incident["agent"] and not s.session and not s.user)
        ):
            mine.append(control.for_people())
    return mine


def _contain_choices(incident: dict) -> list[dict]:
    """The contain buttons and the scope each would set (disabled when the incident lacks it)."""
    choices = []
    for action, (mode, names) in CONTAIN.items():
        scope = _scope(incident, names)
        choices.append({"action": action, "mode": mode, "scope": scope.key if scope else "",
                        "label": action.replace("_", " ")})  # fmt: skip
    return choices


def _scope(incident: dict, names: tuple[str, ...]) -> Scope | None:
    """The incident's scope for ``names``; a session not known yet is the run's trace (as the
    policy does), anything else missing is None."""
    values = {"tenant": incident["tenant"]}
    for name in names:
        value = incident.get(_FIELD[name]) or ""
        if not value and name == "session" and incident.get("trace_id"):
            name, value = "trace", incident["trace_id"]
        if not value:
            return None
        values[name] = value
    return Scope(**values)


def curve(steps: list[data.Step], flagged: int | None, width=720, height=140) -> dict | None:
    """Running tokens and cost as SVG polylines (x: step, y: share of the final total).

    >>> c = curve([data.Step({}, 0, 10, 0.5), data.Step({}, 1, 30, 1.0)], 1, 100, 50)
    >>> c["tokens"], c["cost"], c["flagged_x"]
    ('0.0,33.3 100.0,0.0', '0.0,25.0 100.0,0.0', 100.0)
    """
    if len(steps) < 2 or not (steps[-1].tokens_so_far or steps[-1].cost_so_far):
        return None
    last = len(steps) - 1
    top_tokens, top_cost = steps[-1].tokens_so_far or 1, steps[-1].cost_so_far or 1.0

    def line(values, top):
        return " ".join(
            f"{i * width / last:.1f},{height - v * height / top:.1f}" for i, v in enumerate(values)
        )

    return {
        "width": width,
        "height": height,
        "tokens": line([s.tokens_so_far for s in steps], top_tokens),
        "cost": line([s.cost_so_far for s in steps], top_cost),
        "flagged_x": None if flagged is None else round(flagged * width / last, 1),
        "total_tokens": steps[-1].tokens_so_far,
        "total_cost": steps[-1].cost_so_far,
    }


async def affected_csv(request: web.Request) -> web.Response:
    _, principal = _who(request)
    incident = await _incident(request, principal)
    affected = await _stored(data.blast_radius(collector_of(request), principal, incident))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["incident_id", "session_id", "trace_id", "user_id", "findings",
                     "first_finding", "last_finding", "still_running"])  # fmt: skip
    for a in affected:
        writer.writerow([incident["incident_id"], _cell(a.session), _cell(a.trace),
                         _cell(a.user), a.findings, iso(a.first_ns), iso(a.last_ns),
                         "yes" if a.running else "no"])  # fmt: skip
    name = f"{incident['incident_id']}-affected.csv"
    return web.Response(
        text=out.getvalue(), content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )  # fmt: skip


def _cell(text: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula (session and user ids come from agents)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# --- forms: ack, resolve, contain ------------------------------------------------------------


async def ack(request: web.Request) -> web.Response:
    return await _set_status(request, "acknowledged")


async def resolve(request: web.Request) -> web.Response:
    return await _set_status(request, "resolved")


async def _set_status(request: web.Request, status: str) -> web.Response:
    session, form = await _form(request)
    incident_id = request.match_info["id"]
    reason = (form.get("reason") or "")[:2000]
    false_alarm = status == "resolved" and form.get("false_alarm") == "yes"
    resolution = ("false_alarm" if false_alarm else "fixed") if status == "resolved" else ""
    await _incident(request, OPEN)  # 404 for an unknown id
    desk = collector_of(request).incident_desk
    try:
        async with request.app[LOCK]:
            await desk.set_status(incident_id, status, session.actor, reason, resolution)
        session.flash = {"acknowledged": "Acknowledged.", "resolved": "Resolved."}[status] + (
            " Marked as a false alarm." if false_alarm else ""
        )
    except (StatusConflict, UnknownIncident, IncidentNotStored, StoreError,
            StoreUnavailable) as exc:  # fmt: skip
        session.flash = f"Not changed: {exc}"
    raise web.HTTPSeeOther(f"/incidents/{incident_id}")


async def contain(request: web.Request) -> web.Response:
    session, form = await _form(request)
    incident = await _incident(request, OPEN)
    action, reason = form.get("action"), (form.get("reason") or "").strip()
    target = f"/incidents/{incident['incident_id']}#contain"
    if action not in CONTAIN:
        session.flash = "Not contained: choose one of the buttons."
        raise web.HTTPSeeOther(target)
    mode, names = CONTAIN[action]
    scope = _scope(incident, names)
    if scope is None:
        session.flash = f"Not contained: this incident names no {' or '.join(names)}."
        raise web.HTTPSeeOther(target)
    if not reason:
        session.flash = "Not contained: a reason is required (it goes in the audit trail)."
        raise web.HTTPSeeOther(target)
    collector = collector_of(request)
    if not collector.config.api_token and not collector.config.loopback_only:
        session.flash = (  # as POST /v1/control: anyone who can reach it could stop every agent
            "Not contained: control changes need an API token when the collector listens on"
            f" {collector.config.listen} (set api_token in the config)"
        )
        raise web.HTTPSeeOther(target)
    try:
        changed = await collector.control.set(
            scope, mode, actor=session.actor, reason=reason[:2000],
            incident_id=incident["incident_id"],
        )  # fmt: skip
        event = contained_event(
            incident["incident_id"], incident["fingerprint"], session.actor,
            f"{mode} {scope.key}: {reason}",
        )  # fmt: skip
        await collector.incident_repository.append_events([event])
        session.flash = f"Done: {mode} {scope.key}." if changed else "Already in force."
    except (ControlError, StoreError, StoreUnavailable) as exc:
        session.flash = f"Not contained: {exc}"
    raise web.HTTPSeeOther(target)


async def off_rails_step(request: web.Request) -> web.Response:
    """Name the step where the run went off the rails (a gameday's score counts it too)."""
    session, form = await _form(request)
    incident = await _incident(request, OPEN)
    span_id = str(form.get("span_id") or "")
    try:
        await name_off_rails_step(
            collector_of(request), incident["incident_id"], span_id, session.actor
        )
        session.flash = f"Off-rails step named: {span_id}."
    except StepRefused as exc:
        session.flash = f"Not named: {exc}"
    raise web.HTTPSeeOther(f"/incidents/{incident['incident_id']}#off-rails")


def iso(ns: int) -> str:
    """Nanoseconds -> '2026-12-07 04:49:09 UTC' for people.

    >>> iso(1_796_618_949_000_000_000)
    '2026-12-07 04:49:09'
    """
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso_ms(ns: int) -> str:
    """Nanoseconds -> '04:49:09.125' (a trajectory's steps are milliseconds apart).

    >>> iso_ms(1_796_618_949_125_000_000)
    '04:49:09.125'
    """
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3]


def _now() -> str:
    return iso(time_ns())
