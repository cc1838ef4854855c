"""What an exporter sees from the receivers: OTLP status codes, partial success, retry hints.

Bad input gets a clear error and loses nothing else: a malformed span is rejected with a reason
and its valid neighbours are stored.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import time

import grpc
import orjson
import pytest
import requests
from google.protobuf import json_format
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from collector.store.migrations import migration_files, statements
from tests.otlp import request, span

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def grpc_export(collector, body: bytes, compression=None):
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        raw, rpc = call.with_call(body, timeout=30, compression=compression)
        return ExportTraceServiceResponse.FromString(raw), rpc


def http_export(collector, body: bytes, headers=PROTOBUF):
    return requests.post(collector.http_url + "/v1/traces", data=body, headers=headers, timeout=30)


def span_names(collector, expected: int) -> list[str]:
    rows = collector.wait_for_rows("SELECT SpanName FROM otel_traces ORDER BY SpanName", expected)
    return [r["SpanName"] for r in rows]


def test_grpc_partial_success_keeps_valid_neighbours(collector):
    body = request(span("a"), span("bad-id", trace_id=b"\x01" * 3), span("b")).SerializeToString()
    response, _ = grpc_export(collector, body)
    assert response.partial_success.rejected_spans == 1
    assert "trace_id must be 16 bytes" in response.partial_success.error_message
    assert span_names(collector, 2) == ["a", "b"]


def test_grpc_gzip_and_health(collector):
    response, _ = grpc_export(
        collector, request(span("zipped")).SerializeToString(), grpc.Compression.Gzip
    )
    assert not response.HasField("partial_success")
    assert span_names(collector, 1) == ["zipped"]
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status = stub.Check(
            health_pb2.HealthCheckRequest(
                service="opentelemetry.proto.collector.trace.v1.TraceService"
            )
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_garbage_is_invalid_argument_and_not_retryable(collector):
    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(collector, b"\xff\xff\xff garbage \x00\x01")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid OTLP" in caught.value.details()


def test_grpc_oversize_message_is_refused(collector_factory):
    with collector_factory(max_recv_msg_size_mib=1) as collector:
        big = request(
            *[span(f"s{i}", {"blob": "x" * 4096}) for i in range(400)]
        ).SerializeToString()
        assert len(big) > 1024 * 1024
        with pytest.raises(grpc.RpcError) as caught:
            grpc_export(collector, big)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_invalid_utf8_rejects_only_that_span(collector):
    good = request(span("ok-1"), span("BROKEN-NAME"), span("ok-2")).SerializeToString()
    # Corrupt the bytes of one span's name on the wire (same length, so framing stays valid).
    body = good.replace(b"BROKEN-NAME", b"BROKEN\xff\xfeAME")
    response, _ = grpc_export(collector, body)
    assert response.partial_success.rejected_spans == 1
    assert "invalid UTF-8" in response.partial_success.error_message
    assert span_names(collector, 2) == ["ok-1", "ok-2"]


def test_http_protobuf_partial_success(collector):
    body = request(
        span("fine"),
        span("bad-id", span_id=bytes(8)),
        span("bad-tokens", {"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": "many"}),
    ).SerializeToString()
    response = http_export(collector, body)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/x-protobuf")
    message = ExportTraceServiceResponse.FromString(response.content)
    assert message.partial_success.rejected_spans == 1
    assert "span_id is all zeros" in message.partial_success.error_message
    # the span with an unusable token count is stored, its OutputTokens 0, with a warning
    assert (
        "gen_ai.usage.output_tokens must be a whole number" in message.partial_success.error_message
    )
    assert span_names(collector, 2) == ["bad-tokens", "fine"]


def test_http_gzip_body(collector):
    body = gzip.compress(request(span("gz")).SerializeToString())
    response = http_export(collector, body, {**PROTOBUF, "Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert span_names(collector, 1) == ["gz"]


def _json_span(name: str, trace_id: str, span_id: str, **extra) -> dict:
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "kind": 3,
        "startTimeUnixNano": "1763000000000000000",
        "endTimeUnixNano": "1763000000500000000",
        **extra,
    }


def test_http_json_hex_ids_int64_strings_and_per_span_errors(collector):
    doc = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "json-agent"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            _json_span(
                                "good",
                                "5b8efff798038103d269b633813fc60c",
                                "eee19b7ec3c1b174",
                                attributes=[
                                    {
                                        "key": "gen_ai.operation.name",
                                        "value": {"stringValue": "chat"},
                                    },
                                    {
                                        "key": "gen_ai.usage.input_tokens",
                                        "value": {"intValue": "1500"},
                                    },
                                ],
                                status={"code": 2, "message": "Error code: 503"},
                            ),
                            _json_span("bad-hex", "not-hex-at-all", "eee19b7ec3c1b175"),
                            _json_span(
                                "bad-type",
                                "5b8efff798038103d269b633813fc60c",
                                "eee19b7ec3c1b176",
                                attributes=[{"key": "n", "value": {"intValue": "twelve"}}],
                            ),
                        ],
                    }
                ],
            }
        ]
    }
    response = http_export(
        collector, json.dumps(doc).encode(), {"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["partialSuccess"]["rejectedSpans"] == "2"
    assert "traceId must be 32 hex characters" in body["partialSuccess"]["errorMessage"]
    rows = collector.wait_for_rows("SELECT * FROM otel_traces", 1)
    [row] = rows
    assert (
        row["TraceId"] == "5b8efff798038103d269b633813fc60c" and row["SpanId"] == "eee19b7ec3c1b174"
    )
    assert (row["SpanKind"], row["StatusCode"], row["HttpStatus"]) == ("Client", "Error", 503)
    assert row["InputTokens"] == 1500 and row["ServiceName"] == "json-agent"
    assert row["Duration"] == 500_000_000


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"\x00garbage", "application/x-protobuf", 400, "not a valid OTLP"),
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'{"resourceSpans": 5}', "application/json", 400, "must be an array"),
        (b"hello", "text/plain", 415, "unsupported Content-Type"),
    ],
)
def test_http_unreadable_payloads(collector, body, content_type, status, message):
    response = http_export(collector, body, {"Content-Type": content_type})
    assert response.status_code == status
    if response.headers["Content-Type"].startswith("application/x-protobuf"):
        detail = status_pb2.Status.FromString(response.content).message
    else:
        detail = json_format.Parse(response.text, status_pb2.Status()).message
    assert message in detail


def test_http_oversize_body_is_413(collector_factory):
    with collector_factory(max_recv_msg_size_mib=1) as collector:
        response = http_export(collector, b"\x00" * (2 * 1024 * 1024))
        assert response.status_code == 413


def test_store_failure_is_retryable_and_nothing_is_half_kept(collector):
    """When the insert fails, clients get UNAVAILABLE / 503 + Retry-After; after recovery the same
    request is accepted and stored once."""
    run = collector.call
    store = collector.collector.store
    run(collector.collector.run_store(store.command, "DROP TABLE otel_traces_ingest"))
    body = request(span("retry-me")).SerializeToString()

    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(collector, body)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    trailers = dict(caught.value.trailing_metadata())
    assert "google.rpc.retryinfo-bin" in trailers

    response = http_export(collector, body)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"

    ddl = [  # the ingest table as every migration left it (010 added a column)
        s
        for _, _, path in migration_files()
        for s in statements(path.read_text())
        if "otel_traces_ingest" in s
    ]
    for statement in ddl:
        run(collector.collector.run_store(store.command, statement))
    response, _ = grpc_export(collector, body)
    assert span_names(collector, 1) == ["retry-me"]
    metrics = requests.get(collector.api_url + "/metrics", timeout=10).text
    assert 'agentwatch_spans_refused_total{reason="store_error"} 2.0' in metrics


def test_full_queue_refuses_with_retry_instead_of_dropping(collector_factory):
    # A queue of 1 span and a long flush interval: the first request waits to be committed, the
    # second finds the queue full and is told to come back.
    import threading

    with collector_factory(queue_max_spans=1, batch_flush_interval_s=2.0) as collector:
        first = threading.Thread(
            target=grpc_export, args=(collector, request(span("first")).SerializeToString())
        )
        first.start()
        import time

        deadline = time.monotonic() + 5
        while (
            "agentwatch_write_queue_spans 1.0"
            not in requests.get(collector.api_url + "/metrics", timeout=5).text
        ):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        response = http_export(collector, request(span("second")).SerializeToString())
        assert response.status_code == 503
        assert "write queue full" in status_pb2.Status.FromString(response.content).message
        first.join(10)
        assert span_names(collector, 1) == ["first"]


def test_session_is_resolved_for_children_sent_before_their_root(collector):
    trace = os.urandom(16)
    root_id = os.urandom(8)
    child = span("chat", {"gen_ai.operation.name": "chat"}, trace_id=trace, parent=root_id)
    root = span(
        "agent",
        {"gen_ai.conversation.id": "late-root", "user.id": "u1"},
        trace_id=trace,
        span_id=root_id,
    )
    grpc_export(collector, request(child).SerializeToString())
    grpc_export(collector, request(root).SerializeToString())
    rows = collector.wait_for_rows(
        "SELECT SpanName, SessionId, UserId FROM agent_spans ORDER BY SpanName", 2
    )
    assert rows == [
        {"SpanName": "agent", "SessionId": "late-root", "UserId": "u1"},
        {"SpanName": "chat", "SessionId": "late-root", "UserId": "u1"},
    ]


def test_a_slow_sql_query_does_not_hold_up_ingest(collector):
    """Spans are inserted on a connection and thread of their own: an on-call engineer's long
    query does not make exporters wait (or time out and retry) until it finishes."""
    slow_query = "SELECT sleepEachRow(0.5) FROM numbers(8)"  # ~4 s, one row a block
    query = threading.Thread(
        target=lambda: requests.post(
            collector.sql_url, params={"max_block_size": "1"}, data=slow_query, timeout=60
        )
    )
    query.start()
    time.sleep(0.5)  # the query is running
    response = http_export(collector, request(span("during the query")).SerializeToString())
    assert response.status_code == 200
    assert query.is_alive(), "the export was acknowledged only after the query had finished"
    assert collector.query("SELECT SpanName FROM otel_traces") == [{"SpanName": "during the query"}]
    query.join()


def test_group_commits_in_parallel_lose_nothing(collector_factory):
    """With two inserts in flight, every acknowledged span is stored once."""
    from concurrent.futures import ThreadPoolExecutor

    with collector_factory(batch_inserts_in_flight=2, batch_flush_interval_s=0.01) as collector:
        bodies = [request(span(f"s{i}"), span(f"t{i}")).SerializeToString() for i in range(24)]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda b: http_export(collector, b).status_code, bodies))
        assert statuses == [200] * 24
        rows = collector.query(
            "SELECT toUInt32(count()) AS n, toUInt32(uniqExact(SpanName)) AS names FROM otel_traces"
        )
        assert rows == [{"n": 48, "names": 48}]


def test_a_group_commit_holds_at_most_batch_max_spans(collector_factory, monkeypatch):
    """The group size bounds chDB's memory for one INSERT, even when requests pile up behind a
    slow insert: what does not fit waits for the next group, and nothing is lost."""
    from concurrent.futures import ThreadPoolExecutor

    with collector_factory(batch_max_spans=5, batch_flush_interval_s=0.2) as collector:
        store = collector.collector.store
        real_insert = store.insert_blocks
        group_sizes = []

        def recording_insert(table, fmt, blocks):
            group_sizes.append(sum(len(orjson.loads(b)["SpanName"]) for b in blocks))
            time.sleep(0.2)  # a slow store: the next requests gather meanwhile
            return real_insert(table, fmt, blocks)

        monkeypatch.setattr(store, "insert_blocks", recording_insert)
        bodies = [request(span(f"s{i}"), span(f"t{i}")).SerializeToString() for i in range(12)]
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda b: http_export(collector, b).status_code, bodies))
        assert statuses == [200] * 12
        assert sum(group_sizes) == 24
        assert max(group_sizes) <= 5, group_sizes
        assert len(group_sizes) >= 5  # 24 spans in pairs, at most two pairs a group
        assert collector.query("SELECT toUInt32(count()) AS n FROM otel_traces") == [{"n": 24}]


def test_an_unexpected_insert_error_is_a_retryable_refusal_not_a_hang(collector, monkeypatch):
    """A bug below the writer (anything but the store's own errors) must not leave exporters
    waiting for an acknowledgement that never comes."""
    store = collector.collector.store

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "insert_blocks", broken)
    response = http_export(collector, request(span("unlucky")).SerializeToString())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    monkeypatch.undo()
    assert http_export(collector, request(span("lucky")).SerializeToString()).status_code == 200
    assert span_names(collector, 1) == ["lucky"]


# --- hostile and broken bodies (issue 11, holes 2 and 9): never a 5xx / UNKNOWN ------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One collector (detection on, the default) for the tests below; each uses its own names."""
    from tests.conftest import run_collector

    with run_collector(tmp_path_factory.mktemp("hostile") / "data") as running:
        yield running


CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}


def stored(collector, prefix: str, expected: int) -> list[dict]:
    return collector.wait_for_rows(
        "SELECT SpanName, InputTokens, Timestamp FROM otel_traces "
        f"WHERE startsWith(SpanName, '{prefix}') ORDER BY SpanName",
        expected,
    )


@pytest.mark.parametrize(
    "value", [2.0**64, 1e308, "9" * 400, -1, float("nan"), float("inf")], ids=repr
)
def test_a_token_count_the_column_cannot_hold_is_a_warning_not_a_failure(shared, value):
    """It failed the whole request (UNKNOWN / 500) and dropped its neighbours; then, with
    detection on, every later export was answered only when the next one arrived. Now the span
    is stored with InputTokens 0 and a warning, and exporters sending one request at a time are
    each answered at once."""
    tag = "tok-" + "".join(c for c in repr(value) if c.isalnum())[:12] + "-"
    body = request(
        span(tag + "a", CHAT),
        span(tag + "b", {**CHAT, "gen_ai.usage.input_tokens": value}),
        span(tag + "c", {**CHAT, "gen_ai.usage.input_tokens": 3}),
    ).SerializeToString()
    with grpc.insecure_channel(shared.grpc_endpoint) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        response = ExportTraceServiceResponse.FromString(call(body, timeout=10))
        assert response.partial_success.rejected_spans == 0
        assert "InputTokens left 0" in response.partial_success.error_message
        for i in range(3):  # one at a time, as a BatchSpanProcessor exports
            after = request(span(f"{tag}next-{i}", {**CHAT, "gen_ai.usage.input_tokens": i}))
            call(after.SerializeToString(), timeout=5)
    rows = stored(shared, tag, 6)
    assert [(r["SpanName"][len(tag) :], r["InputTokens"]) for r in rows] == [
        ("a", 0), ("b", 0), ("c", 3), ("next-0", 0), ("next-1", 1), ("next-2", 2),
    ]  # fmt: skip
    http = http_export(shared, body.replace(tag.encode(), tag.upper().encode()))
    assert http.status_code == 200
    assert ExportTraceServiceResponse.FromString(http.content).partial_success.rejected_spans == 0
    metrics = requests.get(shared.api_url + "/metrics", timeout=10).text
    assert 'agentwatch_otlp_requests_total{outcome="warning",protocol="grpc"}' in metrics


@pytest.mark.parametrize("start", [0, 2**63, 2**64 - 1])
def test_a_span_time_the_store_cannot_hold_is_rejected_with_its_reason(shared, start):
    """These were stored as 1969 or 2036."""
    tag = f"time-{start}-"
    bad = span(tag + "bad")
    bad.start_time_unix_nano = bad.end_time_unix_nano = start
    body = request(span(tag + "ok"), bad).SerializeToString()
    response, _ = grpc_export(shared, body)
    assert response.partial_success.rejected_spans == 1
    assert "start_time_unix_nano" in response.partial_success.error_message
    [row] = stored(shared, tag, 1)
    assert row["SpanName"] == tag + "ok" and row["Timestamp"].startswith("2025-11-13")


def test_an_attribute_nested_too_deep_rejects_only_its_span(shared):
    from tests.test_decode import body_of, nested_array, nested_kvlist, with_value

    body = body_of(
        span("deep-ok").SerializeToString(),
        with_value("deep-kv", nested_kvlist(50)),
        with_value("deep-array", nested_array(100)),
    )
    response, _ = grpc_export(shared, body)
    assert response.partial_success.rejected_spans == 2
    assert "nested deeper than protobuf's limit" in response.partial_success.error_message
    assert [r["SpanName"] for r in stored(shared, "deep-", 1)] == ["deep-ok"]


def test_json_that_one_span_spoils_rejects_only_that_span(shared):
    from tests.test_decode import deep_json_value, json_body, json_span, with_raw_value

    body = json_body(
        json_span("json-ok"),
        with_raw_value("json-surrogate", '{"stringValue": "\\ud800"}'),
        with_raw_value("json-deep", deep_json_value(400)),
    )
    response = http_export(shared, body, {"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.json()["partialSuccess"]["rejectedSpans"] == "2"
    assert [r["SpanName"] for r in stored(shared, "json-", 1)] == ["json-ok"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"\x1f\x8b garbage", {**PROTOBUF, "Content-Encoding": "gzip"}, 400, "cannot be read"),
        (b"not deflate", {**PROTOBUF, "Content-Encoding": "deflate"}, 400, "cannot be read"),
        (b'{"resourceSpans": ["x"]}', {"Content-Type": "application/json"}, 400, "JSON objects"),
        (gzip.compress(b"\x00" * (20 << 20)), {**PROTOBUF, "Content-Encoding": "gzip"}, 413, ""),
    ],
    ids=["garbage gzip", "garbage deflate", "resourceSpans of strings", "gzip bomb"],
)
def test_unreadable_bodies_are_4xx_not_500(shared, body, headers, status, message):
    """Garbage gzip and ``{"resourceSpans":["x"]}`` were 500. The size limit (16 MiB) applies
    to the decompressed body: a 20 KB gzip of 20 MiB is refused without holding 20 MiB."""
    response = http_export(shared, body, headers)
    assert response.status_code == status
    if response.headers["Content-Type"].startswith("application/json"):
        detail = json_format.Parse(response.text, status_pb2.Status()).message
    else:
        detail = status_pb2.Status.FromString(response.content).message
    assert message in detail


def test_random_bodies_never_get_a_5xx_or_unknown(shared):
    """Mutations of valid requests and random JSON shapes, over both receivers."""
    from hypothesis import given, settings

    from tests.test_decode import json_values, shapes_around
    from tests.test_native_reader import mutants

    @settings(max_examples=60, deadline=None, database=None)
    @given(mutants(), json_values)
    def check(protobuf_body, doc):
        assert http_export(shared, protobuf_body).status_code < 500
        try:
            grpc_export(shared, protobuf_body)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        for shaped in shapes_around(doc):
            response = http_export(shared, json.dumps(shaped).encode(), {"Content-Type": JSON_CT})
            assert response.status_code < 500, response.text

    check()


JSON_CT = "application/json"
