"""One session sweep (``analyzer.session_sweep``) over sessions that span traces, on chDB.

    python -m bench.session_sweep [--sessions 1000] [--steps 50] [--background 1000000] [--runs 3]

Builds an embedded chDB store with the project's migrations and fills ``otel_traces`` with
``--sessions`` recent sessions of ``--steps`` spans each, in traces of 10 spans (one root that
carries the session id, as OTel GenAI exporters do, 4 LLM calls, 5 tool calls), ended within the
last 10 minutes, plus ``--background`` older spans (3 days back, sessions of one trace: the store
the sweep reads among). Then runs a sweep ``--runs`` times, as the collector does: a fresh sweep
object each time (so every run is a first sweep, looking back 30 minutes: the worst case), every
session allowed (``max_sessions`` = ``--sessions``). Prints the time of each stage: the
candidates query, the steps query, the baseline seed query (read once per 5 minutes), the
replay. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from analyzer.baselines import recent_sessions
from analyzer.engine import Analyzer, Detection
from analyzer.incidents.lifecycle import IncidentManager
from analyzer.incidents.repository import IncidentRepository, text_value
from analyzer.session import SessionTable
from analyzer.session_sweep import _CANDIDATES, _STEPS, SessionSweep
from collector.store import query_rows
from collector.store.embedded import EmbeddedStore
from collector.store.migrations import migrate

SPANS_PER_TRACE = 10

# {age_s} seconds back, one span every {ms_per_span} ms; span 0 of each trace is its root
FILL = """
INSERT INTO otel_traces (Timestamp, Duration, TraceId, SpanId, ParentSpanId, SpanName,
    ServiceName, Tenant, SessionId, AgentName, StepKind, Model, ToolName, ToolArgs, ToolArgsHash,
    ToolResultHash, InputTokens, OutputTokens, CostUsd, IngestedAt)
SELECT
    now64(9) - toIntervalSecond({age_s}) + toIntervalMillisecond(number * {ms_per_span}) AS ts,
    1000000,
    hex(cityHash64('{prefix}', intDiv(number, {spans_per_trace}))) AS trace,
    hex(cityHash64('{prefix}', number, 1)) AS span,
    if(number % {spans_per_trace} = 0, '',
       hex(cityHash64('{prefix}', intDiv(number, {spans_per_trace}) * {spans_per_trace}, 1))),
    'span',
    concat('svc-', toString(session % 5)),
    if(session % 2 = 0, 'acme', 'beta'),
    if(number % {spans_per_trace} = 0, concat('{prefix}-', toString(session)), ''),
    if(number % {spans_per_trace} = 0, concat('agent-', toString(session % 50)), ''),
    multiIf(number % 10 IN (1, 3, 5, 7), 'llm', number % 10 = 0, 'agent', 'tool'),
    if(number % 10 IN (1, 3, 5, 7), 'gpt-4o', ''),
    if(number % 10 IN (1, 3, 5, 7, 0), '', concat('tool_', toString(number % 10))),
    if(number % 10 IN (1, 3, 5, 7, 0), '', concat('{{"q": ', toString(number % 97), '}}')),
    if(number % 10 IN (1, 3, 5, 7, 0), 0, cityHash64(number % 97)),
    if(number % 10 IN (1, 3, 5, 7, 0), 0, cityHash64(number)),
    if(number % 10 IN (1, 3, 5, 7), 3000 + number % 7000, 0),
    if(number % 10 IN (1, 3, 5, 7), 50 + number % 90, 0),
    if(number % 10 IN (1, 3, 5, 7), 0.01, 0),
    ts
FROM (SELECT number, intDiv(number, {spans_per_session}) AS session FROM numbers({spans}))
"""


def fill(store, prefix: str, spans: int, per_session: int, age_s: int) -> None:
    store.command(
        FILL.format(
            prefix=prefix,
            spans=spans,
            spans_per_session=per_session,
            spans_per_trace=SPANS_PER_TRACE,
            age_s=age_s,
            ms_per_span=max(age_s * 1000 // max(spans, 1), 1),
        )
    )


def timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


async def one_sweep(store, sessions: int) -> tuple[float, object]:
    async def run_store(fn, *args):
        return await asyncio.to_thread(fn, *args)

    analyzer = Analyzer(
        Detection([], SessionTable()), IncidentManager(), IncidentRepository(store, run_store).write
    )
    sweep = SessionSweep(analyzer, store, run_store, max_sessions=sessions)
    started = time.perf_counter()
    report = await sweep.run_once()
    return time.perf_counter() - started, report


def seeded_replay(store, sessions: int):
    """The sweep's replay alone: ``(rows, seeds) -> (findings, steps per session)``."""
    analyzer = Analyzer(Detection([], SessionTable()), IncidentManager(), None)
    sweep = SessionSweep(analyzer, store, None, max_sessions=sessions)
    return lambda rows, seeds: sweep._replay(rows, seeds, time.time_ns())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50, help="spans per session")
    parser.add_argument("--background", type=int, default=1_000_000, help="older spans")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=None, help="store directory (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        store = EmbeddedStore(args.data or Path(tmp) / "data")
        migrate(store)
        started = time.perf_counter()
        if args.background:
            fill(store, "old", args.background, 50, 3 * 86400)
        fill(store, "sweep", args.sessions * args.steps, args.steps, 600)
        print(f"filled {args.background + args.sessions * args.steps:,} spans"
              f" in {time.perf_counter() - started:.1f} s")  # fmt: skip

        since = str(time.time_ns() - 1800 * 10**9)
        params = {"since_ns": since, "limit": str(args.sessions + 1)}
        t_candidates, candidates = timed(
            query_rows, store, _CANDIDATES, params, "JSONCompactEachRow"
        )
        pairs = [[tenant, session] for tenant, session, _, _ in candidates]
        params = {
            "sessions": text_value(orjson.dumps(pairs).decode()),
            "max_age_s": "86400",
            "max_steps": "5000",
        }
        t_steps, steps = timed(query_rows, store, _STEPS, params, "JSONCompactEachRow")
        t_seed, seeds = timed(recent_sessions, store)
        print(f"candidates query: {t_candidates:.3f} s, {len(candidates):,} sessions")
        print(f"steps query: {t_steps:.3f} s, {len(steps):,} steps")
        print(f"baseline seed query (every 5 min): {t_seed:.3f} s, {len(seeds):,} sessions")
        replays = []
        for _ in range(args.runs):
            t_replay, (findings, _) = timed(seeded_replay(store, args.sessions), steps, seeds)
            replays.append(t_replay)
        print("replay alone (a fresh Detection, seeded, in one thread): "
              + ", ".join(f"{t:.3f}" for t in replays) + f" s; {len(findings)} findings")  # fmt: skip

        times = []
        for _ in range(args.runs):
            elapsed, report = asyncio.run(one_sweep(store, args.sessions))
            times.append(elapsed)
            print(f"sweep: {elapsed:.3f} s: {report.sessions:,} sessions, {report.steps:,} steps,"
                  f" {report.findings} findings")  # fmt: skip
        print(f"median sweep: {statistics.median(times):.3f} s (queries, seed and replay)")
        store.close()


if __name__ == "__main__":
    main()
