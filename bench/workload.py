"""A realistic agent workload as pre-serialised OTLP requests, for benchmarks and load tests.

Sessions of ``invoke_agent`` -> ``chat`` / ``execute_tool`` spans in OTel GenAI conventions with
about a dozen attributes each (~1 KB per span on the wire), 512 spans per request by default.
"""

from __future__ import annotations

import json
import os
import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

TOOLS = ["search_docs", "lookup_order", "get_weather", "create_ticket", "send_email"]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-20250514"]


def _kv(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def make_request(
    spans_per_request: int = 512, seed: int = 0, services: int = 4
) -> ExportTraceServiceRequest:
    """One export request: whole sessions (agent span + LLM and tool steps) until it is full."""
    rnd = random.Random(seed)
    req = ExportTraceServiceRequest()
    by_service = {}
    for s in range(services):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(
            [
                _kv("service.name", f"support-agent-{s}"),
                _kv("service.version", "1.4.2"),
                _kv("deployment.environment", "production"),
                _kv("telemetry.sdk.language", "python"),
            ]
        )
        ss = rs.scope_spans.add()
        ss.scope.name = "opentelemetry.instrumentation.openai_agents"
        ss.scope.version = "0.9.1"
        by_service[s] = ss
    n = 0
    t0 = 1_763_000_000_000_000_000 + seed * 1_000_000_000
    while n < spans_per_request:
        ss = by_service[rnd.randrange(services)]
        trace_id = os.urandom(16)
        session = f"sess-{rnd.randrange(10**9):09d}"
        user = f"user-{rnd.randrange(10**6):06d}"
        root_id = os.urandom(8)
        steps = min(rnd.randint(6, 14), spans_per_request - n - 1)
        t = t0 + n * 1_000_000
        root = Span(
            trace_id=trace_id,
            span_id=root_id,
            name="invoke_agent support",
            kind=Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=t,
            end_time_unix_nano=t + 9_000_000_000,
            status=Status(code=Status.STATUS_CODE_OK),
        )
        root.attributes.extend(
            [
                _kv("gen_ai.operation.name", "invoke_agent"),
                _kv("gen_ai.agent.name", "support"),
                _kv("gen_ai.agent.id", "agt_01"),
                _kv("gen_ai.conversation.id", session),
                _kv("user.id", user),
                _kv("gen_ai.provider.name", "openai"),
                _kv("gen_ai.request.model", "gpt-4o"),
                _kv("gen_ai.usage.input_tokens", 24000),
                _kv("gen_ai.usage.output_tokens", 2100),
                _kv("tenant.id", "acme"),
                _kv("app.region", "eu-west-1"),
                _kv("app.request_id", os.urandom(6).hex()),
            ]
        )
        ss.spans.append(root)
        n += 1
        for i in range(steps):
            st = t + (i + 1) * 500_000_000
            if i % 2 == 0:
                model = rnd.choice(MODELS)
                span = Span(
                    trace_id=trace_id,
                    span_id=os.urandom(8),
                    parent_span_id=root_id,
                    name=f"chat {model}",
                    kind=Span.SPAN_KIND_CLIENT,
                    start_time_unix_nano=st,
                    end_time_unix_nano=st + 400_000_000,
                )
                span.attributes.extend(
                    [
                        _kv("gen_ai.operation.name", "chat"),
                        _kv("gen_ai.provider.name", "openai"),
                        _kv("gen_ai.request.model", model),
                        _kv("gen_ai.response.model", model),
                        _kv("gen_ai.usage.input_tokens", rnd.randint(800, 6000)),
                        _kv("gen_ai.usage.output_tokens", rnd.randint(50, 900)),
                        _kv("gen_ai.usage.cache_read.input_tokens", rnd.randint(0, 500)),
                        _kv("gen_ai.request.temperature", 0.2),
                        _kv("gen_ai.request.max_tokens", 1024),
                        _kv("gen_ai.response.id", "chatcmpl-" + os.urandom(8).hex()),
                        _kv("server.address", "api.openai.com"),
                        _kv("server.port", 443),
                    ]
                )
                span.attributes.append(
                    KeyValue(
                        key="gen_ai.response.finish_reasons",
                        value=AnyValue(
                            array_value={"values": [AnyValue(string_value="tool_calls")]}
                        ),
                    )
                )
            else:
                tool = rnd.choice(TOOLS)
                span = Span(
                    trace_id=trace_id,
                    span_id=os.urandom(8),
                    parent_span_id=root_id,
                    name=f"execute_tool {tool}",
                    kind=Span.SPAN_KIND_INTERNAL,
                    start_time_unix_nano=st,
                    end_time_unix_nano=st + 80_000_000,
                )
                span.attributes.extend(
                    [
                        _kv("gen_ai.operation.name", "execute_tool"),
                        _kv("gen_ai.tool.name", tool),
                        _kv("gen_ai.tool.call.id", "call_" + os.urandom(6).hex()),
                        _kv("gen_ai.tool.type", "function"),
                        _kv(
                            "gen_ai.tool.call.arguments",
                            json.dumps({"query": f"order {rnd.randrange(10**6)}", "limit": 5}),
                        ),
                        _kv(
                            "gen_ai.tool.call.result",
                            json.dumps({"status": "ok", "items": rnd.randrange(9)}),
                        ),
                        _kv("gen_ai.agent.name", "support"),
                        _kv("code.function", "tools." + tool),
                        _kv("app.retry", 0),
                        _kv("app.cache_hit", False),
                        _kv("app.latency_budget_ms", 2000),
                        _kv("app.region", "eu-west-1"),
                    ]
                )
            ss.spans.append(span)
            n += 1
    return req


def make_requests(count: int, spans_per_request: int = 512) -> list[bytes]:
    """``count`` distinct serialised requests (distinct ids, so nothing deduplicates)."""
    return [make_request(spans_per_request, seed=i).SerializeToString() for i in range(count)]
