"""OTLP/HTTP receiver: ``POST /v1/traces`` with protobuf or JSON bodies, gzip accepted.

Responses follow the OTLP/HTTP specification: 200 with ``ExportTraceServiceResponse`` (partial
success included); a refusal as ``collector.receivers.status`` says (400 bad data, its compression
included; 401; 413 too large once decompressed; 415 unknown content type or encoding; 503 with
``Retry-After`` when the collector cannot take the data now), with a ``google.rpc.Status`` body.
The response body uses the request's encoding.
"""

from __future__ import annotations

from aiohttp import web
from google.protobuf import json_format
from google.rpc import status_pb2

from collector.pipeline import Pipeline
from collector.receivers import Unauthenticated, export_response, log_refused, sender_tenant
from collector.receivers.status import (
    REFUSALS,
    Refusal,
    busy,
    refusal,
    too_large,
    unreadable,
    unsupported,
)

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
        content_type = request.content_type
        if content_type not in (PROTOBUF, JSON):
            message = f"unsupported Content-Type {content_type!r}; send {PROTOBUF} or {JSON}"
            return self._refuse(unsupported(message), JSON)
        try:  # before reading a body
            tenant = sender_tenant(self._tokens, request.headers.get("Authorization"))
        except Unauthenticated as exc:
            return self._refuse(refusal(exc), content_type)
        encoding_header = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding_header not in _CONTENT_ENCODINGS:
            message = f"unsupported Content-Encoding {encoding_header!r}; send gzip"
            return self._refuse(unsupported(message), content_type)
        if self._in_flight >= self._max_in_flight:
            message = "too many requests at once (max_concurrent_requests)"
            return self._refuse(busy(message), content_type)
        self._in_flight += 1
        try:
            return await self._read_and_export(request, content_type, tenant)
        finally:
            self._in_flight -= 1

    async def _read_and_export(self, request, content_type: str, tenant) -> web.Response:
        try:
            body = await request.read()  # decompressed (gzip, deflate) and limited after that
        except web.HTTPRequestEntityTooLarge as exc:
            return self._refuse(too_large(f"request body too large: {exc.text}"), content_type)
        except web.RequestPayloadError as exc:  # e.g. not gzip although Content-Encoding says so
            message = f"request body cannot be read: {exc.__cause__ or exc}"
            return self._refuse(unreadable(message), content_type)
        encoding = "protobuf" if content_type == PROTOBUF else "json"
        try:
            rejections = await self._pipeline.export(body, encoding, "http", tenant)
        except REFUSALS as exc:
            return self._refuse(refusal(exc), content_type)
        message = export_response(rejections, self._pipeline.metrics, "http")
        return _encode(200, content_type, message)

    def _refuse(self, answer: Refusal, content_type: str) -> web.Response:
        self._pipeline.metrics.requests.labels("http", answer.outcome).inc()
        log_refused("http", answer.outcome, answer.message)
        status = status_pb2.Status(code=answer.rpc_code, message=answer.message)
        response = _encode(answer.http_status, content_type, status)
        if answer.retry_after_s is not None:
            response.headers["Retry-After"] = str(answer.retry_after_s)
        return response


def _encode(http_status: int, content_type: str, message) -> web.Response:
    if content_type == PROTOBUF:
        return web.Response(
            status=http_status, body=message.SerializeToString(), content_type=PROTOBUF
        )
    return web.Response(
        status=http_status, text=json_format.MessageToJson(message, indent=None), content_type=JSON
    )
