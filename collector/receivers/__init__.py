"""OTLP receivers (gRPC and HTTP) and what they share: the success response."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from collector.metrics import Metrics
from collector.normalize import Rejections


def export_response(
    rejections: Rejections, metrics: Metrics, protocol: str
) -> ExportTraceServiceResponse:
    """OK, with ``partial_success`` when some spans were rejected, or stored with a warning
    (``rejected_spans`` 0 and a message, as OTLP allows); counted in /metrics by outcome (ok,
    warning, partial)."""
    response = ExportTraceServiceResponse()
    if rejections.messages and not rejections.count:  # warnings only
        response.partial_success.error_message = rejections.summary()
        metrics.requests.labels(protocol, "warning").inc()
    elif rejections.count:
        response.partial_success.rejected_spans = rejections.count
        response.partial_success.error_message = rejections.summary()
        metrics.requests.labels(protocol, "partial").inc()
    else:
        metrics.requests.labels(protocol, "ok").inc()
    return response
