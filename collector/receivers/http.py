"""OTLP/HTTP receiver: ``POST /v1/traces`` with protobuf or JSON bodies, gzip accepted.

Responses follow the OTLP/HTTP specification: 200 with ``ExportTraceServiceResponse`` (partial
success included), 400 with a ``google.rpc.Status`` body for bad data (its compression included),
413 for a body too large once decompressed, 415 for an unknown content type, 503 with
``Retry-After`` when the collector cannot take the data now. The response body uses the request's
encoding.
"""

from __future__ import annotations

from aiohttp import web
from google.protobuf import json_format
from google.rpc import status_pb2

from collector.consumer import PermanentError, RetryableError
from collector.decode import PayloadError
from collector.pipeline import Pipeline
from collector.receivers import Unauthenticated, export_response, sender_tenant

PROTOBUF = "application/x-protobuf"
_CONTENT_ENCODINGS = ("", "identity", "gzip", "deflate")  # what aiohttp undoes on every install
JSON = "application/json"


def build_otlp_http_app(
    pipeline: Pipeline, max_body_bytes: int, tokens=None, max_concurrent_requests: int = 64
) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes)
    receiver = _Receiver(pipeline, tokens, max_concurrent_requests)
    app.router.add_post("/v1/traces", receiver.traces)
    return app


class _Receiver:
    def __init__(self, pipeline: Pipeline, tokens=None, max_concurrent_requests: int = 64) -> None:
        self._pipeline = pipeline
        self._tokens = tokens
        # as gRPC's maximum_concurrent_rpcs: bodies being read and decoded at once
        self._max_in_flight = max_concurrent_requests
        self._in_flight = 0

    async def traces(self, request: web.Request) -> web.Response:
        metrics = self._pipeline.metrics
        content_type = request.content_type
        if content_type not in (PROTOBUF, JSON):
            metrics.requests.labels("http", "invalid").inc()
            return _status(
                415, JSON, f"unsupported Content-Type {content_type!r}; send {PROTOBUF} or {JSON}"
            )
        try:  # before reading a body
            tenant = sender_tenant(self._tokens, request.headers.get("Authorization"))
        except Unauthenticated as exc:
            metrics.requests.labels("http", "unauthenticated").inc()
            return _status(401, content_type, str(exc))
        encoding_header = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding_header not in _CONTENT_ENCODINGS:
            metrics.requests.labels("http", "invalid").inc()
            return _status(
                415, content_type, f"unsupported Content-Encoding {encoding_header!r}; send gzip"
            )
        if self._in_flight >= self._max_in_flight:
            metrics.requests.labels("http", "retryable").inc()
            response = _status(
                503, content_type, "too many requests at once (max_concurrent_requests)"
            )
            response.headers["Retry-After"] = "1"
            return response
        self._in_flight += 1
        try:
            return await self._read_and_export(request, content_type, tenant)
        finally:
            self._in_flight -= 1

    async def _read_and_export(self, request, content_type: str, tenant) -> web.Response:
        metrics = self._pipeline.metrics
        try:
            body = await request.read()  # decompressed (gzip, deflate) and limited after that
        except web.HTTPRequestEntityTooLarge as exc:
            metrics.requests.labels("http", "invalid").inc()
            return _status(413, content_type, f"request body too large: {exc.text}")
        except web.RequestPayloadError as exc:  # e.g. not gzip although Content-Encoding says so
            metrics.requests.labels("http", "invalid").inc()
            return _status(
                400, content_type, f"request body cannot be read: {exc.__cause__ or exc}"
            )
        encoding = "protobuf" if content_type == PROTOBUF else "json"
        try:
            rejections = await self._pipeline.export(body, encoding, "http", tenant)
        except (PayloadError, PermanentError) as exc:
            metrics.requests.labels("http", "invalid").inc()
            return _status(400, content_type, str(exc))
        except RetryableError as exc:
            metrics.requests.labels("http", "retryable").inc()
            response = _status(503, content_type, str(exc))
            response.headers["Retry-After"] = str(exc.retry_after_s)
            return response
        message = export_response(rejections, metrics, "http")
        return _encode(200, content_type, message)


def _status(http_status: int, content_type: str, message: str) -> web.Response:
    code = {400: 3, 401: 16, 413: 8, 415: 3, 503: 14}.get(http_status, 2)  # google.rpc.Code values
    return _encode(http_status, content_type, status_pb2.Status(code=code, message=message))


def _encode(http_status: int, content_type: str, message) -> web.Response:
    if content_type == PROTOBUF:
        return web.Response(
            status=http_status, body=message.SerializeToString(), content_type=PROTOBUF
        )
    return web.Response(
        status=http_status, text=json_format.MessageToJson(message, indent=None), content_type=JSON
    )
