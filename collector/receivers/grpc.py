"""OTLP/gRPC receiver: ``TraceService/Export`` plus the standard gRPC health service.

Requests are taken as raw bytes (no generated servicer) so that decoding, and the reasons a
payload is refused, stay ours. Status codes follow the OTLP specification: bad data is
INVALID_ARGUMENT (never retried); overload or a failing store is UNAVAILABLE with a RetryInfo
delay; some bad spans is OK with ``partial_success``.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from collector.consumer import PermanentError, RetryableError
from collector.decode import PayloadError
from collector.pipeline import Pipeline
from collector.receivers import Unauthenticated, export_response, sender_tenant

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class GrpcReceiver:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        max_recv_msg_size_mib: int,
        max_concurrent_requests: int,
        tokens=None,
    ) -> None:
        self._pipeline = pipeline
        self._tokens = tokens
        size = max_recv_msg_size_mib * 1024 * 1024
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=max_concurrent_requests,
        )
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # bytes in, bytes out
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),)
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(address)
        await self._server.start()
        for name in ("", SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)

    async def _export(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metrics = self._pipeline.metrics
        try:
            metadata = dict(context.invocation_metadata() or ())
            tenant = sender_tenant(self._tokens, metadata.get("authorization"))
        except Unauthenticated as exc:
            metrics.requests.labels("grpc", "unauthenticated").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        try:
            rejections = await self._pipeline.export(body, "protobuf", "grpc", tenant)
        except (PayloadError, PermanentError) as exc:
            metrics.requests.labels("grpc", "invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except RetryableError as exc:
            metrics.requests.labels("grpc", "retryable").inc()
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, str(exc), trailing_metadata=_retry_info(exc)
            )
        response = export_response(rejections, metrics, "grpc")
        return response.SerializeToString()


def _retry_info(exc: RetryableError) -> tuple:
    """RetryInfo both as a status detail (gRPC richer errors) and as the bare key some SDKs read."""
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=exc.retry_after_s))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=str(exc))
    status.details.add().Pack(info)
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("google.rpc.retryinfo-bin", info.SerializeToString()),
    )
