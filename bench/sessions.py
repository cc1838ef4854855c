"""Memory of the detectors' state per live session, at 100k live sessions.

    python -m bench.sessions [--sessions 100000]

Feeds each session a short agent turn (two LLM steps and two tool calls, as the workload does)
through the session table and every detector, then reports the traced Python memory (tracemalloc)
held per live session. DESIGN.md's bar: at most 2 KiB per live session at 100k.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc

from analyzer.engine import default_detectors
from analyzer.session import SessionTable
from analyzer.step import Step

SECOND = 1_000_000_000


def turn(i: int, t: int) -> list[Step]:
    session, trace = f"sess-{i:09d}", f"{i:032x}"

    def step(k: int, kind: str, **kw) -> Step:
        return Step(t + k, 1000, "acme", f"support-{i % 4}", "support", session, f"user-{i % 5000}",
                    trace, f"{i:08x}{k:08x}", "", kind, **kw)  # fmt: skip

    return [
        step(
            0,
            "llm",
            model="gpt-4o",
            input_tokens=2400,
            output_tokens=300,
            cost_usd=0.009,
            status="Ok",
        ),
        step(1, "tool", tool="lookup_order", tool_args='{"order_id":42}', args_hash=i, status="Ok"),
        step(
            2,
            "llm",
            model="gpt-4o",
            input_tokens=3100,
            output_tokens=350,
            cost_usd=0.011,
            status="Ok",
        ),
        step(
            3, "tool", tool="search_docs", tool_args='{"q":"refund"}', args_hash=i + 1, status="Ok"
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100_000)
    args = parser.parse_args()
    detectors = default_detectors()
    by_kind = {
        kind: [d for d in detectors if kind in getattr(d, "kinds", (kind,))]
        for kind in ("llm", "tool")
    }
    sessions = SessionTable(max_sessions=args.sessions)
    now = 1_900_000_000 * SECOND
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(args.sessions):
        for step in turn(i, now):
            state = sessions.for_step(step, now)
            for detector in by_kind[step.kind]:
                detector.observe(step, state, now)
        now += 1000
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per = held / len(sessions)
    print(
        f"live sessions: {len(sessions):,}  traced memory: {held / 2**20:.1f} MiB  per session: {per:,.0f} B"
    )
    print(f"bar: <= 2,048 B per live session  {'PASS' if per <= 2048 else 'FAIL'}")


if __name__ == "__main__":
    main()
