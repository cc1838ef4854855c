"""Restart safety: a restarted collector neither forgets a half-seen loop nor re-opens an
incident that is already open."""

from __future__ import annotations

from tests.conftest import run_collector
from tests.test_detect_e2e import run_agent, wait_for_incidents


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
