"""Gameday drills over HTTP (issue 16), admin token only:

- ``POST /v1/gamedays``, body ``{"scenario", "agent", "service"?, "tenant"?, "actor"?}``: starts
  a drill. 201 with its id, the runs to send (``analyzer.gameday.scenarios.plan``), the resource
  attributes that mark them and the OTLP ports; the client (``agentwatch gameday run``) sends them
  with the OpenTelemetry SDK. 400 for an unknown scenario, or one its detector cannot fire on for
  this agent's policy (the message says why).
- ``GET /v1/gamedays?limit=N``: the drills, newest first.
- ``GET /v1/gamedays/{id}``: the drill's report: each step's time from the first span, its
  verdict against the target, and the earlier drills' previous and best times
  (``analyzer.gameday.score``). Once the drill's incident is resolved the times are written to its
  ``gamedays`` row (status ``done``).
- ``POST /v1/incidents/{id}/off-rails-step``, body ``{"span_id", "actor"?}``: names the step where
  the run went off the rails (``off_rails_span_id``); the span must belong to the incident's run.

While a drill runs, a watcher in the collector evaluates the OFREP flag ``agent.state`` its agent
would check (the drill's tenant, service, agent, session, user and, once known, the incident's
trace) over the collector's own OFREP endpoint, twice a second: the first answer other than
``enabled`` is when containment was in force (``contained_at``). It stops when the incident is
resolved (and writes the score), after ``WATCH_S``, or with the collector; a drill still running
then is scored from the store, containment from the controls in force at the report.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time

import aiohttp
from aiohttp import web

from agentwatch.api.incidents import INCIDENT_ID
from agentwatch.api.web import PRINCIPAL, collector_of, error, json_response
from analyzer.containment.control import Context
from analyzer.gameday.repository import GamedayRepository
from analyzer.gameday.scenarios import (
    SCENARIOS,
    ScenarioError,
    default_service,
    plan,
    resource_of,
)
from analyzer.gameday.score import STEP_NAMES, overall, score
from analyzer.incidents.lifecycle import UnknownIncident
from analyzer.policy import DEFAULT_POLICY
from collector.pricing import PriceTable
from collector.store import StoreError, StoreUnavailable, query_rows

log = logging.getLogger("agentwatch.gameday")

WATCH_S = 2 * 3600.0  # a drill nobody resolved in two hours is scored as it stands
POLL_S = 0.5
_READS_EVERY = 4  # polls between reads of the drill's incident from the store (2 s)
_NAME = re.compile(r"^[\w.@:/ -]{1,200}$")  # agent, service, tenant and actor names
_SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
#: ours (``dr-`` + 12 hex digits) and the kill-switch drill's (``agentwatch control drill``)
ANY_DRILL_ID = re.compile(r"^[a-z]+-[0-9a-f]{6,32}$")
_WATCHERS = web.AppKey("gameday_watchers", set)


def add_gameday_routes(app: web.Application) -> None:
    app.router.add_post("/v1/gamedays", start_drill)
    app.router.add_get("/v1/gamedays", list_drills)
    app.router.add_get("/v1/gamedays/{id}", report_drill)
    app.router.add_post("/v1/incidents/{id}/off-rails-step", set_off_rails_step)
    app[_WATCHERS] = set()
    app.on_cleanup.append(_stop_watchers)


def gamedays_of(collector) -> GamedayRepository:
    return GamedayRepository(collector.store, collector.run_store)


async def _json_body(request: web.Request) -> dict | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _name(body: dict, key: str, default: str | None = None) -> str | None:
    value = body.get(key) or default
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{key}: 1 to 200 letters, digits, spaces or . _ @ : / -")
    return value


async def start_drill(request: web.Request) -> web.Response:
    collector = collector_of(request)
    body = await _json_body(request)
    if body is None:
        return error(400, 'body must be a JSON object {"scenario": ..., "agent": ...}')
    scenario = body.get("scenario")
    if scenario not in SCENARIOS:
        return error(400, f"scenario must be one of {', '.join(SCENARIOS)}")
    drill_id = f"dr-{secrets.token_hex(6)}"
    try:
        agent = _name(body, "agent")
        if agent is None:
            raise ValueError("agent: which agent the drill is for (gen_ai.agent.name)")
        service = _name(body, "service", default_service(drill_id))
        tenant = _name(body, "tenant", collector.config.default_tenant)
        actor = _name(body, "actor", "api")
    except ValueError as exc:
        return error(400, str(exc))
    principal = request.get(PRINCIPAL)
    if principal is not None and principal.tenant is not None:
        tenant = principal.tenant
    known = (collector.config.default_tenant, *collector.config.tenants)
    if collector.config.tenants and tenant not in known:  # no token could send its spans
        return error(400, f"tenant: one of {', '.join(known)}, got {tenant!r}")
    policy = collector.policy.for_agent(service, agent) if collector.policy else DEFAULT_POLICY
    prices = PriceTable({name: p.to_price() for name, p in collector.config.prices.items()})
    try:
        runs = plan(scenario, drill_id, service, agent, policy, prices)
    except ScenarioError as exc:
        return error(400, str(exc))
    drill = {
        "drill_id": drill_id,
        "tenant": tenant,
        "scenario": scenario,
        "service": service,
        "agent": agent,
        "session_id": runs[0]["session"],
        "started_by": actor,
        "started_ns": time.time_ns(),
        "status": "running",
    }
    try:
        await gamedays_of(collector).save(drill)
    except (StoreError, StoreUnavailable) as exc:
        return error(503, f"cannot record the drill: {exc}")
    # its spans count as a drill's from the first one (other collectors: at their next refresh)
    collector.drills.add(tenant, drill_id, service)
    task = asyncio.create_task(_watch(collector, drill), name=f"gameday {drill_id}")
    watchers = request.app[_WATCHERS]
    watchers.add(task)
    task.add_done_callback(watchers.discard)
    resource = resource_of(drill_id, service)
    if tenant != collector.config.default_tenant:
        resource["tenant.id"] = tenant
    return json_response(
        {
            **drill,
            "resource": resource,
            "runs": runs,
            "otlp_grpc_port": collector.ports.get("otlp_grpc"),
            "otlp_http_port": collector.ports.get("otlp_http"),
        },
        status=201,
    )


async def list_drills(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        return error(400, "limit must be an integer from 1 to 1000")
    principal = request.get(PRINCIPAL)
    tenant = principal.tenant if principal is not None else None
    try:
        drills = await gamedays_of(collector_of(request)).listed(limit, tenant)
    except (StoreError, StoreUnavailable) as exc:
        return error(503, str(exc))
    return json_response({"drills": drills})


async def report_drill(request: web.Request) -> web.Response:
    drill_id = request.match_info["id"]
    if not ANY_DRILL_ID.match(drill_id):
        return error(404, f"no drill {drill_id!r} (ids look like dr-0123456789ab)")
    collector = collector_of(request)
    try:
        report = await drill_report(collector, drill_id)
    except (StoreError, StoreUnavailable) as exc:
        return error(503, str(exc))
    principal = request.get(PRINCIPAL)
    if report is None or (
        principal is not None and principal.tenant not in (None, report["drill"]["tenant"])
    ):
        return error(404, f"no drill {drill_id!r}")
    return json_response(report)


async def drill_report(collector, drill_id: str) -> dict | None:
    """The drill's times and verdicts; a drill whose incident is resolved is written as done."""
    gamedays = gamedays_of(collector)
    drill = await gamedays.get(drill_id)
    if drill is None:
        return None
    incident = await gamedays.incident_of(drill)
    if drill["status"] == "running":
        if incident is not None and not drill.get("contained_ns"):
            _contained_from_controls(collector, drill, incident)
        drill = await _update(gamedays, drill, incident)
    times = {name: drill.get(f"{name}_s") for name in STEP_NAMES}
    earlier = [
        {name: e.get(f"{name}_s") for name in STEP_NAMES} for e in await gamedays.earlier(drill)
    ]
    rows = score(times, earlier, done=drill["status"] != "running")
    if drill["scenario"] not in SCENARIOS:  # the kill-switch drill times containment only
        rows = [row for row in rows if row["step"] == "contained"]
    return {
        "drill": drill,
        "incident": incident,
        "steps": rows,
        "verdict": overall(rows),
        "earlier_drills": len(earlier),
    }


async def _update(gamedays: GamedayRepository, drill: dict, incident: dict | None) -> dict:
    """The drill's times as the store has them now; written (as done) once it is resolved. Only
    then: while it runs, the watcher alone writes its row (``contained_at``)."""
    if incident is None:
        return drill
    moments = await gamedays.moments(incident["incident_id"])
    if drill.get("contained_ns"):
        moments["contained"] = drill["contained_ns"]
    updated = {**drill, "incident_id": incident["incident_id"]}
    for name in STEP_NAMES:
        at = moments.get(name)
        updated[f"{name}_s"] = round((at - drill["started_ns"]) / 1e9, 3) if at else None
    if incident["status"] == "resolved":
        updated["status"] = "done"
        await gamedays.save(updated)
    return updated


def _context(drill: dict, incident: dict | None) -> dict:
    """What the drill's agent sends with its flag check (OFREP evaluation context)."""
    context = {
        "tenant": drill["tenant"],
        "service": drill["service"],
        "agent": drill["agent"],
        "session": (incident or {}).get("session_id") or drill["session_id"],
        "user": (incident or {}).get("user_id") or "",
    }
    if incident and incident.get("trace_id"):
        context["trace_id"] = incident["trace_id"]
    return context


def _contained_from_controls(collector, drill: dict, incident: dict) -> None:
    """No watcher saw it (the collector restarted mid-drill): when a control stopping the drill's
    agent is in force now, containment counts from when it was set."""
    if collector.control is None:
        return
    values = _context(drill, incident)
    trace = values.pop("trace_id", "")
    decision = collector.control.decide(Context(**values, trace=trace))
    stopping = [c.at_ns for c in decision.because if c.at_ns and c.scope.tool == ""]
    if decision.state != "enabled" and stopping:
        drill["contained_ns"] = max(min(stopping), drill["started_ns"])
        drill["contained_state"] = decision.state


async def _ofrep_state(http: aiohttp.ClientSession, url: str, token: str | None, context: dict):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(url, json={"context": context}, headers=headers) as response:
        if response.status != 200:
            return None
        return (await response.json()).get("value")


def _ofrep_url(collector) -> str:
    host = collector.config.listen
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{collector.ports['api']}/ofrep/v1/evaluate/flags/agent.state"


async def _watch(collector, drill: dict) -> None:
    """Until the drill's incident is resolved: when did the agent's flag first say stop?"""
    gamedays = gamedays_of(collector)
    url = _ofrep_url(collector)
    token = collector.config.api_token
    deadline = time.monotonic() + WATCH_S
    incident = None
    timeout = aiohttp.ClientTimeout(total=2)
    polls = 0
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            polls += 1
            try:
                if incident is None or polls % _READS_EVERY == 0:  # the flag often, the store less
                    incident = await gamedays.incident_of(drill)
                if not drill.get("contained_ns"):
                    state = await _ofrep_state(http, url, token, _context(drill, incident))
                    if state not in (None, "enabled"):
                        drill["contained_ns"], drill["contained_state"] = time.time_ns(), state
                        await gamedays.save(drill)
                if incident is not None and incident["status"] == "resolved":
                    await _update(gamedays, drill, incident)
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store or the port is down for a moment: try again
                log.warning("gameday %s: watcher: %s", drill["drill_id"], exc)


async def _stop_watchers(app: web.Application) -> None:
    for task in list(app[_WATCHERS]):
        task.cancel()
    await asyncio.gather(*app[_WATCHERS], return_exceptions=True)


class StepRefused(Exception):
    """The step was not named: ``status`` is the HTTP answer, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def name_off_rails_step(collector, incident_id: str, span_id: str, actor: str) -> None:
    """Name ``span_id`` as incident ``incident_id``'s off-rails step, through the incident desk
    (a new version and a ``step_named`` event), for the API and the console alike."""
    if not INCIDENT_ID.match(incident_id):
        raise StepRefused(404, f"no incident {incident_id!r}")
    if not _SPAN_ID.match(span_id):
        raise StepRefused(400, "span_id: 16 hex digits (a span of the incident's run)")
    desk = collector.incident_desk
    try:
        stored = await collector.incident_repository.record(incident_id)
        if stored is None:
            raise StepRefused(404, f"no incident {incident_id!r}")
        if not await _span_of_run(collector, stored, span_id):
            raise StepRefused(
                400, f"span {span_id} is not a span of incident {incident_id}'s session or trace"
            )
        held = desk.incidents.held(incident_id) is not None
        change = desk.incidents.set_off_rails_step(
            incident_id, span_id, actor, desk.clock(), None if held else stored
        )
        if change.queued:
            if not await desk.flush():
                raise StepRefused(503, "the store refused the write; it is retried with the next")
        else:
            await desk.write_rows(change.rows)
    except UnknownIncident:
        raise StepRefused(404, f"no incident {incident_id!r}") from None
    except (StoreError, StoreUnavailable) as exc:
        raise StepRefused(503, str(exc)) from None


async def set_off_rails_step(request: web.Request) -> web.Response:
    incident_id = request.match_info["id"]
    body = await _json_body(request)
    span_id = (body or {}).get("span_id")
    if not isinstance(span_id, str):
        return error(400, 'body must be {"span_id": "<16 hex digits>", "actor": "..."}')
    try:
        actor = _name(body, "actor", "api")
        await name_off_rails_step(collector_of(request), incident_id, span_id, actor)
    except ValueError as exc:
        return error(400, str(exc))
    except StepRefused as exc:
        return error(exc.status, str(exc))
    return json_response({"incident_id": incident_id, "off_rails_span_id": span_id, "actor": actor})


_SPAN_OF_RUN = """
SELECT count() AS n FROM otel_traces
WHERE Tenant = {tenant:String} AND SpanId = {span:String}
  AND (TraceId = {trace:String} OR TraceId IN (
      SELECT TraceId FROM session_traces
      WHERE Tenant = {tenant:String} AND SessionId = {session:String} AND SessionId != ''))
SETTINGS output_format_json_quote_64bit_integers = 0"""


async def _span_of_run(collector, incident, span_id: str) -> bool:
    rows = await collector.run_store(
        query_rows,
        collector.store,
        _SPAN_OF_RUN,
        {
            "tenant": incident.tenant,
            "span": span_id,
            "trace": incident.trace_id,
            "session": incident.session_id,
        },
    )
    return bool(rows and int(rows[0]["n"]))
