"""Incidents over HTTP, for people and their tools (``agentwatch incidents``), on the API port.

- ``GET  /v1/incidents?status=&severity=&detector=&service=&agent=&limit=``: rows of
  ``incidents_current``, most recently seen first. ``status`` is ``open``, ``acknowledged``,
  ``resolved``, ``active`` (open or acknowledged) or ``all`` (the default); ``limit`` 1–1000
  (default 50).
- ``GET  /v1/incidents/{id}``: one incident and its ``timeline`` (``incident_events`` in order).
- ``POST /v1/incidents/{id}/ack`` and ``/resolve``, body ``{"actor": "...", "reason": "..."}``
  (both optional; the actor defaults to ``api``): the incident as it is now, with its timeline.
  404 for an unknown id, 409 when it is resolved already (or already acknowledged, for ``ack``).

An incident the analyzer holds in memory (open or acknowledged since this collector started) is
changed through ``IncidentManager.set_status`` and written by ``Analyzer.flush``, so the
analyzer's own state (which fingerprints are open) stays right. One it does not hold (opened
before a restart, on another collector, or with detection off) is changed in the table alone:
its current row is read from ``incidents FINAL``, written again with the new status and a higher
``version`` (ReplacingMergeTree keeps the newest), and an event is appended to
``incident_events``. Such an incident is not resolved by the quiet-period timer, and a new
finding with its fingerprint opens a new incident (the analyzer does not know about the old one).

Timestamps in responses are ISO 8601 UTC; ``evidence`` is decoded into a JSON list.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace

import orjson
from aiohttp import web

from agentwatch.api.web import PRINCIPAL
from agentwatch.api.web import collector_of as _collector
from agentwatch.api.web import dumps as _dumps
from agentwatch.api.web import error as _error
from analyzer.incidents.model import IncidentEvent, IncidentRecord, IncidentRows
from collector.store import StoreError, StoreUnavailable, insert_rows, query_rows

STATUSES = ("open", "acknowledged", "resolved")
STATUS_FILTERS = {
    "open": ("open",),
    "acknowledged": ("acknowledged",),
    "resolved": ("resolved",),
    "active": ("open", "acknowledged"),
    "all": STATUSES,
}
SEVERITIES = ("SEV1", "SEV2", "SEV3")
MAX_LIMIT = 1000
# Plain numbers for UInt64 and ISO timestamps, the same from chDB and from a ClickHouse server.
_JSON_OUT = " SETTINGS output_format_json_quote_64bit_integers = 0, date_time_output_format = 'iso'"
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

LOCK = web.AppKey("incidents_lock", asyncio.Lock)


def add_incident_routes(app: web.Application) -> None:
    app[LOCK] = asyncio.Lock()  # one status change at a time: no double "resolved" events
    app.router.add_get("/v1/incidents", list_incidents)
    app.router.add_get("/v1/incidents/{id}", show_incident)
    app.router.add_post("/v1/incidents/{id}/ack", acknowledge_incident)
    app.router.add_post("/v1/incidents/{id}/resolve", resolve_incident)


def text_param(name: str) -> str:
    """The SQL for query parameter ``name`` holding any text (its value: ``text_value(text)``).

    ClickHouse reads a parameter's value as an escaped TSV field: chDB is handed our values as
    they are, so a backslash, tab or newline gave HTTP 500 or matched another text, while
    clickhouse-connect escapes them for a server. Hex digits read the same on both paths.
    """
    return f"unhex({{{name}:String}})"


def text_value(text: str) -> str:
    return text.encode().hex()


class _Failed(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


async def _rows(collector, sql: str, params: dict | None = None) -> list[dict]:
    try:
        return await collector.run_store(query_rows, collector.store, sql, params)
    except StoreError as exc:
        raise _Failed(_error(500, f"incident query failed: {exc}")) from None
    except StoreUnavailable as exc:
        raise _Failed(_error(503, f"store unavailable: {exc}")) from None


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
    where = ["status IN (" + ", ".join(f"'{s}'" for s in STATUS_FILTERS[status]) + ")"]
    params: dict[str, str] = {}
    severity = q.get("severity")
    if severity is not None:
        severity = severity.upper()
        if severity not in SEVERITIES:
            return _error(400, f"'severity' must be one of {', '.join(SEVERITIES)}")
        where.append("severity = {severity:String}")
        params["severity"] = severity
    for name in ("detector", "kind", "class", "service", "agent", "tenant"):
        if q.get(name):
            where.append(f"`{name}` = {text_param(name)}")
            params[name] = text_value(q[name])
    tenant = request[PRINCIPAL].tenant if PRINCIPAL in request else None
    if tenant is not None:  # a tenant's read token: its incidents only, whatever it filters on
        where.append("tenant = {reader_tenant:String}")
        params["reader_tenant"] = tenant
    try:
        limit = int(q.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        return _error(400, f"'limit' must be an integer from 1 to {MAX_LIMIT}")
    sql = (
        f"SELECT * FROM incidents_current WHERE {' AND '.join(where)}"
        f" ORDER BY last_seen DESC, incident_id LIMIT {limit}{_JSON_OUT}"
    )
    collector = _collector(request)
    try:
        rows = await _rows(collector, sql, params)
    except _Failed as failed:
        return failed.response
    return web.json_response([_for_people(r) for r in rows], dumps=_dumps)


async def _load(collector, incident_id: str) -> dict | None:
    params = {"id": incident_id}
    rows = await _rows(
        collector,
        f"SELECT * FROM incidents_current WHERE incident_id = {{id:String}} LIMIT 1{_JSON_OUT}",
        params,
    )
    if not rows:
        return None
    incident = _for_people(rows[0])
    incident["timeline"] = await _rows(
        collector,
        "SELECT at, event, actor, detail FROM incident_events WHERE incident_id = {id:String}"
        f" ORDER BY at, event{_JSON_OUT}",
        params,
    )
    return incident


async def show_incident(request: web.Request) -> web.Response:
    incident_id = request.match_info["id"]
    if not _ID.match(incident_id):
        return _error(404, f"no incident {incident_id!r}")
    try:
        incident = await _load(_collector(request), incident_id)
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
    if not _ID.match(incident_id):
        return _error(404, f"no incident {incident_id!r}")
    collector = _collector(request)
    try:
        async with request.app[LOCK]:
            failed = await _apply(collector, incident_id, status, actor[:200], reason[:2000])
            if failed is not None:
                return failed
            incident = await _load(collector, incident_id)
    except _Failed as failed:
        return failed.response
    return web.json_response(incident, dumps=_dumps)


async def _apply(
    collector, incident_id: str, status: str, actor: str, reason: str
) -> web.Response | None:
    """Change the incident's status and write it; a response when that cannot be done."""
    analyzer = collector.analyzer
    now = analyzer.clock() if analyzer is not None else time.time_ns()
    live = None
    if analyzer is not None:
        live = next(
            (i for i in analyzer.incidents.open.values() if i.incident_id == incident_id), None
        )
    if live is not None:
        if live.status == status:
            return _error(409, f"incident {incident_id} is already {status}")
        analyzer.incidents.set_status(incident_id, status, actor, now, reason)
        if not await analyzer.flush():
            return _error(
                503,
                f"incident {incident_id} is {status} in the collector, but the store refused the"
                " write; it is retried with the next incident write",
            )
        return None

    rows = await _rows(
        collector,
        "SELECT * EXCEPT (updated_at) FROM incidents FINAL WHERE incident_id = {id:String}"
        " LIMIT 1 SETTINGS output_format_json_quote_64bit_integers = 0",
        {"id": incident_id},
    )
    if not rows:
        return _error(404, f"no incident {incident_id!r}")
    row = rows[0]
    if row["status"] == "resolved":
        return _error(409, f"incident {incident_id} is already resolved")
    if row["status"] == status:
        return _error(409, f"incident {incident_id} is already {status}")
    stored = IncidentRecord.from_row(row)
    record = replace(stored, status=status, version=max(stored.version + 1, now))
    event = IncidentEvent(incident_id, record.fingerprint, now, status, actor, reason)
    try:
        await collector.run_store(insert_rows, collector.store, "incidents", [record.row()])
        await collector.run_store(insert_rows, collector.store, "incident_events", [event.row()])
    except (StoreError, StoreUnavailable) as exc:
        return _error(503, f"cannot write the incident's new status: {exc}")
    await collector.publish_incident_rows(IncidentRows([record], [event]))
    return None
