"""Containment over HTTP, on the API port: agents check, people (and their tools) flip.

For agents, with no agentwatch code on their side:

- OpenFeature Remote Evaluation Protocol (OFREP): ``POST /ofrep/v1/evaluate/flags/{key}`` and the
  bulk ``POST /ofrep/v1/evaluate/flags``, body ``{"context": {...}}``. Flags: ``agent.enabled``
  (may it take a new consequential action), ``agent.runs.enabled`` (may a new run start),
  ``agent.state`` (``enabled``, ``budget_frozen``, ``quarantined``, ``paused`` or ``killed``),
  ``tool.enabled`` (the context's ``tool``) and ``tool.<name>.enabled``. Context keys: ``service``
  (or ``service.name``), ``agent`` (``gen_ai.agent.name``), ``session`` (``session.id``,
  ``session_id``, ``gen_ai.conversation.id``; the targeting key when none is given), ``user``
  (``user.id``, ``user_id``), ``trace_id`` (``trace``, ``trace.id``: the run in progress, 32 hex
  digits), ``tool`` and ``tenant`` (``tenant.id``); others are ignored. With a tenant's token the
  tenant is the token's, whatever the context says.
- ``GET /v1/control/check?tenant=&service=&agent=&session=&trace=&user=&tool=``: the same decision
  as JSON.

For people: ``GET /v1/control`` (what is in force), ``POST /v1/control`` with
``{"mode": "paused", "scope": {"agent": "support"}, "reason": "...", "actor": "alice"}``
(``"scope": {}`` is global), ``POST /v1/control/resume`` with ``{"scope": ..., "reason": ...}``.
Changes need the API token when one is configured, and are refused outright when the collector
listens beyond loopback without one (anyone who can reach it could otherwise stop every agent).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from agentwatch.api.web import PRINCIPAL, collector_of
from agentwatch.api.web import dumps as _dumps
from agentwatch.api.web import error as _error
from analyzer.containment.actions import contained_event
from analyzer.containment.control import (
    CIRCUIT_OPEN,
    MAX_VALUE_LENGTH,
    MODES,
    SCOPE_COLUMNS,
    Context,
    ControlError,
    Decision,
    scope_from,
    trace_id_of,
)
from analyzer.incidents.model import IncidentRecord
from collector.store import StoreError, StoreUnavailable

# OFREP context keys -> Context fields (the first present wins)
CONTEXT_KEYS = {
    "tenant": ("tenant", "tenant.id"),
    "service": ("service", "service.name"),
    "agent": ("agent", "gen_ai.agent.name", "agent.name"),
    "session": ("session", "session.id", "session_id", "gen_ai.conversation.id", "targetingKey"),
    "trace": ("trace_id", "trace", "trace.id"),
    "user": ("user", "user.id", "user_id", "enduser.id"),
    "tool": ("tool", "gen_ai.tool.name", "tool.name"),
}
STATIC_FLAGS = ("agent.enabled", "agent.runs.enabled", "agent.state", "tool.enabled")


def add_control_routes(app: web.Application) -> None:
    app.router.add_get("/v1/control", list_controls)
    app.router.add_post("/v1/control", set_control)
    app.router.add_post("/v1/control/resume", resume_control)
    app.router.add_get("/v1/control/check", check)
    app.router.add_post("/ofrep/v1/evaluate/flags/{key}", ofrep_evaluate)
    app.router.add_post("/ofrep/v1/evaluate/flags", ofrep_bulk)


def _board(request: web.Request):
    return collector_of(request).control


# --- agents ---------------------------------------------------------------------------------


async def check(request: web.Request) -> web.Response:
    unknown = set(request.query) - set(SCOPE_COLUMNS)
    if unknown:
        return _error(
            400,
            f"unknown parameter(s) {', '.join(sorted(unknown))}; expected {', '.join(SCOPE_COLUMNS)}",
        )
    values = {name: request.query.get(name, "") for name in SCOPE_COLUMNS}
    if values["trace"]:
        try:
            values["trace"] = trace_id_of(values["trace"])
        except ControlError as exc:
            return _error(400, str(exc))
    context = Context(**_as_token_tenant(request, values))
    return web.json_response(_board(request).decide(context).as_json(), dumps=_dumps)


def _as_token_tenant(request: web.Request, values: dict) -> dict:
    """A tenant's token checks as that tenant: whatever tenant the context names is replaced
    (a tenant may neither escape its own controls nor read another tenant's). Without a tenant
    the check is for ``default_tenant``, the one spans without ``tenant.id`` are stored under."""
    principal = request.get(PRINCIPAL)
    if principal is not None and principal.tenant is not None:
        values["tenant"] = principal.tenant
    elif not values.get("tenant"):
        values["tenant"] = collector_of(request).config.default_tenant
    return values


class _BadContext(Exception):
    pass


def _context(request: web.Request, raw: bytes, tool: str = "") -> Context:
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise _BadContext(f"PARSE_ERROR: body is not JSON: {exc}") from None
    context = body.get("context", {}) if isinstance(body, dict) else None
    if not isinstance(context, dict):
        raise _BadContext('INVALID_CONTEXT: body must be {"context": {...}}')
    values = {}
    for name, keys in CONTEXT_KEYS.items():
        for key in keys:
            value = context.get(key)
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise _BadContext(f"INVALID_CONTEXT: context key {key!r} must be a string")
            values[name] = value
            break
    if tool:
        values["tool"] = tool
    if "trace" in values:
        try:
            values["trace"] = trace_id_of(values["trace"])
        except ControlError as exc:
            raise _BadContext(f"INVALID_CONTEXT: {exc}") from None
    return Context(**_as_token_tenant(request, values))


def _flag(key: str, decision: Decision) -> dict | None:
    """OFREP's evaluation success for one flag, or None for an unknown flag."""
    if key == "agent.state":
        value, variant = decision.state, decision.state
    elif key in ("agent.enabled", "agent.runs.enabled", "tool.enabled") or (
        key.startswith("tool.") and key.endswith(".enabled") and len(key) > len("tool..enabled")
    ):
        value = {
            "agent.enabled": decision.agent_enabled,
            "agent.runs.enabled": decision.runs_enabled,
        }.get(key, decision.tool_enabled)
        variant = "on" if value else "off"
    else:
        return None
    controls = decision.because
    return {
        "key": key,
        "value": value,
        "variant": variant,
        "reason": "TARGETING_MATCH" if controls else "DEFAULT",
        "metadata": {
            "controls": "; ".join(f"{c.scope.key}: {c.mode} ({c.reason})" for c in controls)
        },
    }


def _tool_of(key: str) -> str:
    if key.startswith("tool.") and key.endswith(".enabled") and key != "tool.enabled":
        return key[len("tool.") : -len(".enabled")]
    return ""


async def ofrep_evaluate(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    try:
        context = _context(request, await request.read(), _tool_of(key))
    except _BadContext as exc:
        code, _, details = str(exc).partition(": ")
        return web.json_response(
            {"key": key, "errorCode": code, "errorDetails": details}, status=400
        )
    result = _flag(key, _board(request).decide(context))
    if result is None:
        return web.json_response(
            {
                "key": key,
                "errorCode": "FLAG_NOT_FOUND",
                "errorDetails": f"no flag {key!r}; flags are {', '.join(STATIC_FLAGS)} and"
                " tool.<name>.enabled",
            },
            status=404,
        )
    return web.json_response(result, dumps=_dumps)


async def ofrep_bulk(request: web.Request) -> web.Response:
    try:
        context = _context(request, await request.read())
    except _BadContext as exc:
        code, _, details = str(exc).partition(": ")
        return web.json_response({"errorCode": code, "errorDetails": details}, status=400)
    decision = _board(request).decide(context)
    flags = [_flag(key, decision) for key in STATIC_FLAGS]
    for control in decision.because:  # every open circuit that applies, by its tool
        if control.mode == CIRCUIT_OPEN:
            flags.append(_flag(f"tool.{control.scope.tool}.enabled", decision))
    return web.json_response({"flags": flags}, dumps=_dumps)


# --- people ---------------------------------------------------------------------------------


async def list_controls(request: web.Request) -> web.Response:
    controls = [c.for_people() for c in _board(request).table.all()]
    return web.json_response({"controls": controls}, dumps=_dumps)


async def _change_request(request: web.Request) -> dict:
    config = collector_of(request).config
    if not config.api_token and not config.loopback_only:
        raise ControlError(
            f"403: control changes need an API token when the collector listens on {config.listen}:"
            " set api_token in the config and send 'Authorization: Bearer <token>'"
        )
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ControlError(
            '400: body must be a JSON object: {"mode": "paused", "scope": {"agent": "support"},'
            ' "reason": "..."}'
        )
    if "scope" not in body:
        raise ControlError('400: "scope" is required: {} for global, or e.g. {"agent": "support"}')
    if not isinstance(body["scope"], dict):
        raise ControlError('400: "scope" must be an object such as {"session": "s1"}')
    for name in ("reason", "actor"):
        if not isinstance(body.get(name, ""), str):
            raise ControlError(f"400: {name!r} must be a string")
    if not body.get("reason", "").strip():
        raise ControlError('400: "reason" is required: it goes in the audit trail')
    return body


async def _run(request: web.Request, change) -> web.Response:
    try:
        body = await _change_request(request)
        return await change(body)
    except ControlError as exc:
        text = str(exc)
        status, _, message = text.partition(": ") if text[:3].isdigit() else ("400", "", text)
        return _error(int(status), message)
    except (StoreError, StoreUnavailable) as exc:
        return _error(503, f"the control could not be stored, nothing changed: {exc}")


async def set_control(request: web.Request) -> web.Response:
    board = _board(request)

    async def change(body: dict) -> web.Response:
        mode = body.get("mode")
        if mode not in MODES:
            raise ControlError(f"'mode' must be one of {', '.join(MODES)}, got {mode!r}")
        scope = scope_from(body["scope"])
        actor = (body.get("actor") or "api")[:200]
        incident = await _incident_of(request, body)
        control, previous = await board.set(
            scope, mode, actor=actor, reason=body["reason"],
            incident_id=incident.incident_id if incident else "",
        )  # fmt: skip
        if incident is not None:  # the incident's timeline says it was contained, and how
            await collector_of(request).incident_repository.append_events([
                contained_event(
                    incident.incident_id, incident.fingerprint, actor,
                    f"{mode} {scope.key}: {body['reason']}",
                )
            ])  # fmt: skip
        return web.json_response(
            {**control.for_people(), "previous_mode": previous.mode if previous else "enabled"},
            status=201,
            dumps=_dumps,
        )

    return await _run(request, change)


async def _incident_of(request: web.Request, body: dict) -> IncidentRecord | None:
    """The incident a control is set for (``"incident": "inc-..."``), or None when none is named."""
    incident_id = body.get("incident") or ""
    if not incident_id:
        return None
    if not isinstance(incident_id, str) or len(incident_id) > MAX_VALUE_LENGTH:
        raise ControlError("400: 'incident' must be an incident id such as inc-3f2a9c01b7d4")
    record = await collector_of(request).incident_repository.record(incident_id)
    if record is None:
        raise ControlError(f"404: no incident {incident_id}")
    return record


async def resume_control(request: web.Request) -> web.Response:
    board = _board(request)

    async def change(body: dict) -> web.Response:
        scope = scope_from(body["scope"])
        if board.table.get(scope) is None:
            in_force = ", ".join(c.scope.key for c in board.table.all()) or "nothing"
            raise ControlError(f"404: nothing is in force for {scope.key} (in force: {in_force})")
        control, previous = await board.set(
            scope, "enabled", actor=(body.get("actor") or "api")[:200], reason=body["reason"]
        )
        return web.json_response(
            {**control.for_people(), "previous_mode": previous.mode}, dumps=_dumps
        )

    return await _run(request, change)
