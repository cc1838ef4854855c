"""The seed query on a real chDB store: it sums each session as the detectors do, so a detector
seeded from the store holds the baseline one that saw the steps live holds."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from analyzer.baselines import recent_sessions, seed_baselines
from analyzer.detectors.cost_runaway import CostRunawayDetector
from analyzer.detectors.token_ratio import TokenRatioDetector
from analyzer.engine import Detection
from analyzer.session import SessionTable
from analyzer.step import Step
from collector.store import insert_rows
from collector.store.embedded import EmbeddedStore
from collector.store.migrations import migrate
from tests.analyzer.timeline import run

SECOND = 1_000_000_000


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = EmbeddedStore(tmp_path_factory.mktemp("baselines") / "data")
    migrate(store)
    yield store
    store.close()


def store_steps(store, steps: list[Step]) -> None:
    """The steps as spans, through the ingest table (and so session_traces) as the writer does."""
    rows = [
        {
            "TimestampNs": s.time_ns, "Duration": s.duration_ns, "Tenant": s.tenant,
            "ServiceName": s.service, "AgentName": s.agent, "SessionId": s.session,
            "UserId": s.user, "TraceId": s.trace_id, "SpanId": s.span_id, "StepKind": s.kind,
            "Model": s.model, "InputTokens": s.input_tokens, "OutputTokens": s.output_tokens,
            "CostUsd": s.cost_usd,
        }
        for s in steps
    ]  # fmt: skip
    insert_rows(store, "otel_traces_ingest", rows)


def step(t_ns, tenant, session, trace, kind, span, agent="", **kw) -> Step:
    return Step(t_ns, 1, tenant, "support-svc", agent, session, "", trace, span, "", kind, **kw)


def agent_sessions(t0: int, tenant: str, n: int, ratio: float, prefix: str) -> list[Step]:
    """``n`` sessions as exporters send them: the session id and agent name on the root span only,
    three chat spans below it (a dated model snapshot), each session over two traces."""
    steps = []
    for i in range(n):
        t, session = t0 + i * 60 * SECOND, f"{prefix}{i}"
        steps.append(step(t, tenant, session, f"{session}-a", "agent", f"{session}r", "support"))
        steps.append(
            step(t + 1, tenant, session, f"{session}-b", "agent", f"{session}q", "support")
        )
        for k in range(3):
            out = 200 + 10 * (i % 7)
            steps.append(
                step(t + 2 + k, tenant, "", f"{session}-{'ab'[k % 2]}", "llm", f"{session}{k}",
                     model="gpt-4o-2024-08-06", input_tokens=round(out * ratio),
                     output_tokens=out, cost_usd=0.01 * (1 + i % 5))
            )  # fmt: skip
    return steps


def test_a_seeded_detector_holds_the_baseline_the_live_one_learned(store):
    now = time.time_ns()
    t0 = now - 3 * 3600 * SECOND  # three hours ago: finished sessions, for spend too
    steps = agent_sessions(t0, "acme", 30, 60.0, "s") + agent_sessions(t0, "globex", 22, 8.0, "g")
    two_steps = agent_sessions(t0, "acme", 1, 60.0, "short")[:-1]  # two LLM steps: no value
    steps += two_steps
    steps.sort(key=lambda s: s.time_ns)
    store_steps(store, steps)
    live_ratio, live_cost = TokenRatioDetector(), CostRunawayDetector()
    sessions = SessionTable()
    for detector in (live_ratio, live_cost):
        run(detector, steps, sessions)
    late = step(now, "other", "x", "x", "llm", "late", model="m", input_tokens=1, output_tokens=1)
    run(live_cost, [late], sessions)  # the live detector folds the idle sessions (spend)

    seeded_ratio, seeded_cost = TokenRatioDetector(), CostRunawayDetector()
    stored = recent_sessions(store)
    Detection([seeded_ratio, seeded_cost], SessionTable()).seed(stored, now)

    key = ("acme", "support-svc", "support", "gpt-4o")
    assert set(seeded_ratio.baselines) == {key, ("globex", "support-svc", "support", "gpt-4o")}
    for name, baseline in seeded_ratio.baselines.items():
        live = live_ratio.baselines[name]
        assert Counter(baseline.serials) == Counter(live.serials)  # the same sessions, once each
        assert sorted(baseline.values) == pytest.approx(sorted(live.values))
    assert seeded_ratio.baseline_ratio(key) == pytest.approx(live_ratio.baseline_ratio(key))
    assert seeded_ratio.baseline_ratio(key)[1] == 30  # the two-step session is left out
    for name, baseline in seeded_cost._baselines.items():
        assert sorted(baseline.costs) == pytest.approx(sorted(live_cost._baselines[name].costs))
    assert len(seeded_cost._baselines[("acme", "support-svc", "support")].costs) == 31


def test_the_query_is_bounded_per_key_and_in_all(store):
    now = time.time_ns()
    store_steps(store, agent_sessions(now - 3600 * SECOND, "bounded", 6, 20.0, "b"))
    stored = [s for s in recent_sessions(store, per_key=4) if s.tenant == "bounded"]
    assert [s.session for s in stored] == ["b2", "b3", "b4", "b5"]  # the newest, oldest first
    assert len(recent_sessions(store, max_rows=3)) == 3
    assert [s for s in recent_sessions(store, lookback_s=60) if s.tenant == "bounded"] == []


async def test_a_store_that_fails_leaves_the_baselines_as_they_are():
    detection = Detection([TokenRatioDetector()], SessionTable())

    async def run_store(fn, *args):
        raise OSError("the store is down")

    assert await seed_baselines(detection, None, run_store) == 0
    assert detection.detectors[0].baselines == {}
