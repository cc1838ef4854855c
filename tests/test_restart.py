"""Restart safety: a restarted collector neither forgets a half-seen loop nor re-opens an
incident that is already open, and judges against the baselines stored before it started."""

from __future__ import annotations

import orjson

from analyzer.baselines import seed_baselines
from analyzer.engine import Detection, default_detectors
from analyzer.session import SessionTable
from analyzer.step import steps_from_columns
from collector.store.embedded import EmbeddedStore
from tests.analyzer.test_engine import T0
from tests.analyzer.test_worker import llm_columns
from tests.conftest import run_collector
from tests.test_detect_e2e import agent_tracer, run_agent, wait_for_incidents


def tool_calls(collector, session: str, n: int) -> list[str]:
    return run_agent(collector, session, "", [42] * n)


def test_a_half_seen_loop_is_remembered_across_a_restart(tmp_path):
    data = tmp_path / "data"
    with run_collector(data) as first:
        tool_calls(first, "half-loop", 2)  # two identical calls: not a loop yet
        first.wait_for_rows("SELECT 1 FROM otel_traces WHERE ToolName = 'lookup_order'", 2)
    with run_collector(data) as second:
        span_ids = tool_calls(second, "half-loop", 2)  # the third and fourth identical calls
        [incident] = wait_for_incidents(second, "detector = 'loop'")
        assert incident["span_id"] == span_ids[1]  # the fourth call overall


def test_an_open_incident_is_updated_not_reopened_after_a_restart(tmp_path):
    data = tmp_path / "data"
    with run_collector(data) as first:
        tool_calls(first, "loop-a", 5)
        [before] = wait_for_incidents(first, "detector = 'loop'")
    with run_collector(data) as second:
        tool_calls(second, "loop-b", 5)  # the same loop in another session, after the restart
        deadline_rows = second.wait_for_rows(
            "SELECT 1 FROM incident_events WHERE event = 'updated'", 1
        )
        assert deadline_rows
        rows = second.query("SELECT * FROM incidents_current WHERE detector = 'loop'")
        assert len(rows) == 1 and rows[0]["incident_id"] == before["incident_id"]
        assert rows[0]["occurrences"] == 2 and rows[0]["sessions_affected"] == 2
        events = [r["event"] for r in second.query("SELECT event FROM incident_events ORDER BY at")]
        assert events == ["opened", "updated"]


# --- baselines: seeded from the store (analyzer.baselines) --------------------------------------


def chat_sessions(collector, ratios: list[float], prefix: str, per_step: int = 12_000) -> None:
    """One session per ratio: an agent span naming the session, three chat calls below it, each
    reading ``per_step`` tokens (36,000 a session: under the token ratio's 200,000 cold-start
    bar, so only a warm baseline can flag one)."""
    provider, tracer = agent_tracer(collector)
    for i, ratio in enumerate(ratios):
        root = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "coder",
            "gen_ai.conversation.id": f"{prefix}{i}",
        }
        with tracer.start_as_current_span("invoke_agent coder", attributes=root):
            for _ in range(3):
                usage = {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.usage.input_tokens": per_step,
                    "gen_ai.usage.output_tokens": max(round(per_step / ratio), 1),
                }
                with tracer.start_as_current_span("chat gpt-4o", attributes=usage):
                    pass
    provider.shutdown()


NORMAL_60 = [60.0 * (0.8 + 0.4 * ((i * 7) % 10) / 10) for i in range(25)]  # 48:1 to 84:1


def age_stored_spans(data, hours: int = 2) -> None:
    """Move the stored spans' arrival back past the restart replay's 30-minute look-back, so only
    the seed from the store can bring their baseline back."""
    store = EmbeddedStore(data)
    try:
        store.command(
            f"ALTER TABLE otel_traces UPDATE IngestedAt = IngestedAt - toIntervalHour({hours})"
            " WHERE 1 SETTINGS mutations_sync = 1"
        )
    finally:
        store.close()


def token_ratio_incidents(collector) -> list[dict]:
    return collector.query("SELECT * FROM incidents_current WHERE detector = 'token_ratio'")


def test_a_restarted_collector_judges_against_the_stored_baseline_at_once(tmp_path):
    data = tmp_path / "data"
    with run_collector(data) as first:
        chat_sessions(first, NORMAL_60, "old")
        first.wait_for_rows("SELECT 1 FROM otel_traces WHERE StepKind = 'llm'", 75)
        assert token_ratio_incidents(first) == []
    age_stored_spans(data)
    with run_collector(data) as second:
        chat_sessions(second, [80.0], "normal")  # 1.3× the normal: nothing
        second.wait_for_rows("SELECT 1 FROM otel_traces WHERE SessionId = 'normal0'", 1)
        chat_sessions(second, [4000.0], "reader")
        [incident] = wait_for_incidents(second, "detector = 'token_ratio'")
    assert incident["session_id"] == "reader0"
    measures = orjson.loads(incident["evidence"])[0]
    assert (measures["rule"], measures["warm"], measures["baseline_sessions"]) == (
        "baseline", True, 26,
    )  # fmt: skip
    assert 55 < measures["baseline_ratio"] < 70 and "cold start" not in incident["title"]


def test_a_second_detection_on_the_same_store_starts_warm(tmp_path):
    """Two collectors on one chDB path cannot run in one process: a second ``Detection`` seeded
    by the same query from the running collector's store stands for the second collector."""
    with run_collector(tmp_path / "data") as first:
        chat_sessions(first, NORMAL_60, "old")
        first.wait_for_rows("SELECT 1 FROM otel_traces WHERE StepKind = 'llm'", 75)
        second = Detection(default_detectors(), SessionTable())
        app = first.collector
        assert first.call(seed_baselines(second, app.store, app.run_store)) == 25
    cold = Detection(default_detectors(), SessionTable())
    reader = llm_columns("reader", 4000.0, tenant="default", service="support-svc", agent="coder")
    assert cold.observe(steps_from_columns(reader), T0) == []
    [finding] = second.observe(steps_from_columns(reader), T0)
    assert finding.detector == "token_ratio" and finding.evidence[0]["rule"] == "baseline"
