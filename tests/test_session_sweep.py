"""Sessions that span traces, judged whole through ClickHouse (issue 15, point 1).

A real collector, real OTLP/HTTP exports; the session id only on each trace's root span, exported
after its children (as the OTel GenAI instrumentations do): the streaming detectors see each
trace apart, the sweep (``analyzer/session_sweep.py``) sees the session.
"""

from __future__ import annotations

import json
import os
import time

import orjson
import pytest
import requests

from agentwatch.config import ConfigError, load_config
from analyzer.incidents.repository import IncidentRepository
from tests.otlp import request, span

MS = 1_000_000
# the background sweep out of the way: the tests call run_once themselves
NO_BACKGROUND_SWEEP = {"detection": {"session_sweep_s": 3600}}


def post(collector, *spans, service: str = "support-svc") -> None:
    answer = requests.post(
        f"{collector.http_url}/v1/traces",
        data=request(*spans, resource={"service.name": service}).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def export_trace(
    collector, session: str, order_ids: list[int], root_apart: bool = True, start_ns: int = 0
) -> str:
    """One turn of a support agent: lookup_order per order id, each answering the same; the
    session id and agent name only on the root span, exported after its children (``root_apart``)
    or with them. Returns the trace id (hex)."""
    trace_id, root_id = os.urandom(16), os.urandom(8)
    start_ns = start_ns or time.time_ns() - 60_000 * MS
    children = [
        span(
            "execute_tool lookup_order",
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "lookup_order",
                "gen_ai.tool.call.arguments": json.dumps({"order_id": order_id}),
                "gen_ai.tool.call.result": f"order {order_id}: shipped",
            },
            trace_id=trace_id,
            parent=root_id,
            start_ns=start_ns + (i + 1) * 10 * MS,
        )
        for i, order_id in enumerate(order_ids)
    ]
    root = span(
        "invoke_agent support",
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "support",
            "gen_ai.conversation.id": session,
        },
        trace_id=trace_id,
        span_id=root_id,
        start_ns=start_ns,
        duration_ns=(len(order_ids) + 2) * 10 * MS,
    )
    if root_apart:
        post(collector, *children)
        post(collector, root)
    else:
        post(collector, *children, root)
    collector.wait_for_rows(
        f"SELECT 1 FROM otel_traces WHERE TraceId = '{trace_id.hex()}'", len(order_ids) + 1
    )
    return trace_id.hex()


def loop_incidents(collector) -> list[dict]:
    return collector.query("SELECT * FROM incidents_current WHERE detector = 'loop'")


def sweep(collector):
    running = collector.collector
    return collector.call(running.session_sweep.run_once())


def test_a_loop_split_across_two_traces_opens_one_incident_marked_as_merged(collector_factory):
    with collector_factory(**NO_BACKGROUND_SWEEP) as collector:
        # two identical lookups in each turn: the loop rule fires at four
        export_trace(collector, "split-1", [42, 42], start_ns=time.time_ns() - 120_000 * MS)
        second = export_trace(collector, "split-1", [42, 42])
        time.sleep(1)  # the streaming detectors and the incident flush had their chance
        assert loop_incidents(collector) == []  # each trace alone is two calls

        report = sweep(collector)
        assert (report.sessions, len(report.opened)) == (1, 1)
        [incident] = loop_incidents(collector)
        assert (incident["kind"], incident["session_id"], incident["agent"]) == (
            "repeated_call",
            "split-1",
            "support",
        )
        assert incident["trace_id"] == second  # the fourth call, in the second turn
        why = json.loads(incident["evidence"])[0]
        assert (why["merged_from_store"], why["session_traces"], why["observed"]) == (True, 2, 4)

        # 2. a second sweep finds the same loop again: still one incident
        sweep(collector)
        assert [i["incident_id"] for i in loop_incidents(collector)] == [incident["incident_id"]]
        assert collector.query(
            "SELECT count() AS n FROM incident_events WHERE event = 'opened'"
        ) in ([{"n": 1}], [{"n": "1"}])


def test_a_resolved_merged_loop_is_not_reopened_from_the_same_sessions_old_steps(
    collector_factory,
):
    with collector_factory(**NO_BACKGROUND_SWEEP) as collector:
        export_trace(collector, "split-2", [7, 7], start_ns=time.time_ns() - 120_000 * MS)
        export_trace(collector, "split-2", [7, 7])
        assert len(sweep(collector).opened) == 1
        [incident] = loop_incidents(collector)
        desk = collector.collector.incident_desk
        collector.call(desk.set_status(incident["incident_id"], "resolved", "dan", "fixed"))

        export_trace(collector, "split-2", [8])  # the session goes on: it is swept again
        assert sweep(collector).opened == []  # the store knows this session's loop
        [still] = loop_incidents(collector)
        assert (still["incident_id"], still["status"]) == (incident["incident_id"], "resolved")


def test_a_loop_the_streaming_detector_reported_is_not_reported_again(collector_factory):
    with collector_factory(**NO_BACKGROUND_SWEEP) as collector:
        export_trace(collector, "live-1", [42] * 5, root_apart=False)  # one trace: seen live
        deadline = time.monotonic() + 15
        while not loop_incidents(collector) and time.monotonic() < deadline:
            time.sleep(0.1)
        [live] = loop_incidents(collector)
        export_trace(collector, "live-1", [43])  # a second turn makes it a multi-trace session

        report = sweep(collector)
        assert report.sessions == 1 and report.findings == 1  # the replay sees the loop too ...
        assert report.opened == []  # ... and knows it is reported
        [incident] = loop_incidents(collector)
        assert incident["incident_id"] == live["incident_id"]
        assert "merged_from_store" not in json.loads(incident["evidence"])[0]


def test_a_normal_two_trace_session_opens_nothing(collector_factory):
    with collector_factory(**NO_BACKGROUND_SWEEP) as collector:
        export_trace(collector, "calm-1", [1, 2], start_ns=time.time_ns() - 120_000 * MS)
        export_trace(collector, "calm-1", [3, 4])
        export_trace(collector, "single-1", [5, 5])  # one trace only: not swept
        report = sweep(collector)
        assert (report.sessions, report.steps, report.findings) == (1, 6, 0)  # 2 roots, 4 calls
        assert collector.query("SELECT * FROM incidents_current") == []


def test_the_sweep_reads_sessions_named_by_hostile_text_safely(collector_factory):
    """Session ids are the exporter's text: they reach the SQL as bound, hex-encoded values."""
    hostile = "s'); DROP TABLE otel_traces; --\\\t\n\"x"
    with collector_factory(**NO_BACKGROUND_SWEEP) as collector:
        export_trace(collector, hostile, [9, 9], start_ns=time.time_ns() - 120_000 * MS)
        export_trace(collector, hostile, [9, 9])
        assert len(sweep(collector).opened) == 1
        [incident] = loop_incidents(collector)
        assert incident["session_id"] == hostile
        repository = IncidentRepository(collector.collector.store, collector.collector.run_store)
        active, reported = collector.call(
            repository.reported([incident["fingerprint"], "not hex'"], [("default", hostile)])
        )
        assert active == {incident["fingerprint"]}
        assert reported == {(incident["fingerprint"], "default", hostile)}


def test_the_setting_validates_and_zero_turns_the_sweep_off(collector_factory):
    with pytest.raises(ConfigError, match=r"detection\.session_sweep_s"):
        load_config(None, {"detection": {"session_sweep_s": -1}})
    environ = {"AGENTWATCH_DETECTION__SESSION_SWEEP_S": "0"}
    assert load_config(None, None, environ).detection.session_sweep_s == 0
    assert load_config().detection.session_sweep_s == 30
    with collector_factory(detection={"session_sweep_s": 0}) as collector:
        assert collector.collector.session_sweep is None
    with collector_factory(detection={"session_sweep_s": 0.2}) as collector:
        export_trace(collector, "bg-1", [5, 5], start_ns=time.time_ns() - 120_000 * MS)
        export_trace(collector, "bg-1", [5, 5])
        deadline = time.monotonic() + 20  # the background sweep finds it by itself
        while not loop_incidents(collector) and time.monotonic() < deadline:
            time.sleep(0.2)
        [incident] = loop_incidents(collector)
        assert orjson.loads(incident["evidence"])[0]["merged_from_store"] is True
