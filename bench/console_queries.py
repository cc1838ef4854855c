"""Every console query and every README on-call query, timed over 10M agent spans (issue 14.7).

    python -m bench.console_queries                      # build /tmp/agentwatch-bench-console-10000000, time
    python -m bench.console_queries --reuse              # time again on the store built before
    python -m bench.console_queries --spans 1000000      # a quick run (sessions and traces scale)

Builds an embedded chDB store with the project's migrations, then fills it the way the collector
does: ``INSERT ... SELECT FROM numbers`` into ``otel_traces_ingest`` in batches of ``--batch``
spans in time order, so ``otel_traces_ingest_mv`` and ``session_traces_mv`` run and parts pile up
as they do under ingest. The data set is the issue's: 10M spans, 190k sessions, 871k traces over
the 7 days before the build, 2 tenants, 5 services, 50 agents, 40k users; a trace is an agent
root span, then LLM and tool spans in turn, 2 s apart; the root span alone carries the session
and user (as OTel GenAI exporters send it), so ``agent_spans`` must resolve the rest; 12 tools
with 1,000 argument values each; LLM spans carry their messages, tool spans arguments and result;
~1.5 % of tool calls and ~1 % of LLM calls fail. Everything is a function of the span number:
the same ``--spans`` builds the same rows (only the clock differs). Then ``--incidents``
incidents on tool spans spread over the week (the newest within the last minutes, so "still
running" finds something), each with an ``opened`` event and four ``updated`` ones (findings in four
more sessions, for the blast radius's list).

Then runs every statement of ``agentwatch/console/data.py`` (through the read-only gate, as the
console does), every read of ``analyzer/incidents/repository.py``, the baseline seed query and
every ```sql block of README.md, ``--runs`` times each (3), and prints the median, the slowest
and the rows ClickHouse read. Numbers are printed, never asserted. A 10M build takes 140-340 s on
2 busy cores (946 MB; ``--settle`` 40-120 s); the store is kept for ``--reuse`` (and ``migrate`` applies any new schema file to
it first, timed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
import statistics
import time
from pathlib import Path

import orjson

from agentwatch.console import data
from agentwatch.sql.gate import new_tag, run_read_only
from analyzer.baselines import RECENT_SESSIONS
from analyzer.incidents.repository import IncidentQuery, IncidentRepository, text_value
from collector.store import query_rows
from collector.store.embedded import EmbeddedStore
from collector.store.migrations import migrate

README = Path(__file__).resolve().parents[1] / "README.md"
DAYS = 7
TOOLS = ("search_orders", "lookup_order", "refund", "send_email", "get_weather", "read_file",
         "write_file", "run_tests", "http_get", "sql_query", "calendar", "translate")  # fmt: skip

# One span per number n. Trace t = n * traces / spans, session s = t * sessions / traces, so a
# trace's spans are consecutive and in one session; i is the span's place in its trace.
FILL = """
INSERT INTO otel_traces_ingest (TimestampNs, TraceId, SpanId, ParentSpanId, SpanName, SpanKind,
    ServiceName, ResourceAttributes, ScopeName, SpanAttributes, Duration, StatusCode, StatusMessage,
    Tenant, SessionId, UserId, AgentName, StepKind, Model, Provider, ToolName, ToolArgs,
    ToolArgsHash, ToolResultHash, InputTokens, OutputTokens, FinishReason, ErrorType, HttpStatus,
    CostUsd, Convention)
SELECT
    {t0_ns:UInt64} + s * {session_every_ns:UInt64} + (t - first_t) * 90000000000
        + i * 2000000000 + cityHash64(n, 't') % 1000000000 AS TimestampNs,
    concat(h16(cityHash64(t, 'trace')), h16(cityHash64(t, 'trace2'))) AS trace,
    h16(cityHash64(n, 'span')) AS SpanId,
    if(i = 0, '', h16(cityHash64(n - i, 'span'))) AS ParentSpanId,
    multiIf(kind = 'agent', concat('invoke_agent ', agent), kind = 'llm', concat('chat ', model),
            concat('execute_tool ', tool)) AS SpanName,
    if(kind = 'llm', 'Client', 'Internal') AS SpanKind,
    service AS ServiceName,
    map('service.name', service, 'telemetry.sdk.language', 'python') AS ResourceAttributes,
    'opentelemetry.instrumentation.openai_agents' AS ScopeName,
    multiIf(kind = 'llm', map('gen_ai.operation.name', 'chat', 'gen_ai.request.model', model,
                'gen_ai.input.messages', concat('[{"role":"user","parts":[{"type":"text","content":"order ',
                    toString(cityHash64(s) % 100000), ': where is my parcel? step ', toString(i),
                    ' of the run, please check the tracking and the refund policy"}]}]'),
                'gen_ai.output.messages', concat('[{"role":"assistant","parts":[{"type":"tool_call","name":"',
                    tool, '","arguments":', args, '}],"finish_reason":"tool_call"}]')),
            kind = 'tool', map('gen_ai.operation.name', 'execute_tool', 'gen_ai.tool.name', tool,
                'gen_ai.tool.call.arguments', args,
                'gen_ai.tool.call.result', concat('{"status":"ok","items":', toString(arg % 7), '}')),
            map('gen_ai.operation.name', 'invoke_agent', 'gen_ai.agent.name', agent,
                'gen_ai.conversation.id', session, 'user.id', user)) AS SpanAttributes,
    multiIf(kind = 'llm', 800000000 + cityHash64(n, 'd') % 4000000000,
            kind = 'tool', 50000000 + cityHash64(n, 'd') % 500000000, 60000000000) AS Duration,
    if(failed, 'Error', 'Unset') AS StatusCode,
    multiIf(NOT failed, '', kind = 'llm', 'Error code: 429 - rate limit exceeded',
            'ConnectionError: connection refused') AS StatusMessage,
    tenant AS Tenant,
    if(i = 0, session, '') AS SessionId,
    if(i = 0, user, '') AS UserId,
    agent AS AgentName,
    kind AS StepKind,
    if(kind = 'llm', model, '') AS Model,
    if(kind = 'llm', if(model LIKE 'claude%', 'anthropic', 'openai'), '') AS Provider,
    if(kind = 'tool', tool, '') AS ToolName,
    if(kind = 'tool', args, '') AS ToolArgs,
    if(kind = 'tool', cityHash64(tool, args), 0) AS ToolArgsHash,
    if(kind = 'tool', cityHash64(tool, args, failed), 0) AS ToolResultHash,
    if(kind = 'llm', 1000 + (t - first_t) * 2000 + i * 300 + cityHash64(n, 'in') % 4000, 0),
    if(kind = 'llm', 40 + cityHash64(n, 'out') % 400, 0),
    if(kind = 'llm', if(failed, 'error', 'tool_calls'), ''),
    multiIf(NOT failed, '', kind = 'llm', 'RateLimitError', 'ConnectionError'),
    if(failed AND kind = 'llm', 429, 0),
    if(kind = 'llm', 0.002 + (cityHash64(n, 'c') % 1000) / 100000, 0),
    'otel_genai'
FROM
(
    SELECT n, t, s, i, first_t,
           concat('sess-', h16(cityHash64(s, 'session'))) AS session,
           concat('user-', toString(cityHash64(s, 'user') % 40000)) AS user,
           if(s % 5 = 4, 'beta', 'acme') AS tenant,
           concat('agent-', toString(s % 50)) AS agent,
           concat('svc-', toString(s % 5)) AS service,
           multiIf(i = 0, 'agent', i % 2 = 1, 'llm', 'tool') AS kind,
           ['gpt-4o', 'gpt-4o-mini', 'claude-sonnet-4-5'][1 + s % 3] AS model,
           {tools:Array(String)}[1 + cityHash64(n, 'tool') % {n_tools:UInt32}] AS tool,
           cityHash64(n, 'arg') % 1000 AS arg,
           concat('{"id":"', toString(arg), '"}') AS args,
           cityHash64(n, 'fail') % 1000 < if(i % 2 = 1, 10, 15) AND i > 0 AS failed
    FROM
    (
        SELECT number AS n,
               intDiv(number * {traces:UInt64}, {spans:UInt64}) AS t,
               intDiv(t * {sessions:UInt64}, {traces:UInt64}) AS s,
               number - intDiv(t * {spans:UInt64} + {traces:UInt64} - 1, {traces:UInt64}) AS i,
               intDiv(s * {traces:UInt64} + {sessions:UInt64} - 1, {sessions:UInt64}) AS first_t
        FROM numbers({start:UInt64}, {count:UInt64})
    )
)
"""

# Incidents on tool spans (the 3rd span of a session's first trace), spread evenly over the
# sessions, so over the week; findings in the same agent's sessions nearby.
INCIDENTS = """
INSERT INTO incidents (incident_id, fingerprint, version, detector, kind, class, severity, status,
    title, summary, tenant, service, agent, session_id, user_id, trace_id, span_id, evidence,
    first_seen, last_seen, occurrences, sessions_affected, users_affected, link)
SELECT concat('inc-', h16(cityHash64(SpanId))) AS id,
       h16(cityHash64(ToolName, ToolArgsHash, AgentName)),
       1, 'loop', 'repeated_call', 'semantic', 'SEV2',
       if(Timestamp > now64(9) - INTERVAL 1 DAY, 'open', 'resolved'),
       concat(AgentName, ' called ', ToolName, ' 6 times with the same arguments'), '',
       Tenant, ServiceName, AgentName, session, user, TraceId, SpanId,
       '[{"why":"same call 6 times","rule":"repeat >= 4","threshold":4,"observed":6}]',
       Timestamp, Timestamp + INTERVAL 10 MINUTE, 6, 5, 5, ''
FROM
(
    SELECT s.*, m.SessionId AS session, m.UserId AS user
    FROM otel_traces AS s
    INNER JOIN session_traces AS m ON m.Tenant = s.Tenant AND m.TraceId = s.TraceId
    WHERE s.StepKind = 'tool' AND s.TraceId IN {traces:Array(String)}
    ORDER BY s.Timestamp
    LIMIT 1 BY s.TraceId
)
"""
EVENTS = """
INSERT INTO incident_events (incident_id, fingerprint, at, event, actor, detail, session_id,
                             user_id, trace_id)
SELECT i.incident_id, i.fingerprint, i.first_seen + toIntervalSecond(k * 60),
       if(k = 0, 'opened', 'updated'), 'agentwatch', i.title,
       if(k = 0, i.session_id, concat(i.session_id, '-', toString(k))), i.user_id,
       if(k = 0, i.trace_id, '')
FROM incidents AS i ARRAY JOIN range(5) AS k
"""


def hex16(sql: str) -> str:
    """``h16(x)`` in ``sql`` as 16 lowercase hex digits of the UInt64 x (ids as exporters send them)."""
    while (start := sql.find("h16(")) >= 0:
        depth, end = 0, start + 3
        for end in range(start + 3, len(sql)):
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            if depth == 0:
                break
        sql = f"{sql[:start]}lower(leftPad(hex({sql[start + 4 : end]}), 16, '0')){sql[end + 1 :]}"
    return sql


FILL, INCIDENTS = hex16(FILL), hex16(INCIDENTS)


def scale(spans: int) -> tuple[int, int]:
    """(sessions, traces) for ``spans`` in the issue's proportions (10M: 190k and 871k)."""
    return round(spans * 190_000 / 10_000_000), round(spans * 871_000 / 10_000_000)


def build(store: EmbeddedStore, spans: int, batch: int, incidents: int) -> None:
    sessions, traces = scale(spans)
    now_ns = time.time_ns()
    t0_ns = now_ns - DAYS * 86400 * 10**9
    params = {
        "t0_ns": str(t0_ns),
        "session_every_ns": str(DAYS * 86400 * 10**9 // sessions),
        "spans": str(spans),
        "traces": str(traces),
        "sessions": str(sessions),
        "tools": "[" + ",".join(f"'{t}'" for t in TOOLS) + "]",
        "n_tools": str(len(TOOLS)),
    }
    started = time.monotonic()
    for start in range(0, spans, batch):
        count = min(batch, spans - start)
        store.query(FILL, "TSV", params | {"start": str(start), "count": str(count)})
        if start // batch % 50 == 0:
            print(f"  {start + count:>11,} spans  {time.monotonic() - started:6.0f} s", flush=True)
    # the incidents' traces: the first trace of evenly spread sessions, the last a few minutes old
    picked = [round(k * (sessions - 2) / max(incidents - 1, 1)) for k in range(incidents)]
    trace_ids = store.query(
        hex16(
        "SELECT groupArray(concat(h16(cityHash64(t, 'trace')), h16(cityHash64(t, 'trace2'))))"
        " FROM (SELECT arrayJoin({s:Array(UInt64)}) AS s,"
        " intDiv(s * {traces:UInt64} + {sessions:UInt64} - 1, {sessions:UInt64}) AS t)"),
        "TSV",
        {"s": "[" + ",".join(map(str, picked)) + "]", "traces": str(traces),
         "sessions": str(sessions)},
    ).decode().strip()  # fmt: skip
    store.query(INCIDENTS, "TSV", {"traces": trace_ids})
    store.query(EVENTS, "TSV")
    print(f"built in {time.monotonic() - started:.0f} s", flush=True)


def settle(store: EmbeddedStore) -> None:
    started = time.monotonic()
    days = store.query(
        "SELECT DISTINCT partition_id FROM system.parts WHERE active AND table = 'otel_traces'"
        " AND partition_id != (SELECT max(partition_id) FROM system.parts"
        " WHERE active AND table = 'otel_traces')",
        "TSV",
    )
    for day in days.decode().split():
        store.command(f"OPTIMIZE TABLE otel_traces PARTITION ID '{day}' FINAL")
    print(f"settled (days merged) in {time.monotonic() - started:.0f} s")


# --- the statements ---------------------------------------------------------------------------


def readme_blocks() -> list[tuple[str, str]]:
    """(first comment line, statement) of every ```sql block of the README, split on ';'."""
    out = []
    for block in re.findall(r"```sql\n(.*?)```", README.read_text(), re.S):
        for statement in re.split(r";\s*$", block, flags=re.M):
            if statement.strip():
                comment = re.search(r"--\s*(.*)", statement)
                out.append((comment.group(1) if comment else statement.strip()[:60], statement))
    return out


def timed(fn, runs: int) -> tuple[float, float, int, int]:
    """(median s, max s, rows read, rows returned) of ``runs`` calls of fn -> (rows, summary)."""
    times, read, returned = [], 0, 0
    for _ in range(runs):
        started = time.perf_counter()
        returned, summary = fn()
        times.append(time.perf_counter() - started)
        read = int(summary.get("read_rows", 0)) if summary else 0
    return statistics.median(times), max(times), read, returned


def gated(store, sql: str, params: dict):
    def run():
        out, summary, _ = run_read_only(
            store, sql, "JSONEachRow", params, {}, None, None, new_tag()
        )
        return len(out.splitlines()), summary

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=20_000, help="spans per INSERT")
    parser.add_argument("--incidents", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--data", type=Path, default=None, help="default /tmp/agentwatch-bench-console-SPANS"
    )
    parser.add_argument("--reuse", action="store_true", help="time the store built before")
    parser.add_argument(
        "--settle",
        action="store_true",
        help="first merge each day but the last into one part, as schemas/017 has it done an hour"
        " after the day's last insert (min_age_to_force_merge_seconds)",
    )
    parser.add_argument(
        "--only", default="", help="time only the statements whose name contains this"
    )
    args = parser.parse_args()
    data_dir = args.data or Path(f"/tmp/agentwatch-bench-console-{args.spans}")
    if not args.reuse and data_dir.exists():
        parser.error(f"{data_dir} exists: --reuse it, or remove it to build again")
    store = EmbeddedStore(data_dir)
    started = time.monotonic()
    applied = migrate(store)
    print(f"migrations {', '.join(applied) or 'none'}: {time.monotonic() - started:.1f} s")
    if not args.reuse:
        build(store, args.spans, args.batch, args.incidents)
    if args.settle:
        settle(store)
    print(store.query(
        "SELECT count() AS spans, uniqExact(TraceId) AS traces, min(Timestamp) AS first,"
        " max(Timestamp) AS last, (SELECT uniqExact(SessionId) FROM session_traces) AS sessions,"
        " (SELECT count() FROM system.parts WHERE active AND table = 'otel_traces') AS parts,"
        " (SELECT count() FROM incidents) AS incidents FROM otel_traces", "PrettyCompact",
    ).decode())  # fmt: skip
    report(store, args.runs, args.only)


def report(store, runs: int, only: str) -> None:
    [incident] = query_rows(
        store, "SELECT * FROM incidents_current ORDER BY first_seen DESC LIMIT 1"
    )
    [old] = query_rows(
        store, "SELECT * FROM incidents_current ORDER BY first_seen LIMIT 1 OFFSET 5"
    )
    [flagged] = query_rows(store, data.FLAGGED_AT, {
        "tenant": text_value(incident["tenant"]), "trace": text_value(incident["trace_id"]),
        "span": text_value(incident["span_id"])})  # fmt: skip
    at_ns = flagged["ts_ns"]
    run = {
        "tenant": text_value(incident["tenant"]), "by_session": "1",
        "session": text_value(incident["session_id"]), "trace": text_value(incident["trace_id"]),
        "span": text_value(incident["span_id"]),
    }  # fmt: skip
    by_trace = run | {"by_session": "0"}
    window = {"at_ns": str(at_ns), "before": str(data.BEFORE_STEPS), "after": str(data.AFTER_STEPS)}
    affected = orjson.dumps([incident["session_id"]]).decode()
    cases: list[tuple[str, object]] = [
        ("console: FLAGGED_AT (off-rails step time)", gated(store, data.FLAGGED_AT, run)),
        ("console: TRAJECTORY by session", gated(store, data.TRAJECTORY, run | window)),
        ("console: TRAJECTORY by trace", gated(store, data.TRAJECTORY, by_trace | window)),
        ("console: TOTALS by session", gated(store, data.TOTALS, run | window)),
        ("console: AFFECTED", gated(store, data.AFFECTED, {"id": text_value(incident["incident_id"])})),
        ("console: RECENT (still running)", gated(store, data.RECENT, {
            "tenant": run["tenant"], "sessions": text_value(affected),
            "minutes": str(data.STILL_RUNNING_MINUTES)})),
    ]  # fmt: skip
    try:  # the golden-run diff page reads a run as TRAJECTORY does (a newer module: optional)
        golden = importlib.import_module("agentwatch.console.golden")
    except ImportError:
        golden = None
    if isinstance(getattr(golden, "CALLS", None), str):
        name = "console: golden.CALLS (a run's calls, by session)"
        cases.append((name, gated(store, golden.CALLS, run)))
    # the sessions search page (agentwatch/console/search.py), by each filter a person uses
    search = importlib.import_module("agentwatch.console.search")
    Search, tenant = search.Search, incident["tenant"]
    [trace_row] = query_rows(
        store,
        "SELECT UserId AS user, AgentName AS agent, FirstSeen AS first"
        " FROM session_traces WHERE Tenant = {t:String} AND SessionId ="
        " {s:String} LIMIT 1",
        {"t": tenant, "s": incident["session_id"]},
    )
    day = str(trace_row["first"])[:10]
    for label, given in [
        ("session", Search(session=incident["session_id"])),
        ("user", Search(user=trace_row["user"])),
        ("trace", Search(trace=incident["trace_id"])),
        ("agent + one day", Search(agent=trace_row["agent"], since=f"{day}T00:00",
                                   until=f"{day}T23:59")),
    ]:  # fmt: skip
        cases.append((f"console: search.SESSIONS by {label}",
                      gated(store, search.SESSIONS, given.params(tenant))))  # fmt: skip
    cases.append(("console: search.TRACES by trace",
                  gated(store, search.TRACES, Search(trace=incident["trace_id"]).params(tenant))))  # fmt: skip
    known = {"FLAGGED_AT", "TRAJECTORY", "TOTALS", "AFFECTED", "RECENT"}
    for name, value in vars(data).items():
        if (
            name.isupper()
            and not name.startswith("_")
            and isinstance(value, str)
            and "SELECT" in value
            and name not in known
        ):
            print(f"note: console query data.{name} is not timed here (its parameters are unknown)")
    repo = IncidentRepository(store, _run_store)
    iid = incident["incident_id"]
    for name, call in [
        ("repository: record", lambda: repo.record(iid)),
        ("repository: current", lambda: repo.current(iid)),
        ("repository: timeline", lambda: repo.timeline(iid)),
        ("repository: listed (active, 50)", lambda: repo.listed(IncidentQuery(("open", "acknowledged")))),
        ("repository: listed (all, agent)", lambda: repo.listed(IncidentQuery(labels=(("agent", incident["agent"]),)))),
        ("repository: unresolved", lambda: repo.unresolved()),
        ("repository: with_status open", lambda: repo.with_status("open")),
        ("repository: resolved_among", lambda: repo.resolved_among([iid, old["incident_id"]])),
        ("repository: spread (1 h)", lambda: repo.spread([incident["fingerprint"]], 3600)),
        ("repository: precision", lambda: repo.precision()),
    ]:  # fmt: skip
        cases.append((name, _repo_case(call)))
    cases.append((
        "issue: SELECT * of a session (agent_spans)",
        gated(store, "SELECT * FROM agent_spans WHERE SessionId = {s:String}",
              {"s": incident["session_id"]}),
    ))  # fmt: skip
    cases.append((
        "issue: SELECT * of a session, by its traces (README)",
        gated(store, "SELECT * FROM agent_spans WHERE TraceId IN (SELECT TraceId FROM session_traces"
              " WHERE SessionId = {s:String}) AND SessionId = {s:String}",
              {"s": incident["session_id"]}),
    ))  # fmt: skip
    cases.append(("baselines: seed query (7 days)", gated(store, RECENT_SESSIONS, {
        "lookback_s": str(7 * 86400), "per_key": "200", "idle_s": "1800", "max_rows": "100000"})))  # fmt: skip
    readme = {"s": incident["session_id"], "id": iid, "window_minutes": "60",
              "active_minutes": "15", "n": "5"}  # fmt: skip
    readme_old = readme | {"id": old["incident_id"], "s": old["session_id"]}
    for name, statement in readme_blocks():
        wanted = {p: v for p, v in readme.items() if "{" + p + ":" in statement}
        cases.append((f"README: {name[:60]}", gated(store, statement, wanted)))
        if "{id:" in statement or "{s:" in statement:
            older = {p: v for p, v in readme_old.items() if "{" + p + ":" in statement}
            cases.append((f"README: {name[:48]} (6 days old)", gated(store, statement, older)))
    print(f"{'statement':<70} {'median s':>9} {'max s':>7} {'rows read':>12} {'rows':>6}")
    for name, fn in cases:
        if only and only not in name:
            continue
        try:
            median, slowest, read, rows = timed(fn, runs)
        except Exception as exc:  # a statement that fails is reported, the others still run
            print(f"{name:<70} FAILED {str(exc).splitlines()[0][:200]}")
            continue
        print(f"{name:<70} {median:9.3f} {slowest:7.3f} {read:12,} {rows:6}", flush=True)


async def _run_store(fn, *args):
    return fn(*args)


def _repo_case(call):
    def run():
        result = asyncio.run(call())
        rows = len(result) if isinstance(result, (list, set)) else int(result is not None)
        return rows, {}

    return run


if __name__ == "__main__":
    main()
