"""The tool-call alignment of a failing run against its golden run (``analyzer.trajectory_diff``)."""

from __future__ import annotations

import random

from analyzer import trajectory_diff
from analyzer.trajectory_diff import Call, align, calls_from_steps


def ops(diff) -> list[str]:
    return [p.op for p in diff.pairs]


def tools(calls: str) -> list[Call]:
    """'abc' -> calls of tools a, b, c (same arguments and results)."""
    return [Call(name) for name in calls]


def test_identical_runs_never_diverge():
    run = [Call("search", 1, 2, 100), Call("lookup", 3, 4, 50), Call("reply", 5, 6, 20)]
    diff = align(run, list(run))
    assert ops(diff) == ["same"] * 3
    assert diff.first_divergence is None and diff.counts == {"same": 3}
    assert (diff.golden_tokens, diff.run_tokens) == (170, 170)


def test_a_loop_is_extra_calls_after_the_steps_in_common_not_a_shift_of_every_step():
    golden = [Call("search", 1), Call("lookup", 2, 20), Call("reply", 3)]
    failing = [Call("search", 1)] + [Call("lookup", 9, 90, failed=True)] * 6
    diff = align(golden, failing)
    assert ops(diff) == ["same", "args", "changed", "extra", "extra", "extra", "extra"]
    assert diff.first_divergence == 1
    assert diff.pairs[1].golden.args_hash == 2 and diff.pairs[1].run.args_hash == 9


def test_a_skipped_step_is_missing_and_the_rest_still_line_up():
    diff = align(tools("abcd"), tools("abd"))
    assert ops(diff) == ["same", "same", "missing", "same"]
    assert diff.first_divergence == 2


def test_an_inserted_step_is_extra():
    diff = align(tools("abd"), tools("abxd"))
    assert ops(diff) == ["same", "same", "extra", "same"]


def test_the_same_call_with_another_result_or_a_failure_is_a_result_difference():
    golden = [Call("lookup", 7, 70)]
    assert ops(align(golden, [Call("lookup", 7, 71)])) == ["result"]
    assert ops(align(golden, [Call("lookup", 7, 70, failed=True)])) == ["result"]


def test_identical_arguments_are_preferred_when_a_tool_repeats():
    # golden looked up order 1 then 2; the run looked up 2 only: it skipped order 1's lookup
    golden = [Call("lookup", 1), Call("lookup", 2)]
    diff = align(golden, [Call("lookup", 2)])
    assert ops(diff) == ["missing", "same"]


def test_token_deltas_per_step_and_in_total():
    golden = [Call("a", tokens=100), Call("b", tokens=200)]
    failing = [Call("a", tokens=150), Call("b", tokens=900), Call("b", tokens=700)]
    diff = align(golden, failing)
    assert [p.token_delta for p in diff.pairs] == [50, 700, 700]
    assert (diff.golden_tokens, diff.run_tokens) == (300, 1750)


def test_empty_runs():
    assert ops(align([], tools("ab"))) == ["extra", "extra"]
    assert ops(align(tools("ab"), [])) == ["missing", "missing"]
    assert align([], []).first_divergence is None


def test_every_call_appears_once_in_order_and_the_result_is_deterministic():
    rng = random.Random(13)
    for _ in range(200):
        golden = [Call(rng.choice("abc"), rng.randint(0, 2)) for _ in range(rng.randint(0, 12))]
        run = [Call(rng.choice("abcd"), rng.randint(0, 2)) for _ in range(rng.randint(0, 12))]
        diff = align(golden, run)
        assert [p.golden for p in diff.pairs if p.golden] == golden
        assert [p.run for p in diff.pairs if p.run] == run
        assert align(golden, run) == diff


def test_runs_longer_than_the_bound_are_cut_and_counted(monkeypatch):
    monkeypatch.setattr(trajectory_diff, "MAX_CALLS", 5)
    diff = align(tools("abcdefgh"), tools("abcdefghij"))
    assert len(diff.pairs) == 5 and diff.truncated
    assert (diff.golden_calls, diff.run_calls) == (8, 10)


def test_calls_from_steps_charge_each_call_with_the_turns_before_it():
    steps = [
        {"StepKind": "agent", "InputTokens": 0},
        {"StepKind": "llm", "InputTokens": "800", "OutputTokens": "40"},  # JSON UInt64 as text
        {"StepKind": "tool", "ToolName": "lookup", "ToolArgsHash": "18446744073709551615",
         "ToolResultHash": "5", "SpanId": "a1", "failed": False},
        {"StepKind": "tool", "ToolName": "lookup", "SpanId": "a2", "failed": True},
        {"StepKind": "llm", "InputTokens": 950, "OutputTokens": 40},
    ]  # fmt: skip
    calls = calls_from_steps(steps)
    assert [(c.tool, c.tokens, c.ref, c.failed) for c in calls] == [
        ("lookup", 840, "a1", False),
        ("lookup", 0, "a2", True),
    ]
    assert calls[0].args_hash == 2**64 - 1 and calls[0].result_hash == 5
