"""Incidents over HTTP, for people and their tools (``agentwatch incidents``), on the API port.

- ``GET  /v1/incidents?status=&severity=&detector=&service=&agent=&limit=``: rows of
  ``incidents_current``, most recently seen first. ``status`` is ``open``, ``acknowledged``,
  ``resolved``, ``active`` (open or acknowledged) or ``all`` (the default); ``limit`` 1–1000
  (default 50).
- ``GET  /v1/incidents/{id}``: one incident and its ``timeline`` (``incident_events`` in order).
- ``POST /v1/incidents/{id}/ack`` and ``/resolve``, body ``{"actor": "...", "reason": "..."}``
  (both optional; the actor defaults to ``api``): the incident as it is now, with its timeline.
  A resolve may add ``"false_alarm": true``: a person's verdict that it should not have fired,
  kept as the incident's ``resolution`` (``false_alarm``; otherwise ``fixed``) and counted in
  ``detector_precision``. 404 for an unknown id, 409 when it is resolved already (or already
  acknowledged, for ``ack``).
- ``GET  /v1/incidents/precision``: rows of ``detector_precision``, each detector's field
  precision (1 - false alarms / incidents resolved by people), per tenant, detector and kind.

Every change goes through the collector's incident desk (``analyzer.engine.IncidentDesk``: the
analyzer, or a desk of its own with detection off) and so through
``IncidentManager.set_status``, like every other change to an incident: the same version, event
and listeners (paging, containment). An incident the analyzer holds in memory (open or
acknowledged since this collector started) keeps the analyzer's state right (which fingerprints
are open). One it does not hold (opened before a restart, on another collector, or with
detection off) changes from its newest version in the store, which gets a new version with the
new status and an event. Such an incident is not resolved by the quiet-period timer, and a new
finding with its fingerprint opens a new incident (the analyzer does not know about the old one).

Timestamps in responses are ISO 8601 UTC; ``evidence`` is decoded into a JSON list. The SQL is in
``analyzer.incidents.repository``.
"""

from __future__ import annotations

import asyncio
import re

import orjson
from aiohttp import web

from agentwatch.api.web import PRINCIPAL
from agentwatch.api.web import collector_of as _collector
from agentwatch.api.web import dumps as _dumps
from agentwatch.api.web import error as _error
from analyzer.engine import IncidentNotStored
from analyzer.incidents.lifecycle import StatusConflict, UnknownIncident
from analyzer.incidents.model import SEVERITIES
from analyzer.incidents.repository import (
    LABELS,
    MAX_LIMIT,
    STATUS_FILTERS,
    IncidentQuery,
    IncidentRepository,
)
from collector.store import StoreError, StoreUnavailable

INCIDENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")  # what an incident id may be (a path part)

LOCK = web.AppKey("incidents_lock", asyncio.Lock)


def add_incident_routes(app: web.Application) -> None:
    app[LOCK] = asyncio.Lock()  # one status change at a time: no double "resolved" events
    app.router.add_get("/v1/incidents", list_incidents)
    app.router.add_get("/v1/incidents/precision", detector_precision)  # before {id}
    app.router.add_get("/v1/incidents/{id}", show_incident)
    app.router.add_post("/v1/incidents/{id}/ack", acknowledge_incident)
    app.router.add_post("/v1/incidents/{id}/resolve", resolve_incident)


class _Failed(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


async def _stored(call):
    """Await a store read; its errors as the answer (500: the query failed, 503: no store)."""
    try:
        return await call
    except StoreError as exc:
        raise _Failed(_error(500, f"incident query failed: {exc}")) from None
    except StoreUnavailable as exc:
        raise _Failed(_error(503, f"store unavailable: {exc}")) from None


def _repository(request: web.Request) -> IncidentRepository:
    return _collector(request).incident_repository


def _for_people(row: dict) -> dict:
    try:
        row["evidence"] = orjson.loads(row.get("evidence") or "[]")
    except orjson.JSONDecodeError:
        pass  # keep the stored text
    return row


async def list_incidents(request: web.Request) -> web.Response:
    q = request.query
    status = q.get("status", "all")
    if status not in STATUS_FILTERS:
        return _error(400, f"'status' must be one of {', '.join(STATUS_FILTERS)}, got {status!r}")
    severity = q.get("severity")
    if severity is not None:
        severity = severity.upper()
        if severity not in SEVERITIES:
            return _error(400, f"'severity' must be one of {', '.join(SEVERITIES)}")
    try:
        limit = int(q.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        return _error(400, f"'limit' must be an integer from 1 to {MAX_LIMIT}")
    query = IncidentQuery(
        statuses=STATUS_FILTERS[status],
        severity=severity,
        labels=tuple((name, q[name]) for name in LABELS if q.get(name)),
        # a tenant's read token: its incidents only, whatever it filters on
        reader_tenant=request[PRINCIPAL].tenant if PRINCIPAL in request else None,
        limit=limit,
    )
    try:
        rows = await _stored(_repository(request).listed(query))
    except _Failed as failed:
        return failed.response
    return web.json_response([_for_people(r) for r in rows], dumps=_dumps)


async def detector_precision(request: web.Request) -> web.Response:
    reader_tenant = request[PRINCIPAL].tenant if PRINCIPAL in request else None
    try:
        rows = await _stored(_repository(request).precision(reader_tenant))
    except _Failed as failed:
        return failed.response
    return web.json_response(rows, dumps=_dumps)


async def _load(repository: IncidentRepository, incident_id: str) -> dict | None:
    row = await _stored(repository.current(incident_id))
    if row is None:
        return None
    incident = _for_people(row)
    incident["timeline"] = await _stored(repository.timeline(incident_id))
    return incident


async def show_incident(request: web.Request) -> web.Response:
    incident_id = request.match_info["id"]
    if not INCIDENT_ID.match(incident_id):
        return _error(404, f"no incident {incident_id!r}")
    try:
        incident = await _load(_repository(request), incident_id)
    except _Failed as failed:
        return failed.response
    tenant = request[PRINCIPAL].tenant if PRINCIPAL in request else None
    if incident is None or tenant not in (None, incident.get("tenant")):
        return _error(404, f"no incident {incident_id!r}")
    return web.json_response(incident, dumps=_dumps)


async def acknowledge_incident(request: web.Request) -> web.Response:
    return await _change_status(request, "acknowledged")


async def resolve_incident(request: web.Request) -> web.Response:
    return await _change_status(request, "resolved")


async def _change_status(request: web.Request, status: str) -> web.Response:
    incident_id = request.match_info["id"]
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return _error(400, 'body must be a JSON object: {"actor": "alice", "reason": "..."}')
    actor, reason = body.get("actor") or "api", body.get("reason") or ""
    if not isinstance(actor, str) or not isinstance(reason, str):
        return _error(400, "'actor' and 'reason' must be strings")
    false_alarm = body.get("false_alarm", False)
    if not isinstance(false_alarm, bool):
        return _error(400, "'false_alarm' must be true or false")
    if false_alarm and status != "resolved":
        return _error(400, "only a resolve can be a false alarm ('false_alarm' with /resolve)")
    resolution = ("false_alarm" if false_alarm else "fixed") if status == "resolved" else ""
    if not INCIDENT_ID.match(incident_id):
        return _error(404, f"no incident {incident_id!r}")
    collector = _collector(request)
    desk = collector.incident_desk  # the analyzer, or a desk of its own with detection off
    try:
        async with request.app[LOCK]:
            await _stored(
                desk.set_status(incident_id, status, actor[:200], reason[:2000], resolution)
            )
            incident = await _load(collector.incident_repository, incident_id)
    except _Failed as failed:
        return failed.response
    except UnknownIncident:
        return _error(404, f"no incident {incident_id!r}")
    except StatusConflict as exc:
        return _error(409, str(exc))
    except IncidentNotStored as exc:
        return _error(503, str(exc))
    return web.json_response(incident, dumps=_dumps)
