"""OTLP receivers (gRPC and HTTP) and what they share: the success response, and who may send."""

from __future__ import annotations

import logging

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from collector.auth import ADMIN, INGEST, Tokens, bearer
from collector.consumer import Rejections
from collector.metrics import Metrics
from collector.ratelog import RateLimitedLog

#: spans refused or rejected: one line per protocol and outcome per minute (counts in /metrics)
REFUSED_LOG = RateLimitedLog(logging.getLogger("agentwatch.receivers"))


def log_refused(protocol: str, outcome: str, message: str) -> None:
    """The log line of a refused request (none of its spans stored), rate-limited."""
    REFUSED_LOG.log(
        logging.WARNING, (protocol, outcome), "OTLP/%s request refused (%s), no span stored: %s",
        protocol, outcome, message[:500],
    )  # fmt: skip


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
        REFUSED_LOG.log(
            logging.WARNING, (protocol, "partial"), "OTLP/%s: %d span(s) rejected, the rest stored: %s",
            protocol, rejections.count, rejections.summary()[:500],
        )  # fmt: skip
    else:
        metrics.requests.labels(protocol, "ok").inc()
    return response


class Unauthenticated(Exception):
    """The request carries no ingest token, or a wrong one, while the collector has some."""


def sender_tenant(tokens: Tokens | None, authorization: str | None) -> str | None:
    """The tenant a request's spans are stored as: its ingest token's, or None (the spans' own
    ``tenant.id``) for the admin token or while no ingest token is configured."""
    if tokens is None:
        return None
    found = tokens.check(bearer(authorization), (INGEST,), guarded_by=(INGEST,))
    if isinstance(found, str):
        raise Unauthenticated(
            f"{found}: send a tenant's ingest_token as 'Authorization: Bearer <token>'"
            " (OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token>)"
        )
    return None if found.role == ADMIN else found.tenant
