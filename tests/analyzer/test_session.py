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


def test_a_run_whose_session_arrives_last_stays_one_session():
    """OTel GenAI: the conversation id is on the root span, exported after its children."""
    sessions = SessionTable()
    child = sessions.for_step(tool(1, "search", session="", user="", trace="t1"), NOW)
    child.detectors["loop"] = "half-seen"
    root = sessions.for_step(tool(3, "invoke", session="conv-1", user="u7", trace="t1"), NOW)
    assert (
        root is child and root.key == ("acme", "conv-1") and root.detectors["loop"] == "half-seen"
    )
    assert len(sessions) == 1
    later_child = tool(4, "fetch", session="", user="", trace="t1")
    assert sessions.for_step(later_child, NOW) is root and later_child.session == "conv-1"


def test_a_second_run_of_a_known_session_does_not_take_over_its_state():
    sessions = SessionTable()
    first = sessions.for_step(tool(1, "search", session="conv-1", trace="t1"), NOW)
    run2 = sessions.for_step(tool(2, "search", session="", user="", trace="t2"), NOW)
    assert sessions.for_step(tool(3, "invoke", session="conv-1", trace="t2"), NOW) is first
    assert run2 is not first  # left to age out: detector states are not merged


def test_steps_with_no_session_are_grouped_by_user_until_a_gap():
    """Bare instrumentations: every chat call its own trace, only the user named."""
    sessions = SessionTable(user_gap_s=600)
    a = sessions.for_step(tool(0, "search", session="", user="ann", trace="c1"), NOW)
    b = sessions.for_step(tool(300, "search", session="", user="ann", trace="c2"), NOW)
    other = sessions.for_step(tool(301, "search", session="", user="bob", trace="c3"), NOW)
    after_gap = sessions.for_step(tool(1000, "search", session="", user="ann", trace="c4"), NOW)
    assert a is b and other is not a and after_gap is not a
    nobody = sessions.for_step(tool(1001, "search", session="", user="", trace="c5"), NOW)
    assert nobody.key == ("acme", "trace:c5")
