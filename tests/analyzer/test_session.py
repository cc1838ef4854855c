"""The session table: bounded by a TTL on arrival time and a cap on live sessions."""

from __future__ import annotations

from analyzer.session import SessionTable
from tests.analyzer.timeline import SECOND, tool

NOW = 1_900_000_000 * SECOND  # spans may carry old timestamps (backfill, skewed clocks)


def test_state_is_kept_for_spans_with_old_timestamps():
    sessions = SessionTable(ttl_s=60)
    first = sessions.for_step(tool(1, "search"), NOW)
    first.detectors["x"] = 1
    assert sessions.for_step(tool(2, "search"), NOW + SECOND) is first
    assert len(sessions) == 1


def test_ttl_runs_on_arrival_time():
    sessions = SessionTable(ttl_s=60)
    sessions.for_step(tool(1, "search", session="old"), NOW)
    sessions.for_step(tool(2, "search", session="new"), NOW + 61 * SECOND)
    assert len(sessions) == 1 and sessions.evicted == 1


def test_cap_on_live_sessions_evicts_the_least_recently_active():
    sessions = SessionTable(max_sessions=100)
    for i in range(1000):
        sessions.for_step(tool(i, "search", session=f"s{i}"), NOW + i)
    assert len(sessions) == 100 and sessions.evicted == 900


def test_children_without_session_join_their_traces_session():
    sessions = SessionTable()
    root = sessions.for_step(tool(1, "search", session="s9", trace="t9"), NOW)
    child = tool(2, "fetch", session="", trace="t9")
    assert sessions.for_step(child, NOW) is root and child.session == "s9"
