"""The session and user arrive last (OTel GenAI puts them on the root span, exported after its
children): incidents opened mid-run learn them when the root arrives."""

from __future__ import annotations

import json

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.test_detect_e2e import wait_for_incidents


def test_an_incident_opened_before_the_root_span_learns_its_session_and_user(collector):
    provider = TracerProvider(resource=Resource.create({"service.name": "support-svc"}))
    exporter = OTLPSpanExporter(endpoint=collector.grpc_endpoint, insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # each span exported as it ends
    tracer = provider.get_tracer("agent")
    root_attrs = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "support",
        "gen_ai.conversation.id": "conv-late",
        "user.id": "u-late",
    }
    with tracer.start_as_current_span("invoke_agent support", attributes=root_attrs) as root:
        trace_id = format(root.get_span_context().trace_id, "032x")
        for _ in range(5):
            with tracer.start_as_current_span(
                "execute_tool lookup_order",
                attributes={
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.agent.name": "support",
                    "gen_ai.tool.name": "lookup_order",
                    "gen_ai.tool.call.arguments": json.dumps({"order_id": 42}),
                },
            ):
                pass
        # mid-run, before the root ends: the loop is open, with no session or user yet
        [opened] = wait_for_incidents(collector, "detector = 'loop'")
        assert (opened["session_id"], opened["user_id"], opened["trace_id"]) == ("", "", trace_id)
    provider.shutdown()

    [incident] = wait_for_incidents(collector, "detector = 'loop' AND session_id != ''")
    assert (incident["session_id"], incident["user_id"]) == ("conv-late", "u-late")
    assert (incident["sessions_affected"], incident["users_affected"]) == (1, 1)
    events = collector.query(
        "SELECT event, session_id, user_id, detail FROM incident_events"
        " WHERE incident_id = {id:String} AND event = 'attributed'",
        {"id": incident["incident_id"]},
    )
    assert [(e["session_id"], e["user_id"]) for e in events] == [("conv-late", "u-late")]
    assert trace_id in events[0]["detail"]
