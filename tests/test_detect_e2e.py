"""End to end: real OTel SDK exporter -> collector -> detectors -> an incident row in ClickHouse."""

from __future__ import annotations

import json
import time

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

from analyzer.restore import _RECENT_STEPS


def agent_tracer(
    collector, service: str = "support-svc", token: str | None = None, resource: dict | None = None
):
    """A tracer exporting to ``collector`` over OTLP/gRPC; ``resource``: attributes beside
    ``service.name`` (a gameday drill's ``agentwatch.drill``)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, **(resource or {})})
    )
    headers = {"authorization": f"Bearer {token}"} if token else None
    exporter = OTLPSpanExporter(endpoint=collector.grpc_endpoint, insecure=True, headers=headers)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, provider.get_tracer("agent")


def wait_for_incidents(collector, where: str, timeout_s: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = collector.query(f"SELECT * FROM incidents_current WHERE {where}")
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def run_agent(
    collector,
    session: str,
    user: str,
    order_ids: list[int],
    service="support-svc",
    token=None,
    resource: dict | None = None,
):
    """One agent session calling lookup_order once per item of ``order_ids``; returns span ids."""
    provider, tracer = agent_tracer(collector, service, token, resource)
    span_ids = []
    attrs = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "support",
        "gen_ai.conversation.id": session,
    }
    if user:
        attrs["user.id"] = user
    with tracer.start_as_current_span("invoke_agent support", attributes=attrs):
        for order_id in order_ids:
            tool_attrs = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "lookup_order",
                "gen_ai.tool.call.arguments": json.dumps({"order_id": order_id}),
            }
            with tracer.start_as_current_span(
                "execute_tool lookup_order", attributes=tool_attrs
            ) as span:
                span_ids.append(format(span.get_span_context().span_id, "016x"))
    provider.shutdown()
    return span_ids


def test_a_looping_agent_opens_one_semantic_incident_at_the_off_rails_step(collector):
    span_ids = run_agent(collector, "loop-1", "u-1", [42] * 6)

    [incident] = wait_for_incidents(collector, "detector = 'loop'")
    assert (incident["kind"], incident["class"], incident["severity"], incident["status"]) == (
        "repeated_call", "semantic", "SEV2", "open",
    )  # fmt: skip
    assert (
        incident["span_id"] == span_ids[3]
    )  # the fourth identical call is where it went off the rails
    assert (incident["session_id"], incident["user_id"], incident["agent"]) == (
        "loop-1",
        "u-1",
        "support",
    )
    assert incident["service"] == "support-svc"


def test_rate_limits_across_sessions_open_an_infrastructure_incident(collector):
    provider, tracer = agent_tracer(collector, "billing-svc")
    for session in range(8):
        attrs = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "billing",
            "gen_ai.conversation.id": f"rl-{session}",
        }
        with tracer.start_as_current_span("invoke_agent billing", attributes=attrs):
            with tracer.start_as_current_span(
                "chat gpt-4o",
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "gpt-4o",
                    "error.type": "429",
                },
            ) as span:
                span.set_status(Status(StatusCode.ERROR, "Error code: 429 - rate limit reached"))
    provider.shutdown()

    [incident] = wait_for_incidents(collector, "detector = 'infrastructure'")
    assert (incident["kind"], incident["class"]) == ("rate_limit", "infrastructure")
    assert incident["severity"] in ("SEV1", "SEV2")
    assert incident["sessions_affected"] >= 1


def test_detection_can_be_turned_off(collector_factory):
    with collector_factory(detect=False) as collector:
        assert collector.collector.analyzer is None


def test_detection_runs_in_its_own_process_and_survives_its_death(collector):
    import os
    import signal

    detection = collector.collector.analyzer.detection
    pid = detection._proc.pid
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    collector.call(detection._proc.wait())

    # the next batch finds detection down: its spans are stored, and a new process starts ...
    run_agent(collector, "after-crash-1", "u-1", [1, 2])
    collector.wait_for_rows("SELECT 1 FROM otel_traces WHERE SessionId = 'after-crash-1'", 3)
    # ... which detects from then on (with fresh state)
    run_agent(collector, "after-crash-2", "u-2", [42] * 6)
    [incident] = wait_for_incidents(collector, "detector = 'loop'")
    assert incident["session_id"] == "after-crash-2"
    assert detection.restarts == 1 and detection._proc.pid != pid


def test_a_tool_backend_refusing_connections_opens_an_infrastructure_incident_not_a_loop(
    collector,
):
    """Issue 13, point 4: the cause is only in the exception event (error.type names the
    framework's class); three identical failing calls are the backend down, not the agent
    repeating a rejected call (the loop detector's repeated_failure)."""
    provider, tracer = agent_tracer(collector, "crm-svc")
    attrs = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "support",
        "gen_ai.conversation.id": "refused-1",
    }
    span_ids = []
    with tracer.start_as_current_span("invoke_agent support", attributes=attrs):
        for _ in range(3):
            tool_attrs = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "crm_lookup",
                "gen_ai.tool.call.arguments": json.dumps({"order_id": 42}),
                "error.type": "ToolRetryError",
            }
            try:  # the SDK records the exception event; the status says only "Error"
                with tracer.start_as_current_span(
                    "execute_tool crm_lookup", attributes=tool_attrs, set_status_on_exception=False
                ) as span:
                    span_ids.append(format(span.get_span_context().span_id, "016x"))
                    span.set_status(Status(StatusCode.ERROR))
                    raise ConnectionRefusedError(111, "Connection refused")
            except ConnectionRefusedError:
                pass
    provider.shutdown()

    [incident] = wait_for_incidents(collector, "detector = 'infrastructure'")
    assert (incident["kind"], incident["class"], incident["severity"]) == (
        "tool_backend", "infrastructure", "SEV3",
    )  # fmt: skip
    assert incident["span_id"] == span_ids[0]  # one refused connection is enough evidence
    summary, step = json.loads(incident["evidence"])[:2]
    assert (summary["cause"], summary["error_type"]) == ("connection_refused", "ToolRetryError")
    assert step["error_text"] == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert collector.query("SELECT * FROM incidents_current WHERE detector = 'loop'") == []
    # after a restart the replay (analyzer/restore.py) rebuilds the text from the stored span
    replayed = collector.query(_RECENT_STEPS, {"lookback": "3600", "max_steps": "1000"})
    texts = {row["ErrorText"] for row in replayed if row["SessionId"] == "refused-1"}
    assert texts == {"ConnectionRefusedError: [Errno 111] Connection refused"}
