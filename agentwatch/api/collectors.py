"""The collectors sharing this store, and the record of kill-switch drills run across them.

- ``GET /v1/collectors``: the live ones (heartbeat within ``LIVE_S``; ``collector.store.registry``)
  with the API url each is reached at: ``agentwatch control drill`` checks every one's OFREP flag.
- ``POST /v1/control/drills`` (admin): records one drill's result, as the CLI measured it, in
  ``gamedays`` (scenario ``kill_switch``).
"""

from __future__ import annotations

import math

import orjson
from aiohttp import web

from agentwatch.api.web import PRINCIPAL, collector_of, json_response
from agentwatch.api.web import error as _error
from collector.store import StoreError, StoreUnavailable
from collector.store.registry import LIVE_S, live_collectors, record_drill

MAX_TEXT = 1000


def add_collector_routes(app: web.Application) -> None:
    app.router.add_get("/v1/collectors", list_collectors)
    app.router.add_post("/v1/control/drills", add_drill)


async def list_collectors(request: web.Request) -> web.Response:
    collector = collector_of(request)
    try:
        rows = await collector.run_store(live_collectors, collector.store)
    except (StoreError, StoreUnavailable) as exc:
        return _error(503, f"the collectors' registry could not be read: {exc}")
    return json_response(
        {"collectors": rows, "live_within_s": LIVE_S, "you": collector.collector_id}
    )


class _Bad(ValueError):
    pass


def _text(body: dict, name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _Bad(f"{name!r} must be text of at most {MAX_TEXT} characters")
    return value


def _seconds(body: dict, name: str, nullable: bool = False) -> float | None:
    value = body.get(name)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad(f"{name!r} must be a number of seconds{' or null' if nullable else ''}")
    if value < 0:
        raise _Bad(f"{name!r} must not be negative")
    return float(value)


def _flag(body: dict, name: str) -> bool:
    if not isinstance(body.get(name), bool):
        raise _Bad(f"{name!r} must be true or false")
    return body[name]


def drill_of(body: dict) -> dict:
    """A drill as ``record_drill`` takes it, from the CLI's JSON (its per-collector ``results``
    are not stored: gamedays has no column for them); ``_Bad`` says which field is wrong."""
    started_at = _seconds(body, "started_at")  # the kill's time, Unix seconds
    if started_at > 1e10:
        raise _Bad("'started_at' must be Unix seconds")
    return {
        "drill_id": _text(body, "drill_id"),
        "started_at": started_at,
        "actor": _text(body, "actor"),
        "agent": _text(body, "agent"),
        "scope": _text(body, "scope"),
        "timeout_s": _seconds(body, "timeout_s"),
        "max_stop_s": _seconds(body, "max_stop_s", nullable=True),
        "max_resume_s": _seconds(body, "max_resume_s", nullable=True),
        "fail_closed": _flag(body, "fail_closed"),
        "passed": _flag(body, "passed"),
    }


async def add_drill(request: web.Request) -> web.Response:
    collector = collector_of(request)
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict):
            raise _Bad("body must be a JSON object")
        drill = drill_of(body)
    except orjson.JSONDecodeError:
        return _error(400, "body must be JSON")
    except _Bad as exc:
        return _error(400, str(exc))
    tenant = request[PRINCIPAL].tenant or collector.config.default_tenant
    try:
        await collector.run_store(record_drill, collector.store, drill, tenant)
    except (StoreError, StoreUnavailable) as exc:
        return _error(503, f"the drill could not be recorded: {exc}")
    return json_response({"recorded": drill["drill_id"], "table": "gamedays"}, status=201)
