"""The API and web port (default 8080): health, Prometheus metrics, and the endpoints the CLI uses.

``/healthz`` and ``/metrics`` are open; ``/v1/*`` (SQL, incidents, control) and ``/ofrep/*``
(flag checks) need the API token when one is configured (``/v1/sql`` takes ``sql_token`` too),
and beyond loopback one must be (``Config._token_beyond_loopback``).
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentwatch.api.collectors import add_collector_routes
from agentwatch.api.control import add_control_routes
from agentwatch.api.deploys import add_deploy_routes
from agentwatch.api.gameday import add_gameday_routes
from agentwatch.api.golden import add_golden_routes
from agentwatch.api.health import check as health_check
from agentwatch.api.incidents import add_incident_routes
from agentwatch.api.pager_webhooks import add_pager_webhook_routes
from agentwatch.api.paging import add_paging_routes
from agentwatch.api.recurrence import add_recurrence_routes
from agentwatch.api.review import add_review_routes
from agentwatch.api.web import COLLECTOR, PRINCIPAL
from agentwatch.api.web import error as _error
from agentwatch.console import add_console
from agentwatch.sql.gate import ReadOnlyViolation, new_tag, run_read_only
from collector.auth import ADMIN, INGEST, READER, SQL, Tokens, bearer
from collector.store import StoreError, StoreUnavailable

READONLY = 164  # ClickHouse's error code for what readonly mode refuses

# Output formats of POST /v1/sql: the CLI's names -> ClickHouse formats
SQL_FORMATS = {
    "table": "PrettyCompactMonoBlock",
    "json": "JSON",
    "csv": "CSVWithNames",
    "tsv": "TSVWithNames",
}


def build_api_app(collector) -> web.Application:
    app = web.Application(middlewares=[_token_middleware(collector.tokens)])
    app[COLLECTOR] = collector
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/sql", sql)
    add_recurrence_routes(app)  # /v1/incidents/recurrence (the release gate), before {id}
    add_incident_routes(app)  # /v1/incidents, /v1/incidents/{id}, …/ack, …/resolve
    add_control_routes(app)  # /v1/control…, /ofrep/v1/evaluate/flags…
    add_collector_routes(app)  # /v1/collectors (live, sharing the store), /v1/control/drills
    add_paging_routes(app)  # /v1/alerts/outbox, /v1/alerts/test, /v1/silences
    add_pager_webhook_routes(app)  # /v1/webhooks/pagerduty, …/opsgenie: signed, not by token
    add_review_routes(app)  # /v1/incidents/{id}/case (POST: admin), …/review, /v1/cases
    add_golden_routes(app)  # /v1/golden: known-good runs (marking needs the admin token)
    add_gameday_routes(app)  # /v1/gamedays (drills and their score), …/{id}/off-rails-step
    add_deploy_routes(app)  # /v1/deploys: deploy markers (marking needs the admin token)
    add_console(app, collector.tokens)  # /, /incidents/{id}, /login, /static/: the web console
    return app


#: The pagers' webhooks carry a signature or secret instead of a token (``api.pager_webhooks``).
SIGNED = ("signed by the pager",)

#: Who opens which paths besides the admin token (``collector.auth``), first match wins.
_PATH_ROLES = (
    ("POST", "/v1/webhooks/", SIGNED),
    ("POST", "/v1/sql", (SQL, READER)),
    ("GET", "/v1/incidents", (READER,)),  # the list and one incident: that tenant's only
    ("GET", "/v1/cases", (READER,)),  # regression cases (capturing one needs the admin token)
    ("GET", "/v1/golden", (READER,)),  # golden runs: that tenant's only; marking needs admin
    ("GET", "/v1/deploys", (READER,)),  # deploy markers: that tenant's only; marking needs admin
    ("GET", "/v1/collectors", (READER,)),  # the live collectors' API urls (the drill's list)
    ("*", "/ofrep/", (SQL, READER, INGEST)),  # agents check their flags
)


def _roles_for(method: str, path: str) -> tuple[str, ...]:
    for want_method, prefix, roles in _PATH_ROLES:
        if want_method in ("*", method) and path.startswith(prefix):
            return roles
    return ()


def _token_middleware(tokens: Tokens):
    """``/v1/*`` and ``/ofrep/*`` need a token that opens them once one is configured; the
    handler finds who asked in ``request["principal"]`` (its tenant limits what it reads)."""

    @web.middleware
    async def check_token(request: web.Request, handler):
        if request.path.startswith(("/v1/", "/ofrep/")):
            roles = _roles_for(request.method, request.path)
            if roles is SIGNED:  # the handler checks the pager's signature
                return await handler(request)
            # the flag checks stay open until an admin token is set, as before tenants
            guarded_by = (ADMIN,) if request.path.startswith("/ofrep/") else None
            given = bearer(request.headers.get("Authorization"))
            found = tokens.check(given, roles, guarded_by)
            if isinstance(found, str):
                status = 403 if given and tokens.find(given) else 401
                return _error(
                    status,
                    f"missing or wrong API token: {found} (send 'Authorization: Bearer <token>')",
                )
            request[PRINCIPAL] = found
        return await handler(request)

    return check_token


async def healthz(request: web.Request) -> web.Response:
    """Within 2 s whatever the store does, never behind ingest or SQL (``agentwatch.api.health``)."""
    return await health_check(request.app[COLLECTOR])


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[COLLECTOR].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def sql(request: web.Request) -> web.Response:
    """``{"query": "...", "format": "table|json|csv|tsv", "params": {...}}`` -> the query's output.

    Always read-only (the SQL port is the way to write, with ``sql_readonly: false``): the same
    gate, limits and session per statement as the SQL port.
    """
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
    tag = new_tag()
    try:
        out, _, _ = await collector.run_sql(
            run_read_only, collector.store, query, SQL_FORMATS[fmt], params, {},
            collector.config.sql_limits, request[PRINCIPAL].tenant, tag,
        )  # fmt: skip
    except asyncio.CancelledError:
        collector.cancel_sql(tag)  # the client went away
        raise
    except ReadOnlyViolation as exc:
        return _error(403, str(exc))
    except StoreError as exc:  # ClickHouse's READONLY (164) is a refusal too
        return _error(403 if exc.code == READONLY else 400, str(exc))
    except StoreUnavailable as exc:
        return _error(503, str(exc))
    content_type = {"json": "application/json", "csv": "text/csv"}.get(fmt, "text/plain")
    return web.Response(body=out, content_type=content_type, charset="utf-8")
