"""The baseline seed query (``analyzer.baselines``) on a store of 1M spans / 20k sessions.

    python -m bench.baselines [--spans 1000000] [--sessions 20000] [--runs 5] [--data DIR]

Builds an embedded chDB store with the project's migrations and fills ``otel_traces`` with
generated agent sessions (``INSERT ... SELECT FROM numbers``: 50 agents over 5 services, two
models, 2 tenants; each session's traces carry the session id on their root span only, so
``agent_spans`` resolves the rest through ``session_traces``, as for real exporters; spans spread
over the last 3 days). Then runs the seed query ``--runs`` times and prints the time of each
run, the rows returned and the sessions per key. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from analyzer.baselines import recent_sessions
from collector.store.embedded import EmbeddedStore
from collector.store.migrations import migrate

SPANS_PER_TRACE = 10

FILL = """
INSERT INTO otel_traces (Timestamp, TraceId, SpanId, ParentSpanId, SpanName, ServiceName, Tenant,
    SessionId, AgentName, StepKind, Model, ToolName, InputTokens, OutputTokens, CostUsd,
    IngestedAt)
SELECT
    now64(9) - toIntervalSecond(3 * 86400) + toIntervalMillisecond(intDiv(number * {ms_per_span}, 1)) AS ts,
    hex(cityHash64(intDiv(number, {spans_per_trace}))) AS trace,
    hex(cityHash64(number, 1)) AS span,
    if(number % {spans_per_trace} = 0, '', hex(cityHash64(intDiv(number, {spans_per_trace}) * {spans_per_trace}, 1))),
    'span',
    concat('svc-', toString(session % 5)),
    if(session % 2 = 0, 'acme', 'beta'),
    if(number % {spans_per_trace} = 0, concat('sess-', toString(session)), ''),
    concat('agent-', toString(session % 50)),
    multiIf(number % 10 IN (1, 3, 5, 7), 'llm', number % 10 = 0, 'agent', 'tool'),
    if(number % 10 IN (1, 3, 5, 7), if(session % 3 = 0, 'claude-3-7-sonnet-20250219', 'gpt-4o'), ''),
    if(number % 10 IN (1, 3, 5, 7), '', 'lookup_order'),
    if(number % 10 IN (1, 3, 5, 7), 3000 + number % 7000, 0),
    if(number % 10 IN (1, 3, 5, 7), 50 + number % 90, 0),
    if(number % 10 IN (1, 3, 5, 7), 0.01, 0),
    ts
FROM (SELECT number, intDiv(number, {spans_per_session}) AS session FROM numbers({spans}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=None, help="store directory (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-baselines-") as tmp:
        store = EmbeddedStore(args.data or Path(tmp) / "data")
        migrate(store)
        have = int(store.query("SELECT count() FROM otel_traces", "TSV") or 0)
        if have < args.spans:
            started = time.perf_counter()
            per_session = max(args.spans // args.sessions, SPANS_PER_TRACE)
            store.command(
                FILL.format(
                    spans=args.spans,
                    spans_per_session=per_session,
                    spans_per_trace=SPANS_PER_TRACE,
                    ms_per_span=max(3 * 86400 * 1000 // args.spans, 1),
                )
            )
            print(f"filled {args.spans:,} spans in {time.perf_counter() - started:.1f} s")
        sessions = int(store.query("SELECT uniqExact(SessionId) FROM agent_spans", "TSV"))
        print(f"store: {int(store.query('SELECT count() FROM otel_traces', 'TSV')):,} spans,"
              f" {sessions:,} sessions")  # fmt: skip
        times, rows = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            rows = recent_sessions(store)
            times.append(time.perf_counter() - started)
        per_key = Counter((r.tenant, r.llm_service, r.llm_agent, r.model) for r in rows)
        print(f"seed query: {len(rows):,} sessions over {len(per_key)} keys"
              f" (at most {max(per_key.values(), default=0)} a key)")  # fmt: skip
        print("seconds per run: " + ", ".join(f"{t:.3f}" for t in times)
              + f"; median {statistics.median(times):.3f}")  # fmt: skip
        store.close()


if __name__ == "__main__":
    main()
