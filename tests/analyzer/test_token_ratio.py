"""Token ratio detector timelines on a virtual clock."""

from __future__ import annotations

import math
import pickle
import sys
from types import MappingProxyType

import pytest

from analyzer.detectors.seeding import StoredSession
from analyzer.detectors.token_ratio import TokenRatioDetector, _Baseline, _RatioState
from analyzer.policy import AgentPolicy
from analyzer.session import SessionTable
from tests.analyzer.timeline import agent_span, conversation, llm, run

KEY = ("acme", "support-svc", "support", "gpt-4o")
# ratios of normal sessions around 5:1, spread ±12 %
NORMAL = [5.0, 4.6, 5.4, 4.8, 5.2, 4.4, 5.6, 5.0, 4.9, 5.1]


def session(t0_s: float, name: str, ratio: float, steps: int = 3, per_step: int = 10_000, **kw):
    """One session of ``steps`` LLM steps of ``per_step`` input tokens at the given ratio."""
    return conversation(t0_s, name, per_step, round(per_step / ratio), steps=steps, **kw)


def history(ratios, start_s: float = 0.0, gap_s: float = 1_000.0, prefix: str = "old", **kw):
    """Sessions one after another, ``gap_s`` apart."""
    steps = []
    for i, ratio in enumerate(ratios):
        steps += session(start_s + i * gap_s, f"{prefix}{i}", ratio, **kw)
    return steps


def interleaved(ratios, start_s: float = 0.0, prefix: str = "live", **kw):
    """Sessions all running at once (a busy hour): their steps interleaved, none has ended."""
    per = [session(start_s + i * 0.001, f"{prefix}{i}", r, **kw) for i, r in enumerate(ratios)]
    return sorted((s for steps in per for s in steps), key=lambda s: s.time_ns)


def warmed_up(n: int = 30, **kw):
    """A detector and session table that have seen ``n`` normal ~5:1 sessions."""
    detector, sessions = TokenRatioDetector(**kw), SessionTable()
    assert run(detector, history([NORMAL[i % 10] for i in range(n)]), sessions) == []
    return detector, sessions


def coding_ratios(n: int) -> list[float]:
    """A coding agent's normal: ~60:1, from 25:1 to 140:1 (long runs re-read more)."""
    return [60.0 * math.exp(0.85 * math.sin(1.7 * i)) for i in range(n)]


def test_a_normal_session_opens_nothing():
    steps = [
        llm(0, 3_000, 600), llm(2, 6_000, 1_100), llm(4, 9_000, 1_900), llm(6, 12_000, 2_400),
    ]  # fmt: skip
    assert run(TokenRatioDetector(), steps) == []


def test_a_coding_agent_at_60_to_1_raises_nothing_over_200_sessions_warm_or_cold():
    ratios = coding_ratios(200)
    assert min(ratios) < 30 and max(ratios) > 130
    kw = {"agent": "coder", "model": "gpt-4", "per_step": 60_000, "steps": 6}
    assert run(TokenRatioDetector(), history(ratios, **kw)) == []  # one after another
    assert run(TokenRatioDetector(), interleaved(ratios, **kw)) == []  # all live at once
    assert run(TokenRatioDetector(), history(ratios[:15], **kw)) == []  # cold all along


def test_the_baseline_learns_from_sessions_still_running():
    detector, sessions = TokenRatioDetector(), SessionTable()
    run(detector, interleaved([NORMAL[i % 10] for i in range(30)]), sessions)
    ratio, seen = detector.baseline_ratio(KEY)
    assert seen == 30 and 4.8 < ratio < 5.2  # nobody has ended, the baseline is warm
    [f] = run(detector, session(100, "x", 50.0), sessions)
    assert f.evidence[0]["rule"] == "baseline" and f.evidence[0]["baseline_sessions"] == 30


def test_a_session_contributes_one_value_replaced_as_it_grows():
    detector, sessions = TokenRatioDetector(), SessionTable()
    run(detector, session(0, "a", 5.0, steps=10), sessions)
    run(detector, session(100, "b", 7.0, steps=2), sessions)  # too few LLM steps: no value
    baseline = detector.baselines[KEY]
    assert len(baseline.values) == 1
    run(detector, session(200, "a", 20.0, steps=3), sessions)  # "a" resumes: replaced, not added
    [value] = baseline.values
    assert math.isclose(math.exp(value), 130_000 / (10 * 2_000 + 3 * 500), rel_tol=1e-9)


def test_ten_times_the_warm_baseline_fires_with_its_evidence():
    detector, sessions = warmed_up(40)
    steps = session(40_000, "x50", 50.0) + session(40_010, "x6", 6.0)
    [f] = run(detector, steps, sessions)
    assert (f.detector, f.kind, f.incident_class, f.severity, f.signature) == (
        "token_ratio",
        "ratio_anomaly",
        "semantic",
        "SEV2",
        "support:gpt-4o",
    )
    assert f.step is steps[2] and f.step.session == "x50"  # judged from the third LLM step
    e = f.evidence[0]
    assert e["rule"] == "baseline" and e["warm"] and not e["warm_up"]
    assert e["ratio"] == 50.0 and 4.8 < e["baseline_ratio"] < 5.2 and 9 < e["multiple"] < 11
    assert e["baseline_sessions"] == 40 and e["deviations"] > 4
    assert 14 < e["threshold_ratio"] < e["ratio"] and e["baseline_sigma_log"] >= 0.1
    assert (e["input_tokens"], e["output_tokens"], e["llm_steps"]) == (30_000, 600, 3)
    assert f.evidence[1]["span_id"] == steps[2].span_id
    assert f.title == (
        "support: input:output tokens 50:1 on gpt-4o,"
        " this agent's normal 5:1 over 40 sessions (10×)"
    )


def test_field_report_74_and_175_to_1_against_their_own_5_to_1():
    detector, sessions = warmed_up(30)
    steps = session(40_000, "a", 74.0) + session(40_100, "b", 175.0, per_step=35_000)
    findings = run(detector, steps, sessions)
    assert [(f.step.session, f.evidence[0]["ratio"]) for f in findings] == [
        ("a", 74.1),
        ("b", 175.0),
    ]


def test_warm_needs_both_deviations_and_the_multiple():
    # a very regular agent: the σ floor and the ×5 rule keep 20:1 quiet, 30:1 is flagged
    detector, sessions = warmed_up(30)
    assert run(detector, session(40_000, "x20", 20.0), sessions) == []
    assert len(run(detector, session(40_010, "x30", 30.0), sessions)) == 1
    # a spread-out agent (the coding one): 3× its median is within its spread, not flagged
    detector, sessions = TokenRatioDetector(), SessionTable()
    kw = {"agent": "coder", "model": "gpt-4", "per_step": 60_000, "steps": 6}
    run(detector, history(coding_ratios(40), **kw), sessions)
    assert run(detector, session(50_000, "x", 180.0, **kw), sessions) == []
    [f] = run(detector, session(50_010, "y", 5_000.0, **kw), sessions)
    assert f.evidence[0]["rule"] == "baseline" and f.evidence[0]["threshold_ratio"] > 180


def test_cold_start_only_extreme_well_evidenced_ratios_fire():
    assert run(TokenRatioDetector(), session(0, "a", 200.0, per_step=100_000)) == []
    small = session(0, "b", 2_000.0, per_step=50_000)  # 150k input tokens: not enough evidence
    assert run(TokenRatioDetector(), small) == []
    steps = session(0, "c", 2_000.0, per_step=100_000)
    [f] = run(TokenRatioDetector(), steps)
    e = f.evidence[0]
    assert e["rule"] == "cold_start" and not e["warm"] and e["warm_up"]
    assert e["ratio"] == 2_000.0 and e["threshold_ratio"] == 500.0
    assert e["baseline_sessions"] == 0 and e["baseline_ratio"] is None
    assert "cold start" in f.title and "2000:1" in f.title


def test_cold_start_needs_three_llm_steps():
    two_steps = session(0, "a", 1_000.0, steps=2, per_step=400_000)
    assert run(TokenRatioDetector(), two_steps) == []


def test_warm_after_min_sessions_others():
    detector, sessions = TokenRatioDetector(), SessionTable()
    run(detector, history([NORMAL[i % 10] for i in range(19)]), sessions)
    assert run(detector, session(40_000, "x", 50.0), sessions) == []  # 19 others: cold
    [f] = run(detector, session(40_010, "y", 50.0), sessions)  # 20 others now
    assert f.evidence[0]["rule"] == "baseline" and f.evidence[0]["baseline_sessions"] == 20


def test_an_outlier_does_not_skew_the_baseline():
    ratios = [NORMAL[i % 10] for i in range(19)]
    ratios[3] = 175.0
    detector = TokenRatioDetector()
    run(detector, history(ratios + [5.0]))
    ratio, seen = detector.baseline_ratio(KEY)
    assert seen == 20 and 4.7 < ratio < 5.3  # the median, not the mean (which would be ~6.3)


def test_a_lasting_change_becomes_the_new_normal():
    detector, sessions = warmed_up(64)
    findings = run(detector, history([40.0] * 120, start_s=100_000, prefix="new"), sessions)
    assert 20 < len(findings) < 40  # flagged until it fills half the window, then learned
    assert findings[0].step.session == "new0"
    assert not run(detector, session(500_000, "later", 40.0), sessions)


def test_sessions_do_not_mix():
    detector, sessions = warmed_up(30)
    steps = []
    for t in range(3):  # interleaved; together they would be (30k+6k)/(150+1200) = 27:1
        steps += [
            llm(50_000 + 2 * t, 10_000, 50, session="heavy"),
            llm(50_000 + 2 * t + 1, 2_000, 400, session="ok"),
        ]
    [f] = run(detector, steps, sessions)
    assert f.step.session == "heavy" and f.evidence[0]["ratio"] == 200.0


def test_agent_spans_repeating_usage_are_ignored():
    steps = session(0, "s1", 5.0, steps=4)
    steps += [agent_span(t, 4_000_000, 100) for t in (1.5, 3.5, 5.5, 7.5)]
    assert run(TokenRatioDetector(), steps) == []


def test_agents_and_model_families_have_their_own_baselines():
    detector, sessions = warmed_up(30)
    claude = session(40_000, "c", 50.0, model="claude-sonnet-4-20250514")
    assert run(detector, claude, sessions) == []  # its own cold start
    other = session(40_005, "o", 50.0, agent="billing")
    assert run(detector, other, sessions) == []  # another agent: cold too
    [f] = run(detector, session(40_010, "g", 50.0, model="gpt-4o-2024-11-20"), sessions)
    assert f.signature == "support:gpt-4o" and f.evidence[0]["warm"]
    assert detector.baseline_ratio(("acme", "support-svc", "support", "claude-sonnet-4"))[1] == 1
    assert detector.baseline_ratio(KEY)[1] == 31


def test_thresholds_come_from_policy():
    thresholds = {"token_ratio": {"cold_ratio": 20.0, "cold_min_input_tokens": 5_000,
                                  "min_llm_steps": 2, "min_input_tokens": 5_000}}  # fmt: skip
    policy = AgentPolicy(
        thresholds=MappingProxyType(thresholds), severity=MappingProxyType({"token_ratio": "SEV3"})
    )
    steps = session(0, "a", 30.0, steps=2, per_step=4_000)
    assert run(TokenRatioDetector(), steps) == []
    [f] = run(TokenRatioDetector(), steps, SessionTable(policy_for=lambda service, agent: policy))
    assert (f.step, f.severity) == (steps[1], "SEV3")
    assert f.evidence[0]["threshold_ratio"] == 20.0
    strict = AgentPolicy(thresholds=MappingProxyType({"token_ratio": {"min_factor": 1.5}}))
    detector, sessions = warmed_up(30)
    sessions = SessionTable(policy_for=lambda service, agent: strict)
    assert len(run(detector, session(40_000, "b", 9.0), sessions)) == 1  # default ×3 would not


def test_judged_by_the_steps_alone_so_a_replay_rebuilds_the_baseline():
    steps = history([NORMAL[i % 10] for i in range(25)])
    a, b = TokenRatioDetector(), TokenRatioDetector()
    run(a, steps)
    run(b, steps)  # as restore.py replays stored steps at start: same order, same baseline
    assert a.baseline_ratio(KEY) == b.baseline_ratio(KEY)
    assert b.baseline_ratio(KEY)[1] == 25


def _state_bytes(state: _RatioState) -> int:
    size = sys.getsizeof(state) + sys.getsizeof(state.key)  # the key's strings are the steps'
    return size + sum(
        sys.getsizeof(getattr(state, name)) for name in ("input", "output", "llm_steps", "serial")
    )


def _baseline_bytes(baseline: _Baseline) -> int:
    arrays = (baseline.serials, baseline.values, baseline.stamps)
    return sys.getsizeof(baseline) + sum(sys.getsizeof(a) for a in arrays)


def test_memory_stays_within_the_documented_caps():
    detector = TokenRatioDetector(max_keys=64)
    sessions = SessionTable(max_sessions=1_000)
    steps = []
    for i in range(10_000):  # 10,000 sessions of 200 agents, all live (no idle gap)
        steps += session(i * 0.01, f"s{i}", NORMAL[i % 10], agent=f"agent{i % 200}", gap_s=0.001)
    assert run(detector, steps, sessions) == []
    assert len(detector.baselines) == 64
    assert len(sessions) == 1_000
    states = [s.detectors["token_ratio"] for s in sessions._sessions.values()]
    assert max(_state_bytes(state) for state in states) <= 300
    one = TokenRatioDetector()
    run(one, history([NORMAL[i % 10] for i in range(200)]))
    [baseline] = one.baselines.values()
    assert len(baseline.values) == 64 and _baseline_bytes(baseline) <= 1_900
    size = len(pickle.dumps(one.baselines))
    run(one, history([NORMAL[i % 10] for i in range(200)], start_s=1e6, prefix="more"))
    assert len(pickle.dumps(one.baselines)) <= size + 64  # flat: the window does not grow


# --- seeded from the store (analyzer.baselines) -------------------------------------------------


def stored(name: str, ratio: float, t_s: float, steps: int = 3, **kw) -> StoredSession:
    """A session as the seed query sums it (``tenant`` and the key fields as in ``llm``)."""
    out = kw.pop("output_tokens", 200)
    return StoredSession(
        "acme", name, "support-svc", "support", "support-svc", kw.pop("agent", "support"),
        kw.pop("model", "gpt-4o-2024-08-06"), round(out * ratio), out, steps, 0.01,
        int(t_s * 1e9),
    )  # fmt: skip


def test_a_seeded_baseline_is_warm_at_once():
    """25 stored sessions at ~60:1: the first live session at 80:1 is normal, one at 4000:1 is
    judged against the baseline (not the cold-start rule: 36k input tokens are far below its
    200k), the only way it could fire."""
    detector, sessions = TokenRatioDetector(), SessionTable()
    detector.seed([stored(f"old{i}", 60.0 * (0.9 + 0.01 * i), i) for i in range(25)], 0)
    ratio, n = detector.baseline_ratio(KEY)
    assert n == 25 and 55 < ratio < 66
    assert run(detector, session(1_000, "normal", 80.0, per_step=12_000), sessions) == []
    [finding] = run(detector, session(2_000, "reader", 4000.0, per_step=12_000), sessions)
    measures = finding.evidence[0]
    assert (measures["rule"], measures["warm"], measures["baseline_sessions"]) == (
        "baseline", True, 26,
    )  # fmt: skip
    assert "cold start" not in finding.title
    cold = TokenRatioDetector()
    assert run(cold, session(2_000, "reader", 4000.0, per_step=12_000)) == []  # unseeded: silent


def test_a_session_seen_live_and_seeded_counts_once_however_often_seeded():
    detector, sessions = TokenRatioDetector(), SessionTable()
    run(detector, history([5.0] * 10, prefix="s"), sessions)  # s0..s9, live
    both = [stored(f"s{i}", 5.0, i * 1_000 + 2) for i in range(10)]
    others = [stored(f"o{i}", 5.0, 20_000 + i) for i in range(10)]
    for _ in range(3):  # the periodic refresh: the same sessions again
        detector.seed(both + others, 0)
        assert detector.baseline_ratio(KEY)[1] == 20


def test_a_seed_and_a_live_session_merge_by_their_latest_step():
    """The later step wins; on a tie the stored value, complete where a replay saw a part."""
    detector, sessions = TokenRatioDetector(), SessionTable()
    run(detector, session(100, "partial", 5.0), sessions)  # LLM steps at 100, 102, 104 s
    detector.seed([stored("partial", 50.0, 104)], 0)  # the whole session, up to the same step
    assert detector.baseline_ratio(KEY)[0] == pytest.approx(50.0, rel=0.01)
    detector.seed([stored("partial", 70.0, 90)], 0)  # an older reading: the later one stays
    assert detector.baseline_ratio(KEY)[0] == pytest.approx(50.0, rel=0.01)
    run(detector, [llm(106, 10_000, 2_000, session="partial")], sessions)  # a newer step: live
    assert detector.baseline_ratio(KEY)[0] == pytest.approx(40_000 / 8_000, rel=0.01)


def test_a_seed_keeps_the_window_newest_and_its_own_rules():
    detector = TokenRatioDetector(window=8)
    detector.seed(
        [stored(f"s{i}", 5.0 if i < 90 else 9.0, i) for i in range(100)]
        + [
            stored("two-steps", 500.0, 200, steps=2),
            stored("no-output", 1.0, 201, output_tokens=0),
        ],
        0,
    )
    ratio, n = detector.baseline_ratio(KEY)
    assert n == 8 and ratio == pytest.approx(9.0, rel=0.01)  # the 8 newest, not the 2 unfit
    detector.seed([stored("mini", 5.0, 1, model="gpt-4o-mini")], 0)
    assert detector.baseline_ratio(("acme", "support-svc", "support", "gpt-4o-mini"))[1] == 1
