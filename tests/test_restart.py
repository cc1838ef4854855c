"""Restart safety: a restarted collector neither forgets a half-seen loop nor re-opens an
incident that is already open."""

from __future__ import annotations

import json

from tests.conftest import run_collector
from tests.test_detect_e2e import agent_tracer, wait_for_incidents


def tool_calls(collector, session: str, n: int) -> list[str]:
    provider, tracer = agent_tracer(collector)
    span_ids = []
    root = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "support",
        "gen_ai.conversation.id": session,
    }
    with tracer.start_as_current_span("invoke_agent support", attributes=root):
        for _ in range(n):
            attrs = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "lookup_order",
                "gen_ai.tool.call.arguments": json.dumps({"order_id": 42}),
            }
            with tracer.start_as_current_span(
                "execute_tool lookup_order", attributes=attrs
            ) as span:
                span_ids.append(format(span.get_span_context().span_id, "016x"))
    provider.shutdown()
    return span_ids


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
