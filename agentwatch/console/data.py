"""What the console's pages read beyond the incident API: the trajectory and the blast radius.

Every statement here is a constant with query parameters (texts from the store or from people go
in hex, ``analyzer.incidents.repository.text_param``), bounded by a LIMIT, and runs through the
same read-only gate as ``POST /v1/sql`` (``agentwatch.sql.gate.run_read_only``), scoped to a
reader's tenant: the console reads no more than ``agentwatch sql`` could. The one exception is
``incident_events`` (no tenant column, so a tenant's gate refuses it): read for one incident only,
after the page checked that the incident is the reader's tenant's.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from agentwatch.sql.gate import new_tag, run_read_only
from analyzer.incidents.repository import text_param, text_value

BEFORE_STEPS = 1500  # a trajectory shows at most this many steps up to the off-rails step
AFTER_STEPS = 500  # and this many after it (the first BEFORE + AFTER without one)
MAX_AFFECTED = 1000  # sessions listed in the blast radius (and its CSV)
STILL_RUNNING_MINUTES = 5  # a session with a span this recent is still running


def _first(*keys: str) -> str:
    """The first of ``keys`` the span carries (messages and results: OTel GenAI, OpenInference,
    OpenLLMetry), cut to 4000 characters."""
    present = ", ".join(f"nullIf(SpanAttributes['{k}'], '')" for k in keys)
    return f"leftUTF8(coalesce({present}, ''), 4000)"


_INPUT = _first("gen_ai.input.messages", "llm.input_messages.0.message.content", "input.value")
_OUTPUT = _first(
    "gen_ai.output.messages",
    "gen_ai.tool.call.result",
    "output.value",
    "llm.output_messages.0.message.content",
)
_STEP = (
    "SELECT toUnixTimestamp64Nano(Timestamp) AS ts_ns, TraceId, SpanId, ParentSpanId, SpanName,"
    " StepKind, AgentName, Model, ToolName, leftUTF8(ToolArgs, 4000) AS ToolArgs, InputTokens,"
    " OutputTokens, CostUsd, FinishReason, StatusCode,"
    " leftUTF8(StatusMessage, 1000) AS StatusMessage, ErrorType, HttpStatus, Duration,"
    f" {_INPUT} AS input, {_OUTPUT} AS output"
)
# the run: the incident's session, or its trace when it has no session. Its traces come first,
# from session_traces by its primary key (tenant, session): agent_spans resolves the session of
# a span only after the join, so a filter on SessionId alone reads every span (issue 14.7).
_TRACES = (
    f"SELECT TraceId FROM session_traces WHERE Tenant = {text_param('tenant')}"
    f" AND SessionId = {text_param('session')} UNION ALL SELECT {text_param('trace')}"
)
_RUN = (
    f"Tenant = {text_param('tenant')} AND TraceId IN ({_TRACES}) AND if({{by_session:UInt8}} = 1,"
    f" SessionId = {text_param('session')}, TraceId = {text_param('trace')})"
)
_AT = "fromUnixTimestamp64Nano({at_ns:Int64})"

# The off-rails step's time (by the primary key: tenant, trace).
FLAGGED_AT = f"""
SELECT toUnixTimestamp64Nano(Timestamp) AS ts_ns FROM otel_traces
WHERE Tenant = {text_param("tenant")} AND TraceId = {text_param("trace")}
  AND SpanId = {text_param("span")}
LIMIT 1
"""

# Up to {before} steps up to the off-rails step and {after} after it, in time order.
TRAJECTORY = f"""
SELECT * FROM
(
    (SELECT * FROM ({_STEP} FROM agent_spans WHERE {_RUN} AND Timestamp <= {_AT})
     ORDER BY ts_ns DESC, SpanId DESC LIMIT {{before:UInt32}})
    UNION ALL
    (SELECT * FROM ({_STEP} FROM agent_spans WHERE {_RUN} AND Timestamp > {_AT})
     ORDER BY ts_ns, SpanId LIMIT {{after:UInt32}})
)
ORDER BY ts_ns, SpanId
"""

# The whole run's size, and what came before the steps shown (the curve starts from there).
TOTALS = f"""
SELECT count() AS steps,
       countIf(Timestamp < {_AT}) AS before,
       sumIf(InputTokens + OutputTokens, Timestamp < {_AT}) AS tokens_before,
       sumIf(CostUsd, Timestamp < {_AT}) AS cost_before
FROM agent_spans WHERE {_RUN}
"""

# The incident's own findings (what sessions_affected and users_affected count), by session, or
# by trace for the findings made before a session was known.
AFFECTED = f"""
SELECT session_id AS session, if(session_id = '', trace_id, '') AS trace_only,
       max(user_id) AS user, count() AS findings,
       toUnixTimestamp64Nano(min(at)) AS first_ns, toUnixTimestamp64Nano(max(at)) AS last_ns
FROM incident_events
WHERE incident_id = {text_param("id")} AND (session_id != '' OR trace_id != '')
GROUP BY session, trace_only
ORDER BY last_ns DESC
LIMIT {MAX_AFFECTED}
"""

RECENT = f"""
SELECT SessionId AS session, toUnixTimestamp64Nano(max(Timestamp)) AS last_ns
FROM agent_spans
WHERE Tenant = {text_param("tenant")}
  AND TraceId IN (SELECT TraceId FROM session_traces WHERE Tenant = {text_param("tenant")}
                  AND has(JSONExtract({text_param("sessions")}, 'Array(String)'), SessionId))
  AND has(JSONExtract({text_param("sessions")}, 'Array(String)'), SessionId)
  AND Timestamp > now64(9) - toIntervalMinute({{minutes:UInt32}})
GROUP BY SessionId
LIMIT {MAX_AFFECTED}
"""


async def read(collector, tenant: str | None, sql: str, params: dict) -> list[dict]:
    """Rows of one gated, read-only statement; with ``tenant``, of that tenant's rows only."""
    out, _, _ = await collector.run_sql(
        run_read_only, collector.store, sql, "JSONEachRow", params, {},
        collector.config.sql_limits, tenant, new_tag(),
    )  # fmt: skip
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


@dataclass
class Step:
    """One span of the trajectory, with the running totals the curve draws."""

    row: dict
    index: int  # its place among the steps shown
    tokens_so_far: int
    cost_so_far: float
    number: int = 0  # its place in the whole run, from 1

    @property
    def kind(self) -> str:
        return self.row["StepKind"] or "other"

    @property
    def failed(self) -> bool:
        return self.row["StatusCode"] == "Error" or bool(self.row["ErrorType"])


@dataclass
class Trajectory:
    steps: list[Step]
    total: int  # steps in the whole run; more than len(steps) when only a window is shown


async def trajectory(collector, principal, incident: dict) -> Trajectory:
    """The incident's session (or trace, when it has no session) in time order, around the
    off-rails step when the run is longer than BEFORE_STEPS + AFTER_STEPS."""
    session, trace = incident.get("session_id") or "", incident.get("trace_id") or ""
    if not session and not trace:
        return Trajectory([], 0)
    tenant = principal.tenant
    params = {
        "tenant": text_value(incident.get("tenant") or ""),
        "by_session": "1" if session else "0",
        "session": text_value(session),
        "trace": text_value(trace),
        "span": text_value(incident.get("span_id") or ""),
    }
    flagged = await read(collector, tenant, FLAGGED_AT, params)
    if flagged:
        window = {"at_ns": flagged[0]["ts_ns"], "before": BEFORE_STEPS, "after": AFTER_STEPS}
    else:  # the span aged out, or there is none: the run from its start
        window = {"at_ns": 0, "before": 0, "after": BEFORE_STEPS + AFTER_STEPS}
    rows = await read(collector, tenant, TRAJECTORY, params | _texts(window))
    if not rows:
        return Trajectory([], 0)
    [totals] = await read(collector, tenant, TOTALS, params | {"at_ns": str(rows[0]["ts_ns"])})
    steps, tokens, cost = [], int(totals["tokens_before"]), float(totals["cost_before"])
    first = int(totals["before"]) + 1
    for index, row in enumerate(rows):
        for name in ("ts_ns", "InputTokens", "OutputTokens", "Duration", "HttpStatus"):
            row[name] = int(row[name])
        row["CostUsd"] = float(row["CostUsd"])
        tokens += row["InputTokens"] + row["OutputTokens"]
        cost += row["CostUsd"]
        steps.append(Step(row, index, tokens, cost, first + index))
    return Trajectory(steps, max(int(totals["steps"]), len(steps)))


def _texts(values: dict) -> dict[str, str]:
    return {name: str(value) for name, value in values.items()}


@dataclass
class Affected:
    session: str
    trace: str  # the trace of a finding made before its session was known ('' otherwise)
    user: str
    findings: int
    first_ns: int
    last_ns: int
    last_span_ns: int = 0  # the session's latest span within STILL_RUNNING_MINUTES, or 0

    @property
    def running(self) -> bool:
        return self.last_span_ns > 0


async def blast_radius(collector, principal, incident: dict) -> list[Affected]:
    """The sessions (and users) of the incident's findings, newest first, and which still run."""
    # incident_events has no tenant column, so a tenant's gate refuses it: the caller checked the
    # incident is the principal's tenant's, and the statement reads that one incident only
    rows = await read(collector, None, AFFECTED, {"id": text_value(incident["incident_id"])})
    affected = [
        Affected(r["session"], r["trace_only"], r["user"], int(r["findings"]),
                 int(r["first_ns"]), int(r["last_ns"]))
        for r in rows
    ]  # fmt: skip
    sessions = [a.session for a in affected if a.session]
    if sessions:
        recent = await read(collector, principal.tenant, RECENT, {
            "tenant": text_value(incident.get("tenant") or ""),
            "sessions": text_value(orjson.dumps(sessions).decode()),
            "minutes": str(STILL_RUNNING_MINUTES),
        })  # fmt: skip
        last = {r["session"]: int(r["last_ns"]) for r in recent}
        for a in affected:
            a.last_span_ns = last.get(a.session, 0)
    return affected
