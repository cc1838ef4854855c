"""Regression cases and post-incident reviews over HTTP (and the code the console shares).

- ``POST /v1/incidents/{id}/case``, body ``{"expected": "...", "actor": "..."}`` (admin token):
  capture the incident's regression case (``analyzer.incidents.cases``); again replaces it. 201
  with the case; 400 without ``expected``; 404 for an unknown incident.
- ``GET  /v1/incidents/{id}/case``: the case, or 404 when none was captured.
- ``GET  /v1/cases?format=jsonl|langfuse&dataset=NAME&limit=N``: every case, newest first, as JSON
  Lines (``langfuse``: Langfuse dataset items, the body of ``POST /api/public/dataset-items``).
- ``GET  /v1/incidents/{id}/review``: the five questions answered, and the suggested policy change
  as a unified diff of the policy file in use (``analyzer.incidents.review``).

Reads by a tenant's read token are its tenant's only. The trajectory and the blast radius are
read as the console reads them (``agentwatch.console.data``: the read-only gate).
"""

from __future__ import annotations

from time import time_ns

import orjson
from aiohttp import web

from agentwatch.api.incidents import INCIDENT_ID
from agentwatch.api.web import PRINCIPAL, collector_of, error, json_response
from agentwatch.console import data
from analyzer.incidents.cases import (
    EXPORT_FORMATS,
    INPUT_SPANS,
    MAX_EXPECTED,
    CaseRepository,
    build_case,
    export_lines,
)
from analyzer.incidents.repository import text_value
from analyzer.incidents.review import Facts, Review, review
from analyzer.policy import DEFAULT_POLICY
from collector.auth import OPEN
from collector.store import StoreError, StoreUnavailable

MAX_CASES = 10_000


def add_review_routes(app: web.Application) -> None:
    app.router.add_post("/v1/incidents/{id}/case", capture_case)
    app.router.add_get("/v1/incidents/{id}/case", show_case)
    app.router.add_get("/v1/incidents/{id}/review", show_review)
    app.router.add_get("/v1/cases", export_cases)


def cases_of(collector) -> CaseRepository:
    return CaseRepository(collector.store, collector.run_store)


async def incident_for(collector, incident_id: str, tenant: str | None) -> dict | None:
    """The incident (evidence decoded, with its timeline) if ``tenant`` may see it."""
    if not INCIDENT_ID.match(incident_id):
        return None
    repository = collector.incident_repository
    incident = await repository.current(incident_id)
    if incident is None or tenant not in (None, incident.get("tenant")):
        return None
    try:
        incident["evidence"] = orjson.loads(incident.get("evidence") or "[]")
    except orjson.JSONDecodeError:
        incident["evidence"] = [incident.get("evidence")]
    incident["timeline"] = await repository.timeline(incident_id)
    return incident


def _run(incident: dict) -> dict[str, str]:
    session = incident.get("session_id") or ""
    return {
        "tenant": text_value(incident.get("tenant") or ""),
        "by_session": "1" if session else "0",
        "session": text_value(session),
        "trace": text_value(incident.get("trace_id") or ""),
    }


async def capture(collector, principal, incident: dict, expected: str, actor: str) -> dict:
    """Read the run, build the incident's case, store it, and return it as the API shows it.
    ``ValueError`` when ``expected`` is empty."""
    if not expected.strip():
        raise ValueError("say what the agent should have done: 'expected' is empty")
    run = await data.trajectory(collector, principal, incident)
    spans = []
    if incident.get("session_id") or incident.get("trace_id"):
        spans = await data.read(collector, principal.tenant, INPUT_SPANS, _run(incident))
    steps = [(step.number, step.row) for step in run.steps]
    row = build_case(incident, spans, steps, expected, actor, time_ns())
    repository = cases_of(collector)
    await repository.save(row)
    return await repository.of_incident(incident["incident_id"]) or row


async def review_of(collector, principal, incident: dict) -> Review:
    """The incident's post-incident review, from the store and the policy file in use."""
    run = await data.trajectory(collector, principal, incident)
    affected = await data.blast_radius(collector, principal, incident)
    path = collector.config.policy_file
    policy = collector.policy
    resolved = (
        policy.for_agent(incident["service"], incident["agent"]) if policy else DEFAULT_POLICY
    )
    contained = [
        f"{e['at'][:19].replace('T', ' ')} by {e['actor']}: {e['detail']}"
        for e in incident.get("timeline", [])
        if e["event"] == "contained"
    ]
    facts = Facts(
        incident=incident,
        steps=[step.row for step in run.steps],
        total_steps=run.total,
        sessions=len(affected),
        users=len({a.user for a in affected if a.user}),
        running=sum(a.running for a in affected),
        policy=resolved,
        policy_text=path.read_text() if path is not None and policy is not None else None,
        policy_path=str(path or ""),
        contained=contained,
        first_step=run.steps[0].number if run.steps else 1,
    )
    return review(facts)


# --- handlers --------------------------------------------------------------------------------


def _principal(request: web.Request):
    return request[PRINCIPAL] if PRINCIPAL in request else OPEN


async def _incident(request: web.Request) -> dict:
    incident_id = request.match_info["id"]
    incident = await incident_for(collector_of(request), incident_id, _principal(request).tenant)
    if incident is None:
        raise _Answer(error(404, f"no incident {incident_id!r}"))
    return incident


class _Answer(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _answers(handler):
    """Store errors and early answers as responses (500: the query failed, 503: no store)."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except _Answer as answer:
            return answer.response
        except StoreUnavailable as exc:
            return error(503, f"store unavailable: {exc}")
        except StoreError as exc:
            return error(500, f"query failed: {exc}")

    wrapped.__doc__ = handler.__doc__
    return wrapped


@_answers
async def capture_case(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        body = None
    expected = body.get("expected") if isinstance(body, dict) else None
    actor = (body.get("actor") if isinstance(body, dict) else None) or "api"
    if not isinstance(expected, str) or not expected.strip() or not isinstance(actor, str):
        return error(400, 'body must be {"expected": "what the agent should have done",'
                          ' "actor": "who"} with a non-empty expected')  # fmt: skip
    if len(expected) > MAX_EXPECTED:
        return error(400, f"'expected' is longer than {MAX_EXPECTED} characters")
    incident = await _incident(request)
    case = await capture(collector_of(request), _principal(request), incident, expected, actor)
    return json_response(case, status=201)


@_answers
async def show_case(request: web.Request) -> web.Response:
    incident = await _incident(request)
    case = await cases_of(collector_of(request)).of_incident(incident["incident_id"])
    if case is None:
        return error(404, f"no regression case captured for {incident['incident_id']}")
    return json_response(case)


@_answers
async def show_review(request: web.Request) -> web.Response:
    incident = await _incident(request)
    found = await review_of(collector_of(request), _principal(request), incident)
    return json_response(found.as_dict())


@_answers
async def export_cases(request: web.Request) -> web.Response:
    q = request.query
    fmt, dataset = q.get("format", "jsonl"), q.get("dataset") or "agentwatch-regressions"
    if fmt not in EXPORT_FORMATS:
        return error(400, f"'format' must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    try:
        limit = int(q.get("limit", str(MAX_CASES)))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_CASES:
        return error(400, f"'limit' must be an integer from 1 to {MAX_CASES}")
    cases = await cases_of(collector_of(request)).listed(_principal(request).tenant, limit)
    body = b"".join(line + b"\n" for line in export_lines(cases, fmt, dataset[:200]))
    return web.Response(body=body, content_type="application/x-ndjson", charset="utf-8")
