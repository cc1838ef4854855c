"""Replay public agent trajectories through a real ``agentwatch serve`` and score the detectors.

    python -m bench.replay --data DIR [--speedup 20] [--json-out bench/results/replay.json]
    python -m bench.replay --data bench/replay/samples --speedup 50        # the committed samples
    python -m bench.replay --data DIR --dump SESSION_ID                       # the spans, no collector

Data (never downloaded at run time; clone it on a machine with internet and pass --data):

  tau-bench historical trajectories (Sierra, MIT licence)
      git clone https://github.com/sierra-research/tau-bench
      --data tau-bench/historical_trajectories      (gpt-4o-airline.json: 200 runs, 4 MB; the other
                                                     files are Git LFS / larger)
  SWE-agent trajectories (Princeton NLP, MIT licence): demonstrations and test trajectories
      git clone https://github.com/SWE-agent/SWE-agent
      --data SWE-agent/trajectories  and/or  SWE-agent/tests/test_data/trajectories (*.traj)

  AutoCodeRover SWE-bench Lite runs (NUS, AGPL-3.0 non-commercial: not committed here)
      git clone https://github.com/nus-apr/auto-code-rover
      --data auto-code-rover/results/acr-run-1       (info.log + cost.json + tool_call_sequence.json
                                                     per task: real per-call times and tokens)

A directory may hold several; files are recognised by shape (tau-bench: a JSON list of
{task_id, reward, traj}; SWE-agent: *.traj). Neither set records per-call timestamps or per-call
tokens: times are synthesised (LLM latency from token counts, tool latency 0.05-0.6 s or SWE-agent's
execution_time) and tokens estimated at ~4 characters per token (SWE-agent's recorded totals,
where non-zero, rescale the estimates). Sessions arrive as a Poisson process (--mean-gap-s).

Each session is converted, round-robin, into the OTel GenAI conventions or OpenInference
(bench/replay/convert.py), sent over OTLP/gRPC when each span ends, at event time / --speedup.
Span timestamps keep the run's durations, starting in the past so that event time catches up
with the clock as the replay ends (the collector judges by event time: a replay at --speedup 20
gets the verdicts of live traffic); --compress-timestamps scales them by 1/speedup instead, so
event time equals arrival time.

Labels: only derived ones, by stated conservative rules (bench/replay/model.py): "loop" = 4
consecutive tool calls with the same tool, arguments and result; "infrastructure" = a tool result
or error with an infrastructure phrase (connection refused, timed out, 503 ...). A session with
no label is "normal". tau-bench's reward 0 is NOT used as a label.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from bench.ingest import CollectorProcess
from bench.replay.convert import CONVENTIONS, convert, dumps
from bench.replay.datasets import load
from bench.replay.score import collect, score, table
from bench.replay.send import plan, replay

DETECTORS = (
    "loop",
    "context_growth",
    "token_ratio",
    "out_of_scope_tool",
    "cost_runaway",
    "infrastructure",
)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--data", required=True, type=Path, help="directory of trajectory files")
    ap.add_argument("--limit", type=int, default=0, help="replay the first N sessions only")
    ap.add_argument(
        "--conventions",
        default=",".join(CONVENTIONS),
        help="comma list, assigned to sessions round-robin (default: %(default)s)",
    )
    ap.add_argument(
        "--speedup",
        type=float,
        default=20.0,
        help="event seconds per wall second (default %(default)s)",
    )
    ap.add_argument(
        "--mean-gap-s",
        type=float,
        default=10.0,
        help="mean event-time gap between session starts (default %(default)s)",
    )
    ap.add_argument(
        "--compress-timestamps",
        action="store_true",
        help="scale span durations by 1/speedup (event time = arrival time)",
    )
    ap.add_argument("--batch-s", type=float, default=0.5, help="export interval, wall seconds")
    ap.add_argument(
        "--settle-s",
        type=float,
        default=15.0,
        help="wall seconds to wait after every span is stored, for detection",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--policy",
        type=Path,
        help="policy file for the collector (bench/replay/policy.yaml: the data sets' tool scope"
        " and budgets; default: none, so out_of_scope_tool and budgets stay silent)",
    )
    ap.add_argument("--json-out", type=Path, help="write the results as JSON here")
    ap.add_argument("--results-dir", default="bench/results/replay", help="collector log")
    ap.add_argument("--startup-timeout", type=float, default=180.0)
    ap.add_argument("--keep", action="store_true", help="keep the collector's data directory")
    ap.add_argument("--dump", metavar="SESSION", help="print one session's spans and exit")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    conventions = [c.strip() for c in args.conventions.split(",") if c.strip()]
    runs = load(args.data, args.limit)
    if not runs:
        print(f"no trajectories recognised under {args.data}", file=sys.stderr)
        return 2
    if args.dump:
        run = next((r for r in runs if r.session_id == args.dump), None)
        if run is None:
            print(f"no session {args.dump}", file=sys.stderr)
            return 2
        print(dumps(convert(run, conventions[0], 0)))
        return 0
    datasets = Counter(r.dataset for r in runs)
    labels = Counter(label for r in runs for label in r.labels)
    print(f"{len(runs)} sessions: " + ", ".join(f"{d} {n}" for d, n in datasets.items()))
    print(
        f"derived labels: {dict(labels) or 'none'}; normal: {sum(1 for r in runs if not r.labels)}"
    )

    tmp = Path(tempfile.mkdtemp(prefix="agentwatch-replay-"))
    logs = Path(args.results_dir)
    logs.mkdir(parents=True, exist_ok=True)
    settings = {"listen": "127.0.0.1"}
    if args.policy:
        settings["policy_file"] = str(args.policy.resolve())
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    collector = CollectorProcess(tmp / "data", logs / "collector.log", str(config))
    try:
        collector.wait_healthy(args.startup_timeout)
        time_scale = 1.0 / args.speedup if args.compress_timestamps else 1.0
        # Event time starts in the past, so that it catches up with the clock as the replay ends:
        # a span never ends later than it arrives (the detectors' watermark may not run ahead of
        # the collector's clock), as in a backlog drained after an outage.
        span_s = plan(runs, conventions, 0, args.mean_gap_s, args.seed, time_scale).event_span_s
        lead_ns = 0 if args.compress_timestamps else int(span_s * (1 - 1 / args.speedup) * 1e9)
        start_ns = time.time_ns() - lead_ns - 5 * 10**9
        p = plan(runs, conventions, start_ns, args.mean_gap_s, args.seed, time_scale)
        print(
            f"{len(p.events)} spans over {p.event_span_s:.0f} s of event time; "
            f"~{p.event_span_s / args.speedup:.0f} s at speed-up {args.speedup:g}"
        )
        stats = replay(collector.grpc_target, p, args.speedup, args.batch_s)
        print(
            f"sent {stats['spans']} spans in {stats['requests']} requests, "
            f"{stats['wall_s']:.0f} s, {stats['retries']} retries"
        )
        deadline = time.monotonic() + 300
        while collector.span_count() < stats["spans"] and time.monotonic() < deadline:
            time.sleep(1)
        stored = collector.span_count()
        time.sleep(args.settle_s)
        found = collect(collector.sql, p.trace_ids, {r.session_id for r in runs})
    finally:
        collector.stop()
        if args.keep:
            print(f"data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    detectors = list(DETECTORS) + sorted(set(found["flagged"]) - set(DETECTORS))
    rows = score(runs, found, detectors, p.conventions)
    print()
    print(table(rows))
    print("\nper 100 normal sessions, by data set and convention:")
    for r in rows:
        if r["sessions_flagged"]:
            by = ", ".join(f"{g} {v:.1f}" for g, v in r["per_100_normal_by"].items())
            print(f"  {r['detector']:<18} {by}")
    print(
        f"\nincidents: {len(found['incidents'])}, findings: {found['events']} "
        f"({found['attributed_by_trace_only']} attributed by trace id only, no session id); "
        f"unattributed: {found['unattributed'] or 0}"
    )
    by_session = {r.session_id: r for r in runs}
    false_alarms = []
    for (det, session), ex in sorted(found["examples"].items()):
        run = by_session[session]
        if not run.labels or _not_labelled_for(det, run):
            false_alarms.append(
                {
                    "session": session,
                    "detector": det,
                    "labels": sorted(run.labels),
                    "convention": p.conventions[session],
                    **ex,
                }
            )
    if false_alarms:
        print("\nflagged sessions without the detector's label (first 15):")
        for fa in false_alarms[:15]:
            print(f"  {fa['session']:<48} {fa['detector']}/{fa['kind']:<18} {fa['title'][:90]}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(
            json.dumps(
                {
                    "command": " ".join(["python -m bench.replay", *(argv or sys.argv[1:])]),
                    "data": str(args.data),
                    "sessions": len(runs),
                    "datasets": dict(datasets),
                    "labels": dict(labels),
                    "conventions": conventions,
                    "speedup": args.speedup,
                    "policy": str(args.policy) if args.policy else None,
                    "compress_timestamps": args.compress_timestamps,
                    "event_time_s": p.event_span_s,
                    "replay": stats,
                    "spans_stored": stored,
                    "detectors": rows,
                    "false_alarms": false_alarms,
                    "incidents": found["incidents"],
                },
                indent=1,
                default=str,
            )
        )
        print(f"\nwrote {args.json_out}")
    return 0


def _not_labelled_for(detector: str, run) -> bool:
    """A labelled session flagged by a detector that does not answer that label."""
    return detector not in run.labels


if __name__ == "__main__":
    sys.exit(main())
