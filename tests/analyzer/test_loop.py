"""Loop detector timelines on a virtual clock."""

from __future__ import annotations

from analyzer.detectors.loop import LoopDetector
from tests.analyzer.timeline import llm, run, tool


def test_same_call_more_than_three_times_is_a_loop_flagged_at_the_fourth():
    steps = [tool(t, "lookup_order", args=42) for t in (1, 2, 3, 4, 5, 6)]
    findings = run(LoopDetector(), steps)
    assert len(findings) == 1  # once per session and signature; the incident counts the rest
    [f] = findings
    assert (f.kind, f.incident_class, f.severity, f.signature) == (
        "repeated_call",
        "semantic",
        "SEV2",
        "lookup_order",
    )
    assert f.step is steps[3]  # the off-rails step: the fourth identical call


def test_polling_with_changing_arguments_is_not_a_loop():
    steps = [tool(t, "get_job_status", args=t) for t in range(1, 20)]
    assert run(LoopDetector(), steps) == []


def test_normal_session_with_a_few_distinct_calls_opens_nothing():
    steps = [
        llm(0, 2000, 400), tool(1, "search_docs", 1), llm(2, 2600, 500), tool(3, "lookup_order", 2),
        llm(4, 3100, 600), tool(5, "search_docs", 3), llm(6, 3500, 700),
    ]  # fmt: skip
    assert run(LoopDetector(), steps) == []


def test_a_b_a_b_cycle():
    steps = [tool(t, "search" if t % 2 else "fetch_page", args=t % 2) for t in range(1, 8)]
    [f] = run(LoopDetector(), steps)
    assert f.kind == "cycle" and f.signature in ("search→fetch_page", "fetch_page→search")


def test_consecutive_rejected_calls_of_one_tool():
    steps = [tool(t, "refund", args=t, failed=True, http_status=400) for t in (1, 2, 3)]
    [f] = run(LoopDetector(), steps)
    assert (f.kind, f.incident_class) == ("repeated_failure", "semantic")


def test_sessions_do_not_mix():
    steps = [tool(t, "lookup_order", 42, session=f"s{t % 4}") for t in range(12)]  # 3 each
    assert run(LoopDetector(), steps) == []


def test_threshold_comes_from_policy():
    steps = [tool(t, "lookup_order", args=42) for t in (1, 2)]
    assert len(run(LoopDetector(repeats=1), steps)) == 1


def test_a_failing_backend_is_not_the_agents_loop():
    steps = [tool(t, "lookup_order", args=t, failed=True, http_status=503) for t in (1, 2, 3, 4)]
    assert run(LoopDetector(), steps) == []  # the infrastructure detector's business
