"""Cost runaway detector timelines on a virtual clock."""

from __future__ import annotations

from analyzer.detectors.cost_runaway import CostRunawayDetector
from analyzer.detectors.seeding import StoredSession
from analyzer.policy import AgentPolicy
from analyzer.session import SessionTable
from tests.analyzer.timeline import agent_span, llm, run, tool


def run_under(detector, steps, policy: AgentPolicy) -> list:
    """``run`` with every session under ``policy``."""
    return run(detector, steps, SessionTable(policy_for=lambda service, agent: policy))


NO_BUDGET = AgentPolicy()


def cheap_sessions(n: int, agent: str = "support", start_s: float = 0.0) -> list:
    """``n`` finished sessions of two LLM steps costing $0.25 in all, 100 s apart."""
    steps = []
    for i in range(n):
        t = start_s + 100 * i
        session = f"{agent}-warm{i}"
        steps += [
            llm(t, 2000, 300, session=session, agent=agent, cost_usd=0.125),
            tool(t + 0.5, "search_docs", i, session=session, agent=agent),
            llm(t + 1, 2500, 300, session=session, agent=agent, cost_usd=0.125),
        ]
    return steps


def spender(start_s: float, steps: int, cost_usd: float, session: str = "big", **kw) -> list:
    return [
        llm(start_s + i, 4000, 500, session=session, cost_usd=cost_usd, **kw) for i in range(steps)
    ]


def test_budget_breach_is_flagged_at_the_crossing_step_and_only_once():
    steps = spender(1, 6, 0.3)  # 0.3, 0.6, 0.9, 1.2 > 1.0 at the fourth step
    [f] = run_under(CostRunawayDetector(), steps, AgentPolicy(session_cost_usd=1.0))
    assert (f.detector, f.kind, f.incident_class, f.severity, f.signature) == (
        "cost_runaway",
        "budget_exceeded",
        "semantic",
        "SEV1",
        "support:budget_exceeded",
    )
    assert f.step.span_id == steps[3].span_id
    spend = f.evidence[2]
    assert spend["llm_steps"] == 4 and spend["tokens"] == 4 * 4500
    assert abs(spend["cost_usd"] - 1.2) < 1e-9 and spend["budget_usd"] == 1.0
    assert f.evidence[1]["span_id"] == steps[3].span_id


def test_spending_exactly_the_budget_is_not_a_breach():
    steps = spender(1, 4, 0.25)
    assert run_under(CostRunawayDetector(), steps, AgentPolicy(session_cost_usd=1.0)) == []


def test_token_budget():
    steps = spender(1, 5, 0.0)  # 4500 tokens a step: 9000, 13500 > 10000 at the third
    [f] = run_under(CostRunawayDetector(), steps, AgentPolicy(session_tokens=10_000))
    assert (f.kind, f.severity, f.step) == ("budget_exceeded", "SEV1", steps[2])
    assert f.evidence[2]["budget"] == "tokens" and f.evidence[2]["tokens"] == 13_500


def test_usage_repeated_on_agent_spans_is_not_counted():
    steps = [
        llm(1, 4000, 500, cost_usd=0.4),
        agent_span(2, 4000, 500, cost_usd=0.4),  # the same usage again, on the agent span
        llm(3, 4000, 500, cost_usd=0.4),
        agent_span(4, 8000, 1000, cost_usd=0.8),
    ]
    policy = AgentPolicy(session_cost_usd=1.0, session_tokens=10_000)
    assert run_under(CostRunawayDetector(), steps, policy) == []


def test_sessions_do_not_mix():
    steps = [llm(t, 1000, 100, session=f"s{t % 2}", cost_usd=0.3) for t in range(6)]  # 0.9 each
    assert run_under(CostRunawayDetector(), steps, AgentPolicy(session_cost_usd=1.0)) == []


def test_policy_severity_override_applies():
    policy = AgentPolicy(session_cost_usd=1.0, severity={"cost_runaway": "SEV2"})
    [f] = run_under(CostRunawayDetector(), spender(1, 5, 0.5), policy)
    assert (f.kind, f.severity) == ("budget_exceeded", "SEV2")


def test_spend_far_above_the_agents_baseline_after_warm_up():
    detector = CostRunawayDetector(session_idle_s=60)
    normal = spender(3000, 2, 0.125, session="normal")  # finished, joins the baseline: 21
    big = spender(3100, 8, 0.5)  # baseline $0.25 × 10 = $2.50: flagged past it, at the sixth step
    findings = run(detector, cheap_sessions(20) + normal + big)
    [f] = findings
    assert (f.kind, f.incident_class, f.severity, f.signature) == (
        "spend_anomaly",
        "semantic",
        "SEV2",
        "support:spend_anomaly",
    )
    assert f.step is big[5]
    spend = f.evidence[2]
    assert spend["baseline_usd"] == 0.25 and spend["factor"] == 10 and spend["llm_steps"] == 6
    assert spend["baseline_sessions"] == 21 and spend["cost_usd"] == 3.0


def test_before_warm_up_only_the_absolute_guard_applies():
    detector = CostRunawayDetector(session_idle_s=60)
    big = spender(3000, 12, 0.5)  # 12× the cheap sessions' cost, yet under $5 until the 11th step
    [f] = run(detector, cheap_sessions(19) + big)
    assert (f.kind, f.severity, f.step) == ("spend_anomaly", "SEV2", big[10])
    assert f.evidence[2]["default_session_cost_usd"] == 5.0


def test_a_declared_budget_replaces_the_baseline_and_the_guard():
    policy = AgentPolicy(session_tokens=10**9)
    steps = cheap_sessions(20) + spender(3000, 30, 0.5)  # $15: far above both
    assert run_under(CostRunawayDetector(session_idle_s=60), steps, policy) == []


def test_baselines_are_per_agent():
    detector = CostRunawayDetector(session_idle_s=60)
    research = spender(3000, 8, 0.5, agent="research")  # $4: research has no baseline yet
    assert run(detector, cheap_sessions(20, agent="support") + research) == []


def test_factor_and_warm_up_come_from_policy_thresholds():
    policy = AgentPolicy(thresholds={"cost_runaway": {"factor": 2, "min_sessions": 3}})
    steps = cheap_sessions(3) + spender(1000, 4, 0.25)  # $0.25 × 2 = $0.50, passed at the third
    [f] = run_under(CostRunawayDetector(session_idle_s=60), steps, policy)
    assert f.step is steps[-2] and f.evidence[2]["factor"] == 2


def test_a_still_running_session_does_not_join_the_baseline():
    detector = CostRunawayDetector(session_idle_s=60, min_sessions=3)
    steps = cheap_sessions(2) + spender(1000, 3, 0.5, session="long")
    # 2 finished sessions: no baseline yet, and "long" has not been idle for 60 s
    assert run(detector, steps + spender(1010, 1, 0.5, session="other")) == []
    assert [len(b.costs) for b in detector._baselines.values()] == [2]


def test_state_stays_bounded():
    detector = CostRunawayDetector(session_idle_s=60, max_open=5, max_agents=3)
    steps = [
        llm(t, 10, 1, session=f"s{t}", agent=f"agent{t % 7}", cost_usd=0.01) for t in range(50)
    ]
    run(detector, steps)
    assert len(detector._open) <= 5 and len(detector._baselines) <= 3


# --- seeded from the store (analyzer.baselines) -------------------------------------------------

SECOND = 1_000_000_000


def stored(name: str, cost_usd: float, t_s: float) -> StoredSession:
    """A session as the seed query sums it (two LLM steps, ``support`` on ``support-svc``)."""
    return StoredSession(
        "acme", name, "support-svc", "support", "support-svc", "support", "gpt-4o",
        4500, 600, 2, cost_usd, int(t_s * SECOND),
    )  # fmt: skip


def test_a_baseline_seeded_with_finished_sessions_is_used_at_once():
    """20 stored sessions at $0.25: a live one at $4 (under the $5 cold guard) is 16× the usual."""
    detector = CostRunawayDetector()
    detector.seed([stored(f"old{i}", 0.25, i) for i in range(20)], 3_600 * SECOND)
    [f] = run_under(detector, spender(4_000, 8, 0.5), NO_BUDGET)
    assert f.kind == "spend_anomaly" and "usual $0.25" in f.title
    assert f.evidence[-1]["baseline_sessions"] == 20
    assert run_under(CostRunawayDetector(), spender(4_000, 8, 0.5), NO_BUDGET) == []  # cold


def test_a_seed_counts_finished_sessions_only_and_each_once():
    detector = CostRunawayDetector(session_idle_s=1_800)
    now = 10_000 * SECOND
    finished = [stored(f"old{i}", 0.25, i) for i in range(15)]
    running = [stored(f"live{i}", 0.01, 9_000 + i) for i in range(10)]  # active 1,000 s ago
    for _ in range(3):  # the periodic refresh: the same sessions again
        detector.seed(finished + running, now)
        assert len(detector._baselines[("acme", "support-svc", "support")].costs) == 15
    # a session folded here and also stored counts once, with the larger (more complete) cost
    run_under(detector, spender(100, 2, 0.05, session="old3") + spender(5_000, 1, 0.0), NO_BUDGET)
    baseline = detector._baselines[("acme", "support-svc", "support")]
    assert len(baseline.costs) == 15 and sorted(baseline.costs)[-1] == 0.25
