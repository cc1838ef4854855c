"""Context growth detector timelines on a virtual clock."""

from __future__ import annotations

import sys
from types import MappingProxyType

from analyzer.detectors.context_growth import ContextGrowthDetector, _GrowthState
from analyzer.models import context_window, model_family
from analyzer.policy import AgentPolicy
from analyzer.session import SessionTable
from tests.analyzer.timeline import agent_span, llm, run, tool


def test_context_doubling_three_steps_in_a_row_is_a_spiral():
    steps = [
        llm(0, 2_000, 300), tool(1, "search_docs", 1), llm(2, 4_200, 300),
        tool(3, "search_docs", 2), llm(4, 8_500, 300), tool(5, "search_docs", 3),
        llm(6, 17_500, 300), llm(8, 36_000, 300),
    ]  # fmt: skip
    [f] = run(ContextGrowthDetector(), steps)  # once per session: the rest is the same spiral
    assert (f.detector, f.kind, f.incident_class, f.severity, f.signature) == (
        "context_growth",
        "spiral",
        "semantic",
        "SEV2",
        "gpt-4o",
    )
    assert f.step is steps[6]  # the third doubling
    growth = [(e["span_id"], e["input_tokens"]) for e in f.evidence[1:-1]]
    assert growth == [(s.span_id, s.input_tokens) for s in (steps[0], steps[2], steps[4], steps[6])]
    assert f.evidence[-1]["span_id"] == steps[6].span_id


def test_two_doublings_are_not_yet_a_spiral():
    steps = [llm(0, 4_000, 300), llm(1, 8_000, 300), llm(2, 16_000, 300)]
    assert run(ContextGrowthDetector(), steps) == []


def test_linear_growth_of_a_normal_agent_is_not_a_spiral():
    # a tool result of ~3k tokens appended per step, for 30 steps: 2k -> 89k
    steps = [llm(t, 2_000 + 3_000 * t, 250) for t in range(30)]
    assert run(ContextGrowthDetector(), steps) == []


def test_a_step_that_grows_less_resets_the_run():
    tokens = (2_000, 4_000, 8_000, 9_000, 18_000, 36_000)  # 3 doublings, but not in a row
    assert run(ContextGrowthDetector(), [llm(t, n, 300) for t, n in enumerate(tokens)]) == []


def test_tiny_prompts_doubling_are_not_worth_an_incident():
    tokens = (100, 200, 400, 800, 1_600)
    assert run(ContextGrowthDetector(), [llm(t, n, 50) for t, n in enumerate(tokens)]) == []


def test_near_the_context_window_is_flagged_early_as_sev3():
    steps = [llm(0, 60_000, 800), llm(1, 90_000, 800), llm(2, 105_000, 800), llm(3, 120_000, 800)]
    [f] = run(ContextGrowthDetector(), steps)
    assert (f.kind, f.severity, f.signature) == ("near_context_limit", "SEV3", "gpt-4o")
    assert f.step is steps[2]  # 105k >= 0.8 * 128k
    assert "82%" in f.title


def test_context_window_by_model_family():
    assert context_window("claude-sonnet-4-20250514") == 200_000
    assert context_window("gpt-4.1-mini") == 1_047_576
    assert context_window("gpt-5-mini") == 400_000
    assert context_window("o3-mini") == context_window("o4-mini") == 200_000
    assert context_window("models/gemini-2.5-flash") == 1_048_576
    assert context_window("llama-3.1-70b-instruct") == 0
    assert model_family("claude-3-5-sonnet@20240620") == "claude-3-5-sonnet"


def test_a_large_window_model_is_not_near_its_limit_at_the_same_size():
    steps = [llm(t, 120_000, 800, model="gpt-4.1-2025-04-14") for t in range(4)]
    assert run(ContextGrowthDetector(), steps) == []


def test_unknown_model_skips_the_limit_check_unless_policy_gives_the_window():
    steps = [llm(t, 120_000, 800, model="llama-3.1-70b") for t in range(3)]
    assert run(ContextGrowthDetector(), steps) == []
    policy = AgentPolicy(
        thresholds=MappingProxyType({"context_growth": {"context_window": 131_072}})
    )
    sessions = SessionTable(policy_for=lambda service, agent: policy)
    [f] = run(ContextGrowthDetector(), steps, sessions)
    assert (f.kind, f.signature) == ("near_context_limit", "llama-3.1-70b")


def test_a_spiral_into_the_limit_reports_both_kinds_once_each():
    tokens = (4_000, 8_000, 16_000, 110_000, 120_000, 125_000)
    findings = run(ContextGrowthDetector(), [llm(t, n, 300) for t, n in enumerate(tokens)])
    assert [(f.kind, f.step.input_tokens) for f in findings] == [
        ("spiral", 110_000),  # the same step is near the limit: the spiral wins
        ("near_context_limit", 120_000),
    ]


def test_thresholds_come_from_policy():
    policy = AgentPolicy(
        thresholds=MappingProxyType(
            {"context_growth": {"growth_factor": 1.5, "steps": 2, "min_input_tokens": 1_000}}
        ),
        severity=MappingProxyType({"context_growth": "SEV1"}),
    )
    steps = [llm(0, 1_000, 100), llm(1, 1_600, 100), llm(2, 2_500, 100)]
    assert run(ContextGrowthDetector(), steps) == []
    sessions = SessionTable(policy_for=lambda service, agent: policy)
    [f] = run(ContextGrowthDetector(), steps, sessions)
    assert (f.kind, f.severity, f.step) == ("spiral", "SEV1", steps[2])


def test_sessions_do_not_mix():
    # two sessions interleaved, each growing linearly; merged they would look like doubling
    steps = []
    for t in range(6):
        steps += [llm(2 * t, 1_000 + 100 * t, 100, session="a")]
        steps += [llm(2 * t + 1, 40_000 + 100 * t, 100, session="b")]
    assert run(ContextGrowthDetector(), steps) == []


def test_agent_spans_repeating_usage_are_ignored():
    steps = [agent_span(t, 2_000 * 2**t, 300) for t in range(5)]
    steps += [agent_span(9, 127_000, 300), tool(10, "search_docs", 1)]
    assert run(ContextGrowthDetector(), steps) == []


def test_steps_without_input_tokens_do_not_break_the_chain():
    steps = [
        llm(0, 2_000, 300), llm(1, 0, 0), llm(2, 4_000, 300), llm(3, 8_000, 300), llm(4, 16_000, 300)
    ]  # fmt: skip
    [f] = run(ContextGrowthDetector(), steps)
    assert f.step is steps[4]


def _deep_size(state: _GrowthState) -> int:
    size = sys.getsizeof(state) + sys.getsizeof(state.recent)
    size += sys.getsizeof(state.run) + sys.getsizeof(state.flagged)
    return size + sum(sys.getsizeof(value) for value in state.recent)


def test_state_per_session_is_fixed_and_under_a_kibibyte():
    sessions, detector = SessionTable(), ContextGrowthDetector()
    steps = [llm(t, 5_000 + 1_000 * t, 300) for t in range(500)]
    for step in steps:
        step.span_id = f"{step.time_ns:016x}"  # real span ids: 16 hex characters
    run(detector, steps, sessions)
    [session] = sessions._sessions.values()
    state = session.detectors["context_growth"]
    assert len(state.recent) == 2 * 4  # (tokens, span id) of the last four steps, flat
    assert _deep_size(state) < 1024
