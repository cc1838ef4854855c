"""Token ratio detector timelines on a virtual clock."""

from __future__ import annotations

import math
import sys
from types import MappingProxyType

from analyzer.detectors.token_ratio import TokenRatioDetector, _Baseline, _RatioState
from analyzer.policy import AgentPolicy
from analyzer.session import SessionTable
from tests.analyzer.timeline import agent_span, conversation, llm, run, tool

KEY = ("acme", "support-svc", "support", "gpt-4o")
# ratios of normal sessions around 5:1, spread ±12 %
NORMAL = [5.0, 4.6, 5.4, 4.8, 5.2, 4.4, 5.6, 5.0, 4.9, 5.1]


def session(t0_s: float, name: str, ratio: float, steps: int = 3, per_step: int = 10_000, **kw):
    """One session of ``steps`` LLM steps of ``per_step`` input tokens at the given ratio."""
    return conversation(t0_s, name, per_step, round(per_step / ratio), steps=steps, **kw)


def history(ratios, start_s: float = 0.0, gap_s: float = 1_000.0, prefix: str = "old", **kw):
    """Sessions one after another, ``gap_s`` apart: each is completed when the next starts."""
    steps = []
    for i, ratio in enumerate(ratios):
        steps += session(start_s + i * gap_s, f"{prefix}{i}", ratio, **kw)
    return steps


def warmed_up(n: int = 30, **kw):
    """A detector and session table that have seen ``n`` completed normal ~5:1 sessions."""
    detector, sessions = TokenRatioDetector(**kw), SessionTable()
    assert run(detector, history([NORMAL[i % 10] for i in range(n)]), sessions) == []
    run(detector, [tool(n * 1_000.0, "search_docs", 1, session="tick")], sessions)  # all completed
    return detector, sessions


def test_a_normal_session_opens_nothing():
    steps = [
        llm(0, 3_000, 600), tool(1, "search_docs", 1), llm(2, 6_000, 1_100),
        tool(3, "lookup_order", 2), llm(4, 9_000, 1_900), llm(6, 12_000, 2_400),
    ]  # fmt: skip
    assert run(TokenRatioDetector(), steps) == []


def test_field_report_sessions_74_and_175_to_1_are_flagged_on_a_cold_start():
    steps = session(0, "a", 74.0) + session(100, "b", 175.0, per_step=35_000)
    findings = run(TokenRatioDetector(), steps)
    assert [(f.step.session, f.evidence[0]["ratio"]) for f in findings] == [
        ("a", 74.1),
        ("b", 175.0),
    ]
    f = findings[0]
    assert (f.detector, f.kind, f.incident_class, f.severity, f.signature) == (
        "token_ratio",
        "ratio_anomaly",
        "semantic",
        "SEV2",
        "support:gpt-4o",
    )
    assert f.step is steps[2]  # judged from the third LLM step
    evidence = f.evidence[0]
    assert evidence["warm_up"] and evidence["baseline_ratio"] == 5.0
    assert (evidence["input_tokens"], evidence["output_tokens"]) == (30_000, 405)
    assert f.evidence[1]["span_id"] == steps[2].span_id


def test_cold_start_needs_three_llm_steps_and_enough_tokens():
    two_steps = session(0, "a", 100.0, steps=2, per_step=40_000)
    small = session(10, "b", 100.0, steps=5, per_step=3_000)  # 15k input tokens in all
    assert run(TokenRatioDetector(), two_steps + small) == []


def test_cold_start_uses_max_ratio_not_the_default_normal():
    assert run(TokenRatioDetector(), session(0, "a", 40.0)) == []


def test_after_warm_up_40_to_1_is_flagged_and_6_to_1_is_not():
    detector, sessions = warmed_up(30)
    ratio, seen = detector.baseline_ratio(KEY)
    assert seen == 30 and 4.8 < ratio < 5.2
    [f] = run(detector, session(40_000, "x40", 40.0) + session(40_010, "x6", 6.0), sessions)
    assert f.step.session == "x40"
    evidence = f.evidence[0]
    assert not evidence["warm_up"] and evidence["deviations"] > 4
    assert 4.8 < evidence["baseline_ratio"] < 5.2 and evidence["baseline_sessions"] == 30
    assert "40:1" in f.title and "normal 5:1" in f.title


def test_after_warm_up_twice_the_baseline_is_still_needed():
    # a very regular agent: the scale floor and the ×2 rule keep 9:1 quiet
    detector, sessions = warmed_up(30)
    assert run(detector, session(40_000, "x9", 9.0), sessions) == []


def test_an_agent_whose_normal_is_100_to_1_learns_it():
    detector, sessions = TokenRatioDetector(), SessionTable()
    ratios = [100.0 * (1 + 0.1 * math.sin(i)) for i in range(25)]
    findings = run(detector, history(ratios, per_step=40_000), sessions)
    assert len(findings) == 20  # every warm-up session: one incident (same fingerprint)
    later = session(30_000, "normal", 110.0, per_step=40_000)
    later += session(30_010, "spiral", 500.0, per_step=50_000)
    [f] = run(detector, later, sessions)
    assert f.step.session == "spiral" and 90 < f.evidence[0]["baseline_ratio"] < 110


def test_a_cold_start_outlier_does_not_skew_the_baseline():
    ratios = [NORMAL[i % 10] for i in range(19)]
    ratios[3] = 175.0
    detector = TokenRatioDetector()
    run(detector, history(ratios + [5.0]) + [tool(30_000, "search_docs", 1, session="tick")])
    ratio, seen = detector.baseline_ratio(KEY)
    assert seen == 20 and 4.7 < ratio < 5.3  # the median, not the mean (which would be ~6.3)


def test_a_lasting_change_becomes_the_new_normal():
    detector, sessions = warmed_up(30)
    findings = run(detector, history([40.0] * 120, start_s=40_000, prefix="new"), sessions)
    assert 10 < len(findings) < 60  # flagged at first, then learned (Huber-clipped EW updates)
    assert findings[0].step.session == "new0"
    assert not run(detector, session(500_000, "later", 40.0), sessions)


def test_the_baseline_is_fed_once_per_completed_session():
    detector, sessions = TokenRatioDetector(idle_s=600), SessionTable()
    steps = session(0, "a", 5.0, steps=6) + session(10, "b", 5.0, steps=2)
    run(detector, steps, sessions)
    assert detector.baseline_ratio(KEY) is None  # still live: their ratios may move
    run(detector, [tool(700, "search_docs", 1, session="c")], sessions)  # any step ticks the clock
    assert detector.baseline_ratio(KEY)[1] == 1  # "a" fed once; "b" had too few LLM steps
    run(detector, session(701, "a", 5.0), sessions)  # "a" resumes: not fed again
    run(detector, [tool(5_000, "search_docs", 1, session="c")], sessions)
    assert detector.baseline_ratio(KEY)[1] == 1


def test_sessions_do_not_mix():
    steps = []
    for t in range(3):  # interleaved; together they would be (30k+6k)/(150+1200) = 27:1
        steps += [llm(2 * t, 10_000, 50, session="heavy"), llm(2 * t + 1, 2_000, 400, session="ok")]
    [f] = run(TokenRatioDetector(), steps)
    assert f.step.session == "heavy" and f.evidence[0]["ratio"] == 200.0
    two_each = [llm(t, 40_000, 100, session=f"s{t % 3}") for t in range(6)]  # 2 LLM steps each
    assert run(TokenRatioDetector(), two_each) == []


def test_agent_spans_repeating_usage_are_ignored():
    steps = session(0, "s1", 5.0, steps=4)
    steps += [agent_span(t, 400_000, 100) for t in (1.5, 3.5, 5.5, 7.5)]
    assert run(TokenRatioDetector(), steps) == []


def test_model_families_have_their_own_baselines():
    detector, sessions = warmed_up(30)
    claude = session(40_000, "c", 40.0, model="claude-sonnet-4-20250514")
    assert run(detector, claude, sessions) == []  # its own cold start: only max_ratio applies
    [f] = run(detector, session(40_010, "g", 40.0, model="gpt-4o-2024-11-20"), sessions)
    assert f.signature == "support:gpt-4o" and not f.evidence[0]["warm_up"]
    assert detector.baseline_ratio(("acme", "support-svc", "support", "claude-sonnet-4")) is None


def test_thresholds_come_from_policy():
    thresholds = {"token_ratio": {"max_ratio": 20.0, "min_llm_steps": 2, "min_input_tokens": 5_000}}
    policy = AgentPolicy(
        thresholds=MappingProxyType(thresholds), severity=MappingProxyType({"token_ratio": "SEV3"})
    )
    steps = session(0, "a", 30.0, steps=2, per_step=4_000)
    assert run(TokenRatioDetector(), steps) == []
    [f] = run(TokenRatioDetector(), steps, SessionTable(policy_for=lambda service, agent: policy))
    assert (f.step, f.severity) == (steps[1], "SEV3")
    lenient = AgentPolicy(thresholds=MappingProxyType({"token_ratio": {"max_ratio": 200.0}}))
    table = SessionTable(policy_for=lambda service, agent: lenient)
    assert run(TokenRatioDetector(), session(0, "b", 175.0), table) == []


def _state_bytes(state: _RatioState) -> int:
    size = sys.getsizeof(state) + sys.getsizeof(state.key)  # the key's strings are the steps'
    return size + sum(
        sys.getsizeof(getattr(state, name)) for name in ("input", "output", "llm_steps", "last_ns")
    )


def _baseline_bytes(baseline: _Baseline) -> int:
    size = sys.getsizeof(baseline) + sys.getsizeof(baseline.n)
    size += sys.getsizeof(baseline.center) + sys.getsizeof(baseline.scale)
    return size + (0 if baseline.seed is None else sys.getsizeof(baseline.seed))


def test_memory_stays_within_the_documented_caps():
    detector = TokenRatioDetector(max_keys=64, max_pending=500)
    sessions = SessionTable(max_sessions=1_000)
    steps = []
    for i in range(10_000):  # 10,000 sessions of 200 agents, all live (no idle gap)
        steps += session(i * 0.01, f"s{i}", NORMAL[i % 10], agent=f"agent{i % 200}", gap_s=0.001)
    assert run(detector, steps, sessions) == []
    assert len(detector.baselines) == 64
    assert len(detector.pending) == 500
    assert len(sessions) == 1_000
    states = [s.detectors["token_ratio"] for s in sessions._sessions.values()]
    assert max(_state_bytes(state) for state in states) <= 300
    warm = [b for b in detector.baselines.values() if b.seed is not None]
    assert warm and max(_baseline_bytes(b) for b in warm) <= 430
    cold = _Baseline()
    for i in range(25):
        cold.update(math.log(NORMAL[i % 10]), 0.02)
    assert cold.seed is None and _baseline_bytes(cold) <= 150
