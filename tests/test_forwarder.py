"""Processor mode: what reaches the downstream, what is retried or dropped; ingest never waits.

Downstreams are real: a second agentwatch collector, or small scripted OTLP servers (aiohttp for
HTTP, grpc.aio for gRPC) on an event loop of their own that record every attempt they see.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest
import requests
from aiohttp import web
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from agentwatch.config import ConfigError, load_config

PROTOCOLS = ["grpc", "http/protobuf"]
FAST_COMMITS = {"batch_flush_interval_s": 0.01}


# --- helpers -------------------------------------------------------------------------------------


def metric(running, name: str, **labels: str) -> float:
    """A value from the collector's /metrics page, as Prometheus would read it: the sum of the
    samples called ``name`` that carry ``labels``."""
    text = requests.get(f"{running.api_url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def sent(running) -> float:
    return metric(running, "agentwatch_forward_requests_sent_total")


def dropped(running, reason: str) -> float:
    return metric(running, "agentwatch_forward_requests_dropped_total", reason=reason)


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def otlp_request(n_spans: int = 2) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="forward-test"))
    )
    scope_spans = resource_spans.scope_spans.add()
    trace_id = os.urandom(16)
    for i in range(n_spans):
        span = scope_spans.spans.add()
        span.trace_id = trace_id
        span.span_id = os.urandom(8)
        span.name = f"step-{i}"
        span.start_time_unix_nano = time.time_ns()
        span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000
        span.attributes.append(
            KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="m"))
        )
    return request


def post_otlp(running, body: bytes) -> None:
    response = requests.post(
        f"{running.http_url}/v1/traces",
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def sdk_exporter(protocol: str, running) -> SpanExporter:
    """The real OpenTelemetry SDK exporter for ``protocol``, pointed at ``running``'s receiver."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=running.grpc_endpoint, insecure=True, timeout=10)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"{running.http_url}/v1/traces", timeout=10)


class AckRecorder(SpanExporter):
    """Wraps an exporter and keeps what the collector answered to each export."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.results: list[SpanExportResult] = []

    def export(self, spans):
        result = self.inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()


@contextmanager
def tracer_to(*exporters: SpanExporter):
    provider = TracerProvider(resource=Resource.create({"service.name": "forward-test"}))
    for exporter in exporters:
        provider.add_span_processor(SimpleSpanProcessor(exporter))  # one OTLP request per span
    try:
        yield provider.get_tracer("forward-test")
    finally:
        provider.shutdown()


@pytest.fixture
def side_loop():
    """An event loop on its own thread for scripted downstreams (collector A has its own)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="downstream-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def on(loop: asyncio.AbstractEventLoop, coro):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(30)


class ScriptedHttpDownstream:
    """OTLP/HTTP server answering from ``script`` ((status, headers) per attempt), then 200."""

    def __init__(self, script: list[tuple[int, dict[str, str]]], delay_s: float = 0.0) -> None:
        self.script = list(script)
        self.delay_s = delay_s  # a slow downstream: every answer takes this long
        self.attempts: list[tuple[float, bytes, dict[str, str]]] = []  # (time, body, headers)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp undoes Content-Encoding: gzip
        self.attempts.append((time.monotonic(), body, dict(request.headers)))
        await asyncio.sleep(self.delay_s)
        if self.script:
            status, headers = self.script.pop(0)
            return web.Response(status=status, headers=headers)
        ok = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=ok, content_type="application/x-protobuf")

    async def stop(self) -> None:
        await self.runner.cleanup()


class ScriptedGrpcDownstream:
    """OTLP/gRPC server failing with ``script`` ((code, RetryInfo delay or None) per attempt)."""

    def __init__(self, script: list[tuple[grpc.StatusCode, int | None]]) -> None:
        self.script = list(script)
        self.attempts: list[tuple[float, bytes, dict[str, str]]] = []
        self.server: grpc.aio.Server | None = None
        self.endpoint = ""

    async def start(self) -> None:
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self.export)  # raw bytes in and out
        service = "opentelemetry.proto.collector.trace.v1.TraceService"
        generic = grpc.method_handlers_generic_handler(service, {"Export": handler})
        self.server.add_generic_rpc_handlers((generic,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.endpoint = f"127.0.0.1:{port}"

    async def export(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.attempts.append((time.monotonic(), body, dict(context.invocation_metadata())))
        if self.script:
            code, retry_delay_s = self.script.pop(0)
            trailers = ()
            if retry_delay_s is not None:
                info = error_details_pb2.RetryInfo(
                    retry_delay=duration_pb2.Duration(seconds=retry_delay_s)
                )
                status = status_pb2.Status(code=code.value[0], message="scripted")
                status.details.add().Pack(info)
                trailers = (("grpc-status-details-bin", status.SerializeToString()),)
            await context.abort(code, "scripted", trailing_metadata=trailers)
        return ExportTraceServiceResponse().SerializeToString()

    async def stop(self) -> None:
        await self.server.stop(None)


@contextmanager
def scripted_downstream(loop, protocol: str, script: list, **options):
    if protocol == "grpc":
        server = ScriptedGrpcDownstream(script, **options)
    else:
        server = ScriptedHttpDownstream(script, **options)
    on(loop, server.start())
    try:
        yield server
    finally:
        on(loop, server.stop())


def endpoint_of(server) -> str:
    return server.endpoint if isinstance(server, ScriptedGrpcDownstream) else server.url


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forward", "key"),
    [
        ({"endpoint": "collector:4317", "protocol": "thrift"}, "forward.protocol"),
        ({"endpoint": "   ", "protocol": "grpc"}, "forward.endpoint"),
        ({"endpoint": "", "protocol": "http/protobuf"}, "forward.endpoint"),
        ({"endpoint": "collector:4318", "protocol": "http/protobuf"}, "forward.endpoint"),
        ({"endpoint": "collector", "protocol": "grpc"}, "forward.endpoint"),
        ({"protocol": "grpc"}, "forward.endpoint"),
        ({"endpoint": "collector:4317", "protocol": "grpc", "retries": 3}, "forward.retries"),
        ({"endpoint": "http://c:4318", "queue_max_requests": 0}, "forward.queue_max_requests"),
    ],
)
def test_bad_forward_settings_stop_startup_naming_the_key(forward, key):
    with pytest.raises(ConfigError) as error:
        load_config(None, {"forward": forward})
    assert f": {key}:" in str(error.value)


def test_good_forward_settings_are_accepted():
    grpc_config = load_config(
        None, {"forward": {"endpoint": " collector:4317 ", "protocol": "grpc"}}
    )
    assert grpc_config.forward.endpoint == "collector:4317"
    http_config = load_config(None, {"forward": {"endpoint": "https://vendor.example/otlp"}})
    assert http_config.forward.protocol == "http/protobuf"


# --- end to end ----------------------------------------------------------------------------------


@dataclass
class CollectorProcess:
    grpc_endpoint: str
    http_url: str
    api_url: str


@pytest.fixture
def downstream_collector(tmp_path):
    """A second agentwatch collector, as a separate ``agentwatch serve`` process.

    Not ``collector_factory``: chDB runs one embedded server per process, on one data directory,
    so two collectors with stores of their own need two processes (as they would in production).
    """
    command = [sys.executable, "-c", "from agentwatch.cli.main import main; main()", "serve"]
    command += ["--data-dir", str(tmp_path / "downstream"), "--log-level", "warning"]
    for port in ("--otlp-grpc-port", "--otlp-http-port", "--sql-port", "--api-port"):
        command += [port, "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        ports = {}
        for line in process.stdout:  # the ready banner names every bound port
            name, _, address = line.strip().partition("  ")
            ports[name] = address.split()[0] if address else ""
            if name == "API":
                break
        assert "API" in ports, f"downstream collector did not start (exit {process.poll()})"
        yield CollectorProcess(
            grpc_endpoint=ports["OTLP gRPC"].strip(),
            http_url=ports["OTLP HTTP"].strip().removesuffix("/v1/traces"),
            api_url=ports["API"].strip().rstrip("/"),
        )
    finally:
        process.terminate()
        process.wait(30)


def sql_rows(api_url: str, sql: str, count: int, timeout: float = 10.0) -> list[dict]:
    """Rows of ``sql`` through a collector's /v1/sql, polled until there are ``count``."""
    rows: list[dict] = []

    def enough() -> bool:
        nonlocal rows
        response = requests.post(
            f"{api_url}/v1/sql", json={"query": sql, "format": "json"}, timeout=10
        )
        response.raise_for_status()
        rows = response.json()["data"]
        return len(rows) >= count

    wait_until(enough, timeout)
    return rows


SPAN_COLUMNS = (
    "TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, SpanAttributes, "
    "ResourceAttributes, StatusCode, Events.Name, Events.Attributes, Duration"
)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_spans_reach_a_second_collector_unchanged(
    collector_factory, downstream_collector, protocol
):
    downstream = downstream_collector
    endpoint = downstream.grpc_endpoint if protocol == "grpc" else downstream.http_url
    with collector_factory(forward={"endpoint": endpoint, "protocol": protocol}) as upstream:
        created = InMemorySpanExporter()
        acks = AckRecorder(sdk_exporter(protocol, upstream))
        with tracer_to(created, acks) as tracer:
            with tracer.start_as_current_span("agent.run", attributes={"gen_ai.agent.name": "a"}):
                with tracer.start_as_current_span(
                    "chat", attributes={"gen_ai.request.model": "gpt-x", "n": 3}
                ) as chat:
                    chat.add_event("prompt", {"text": "hi"})
                with tracer.start_as_current_span("tool", attributes={"gen_ai.tool.name": "ls"}):
                    pass
        assert acks.results == [SpanExportResult.SUCCESS] * 3

        sql = f"SELECT {SPAN_COLUMNS} FROM otel_traces ORDER BY SpanId"
        stored_upstream = sql_rows(upstream.api_url, sql, 3)
        stored_downstream = sql_rows(downstream.api_url, sql, 3)
        assert wait_until(lambda: sent(upstream) == 3)
        time.sleep(0.3)  # room for a duplicate to show up
        assert len(sql_rows(downstream.api_url, sql, 3)) == 3

    expected_ids = sorted(
        (f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}")
        for s in created.get_finished_spans()
    )
    assert sorted((r["TraceId"], r["SpanId"]) for r in stored_downstream) == expected_ids
    assert stored_downstream == stored_upstream  # same spans, same attributes, nothing lost
    chat_row = next(r for r in stored_downstream if r["SpanName"] == "chat")
    assert chat_row["SpanAttributes"]["gen_ai.request.model"] == "gpt-x"
    assert chat_row["Events.Name"] == ["prompt"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forwarded_bytes_and_headers_are_what_was_received(collector_factory, side_loop, protocol):
    with scripted_downstream(side_loop, protocol, []) as downstream:
        forward = {
            "endpoint": endpoint_of(downstream),
            "protocol": protocol,
            "headers": {"X-Tenant-Token": "secret"},
        }
        with collector_factory(forward=forward) as upstream:
            body = otlp_request(3).SerializeToString()
            post_otlp(upstream, body)
            assert wait_until(lambda: len(downstream.attempts) == 1)
    _, received, headers = downstream.attempts[0]
    assert received == body
    assert {k.lower(): v for k, v in headers.items()}["x-tenant-token"] == "secret"


# --- retries and drops ---------------------------------------------------------------------------


def test_http_503_with_retry_after_is_retried_then_delivered_once(collector_factory, side_loop):
    with scripted_downstream(
        side_loop, "http/protobuf", [(503, {"Retry-After": "1"})]
    ) as downstream:
        forward = {"endpoint": downstream.url, "protocol": "http/protobuf"}
        with collector_factory(forward=forward) as upstream:
            body = otlp_request().SerializeToString()
            post_otlp(upstream, body)
            assert wait_until(lambda: sent(upstream) == 1)
            assert metric(upstream, "agentwatch_forward_retries_total") == 1
            assert metric(upstream, "agentwatch_forward_requests_dropped_total") == 0
    # exactly two attempts (the refused one and the delivery), both the same bytes
    assert [attempt[1] for attempt in downstream.attempts] == [body, body]
    first, second = downstream.attempts[0][0], downstream.attempts[1][0]
    assert second - first >= 0.9  # Retry-After: 1 was waited for


def test_grpc_unavailable_with_retry_info_is_retried_then_delivered_once(
    collector_factory, side_loop
):
    script = [(grpc.StatusCode.UNAVAILABLE, 1)]
    with scripted_downstream(side_loop, "grpc", script) as downstream:
        with collector_factory(
            forward={"endpoint": downstream.endpoint, "protocol": "grpc"}
        ) as upstream:
            body = otlp_request().SerializeToString()
            post_otlp(upstream, body)
            assert wait_until(lambda: sent(upstream) == 1)
    assert [attempt[1] for attempt in downstream.attempts] == [body, body]
    assert downstream.attempts[1][0] - downstream.attempts[0][0] >= 0.9  # RetryInfo honoured


@pytest.mark.parametrize(
    ("protocol", "answer", "reason"),
    [
        ("http/protobuf", (400, {}), "rejected"),
        ("http/protobuf", (413, {}), "rejected"),
        ("grpc", (grpc.StatusCode.INVALID_ARGUMENT, None), "rejected"),
        # RESOURCE_EXHAUSTED without RetryInfo may be permanent (a quota): not retried
        ("grpc", (grpc.StatusCode.RESOURCE_EXHAUSTED, None), "rejected"),
        # the downstream asks for a longer pause than max_retry_time_s allows: give up at once
        ("http/protobuf", (503, {"Retry-After": "30"}), "retries_exhausted"),
        ("grpc", (grpc.StatusCode.UNAVAILABLE, 30), "retries_exhausted"),
    ],
)
def test_unrecoverable_answers_drop_after_one_attempt(
    collector_factory, side_loop, protocol, answer, reason
):
    with scripted_downstream(side_loop, protocol, [answer]) as downstream:
        forward = {"endpoint": endpoint_of(downstream), "protocol": protocol, "max_retry_time_s": 5}
        with collector_factory(forward=forward) as upstream:
            post_otlp(upstream, otlp_request().SerializeToString())
            assert wait_until(lambda: dropped(upstream, reason) == 1)
            time.sleep(0.5)  # room for a wrong retry to show up
            assert sent(upstream) == 0
    assert len(downstream.attempts) == 1


# --- a slow or dead downstream never slows ingest ------------------------------------------------


@contextmanager
def dead_endpoint(kind: str, protocol: str):
    """``hangs``: accepts TCP connections and never answers. ``refused``: nothing listens."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if kind == "hangs":
        sock.listen(128)  # the kernel completes handshakes; nobody ever reads or replies
    else:
        sock.close()
    try:
        yield f"127.0.0.1:{port}" if protocol == "grpc" else f"http://127.0.0.1:{port}"
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["hangs", "refused"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dead_downstream_does_not_slow_ingest(collector_factory, protocol, kind):
    n_requests, queue_max, senders, timeout_s = 20, 2, 2, 1.0
    with dead_endpoint(kind, protocol) as endpoint:
        forward = {
            "endpoint": endpoint,
            "protocol": protocol,
            "queue_max_requests": queue_max,
            "senders": senders,
            "timeout_s": timeout_s,
            "max_retry_time_s": 120,  # shutdown must not wait for these retries
        }
        with collector_factory(forward=forward, **FAST_COMMITS) as upstream:
            acks = AckRecorder(sdk_exporter(protocol, upstream))
            started = time.monotonic()
            with tracer_to(acks) as tracer:
                for i in range(n_requests):
                    tracer.start_span(f"span-{i}").end()  # one export request each
            ingest_s = time.monotonic() - started

            # every export acknowledged, promptly (waiting on the downstream even once per request
            # would take n_requests * timeout_s), and every span stored
            assert acks.results == [SpanExportResult.SUCCESS] * n_requests
            assert ingest_s < n_requests * timeout_s / 2, f"ingest took {ingest_s:.1f}s"
            rows = upstream.wait_for_rows("SELECT SpanId FROM otel_traces", n_requests)
            assert len(rows) == n_requests

            # what could not be queued is dropped and visible in /metrics
            assert dropped(upstream, "queue_full") >= n_requests - queue_max - senders
            assert sent(upstream) == 0
            stopping = time.monotonic()
        stop_s = time.monotonic() - stopping

    # stopping drains for at most ~timeout_s and interrupts backoff sleeps
    assert stop_s < timeout_s + 8, f"stop took {stop_s:.1f}s"
    registry = upstream.collector.metrics.registry
    drops = {
        reason: registry.get_sample_value(
            "agentwatch_forward_requests_dropped_total", {"reason": reason}
        )
        or 0
        for reason in ("queue_full", "shutdown", "retries_exhausted", "rejected", "error")
    }
    assert drops["shutdown"] >= 1
    assert drops["rejected"] == drops["error"] == 0
    # every request is accounted for exactly once
    assert sum(drops.values()) == n_requests


def test_stopping_delivers_what_was_already_queued(collector_factory, side_loop):
    """A restart must not lose requests the collector already accepted, if the downstream is up."""
    with scripted_downstream(side_loop, "http/protobuf", [], delay_s=0.2) as downstream:
        forward = {
            "endpoint": downstream.url,
            "protocol": "http/protobuf",
            "senders": 1,  # one at a time, so most requests are still queued at stop
            "timeout_s": 5,
        }
        with collector_factory(forward=forward) as upstream:
            bodies = [otlp_request(1).SerializeToString() for _ in range(6)]
            for body in bodies:
                post_otlp(upstream, body)
    assert sorted(attempt[1] for attempt in downstream.attempts) == sorted(bodies)
    registry = upstream.collector.metrics.registry
    assert registry.get_sample_value("agentwatch_forward_requests_sent_total") == 6


def test_forward_queue_is_bounded_in_bytes_too(collector_factory):
    """Requests of up to 16 MiB each: the queue's memory is bounded by queue_max_mib as well."""
    with dead_endpoint("hangs", "http/protobuf") as endpoint:
        forward = {
            "endpoint": endpoint,
            "queue_max_requests": 1000,
            "queue_max_mib": 1,
            "senders": 1,
            "timeout_s": 1.0,
        }
        with collector_factory(forward=forward, **FAST_COMMITS) as upstream:
            big = otlp_request(1)
            big.resource_spans[0].resource.attributes.add(key="padding").value.string_value = (
                "x" * 400_000
            )
            for _ in range(5):
                post_otlp(upstream, big.SerializeToString())
            # one request in flight (hung), two fit in 1 MiB, the rest are dropped
            assert wait_until(lambda: dropped(upstream, "queue_full") >= 2)
