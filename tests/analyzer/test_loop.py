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
    steps = [tool(t, "search" if t % 2 else "fetch_page", args=t % 2) for t in range(1, 10)]
    assert run(LoopDetector(), steps[:7]) == []  # each call 3-4 times: not yet (4 cycles)
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


# --- no progress: the outcome (result hash) must repeat too --------------------------------------


def test_a_rerun_after_an_edit_is_not_a_loop():
    """A coding agent re-runs ``python reproduce_issue.py`` between edits (no result recorded)."""
    steps = []
    for k in range(6):
        steps += [tool(2 * k, "edit_file", args=100 + k), tool(2 * k + 1, "bash", args=7)]
    assert run(LoopDetector(), steps) == []


def test_a_rerun_after_an_edit_whose_output_changes_is_not_a_loop():
    steps = []
    for k in range(6):
        steps += [
            tool(2 * k, "edit_file", args=100 + k, result_hash=1),
            tool(2 * k + 1, "bash", args=7, result_hash=200 + k),  # the edit changed the output
        ]
    assert run(LoopDetector(), steps) == []


def test_the_same_call_with_changing_results_is_not_a_loop():
    steps = [tool(t, "get_job_status", args=5, result_hash=t % 3 + 1) for t in range(1, 13)]
    assert run(LoopDetector(), steps) == []


def test_identical_call_and_identical_result_four_times_is_a_loop():
    steps = [tool(t, "lookup_order", args=42, result_hash=9) for t in (1, 2, 3, 4, 5)]
    [f] = run(LoopDetector(), steps)
    assert (f.kind, f.signature, f.step) == ("repeated_call", "lookup_order", steps[3])
    why = f.evidence[0]
    assert (why["rule"], why["tool"], why["observed"], why["threshold"]) == (
        "repeated_call", "lookup_order", 4, 4,
    )  # fmt: skip
    assert (why["outcome"], why["args_hash"], why["result_hash"]) == ("identical", 42, 9)
    assert "same result" in f.title and f.evidence[1]["span_id"] == steps[3].span_id


def test_identical_results_count_across_other_calls_in_between():
    """The same outcome after other calls: those calls changed nothing the repeated call sees."""
    steps = []
    for k in range(4):
        steps += [tool(2 * k, "bash", args=7, result_hash=9), tool(2 * k + 1, "edit_file", 100 + k)]
    [f] = run(LoopDetector(), steps)
    assert f.kind == "repeated_call" and f.step is steps[6]


def test_a_changed_result_restarts_the_count():
    results = (9, 9, 9, 8, 9, 9, 9)  # the fourth call saw something else: progress
    steps = [tool(t, "lookup_order", args=42, result_hash=r) for t, r in enumerate(results)]
    assert run(LoopDetector(), steps) == []


def test_without_results_identical_back_to_back_calls_are_still_a_loop():
    steps = [tool(t, "lookup_order", args=42) for t in (1, 2, 3, 4)]
    [f] = run(LoopDetector(), steps)
    assert f.evidence[0]["outcome"] == "not recorded" and "same result" not in f.title


def test_a_cycle_whose_results_change_is_not_a_cycle():
    steps = [
        tool(t, "search" if t % 2 else "fetch_page", args=t % 2, result_hash=t) for t in range(1, 9)
    ]
    assert run(LoopDetector(), steps) == []


def test_a_cycle_whose_results_repeat_is_a_cycle():
    steps = [
        tool(t, "search" if t % 2 else "fetch_page", args=t % 2, result_hash=t % 2 + 1)
        for t in range(1, 10)
    ]
    # with results recorded, one finding for the loop: the 4th fetch_page since its first
    # (new) result, whose search partner is flagged with it
    [f] = run(LoopDetector(), steps)
    assert (f.kind, f.signature, f.step.span_id) == (
        "repeated_call",
        "fetch_page",
        steps[7].span_id,
    )
    # with none recorded, the cycle rule catches it, at the 4th A→B
    blind = [tool(t, "search" if t % 2 else "fetch_page", args=t % 2) for t in range(1, 10)]
    [f] = run(LoopDetector(), blind)
    assert f.kind == "cycle" and f.evidence[0]["observed"] == 4
    assert f.step.span_id == blind[7].span_id


def test_rejected_calls_with_changing_errors_are_not_a_repeated_failure():
    steps = [
        tool(t, "refund", args=t, failed=True, http_status=400, result_hash=t) for t in (1, 2, 3, 4)
    ]
    assert run(LoopDetector(), steps) == []


def test_rejected_calls_with_the_same_error_are_a_repeated_failure():
    steps = [
        tool(t, "refund", args=t, failed=True, http_status=400, result_hash=5) for t in (1, 2, 3)
    ]
    [f] = run(LoopDetector(), steps)
    assert f.kind == "repeated_failure" and f.evidence[0]["observed"] == 3
