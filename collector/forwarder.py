"""Processor mode: forward every received OTLP trace request, byte for byte, to a downstream.

The pipeline hands each received ``ExportTraceServiceRequest`` (serialised) to ``submit``. A bounded
queue holds it; a few sender tasks deliver it over gRPC or OTLP/HTTP and retry what the OTLP
specification calls retryable, with jittered exponential backoff but never sooner than the
downstream asks (``Retry-After``, gRPC ``RetryInfo``), for at most ``max_retry_time_s`` per request.
This is the OpenTelemetry Collector's exporterhelper "sending queue + retry", in small.

What it must not do: slow down, block or fail ingest. ``submit`` never waits and never raises; a
full queue, a downstream that refuses or stays down, and shutdown all end in a dropped request,
counted in ``agentwatch_forward_requests_dropped_total{reason}`` (``queue_full``, ``rejected``,
``retries_exhausted``, ``shutdown``, ``error``). Nor does it change, re-encode, split or merge a
request. Every submitted request ends up counted exactly once: sent or dropped with a reason.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse, urlsplit

import aiohttp
import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from collector.metrics import Metrics
from collector.retry import (
    OTLP_RETRYABLE_GRPC_CODES,
    Backoff,
    otlp_http_retryable,
    retry_after_s,
    sleep_unless,
)


class ForwardConfig(BaseModel):
    """Processor mode: every received request is also sent, unchanged, to a downstream OTLP endpoint
    (the ``forward:`` section of the config; the component owns its typed config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # protocol comes before endpoint so that the endpoint check can see it
    protocol: Literal["grpc", "http/protobuf"] = "http/protobuf"
    endpoint: str = Field(description="e.g. http://collector:4318 (HTTP) or collector:4317 (gRPC)")
    headers: dict[str, str] = Field(default_factory=dict)
    compression: Literal["gzip", "none"] = "gzip"
    queue_max_requests: int = Field(default=1000, ge=1)
    queue_max_mib: int = Field(default=64, ge=1, description="memory bound of the forwarding queue")
    senders: int = Field(default=4, ge=1, le=64, description="requests in flight at once")
    timeout_s: float = Field(default=10.0, gt=0)
    max_retry_time_s: float = Field(default=60.0, ge=0)
    insecure: bool = Field(default=True, description="gRPC endpoint without a scheme: no TLS")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        protocol = info.data.get("protocol")  # absent when the protocol itself was invalid
        if protocol == "http/protobuf":
            parsed = urlparse(value)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError("expected http(s)://host[:port][/path] for protocol http/protobuf")
        elif protocol == "grpc":
            parsed = urlsplit(value if "://" in value else "//" + value)
            try:
                port = parsed.port
            except ValueError:
                port = None
            if parsed.scheme not in ("", "http", "https") or not parsed.hostname or not port:
                raise ValueError("expected host:port or http(s)://host:port for protocol grpc")
        return value


log = logging.getLogger("agentwatch.forward")

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

BACKOFF = Backoff(initial_s=1.0, max_s=30.0)
WARNING_INTERVAL_S = 10.0  # a dead downstream must not flood the log: one warning per reason


@dataclass(frozen=True)
class Answer:
    """What one delivery attempt came to."""

    outcome: Literal["sent", "retry", "rejected"]
    detail: str = ""
    retry_after_s: float | None = None  # the delay the downstream asked for, if it asked


class Forwarder:
    def __init__(self, config: ForwardConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=config.queue_max_requests)
        self._queued_bytes = 0  # bounded by queue_max_mib too: requests can be up to 16 MiB each
        self._max_queued_bytes = config.queue_max_mib * 1024 * 1024
        self._stopping = asyncio.Event()
        self._senders: list[asyncio.Task] = []
        self._transport: GrpcTransport | HttpTransport | None = None
        self._last_warning: dict[str, float] = {}

    async def start(self) -> None:
        transport = GrpcTransport if self.config.protocol == "grpc" else HttpTransport
        self._transport = transport(self.config)
        self._senders = [
            asyncio.create_task(self._send_loop(), name=f"forward-sender-{i}")
            for i in range(self.config.senders)
        ]
        log.info("forwarding every request to %s (%s)", self.config.endpoint, self.config.protocol)

    def submit(self, request: bytes) -> None:
        """Queue a serialised request for forwarding. Never waits; when full, drops and counts."""
        if self._stopping.is_set():
            self._drop("shutdown", "the collector is stopping")
            return
        if self._queued_bytes + len(request) > self._max_queued_bytes:
            self._drop("queue_full", f"{self.config.queue_max_mib} MiB already waiting")
            return
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            self._drop("queue_full", f"{self._queue.maxsize} requests already waiting")
            return
        self._queued_bytes += len(request)
        self.metrics.forward_queue.set(self._queue.qsize())

    async def close(self) -> None:
        """Drain for at most ``timeout_s``, then drop (and count) whatever is left."""
        # No new retries from here on and backoff sleeps end now; queued requests still get one try.
        self._stopping.set()
        try:
            await asyncio.wait_for(self._queue.join(), self.config.timeout_s)
        except TimeoutError:
            pass
        for sender in self._senders:
            sender.cancel()  # a request in flight is counted as dropped by its sender
        await asyncio.gather(*self._senders, return_exceptions=True)
        while not self._queue.empty():
            self._queued_bytes -= len(self._queue.get_nowait())
            self._drop("shutdown", "still queued when the collector stopped")
        self.metrics.forward_queue.set(0)
        if self._transport is not None:
            await self._transport.close()

    async def _send_loop(self) -> None:
        while True:
            request = await self._queue.get()
            self._queued_bytes -= len(request)
            self.metrics.forward_queue.set(self._queue.qsize())
            try:
                await self._deliver(request)
            except asyncio.CancelledError:
                self._drop("shutdown", "still in flight when the collector stopped")
                raise
            except Exception:  # a bug here must not kill the sender and silently stop forwarding
                log.exception("forwarding a request failed unexpectedly")
                self._drop("error", "unexpected error (logged)")
            finally:
                self._queue.task_done()

    async def _deliver(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.config.max_retry_time_s
        payload = await self._transport.prepare(request)  # compressed once, not per attempt
        attempts = 0
        while True:
            answer = await self._transport.send(payload)
            if answer.outcome == "sent":
                self.metrics.forward_sent.inc()
                return
            if answer.outcome == "rejected":
                self._drop("rejected", answer.detail)
                return
            if self._stopping.is_set():
                self._drop("shutdown", answer.detail)
                return
            attempts += 1
            delay = BACKOFF.delay_s(attempts, answer.retry_after_s)  # never sooner than asked
            if loop.time() + delay > give_up_at:
                self._drop("retries_exhausted", answer.detail)
                return
            self.metrics.forward_retries.inc()
            if await sleep_unless(self._stopping, delay):
                self._drop("shutdown", answer.detail)
                return

    def _drop(self, reason: str, detail: str) -> None:
        self.metrics.forward_dropped.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_warning.get(reason, float("-inf")) >= WARNING_INTERVAL_S:
            self._last_warning[reason] = now
            log.warning(
                "forward to %s: dropped a request (%s): %s; all drops are counted in "
                "agentwatch_forward_requests_dropped_total",
                self.config.endpoint,
                reason,
                detail,
            )


class GrpcTransport:
    """``TraceService/Export`` with the request's bytes as they are (no generated stub)."""

    def __init__(self, config: ForwardConfig) -> None:
        target, use_tls = grpc_target(config.endpoint, config.insecure)
        if use_tls:
            self._channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
        else:
            self._channel = grpc.aio.insecure_channel(target)
        self._export = self._channel.unary_unary(EXPORT_METHOD)  # no serializers: bytes in and out
        self._metadata = tuple((key.lower(), value) for key, value in config.headers.items())
        gzip_on = config.compression == "gzip"
        self._compression = grpc.Compression.Gzip if gzip_on else grpc.Compression.NoCompression
        self._timeout_s = config.timeout_s

    async def prepare(self, request: bytes) -> bytes:
        return request  # gRPC compresses on the wire itself

    async def send(self, payload: bytes) -> Answer:
        try:
            await self._export(
                payload,
                timeout=self._timeout_s,
                metadata=self._metadata,
                compression=self._compression,
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            detail = f"gRPC {code.name}: {exc.details()}"
            retry_after_s = retry_info_delay(exc.trailing_metadata())
            if code in OTLP_RETRYABLE_GRPC_CODES or (
                code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after_s is not None
            ):
                return Answer("retry", detail, retry_after_s)
            return Answer("rejected", detail)
        return Answer("sent")

    async def close(self) -> None:
        await self._channel.close(grace=None)


class HttpTransport:
    """OTLP/HTTP: ``POST`` of the protobuf body, gzip-compressed unless configured otherwise."""

    def __init__(self, config: ForwardConfig) -> None:
        self._url = traces_url(config.endpoint)
        self._timeout_s = config.timeout_s
        self._gzip = config.compression == "gzip"
        headers = {**config.headers, "Content-Type": "application/x-protobuf"}
        if self._gzip:
            headers["Content-Encoding"] = "gzip"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=config.timeout_s)
        )

    async def prepare(self, request: bytes) -> bytes:
        if not self._gzip:
            return request
        # zlib releases the GIL: compressing a large request on a thread keeps ingest responsive
        return await asyncio.to_thread(gzip.compress, request, 6)

    async def send(self, payload: bytes) -> Answer:
        try:
            async with self._session.post(self._url, data=payload) as response:
                body = await response.read()  # read to the end so the connection can be reused
        except TimeoutError:
            return Answer("retry", f"no answer within {self._timeout_s}s")
        except (aiohttp.ClientError, OSError) as exc:
            return Answer("retry", f"{type(exc).__name__}: {exc}".rstrip(": "))
        if 200 <= response.status < 300:
            return Answer("sent")
        detail = f"HTTP {response.status}: {status_message(body)}".rstrip(": ")
        if otlp_http_retryable(response.status):
            return Answer("retry", detail, retry_after_s(response.headers.get("Retry-After")))
        return Answer("rejected", detail)

    async def close(self) -> None:
        await self._session.close()


def traces_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/traces``; an endpoint with a path is kept.

    >>> traces_url("http://collector:4318/")
    'http://collector:4318/v1/traces'
    >>> traces_url("https://vendor.example/otlp/v1/traces")
    'https://vendor.example/otlp/v1/traces'
    """
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def grpc_target(endpoint: str, insecure: bool) -> tuple[str, bool]:
    """The channel target and whether to use TLS: https:// says yes, http:// no, else ``insecure``.

    >>> grpc_target("https://collector:4317", insecure=True)
    ('collector:4317', True)
    >>> grpc_target("collector:4317", insecure=True)
    ('collector:4317', False)
    """
    if "://" in endpoint:
        parsed = urlsplit(endpoint)
        return parsed.netloc, parsed.scheme == "https"
    return endpoint, not insecure


def retry_info_delay(trailing_metadata) -> float | None:
    """The ``RetryInfo`` delay carried in a gRPC error's ``grpc-status-details-bin``, if any."""
    for key, value in trailing_metadata or ():
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.ToTimedelta().total_seconds()
    return None


def status_message(body: bytes) -> str:
    """The message of an OTLP/HTTP error body (a ``google.rpc.Status``), or '' if there is none."""
    try:
        return status_pb2.Status.FromString(body).message
    except DecodeError:
        return ""
