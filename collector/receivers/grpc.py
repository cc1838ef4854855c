"""OTLP/gRPC receiver: ``TraceService/Export`` plus the standard gRPC health service.

Requests are taken as raw bytes (no generated servicer) so that decoding, and the reasons a
payload is refused, stay ours. Refusals are answered as ``collector.receivers.status`` says (bad
data INVALID_ARGUMENT, overload or a failing store UNAVAILABLE with a RetryInfo delay); some bad
spans is OK with ``partial_success``.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from collector.pipeline import Pipeline
from collector.receivers import export_response, log_refused, sender_tenant
from collector.receivers.status import REFUSALS, Refusal, refusal

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
            rejections = await self._pipeline.export(body, "protobuf", "grpc", tenant)
        except REFUSALS as exc:
            answer = refusal(exc)
            metrics.requests.labels("grpc", answer.outcome).inc()
            log_refused("grpc", answer.outcome, answer.message)
            trailers = _retry_info(answer) if answer.retry_after_s is not None else ()
            await context.abort(answer.grpc_code, answer.message, trailing_metadata=trailers)
        response = export_response(rejections, metrics, "grpc")
        return response.SerializeToString()


def _retry_info(answer: Refusal) -> tuple:
    """RetryInfo both as a status detail (gRPC richer errors) and as the bare key some SDKs read."""
    delay = duration_pb2.Duration(seconds=answer.retry_after_s)
    info = error_details_pb2.RetryInfo(retry_delay=delay)
    status = status_pb2.Status(code=answer.rpc_code, message=answer.message)
    status.details.add().Pack(info)
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("google.rpc.retryinfo-bin", info.SerializeToString()),
    )
