"""Golden runs over HTTP: the known-good session of an input class (agent + label), on the API port.

- ``GET  /v1/golden?agent=&label=``: the golden runs (a read token's tenant only), newest first.
- ``POST /v1/golden``, body ``{"session_id": "...", "label": "...", "agent": "...", "tenant":
  "...", "note": "...", "actor": "..."}`` (admin token): mark the session as the golden run of
  its agent and ``label``, replacing the one marked before for that class. ``agent`` defaults to
  the session's agent and must agree with it; ``tenant`` is needed only when two tenants have a
  session of that id. 404 when no stored trace names the session.

The console's "mark as golden" form and its diff call ``mark`` and ``golden_runs`` here: one way
to write and read the ``golden_runs`` table (schemas/019).
"""

from __future__ import annotations

import re
from time import time_ns

import orjson
from aiohttp import web

from agentwatch.api.web import PRINCIPAL, collector_of, error, json_response
from analyzer.incidents.model import utc_text
from analyzer.incidents.repository import text_param, text_value
from collector.store import StoreError, StoreUnavailable, insert_rows, query_rows

_LABEL = re.compile(r"^[\w .:/-]{1,100}$")  # a short class name people type and read
MAX_LIST = 500

_SESSION = f"""
SELECT Tenant AS tenant, max(AgentName) AS agent, max(ServiceName) AS service, count() AS traces
FROM session_traces
WHERE SessionId = {text_param("session")}
  AND ({{any_tenant:UInt8}} = 1 OR Tenant = {text_param("tenant")})
GROUP BY Tenant
ORDER BY tenant
LIMIT 10
"""

_LIST = f"""
SELECT tenant, agent, label, session_id, service,
       formatDateTime(marked_at, '%Y-%m-%dT%H:%i:%SZ', 'UTC') AS marked_at, marked_by, note
FROM golden_runs FINAL
WHERE ({{any_tenant:UInt8}} = 1 OR tenant = {text_param("tenant")})
  AND ({{any_agent:UInt8}} = 1 OR agent = {text_param("agent")})
  AND ({{any_label:UInt8}} = 1 OR label = {text_param("label")})
ORDER BY marked_at DESC, agent, label
LIMIT {MAX_LIST}
"""


class GoldenError(Exception):
    """A mark that cannot be made as asked (``status``: 400 or 404); retrying will not help."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def add_golden_routes(app: web.Application) -> None:
    app.router.add_get("/v1/golden", list_golden)
    app.router.add_post("/v1/golden", mark_golden)


async def golden_runs(
    collector,
    tenant: str | None,
    agent: str | None = None,
    label: str | None = None,
) -> list[dict]:
    """The golden runs of ``tenant`` (every tenant's when None), of one agent and label if given."""
    params = {
        "any_tenant": "1" if tenant is None else "0",
        "tenant": text_value(tenant or ""),
        "any_agent": "0" if agent else "1",
        "agent": text_value(agent or ""),
        "any_label": "0" if label else "1",
        "label": text_value(label or ""),
    }
    return await collector.run_store(query_rows, collector.store, _LIST, params)


async def mark(
    collector,
    reader_tenant: str | None,
    session_id: str,
    label: str,
    actor: str,
    agent: str = "",
    tenant: str = "",
    note: str = "",
) -> dict:
    """Mark ``session_id`` as the golden run of (its agent, ``label``); the row written."""
    session_id, label, agent = session_id.strip(), " ".join(label.split()), agent.strip()
    if not session_id or len(session_id) > 256:
        raise GoldenError("session_id: give the session to mark (at most 256 characters)")
    if not _LABEL.match(label):
        raise GoldenError(
            "label: 1-100 letters, digits, spaces or . : / - _ naming the input class"
            " (e.g. 'order status')"
        )
    tenant = reader_tenant or tenant.strip()
    found = await collector.run_store(query_rows, collector.store, _SESSION, {
        "session": text_value(session_id),
        "any_tenant": "0" if tenant else "1",
        "tenant": text_value(tenant),
    })  # fmt: skip
    if not found:
        raise GoldenError(f"no stored trace names session {session_id!r}", 404)
    if len(found) > 1:
        tenants = ", ".join(row["tenant"] for row in found)
        raise GoldenError(f"session {session_id!r} is in tenants {tenants}: say which (tenant)")
    [run] = found
    if agent and run["agent"] and agent != run["agent"]:
        raise GoldenError(f"session {session_id!r} ran agent {run['agent']!r}, not {agent!r}")
    agent = agent or run["agent"]
    if not agent:
        raise GoldenError(f"session {session_id!r} names no agent: say which (agent)")
    row = {
        "tenant": run["tenant"],
        "agent": agent,
        "label": label,
        "session_id": session_id,
        "service": run["service"],
        "marked_at": utc_text(time_ns()),
        "marked_by": actor[:200] or "api",
        "note": note[:2000],
    }
    await collector.run_store(insert_rows, collector.store, "golden_runs", [row])
    return row | {"marked_at": row["marked_at"][:19].replace(" ", "T") + "Z"}


async def list_golden(request: web.Request) -> web.Response:
    q = request.query
    try:
        rows = await golden_runs(
            collector_of(request), request[PRINCIPAL].tenant, q.get("agent"), q.get("label")
        )
    except (StoreError, StoreUnavailable) as exc:
        return error(503 if isinstance(exc, StoreUnavailable) else 500, f"golden runs: {exc}")
    return json_response(rows)


async def mark_golden(request: web.Request) -> web.Response:
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k, ""), str)
        for k in ("session_id", "label", "agent", "tenant", "note", "actor")
    ):
        return error(
            400, 'body must be JSON: {"session_id": "...", "label": "...", "agent": "..."}'
        )
    try:
        row = await mark(
            collector_of(request), request[PRINCIPAL].tenant,
            doc.get("session_id", ""), doc.get("label", ""), doc.get("actor") or "api",
            doc.get("agent", ""), doc.get("tenant", ""), doc.get("note", ""),
        )  # fmt: skip
    except GoldenError as exc:
        return error(exc.status, str(exc))
    except StoreUnavailable as exc:
        return error(503, f"store unavailable: {exc}")
    except StoreError as exc:
        return error(500, f"golden run not stored: {exc}")
    return json_response(row, status=201)
