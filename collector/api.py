"""The API and web port (default 8080): health, Prometheus metrics, and the endpoints the CLI uses.

``/healthz`` and ``/metrics`` are open; ``/v1/*`` (SQL, incidents, control) and ``/ofrep/*``
(flag checks) need the API token when one is configured.
"""

from __future__ import annotations

import hmac

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector.control_api import add_control_routes
from collector.incidents_api import add_incident_routes
from collector.paging_api import add_paging_routes
from collector.sql_gate import ReadOnlyViolation, read_only_query
from collector.store import StoreError, StoreUnavailable
from collector.web import COLLECTOR
from collector.web import error as _error

# Output formats of POST /v1/sql: the CLI's names -> ClickHouse formats
SQL_FORMATS = {
    "table": "PrettyCompactMonoBlock",
    "json": "JSON",
    "csv": "CSVWithNames",
    "tsv": "TSVWithNames",
}


def build_api_app(collector) -> web.Application:
    app = web.Application(middlewares=[_token_middleware(collector.config.api_token)])
    app[COLLECTOR] = collector
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/sql", sql)
    add_incident_routes(app)  # /v1/incidents, /v1/incidents/{id}, …/ack, …/resolve
    add_control_routes(app)  # /v1/control…, /ofrep/v1/evaluate/flags…
    add_paging_routes(app)  # /v1/alerts/outbox, /v1/alerts/test, /v1/silences
    return app


def _token_middleware(token: str | None):
    @web.middleware
    async def check_token(request: web.Request, handler):
        if token and request.path.startswith(("/v1/", "/ofrep/")):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _error(
                    401, "missing or wrong API token (send 'Authorization: Bearer <token>')"
                )
        return await handler(request)

    return check_token


async def healthz(request: web.Request) -> web.Response:
    collector = request.app[COLLECTOR]
    try:
        await collector.run_store(collector.store.query, "SELECT 1", "TSV")
    except (StoreError, StoreUnavailable) as exc:
        return web.json_response(
            {"status": "unhealthy", "store": collector.store.description, "error": str(exc)},
            status=503,
        )
    return web.json_response(
        {"status": "ok", "store": collector.store.description, "ports": collector.ports}
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[COLLECTOR].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def sql(request: web.Request) -> web.Response:
    """``{"query": "...", "format": "table|json|csv|tsv", "params": {...}}`` -> the query's output."""
    collector = request.app[COLLECTOR]
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, 'body must be JSON: {"query": "SELECT ...", "format": "table"}')
    query = doc.get("query") if isinstance(doc, dict) else None
    if not isinstance(query, str) or not query.strip():
        return _error(400, "'query' must be a non-empty string")
    fmt = doc.get("format", "table")
    if fmt not in SQL_FORMATS:
        return _error(400, f"'format' must be one of {', '.join(SQL_FORMATS)}, got {fmt!r}")
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        return _error(400, "'params' must be an object of query parameters")
    try:
        if collector.config.sql_readonly:
            query = await collector.run_store(read_only_query, collector.store, query, params)
        out = await collector.run_store(collector.store.query, query, SQL_FORMATS[fmt], params)
    except ReadOnlyViolation as exc:
        return _error(403, str(exc))
    except StoreError as exc:
        return _error(400, str(exc))
    except StoreUnavailable as exc:
        return _error(503, str(exc))
    content_type = {"json": "application/json", "csv": "text/csv"}.get(fmt, "text/plain")
    return web.Response(body=out, content_type=content_type, charset="utf-8")
