"""Deploy markers over HTTP: what was deployed when, for the release gate and for on call.

- ``POST /v1/deploys``, body ``{"service": "...", "agent": "...", "version": "...", "note":
  "...", "tenant": "...", "actor": "..."}`` (admin token; only ``service`` is required; ``tenant``
  defaults to ``default_tenant``, the actor to ``api``): records the deploy now, answers it (201).
- ``GET /v1/deploys?service=&agent=&version=&tenant=&limit=``: deploys, newest first; a read
  token sees its tenant's only (``tenant`` then is ignored). ``limit`` 1–500 (default 100).

``since_deploy`` turns the release gate's ``since=deploy`` / ``since=deploy:VERSION`` into the
deploy it names (``agentwatch.api.recurrence``). The SQL is in ``analyzer.deploys``.
"""

from __future__ import annotations

from time import time_ns

import orjson
from aiohttp import web

from agentwatch.api.web import PRINCIPAL, collector_of, error, json_response
from analyzer.deploys import MAX_LIST, DeployError, DeployRepository, check_version
from collector.store import StoreError, StoreUnavailable

_FIELDS = ("service", "agent", "version", "note", "tenant", "actor")
#: ``since`` naming a deploy marker rather than a time
MARKER = "deploy"


class NoSuchDeploy(LookupError):
    """The marker names no recorded deploy (404: mark it first, or fix the name)."""


def add_deploy_routes(app: web.Application) -> None:
    app.router.add_get("/v1/deploys", list_deploys)
    app.router.add_post("/v1/deploys", mark_deploy)


def deploys_of(collector) -> DeployRepository:
    return DeployRepository(collector.store, collector.run_store)


def _tenant_of(request: web.Request) -> str | None:
    """The token's tenant (a read token's), None for every tenant (admin)."""
    principal = request.get(PRINCIPAL)
    return principal.tenant if principal is not None else None


def is_marker(since: str) -> bool:
    return since == MARKER or since.startswith(MARKER + ":")


async def since_deploy(collector, since: str, service: str, agent: str, tenant: str | None) -> dict:
    """The deploy ``since`` names: ``deploy`` (the latest of ``service``/``agent``, one of them
    required) or ``deploy:VERSION`` (that version's latest deploy, of ``service``/``agent`` when
    given). Raises ``DeployError`` (400) for a wrong marker, ``NoSuchDeploy`` (404) when none."""
    version = check_version(since[len(MARKER) + 1 :]) if since != MARKER else None
    if since != MARKER and not version:
        raise DeployError("since: 'deploy' (the latest deploy) or 'deploy:VERSION'")
    if version is None and not (service or agent):
        raise DeployError(
            "since=deploy: whose deploy? give 'service' or 'agent' (or since=deploy:VERSION)"
        )
    found = await deploys_of(collector).latest(tenant, service, agent, version)
    if found is None:
        whose = " and ".join(
            f"{name} {value!r}" for name, value in (("service", service), ("agent", agent)) if value
        )
        raise NoSuchDeploy(
            "no deploy"
            + (f" of version {version!r}" if version else "")
            + (f" of {whose}" if whose else "")
            + " is marked (agentwatch deploy mark --service … --version …)"
        )
    return found


async def list_deploys(request: web.Request) -> web.Response:
    q = request.query
    tenant = _tenant_of(request)
    if tenant is None and q.get("tenant"):
        tenant = q["tenant"]
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIST:
        return error(400, f"'limit' must be an integer from 1 to {MAX_LIST}")
    repository = deploys_of(collector_of(request))
    try:
        rows = await repository.find(
            tenant, q.get("service", ""), q.get("agent", ""), q.get("version") or None, limit=limit
        )
    except StoreUnavailable as exc:
        return error(503, f"store unavailable: {exc}")
    except StoreError as exc:
        return error(500, f"deploys: {exc}")
    return json_response(rows)


async def mark_deploy(request: web.Request) -> web.Response:
    collector = collector_of(request)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not all(isinstance(body.get(k, ""), str) for k in _FIELDS):
        return error(
            400,
            'body must be a JSON object of strings: {"service": "...", "agent": "...",'
            ' "version": "...", "note": "..."}',
        )
    tenant = _tenant_of(request) or body.get("tenant") or collector.config.default_tenant
    known = (collector.config.default_tenant, *collector.config.tenants)
    if tenant not in known:
        return error(400, f"tenant: one of {', '.join(known)}, got {tenant[:80]!r}")
    try:
        row = await deploys_of(collector).mark(
            tenant, body.get("service", ""), body.get("agent", ""), body.get("version", ""),
            body.get("actor") or "api", body.get("note", ""), time_ns(),
        )  # fmt: skip
    except DeployError as exc:
        return error(400, str(exc))
    except StoreUnavailable as exc:
        return error(503, f"store unavailable: {exc}")
    except StoreError as exc:
        return error(500, f"deploy not recorded: {exc}")
    return json_response(row, status=201)
