"""Normalisation of the three agent conventions into agentwatch's columns (DESIGN.md §3)."""

from __future__ import annotations

import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.consumer import Rejections
from collector.conventions import FIELD_OF_KEY
from collector.normalize import COLUMNS, Normalizer
from collector.pricing import Price, PriceTable
from tests.otlp import attrs, request, span


def normalize(*spans, resource=None, normalizer=None):
    batch, rejections = (normalizer or Normalizer()).normalize(request(*spans, resource=resource))
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in batch.rows(list(COLUMNS))]
    return rows, rejections


def test_otel_genai_current_names():
    [row], _ = normalize(
        span(
            "chat gpt-4o",
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 1000,
                "gen_ai.usage.output_tokens": 200,
                "gen_ai.usage.cache_read.input_tokens": 400,
                "gen_ai.usage.reasoning.output_tokens": 50,
                "gen_ai.response.finish_reasons": ["tool_call"],
                "gen_ai.conversation.id": "conv-1",
                "gen_ai.agent.name": "support",
            },
        )
    )
    assert row["StepKind"] == "llm"
    assert (
        row["Model"] == "gpt-4o-2024-08-06"
    )  # the model that answered wins over the one asked for
    assert row["Provider"] == "openai"
    assert (
        row["InputTokens"],
        row["OutputTokens"],
        row["CacheReadTokens"],
        row["ReasoningTokens"],
    ) == (1000, 200, 400, 50)
    assert row["FinishReason"] == "tool_calls"
    assert row["SessionId"] == "conv-1"
    assert row["AgentName"] == "support"
    assert row["Convention"] == "otel_genai"
    # gpt-4o: 600 uncached input at $2.50, 400 cached at $1.25, 200 output at $10 per million
    assert row["CostUsd"] == pytest.approx((600 * 2.5 + 400 * 1.25 + 200 * 10) / 1e6)


def test_otel_genai_deprecated_names():
    [row], _ = normalize(
        span(
            "ChatCompletion",
            {
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": "claude-3-5-sonnet-20241022",
                "gen_ai.usage.prompt_tokens": 300,
                "gen_ai.usage.completion_tokens": 30,
                "gen_ai.operation.name": "chat",
            },
        )
    )
    assert (row["Provider"], row["InputTokens"], row["OutputTokens"]) == ("anthropic", 300, 30)
    assert row["CostUsd"] > 0


def test_openinference_llm_and_tool_spans():
    trace = os.urandom(16)
    rows, _ = normalize(
        span(
            "ChatCompletion",
            {
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o-mini",
                "llm.provider": "openai",
                "llm.token_count.prompt": 120,
                "llm.token_count.completion": 12,
                "llm.token_count.total": 132,
                "llm.token_count.prompt_details.cache_read": 20,
                "session.id": "s-oi",
                "user.id": "u-7",
            },
            trace_id=trace,
        ),
        span(
            "lookup_order",
            {
                "openinference.span.kind": "TOOL",
                "tool.name": "lookup_order",
                "tool.parameters": '{"type": "object"}',  # the schema, not the call's arguments
                "input.value": '{"order_id": 42, "verbose": true}',
            },
            trace_id=trace,
        ),
    )
    llm, tool = rows
    assert (llm["StepKind"], llm["Model"], llm["Provider"]) == ("llm", "gpt-4o-mini", "openai")
    assert (llm["InputTokens"], llm["OutputTokens"], llm["CacheReadTokens"]) == (120, 12, 20)
    assert (llm["SessionId"], llm["UserId"], llm["Convention"]) == ("s-oi", "u-7", "openinference")
    assert (tool["StepKind"], tool["ToolName"]) == ("tool", "lookup_order")
    assert tool["ToolArgs"] == '{"order_id":42,"verbose":true}'
    assert tool["ToolArgsHash"] != 0
    assert tool["SessionId"] == "s-oi"  # inherited along the trace within the request


def test_openllmetry_traceloop_spans():
    trace = os.urandom(16)
    rows, _ = normalize(
        span(
            "support.workflow",
            {
                "traceloop.span.kind": "workflow",
                "traceloop.entity.name": "support",
                "traceloop.association.properties.session_id": "s-tl",
                "traceloop.association.properties.user_id": "u-tl",
            },
            trace_id=trace,
        ),
        span(
            "openai.chat",
            {
                "llm.request.type": "chat",
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o",
                "llm.usage.total_tokens": 500,
            },
            trace_id=trace,
        ),
        span(
            "get_weather.tool",
            {
                "traceloop.span.kind": "tool",
                "traceloop.entity.name": "get_weather",
                "traceloop.entity.input": '{"kwargs": {"city": "Paris"}, "args": []}',
            },
            trace_id=trace,
        ),
    )
    workflow, llm, tool = rows
    assert (workflow["StepKind"], workflow["AgentName"], workflow["SessionId"]) == (
        "agent",
        "support",
        "s-tl",
    )
    assert (llm["StepKind"], llm["InputTokens"], llm["Convention"]) == ("llm", 500, "openllmetry")
    assert (tool["StepKind"], tool["ToolName"]) == ("tool", "get_weather")
    assert tool["ToolArgs"] == '{"args":[],"kwargs":{"city":"Paris"}}'
    assert {r["UserId"] for r in rows} == {"u-tl"}


def test_usage_repeated_on_agent_spans_is_not_counted():
    rows, _ = normalize(
        span(
            "invoke_agent",
            {"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 5000},
        ),
        span(
            "chat",
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.usage.input_tokens": 5000,
                "gen_ai.request.model": "gpt-4o",
            },
        ),
    )
    assert [r["InputTokens"] for r in rows] == [0, 5000]
    assert rows[0]["CostUsd"] == 0


def test_same_arguments_spelled_differently_hash_the_same():
    rows, _ = normalize(
        span(
            "t",
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "search",
                "gen_ai.tool.call.arguments": '{"q": "x", "n": 1}',
            },
        ),
        span(
            "t",
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "search",
                "gen_ai.tool.call.arguments": '{"n":1,"q":"x"}',
            },
        ),
        span(
            "t",
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "search",
                "gen_ai.tool.call.arguments": '{"n":2,"q":"x"}',
            },
        ),
    )
    assert rows[0]["ToolArgsHash"] == rows[1]["ToolArgsHash"] != rows[2]["ToolArgsHash"]


@pytest.mark.parametrize(
    ("status_message", "attributes", "events", "error_type", "http_status"),
    [
        ("Error code: 429 - {'error': 'rate limited'}", {}, [], "429", 429),
        ("", {"error.type": "500"}, [], "500", 500),
        (
            "",
            {},
            [
                (
                    "exception",
                    {"exception.type": "openai.RateLimitError", "exception.message": "slow down"},
                )
            ],
            "openai.RateLimitError",
            429,
        ),
        (
            "",
            {},
            [
                (
                    "exception",
                    {"exception.type": "httpx.ReadTimeout", "exception.message": "timed out"},
                )
            ],
            "httpx.ReadTimeout",
            0,
        ),
        ("upstream said HTTP 503 Service Unavailable", {}, [], "503", 503),
        ("boom", {}, [], "_OTHER", 0),
    ],
)
def test_error_type_and_http_status_from_every_place_they_hide(
    status_message, attributes, events, error_type, http_status
):
    [row], _ = normalize(
        span(
            "chat",
            {"gen_ai.operation.name": "chat", **attributes},
            error=status_message,
            events=events,
        )
    )
    assert (row["ErrorType"], row["HttpStatus"]) == (error_type, http_status)


def test_a_span_with_a_non_numeric_token_count_is_stored_without_it():
    """The span is a true record of the step; only its token column cannot use the value."""
    rows, rejections = normalize(
        span("good-1", {"gen_ai.operation.name": "chat"}),
        span("bad", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "lots"}),
        span("good-2", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "12"}),
    )
    assert [r["SpanName"] for r in rows] == ["good-1", "bad", "good-2"]
    assert [r["InputTokens"] for r in rows] == [0, 0, 12]  # numbers sent as strings are accepted
    assert rows[1]["SpanAttributes"]["gen_ai.usage.input_tokens"] == "lots"
    assert (rejections.count, rejections.kept) == (0, 1)
    assert "gen_ai.usage.input_tokens must be a whole number" in rejections.summary()
    assert "'bad'" in rejections.summary() and "InputTokens left 0" in rejections.summary()


TOKEN_KEYS = [
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "llm.usage.total_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.reasoning.output_tokens",
]


@pytest.mark.parametrize("key", TOKEN_KEYS)
@pytest.mark.parametrize(
    "value", [2.0**64, 1e308, "9" * 400, "9" * 5000, -1, float("nan"), float("inf")], ids=repr
)
def test_a_count_the_column_cannot_hold_never_fails_the_batch(key, value):
    """Issue 11, hole 2: these failed the whole request (500 / UNKNOWN), neighbours dropped."""
    chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
    batch, rejections = Normalizer().normalize(
        request(span("ok-1", chat), span("odd", {**chat, key: value}), span("ok-2", chat))
    )
    assert batch.columns["SpanName"] == ["ok-1", "odd", "ok-2"]
    stored = orjson.loads(batch.to_json())  # what the store receives
    assert all(stored[c] == [0, 0, 0] for c in TOKEN_COLUMNS) and stored["CostUsd"] == [0, 0, 0]
    assert (rejections.count, rejections.kept) == (0, 1) and "left 0" in rejections.summary()


TOKEN_COLUMNS = ["InputTokens", "OutputTokens", "CacheReadTokens", "CacheWriteTokens"]


def test_the_largest_count_is_kept_and_priced():
    [row], rejections = normalize(
        span(
            "huge",
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": "18446744073709551615",
            },
        )
    )
    assert row["InputTokens"] == 2**64 - 1 and rejections.messages == []
    assert 0 < row["CostUsd"] < float("inf")


def test_odd_error_types_and_deeply_nested_tool_arguments_never_raise():
    deep = "[" * 300 + "]" * 300  # valid JSON that orjson reads but cannot write back
    rows, rejections = normalize(
        span(
            "t",
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "x",
                "gen_ai.tool.call.arguments": deep,
            },
        ),  # fmt: skip
        span("e", {"gen_ai.operation.name": "chat", "error.type": "²³⁴"}, error="HTTP ٥٠٣"),
    )
    assert rows[0]["ToolArgs"] == deep and rows[0]["ToolArgsHash"] != 0
    assert (rows[1]["ErrorType"], rows[1]["HttpStatus"]) == ("²³⁴", 0)
    assert rejections.messages == []


AGENT_KEYS = sorted(FIELD_OF_KEY)
any_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(),
        st.text(max_size=30),
        st.sampled_from(["9" * 400, " 7 ", "1e308", "٣", "²", "-0", "503", "Error code: 429"]),
        st.binary(max_size=4),
    ),
    lambda children: st.lists(children, max_size=3),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(st.tuples(st.sampled_from(AGENT_KEYS), any_value), max_size=8),
    st.booleans(),
    st.sampled_from(["", "boom", "status code 503"]),
)
def test_no_attribute_value_fails_a_batch(attributes, with_event, error):
    """Whatever the agent attributes hold, the span is normalised and the block serialises."""
    s = span("step", dict(attributes), error=error or None)
    if with_event:
        s.events.add(name="exception").attributes.extend(
            attrs({"exception.type": "openai.RateLimitError", "exception.message": error})
        )
    batch, _ = Normalizer().normalize(request(s))
    assert len(batch) == 1
    orjson.loads(batch.to_json())


@pytest.mark.parametrize(
    ("ids", "reason"),
    [
        ({"trace_id": b"\x01" * 15}, "trace_id must be 16 bytes"),
        ({"trace_id": bytes(16)}, "trace_id is all zeros"),
        ({"span_id": b"\x01" * 9}, "span_id must be 8 bytes"),
        ({"parent": b"\x01" * 3}, "parent_span_id must be empty or 8 bytes"),
    ],
)
def test_bad_ids_reject_only_that_span(ids, reason):
    rows, rejections = normalize(span("ok"), span("broken", **ids))
    assert [r["SpanName"] for r in rows] == ["ok"]
    assert rejections.count == 1 and reason in rejections.summary()


def test_raw_attributes_events_and_resource_are_kept_as_strings():
    [row], _ = normalize(
        span(
            "step",
            {"count": 3, "ratio": 0.5, "flag": True, "tags": ["a", "b"], "blob": b"\x00\x01"},
            events=[("exception", {"exception.type": "ValueError"})],
        ),
        resource={"service.name": "svc", "tenant.id": "acme"},
    )
    assert row["SpanAttributes"] == {
        "count": "3",
        "ratio": "0.5",
        "flag": "true",
        "tags": '["a","b"]',
        "blob": "AAE=",
    }
    assert row["ServiceName"] == "svc" and row["Tenant"] == "acme"
    assert row["EventsName"] == ["exception"]
    assert row["EventsAttributes"] == [{"exception.type": "ValueError"}]


def test_price_overrides_and_unknown_models():
    normalizer = Normalizer(PriceTable({"acme-llm": Price(1.0, 2.0)}))
    rows, _ = normalize(
        span(
            "a",
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "acme-llm-v2",
                "gen_ai.usage.input_tokens": 1_000_000,
            },
        ),
        span(
            "b",
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "mystery",
                "gen_ai.usage.input_tokens": 10,
            },
        ),
        normalizer=normalizer,
    )
    assert [r["CostUsd"] for r in rows] == [1.0, 0.0]
    assert normalizer.unpriced_models == {"mystery"}


def test_rejections_summary_is_bounded():
    r = Rejections()
    for i in range(50):
        r.add(f"span {i}: bad")
    assert r.count == 50
    assert r.summary().endswith("and 45 more")


# --- tool arguments that are a schema, and the outcome of a tool call -------------------------


def _openinference_tool_spans(semconv: bool) -> bytes:
    """Tool spans written by the real OpenInference tracer (``OITracer.tool``, as frameworks use
    it), exported with the real OTLP encoder: with ``OPENINFERENCE_ENABLE_GENAI_SEMCONV`` it
    copies the tool's schema (``tool.parameters``) into ``gen_ai.tool.call.arguments``."""
    from openinference.instrumentation import OITracer, TraceConfig
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = OITracer(
        provider.get_tracer("agent"), config=TraceConfig(enable_genai_semconv=semconv)
    )

    @tracer.tool
    def lookup_order(order_id: int, verbose: bool = False) -> dict:
        """Find an order."""
        return {"status": "shipped" if order_id == 42 else "pending"}

    @tracer.tool
    def refund(order_id: int) -> str:
        raise ValueError(f"order {order_id} is not refundable")

    with tracer.start_as_current_span("agent", attributes={"session.id": "s-oi"}):
        for order_id in (42, 43, 42):
            lookup_order(order_id)
        for _ in range(2):
            with pytest.raises(ValueError):
                refund(7)
    spans = exporter.get_finished_spans()
    provider.shutdown()
    return encode_spans(spans).SerializeToString()


def _both_readers(body: bytes) -> list[dict]:
    """Rows of the reference reader, after checking the C reader (when built) gives the same."""
    from collector.decode import decode_protobuf

    reference, _ = Normalizer().normalize(decode_protobuf(body, Rejections()))
    native = Normalizer().read_wire(body, Rejections())
    if native is not None:
        assert native.to_json() == reference.to_json()
    return [dict(zip(COLUMNS, row, strict=True)) for row in reference.rows(list(COLUMNS))]


@pytest.mark.parametrize("semconv", [True, False], ids=["genai-semconv", "openinference-only"])
def test_openinference_tool_calls_keep_their_own_arguments_and_outcomes(semconv):
    rows = [r for r in _both_readers(_openinference_tool_spans(semconv)) if r["StepKind"] == "tool"]
    first, other, again, refused, refused_again = rows
    if semconv:  # what the instrumentation sent: the schema, the same for every call
        sent = first["SpanAttributes"]["gen_ai.tool.call.arguments"]
        assert sent.startswith('{"type": "object"') and '"properties": {"order_id": {' in sent
    assert first["ToolArgs"] == again["ToolArgs"] == '{"order_id":42,"verbose":false}'
    assert other["ToolArgs"] == '{"order_id":43,"verbose":false}'
    assert first["ToolArgsHash"] == again["ToolArgsHash"] != other["ToolArgsHash"]
    assert first["ToolResultHash"] == again["ToolResultHash"] != other["ToolResultHash"] != 0
    assert refused["StatusCode"] == "Error" and refused["ErrorType"] == "ValueError"
    assert refused["ToolResultHash"] == refused_again["ToolResultHash"] != 0
    assert refused["ToolResultHash"] not in (first["ToolResultHash"], other["ToolResultHash"])


SCHEMA = '{"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}'


@pytest.mark.parametrize(
    ("arguments", "call", "expected"),
    [
        (SCHEMA, '{"q": "refund"}', '{"q":"refund"}'),  # a schema: the call's value instead
        ('{"type":"object","properties":{},"title":"t","$schema":"x"}', '{"a": 1}', '{"a":1}'),
        (SCHEMA, "", '{"properties":{"q":{"type":"string"}},"required":["q"],"type":"object"}'),
        # real calls that merely look like one: kept
        ('{"type": "object", "properties": {"q": "x"}}', '{"a": 1}', '{"properties":{"q":"x"},"type":"object"}'),
        ('{"type": "object", "properties": {}, "name": "n"}', '{"a": 1}', '{"name":"n","properties":{},"type":"object"}'),
        ('{"type": "array", "properties": {}}', '{"a": 1}', '{"properties":{},"type":"array"}'),
        ('{"q": "refund"}', '{"q": "other"}', '{"q":"refund"}'),
        ("not json", '{"a": 1}', "not json"),
    ],
)  # fmt: skip
def test_schema_shaped_arguments_yield_to_the_calls_own_value(arguments, call, expected):
    call_value = {"input.value": call} if call else {}  # no call value: nothing to fall back on
    attributes = {"openinference.span.kind": "TOOL", "tool.name": "search", **call_value}
    attributes["gen_ai.tool.call.arguments"] = arguments
    [row] = _both_readers(request(span("search", attributes)).SerializeToString())
    assert row["ToolArgs"] == expected


@pytest.mark.parametrize(
    ("convention", "attributes"),
    [
        ("otel_genai", {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t"}),
        ("openinference", {"openinference.span.kind": "TOOL", "tool.name": "t"}),
        ("openllmetry", {"traceloop.span.kind": "tool", "traceloop.entity.name": "t"}),
    ],
)
def test_the_result_hash_of_every_convention(convention, attributes):
    key = {
        "otel_genai": "gen_ai.tool.call.result",
        "openinference": "output.value",
        "openllmetry": "traceloop.entity.output",
    }[convention]
    spans = [
        span("t", {**attributes, key: '{"rows": 3}'}),
        span("t", {**attributes, key: '{"rows": 3}'}),
        span("t", {**attributes, key: '{"rows": 4}'}),
        span("t", attributes),  # no result recorded
        span("t", attributes, error="connection refused"),
        span("t", attributes, error="connection refused"),
        span("t", attributes, error="permission denied"),
        span("t", {**attributes, "error.type": "ToolError"}, error="connection refused"),
    ]
    rows = _both_readers(request(*spans).SerializeToString())
    hashes = [r["ToolResultHash"] for r in rows]
    assert {r["Convention"] for r in rows} == {convention}
    assert hashes[0] == hashes[1] != hashes[2]
    assert hashes[3] == 0
    assert hashes[4] == hashes[5] and len({hashes[0], hashes[2], *hashes[4:]}) == 5


def test_the_result_hash_is_only_for_tool_calls():
    [row] = _both_readers(
        request(
            span("chat", {"gen_ai.operation.name": "chat", "gen_ai.tool.call.result": "x"})
        ).SerializeToString()
    )
    assert row["StepKind"] == "llm" and row["ToolResultHash"] == 0


# --- ErrorText: where a failure's cause is told (issue 13, point 4) -----------------------------

TOOL = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "crm_lookup"}


def _error_texts(*spans) -> list[str]:
    """``ErrorText`` of each span, after checking the C reader (when built) gives the same."""
    from collector.decode import decode_protobuf

    body = request(*spans).SerializeToString()
    reference, _ = Normalizer().normalize(decode_protobuf(body, Rejections()))
    native = Normalizer().read_wire(body, Rejections())
    if native is not None:
        assert native.columns["ErrorText"] == reference.columns["ErrorText"]
    return reference.columns["ErrorText"]


def test_the_exception_message_and_the_tool_result_reach_the_error_text():
    refused = ("exception", {
        "exception.type": "ConnectionRefusedError",
        "exception.message": "[Errno 111] Connection refused",
    })  # fmt: skip
    texts = _error_texts(
        # a framework class in error.type: the cause is only in the exception event
        span("t", {**TOOL, "error.type": "ToolRetryError"}, error="", events=[refused]),
        # the status message says it already: not repeated
        span(
            "t",
            TOOL,
            error="ConnectionRefusedError: [Errno 111] Connection refused",
            events=[refused],
        ),  # fmt: skip
        # a failed tool's result: what its framework handed the model
        span("t", {**TOOL, "gen_ai.tool.call.result": "upstream: 502 Bad Gateway"}, error="x"),
        # a failed model call: status message only
        span("c", {"gen_ai.operation.name": "chat"}, error="Error code: 503 - overloaded"),
    )
    assert texts == [
        "ConnectionRefusedError: [Errno 111] Connection refused",
        "ConnectionRefusedError: [Errno 111] Connection refused",
        "x\nupstream: 502 Bad Gateway",
        "Error code: 503 - overloaded",
    ]


def test_a_tool_result_is_error_text_only_when_its_framework_worded_it_as_an_error():
    def result(text: str) -> dict:
        return {**TOOL, "gen_ai.tool.call.result": text}

    marked = [
        # the OpenAI Agents SDK's default_tool_error_function
        "An error occurred while running the tool. Please try again. Error: [Errno 111] "
        "Connection refused",
        "Error: ConnectError('[Errno -2] Name or service not known')\n Please fix your mistakes.",
        "Error executing tool crm_lookup: 503 Service Unavailable",  # LangGraph, MCP servers
        "Error when executing tool crm_lookup with arguments {}: TimeoutError: timed out",
        '"Error: connection reset by peer"',  # a JSON string as some exporters send it
    ]
    ordinary = [
        # a coding agent reading a test log, or running curl: the tool worked
        "===== FAILURES =====\nE   psycopg.OperationalError: connection refused\n1 failed",
        "curl: (7) Failed to connect to localhost port 8080: Connection refused",
        '{"orders": [], "note": "Error: none found"}',
    ]
    texts = _error_texts(*(span("t", result(text)) for text in marked + ordinary))
    assert texts == marked + [""] * len(ordinary)


def test_a_healthy_call_has_no_error_text_and_the_store_never_gets_the_column():
    batch, _ = Normalizer().normalize(
        request(
            span("t", {**TOOL, "gen_ai.tool.call.result": "3 orders"}),
            span("c", {"gen_ai.operation.name": "chat"}),
            span("t", TOOL, error="[Errno 111] Connection refused"),
        )
    )
    assert batch.columns["ErrorText"] == ["", "", "[Errno 111] Connection refused"]
    assert "ErrorText" not in orjson.loads(batch.to_json())  # detection only, not a table column


def test_the_error_text_is_bounded():
    long = "Connection refused " + "x" * 5000
    [text] = _error_texts(
        span("t", TOOL, error=long, events=[("exception", {"exception.message": "y" * 5000})])
    )
    assert text.startswith("Connection refused") and len(text) <= 512
    assert "y" * 100 in text  # the exception's part is kept: the status message has only its share
