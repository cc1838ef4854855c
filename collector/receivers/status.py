"""How a refused export is answered, on both OTLP transports: one table, after the OTLP
specification's "Failures" sections (gRPC and HTTP).

| refusal | gRPC | HTTP | retry? |
|---|---|---|---|
| ``PermanentError`` (``PayloadError`` included): bad data | INVALID_ARGUMENT | 400 | never |
| ``RetryableError`` (queue full, store down): nothing kept | UNAVAILABLE + RetryInfo | 503 + Retry-After | yes |
| ``Unauthenticated``: no or wrong ingest token | UNAUTHENTICATED | 401 | no |
| too large once decompressed | RESOURCE_EXHAUSTED (gRPC's own limit) | 413 | no |
| unsupported Content-Type / Content-Encoding | — | 415 | no |
| too many requests at once | (gRPC's own limit) | 503 + Retry-After | yes |

An HTTP error body is a ``google.rpc.Status`` whose ``code`` is the gRPC code of the same row.

>>> from collector.consumer import Overloaded
>>> answer = refusal(Overloaded("write queue full", retry_after_s=2))
>>> answer.outcome, answer.grpc_code.name, answer.http_status, answer.retry_after_s
('retryable', 'UNAVAILABLE', 503, 2)
>>> refusal(PayloadError("not OTLP")).http_status, too_large("x").rpc_code
(400, 8)
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from collector.consumer import PayloadError, PermanentError, RetryableError
from collector.receivers import Unauthenticated


@dataclass(frozen=True, slots=True)
class Refusal:
    outcome: str  # the ``agentwatch_requests_total`` label: invalid | retryable | unauthenticated
    grpc_code: grpc.StatusCode
    http_status: int
    message: str
    retry_after_s: int | None = None

    @property
    def rpc_code(self) -> int:
        """The ``google.rpc.Code`` number (the same numbers as gRPC's status codes)."""
        return self.grpc_code.value[0]


def refusal(exc: Exception) -> Refusal:
    """The answer to an export the pipeline (or the token check) refused with ``exc``."""
    if isinstance(exc, Unauthenticated):
        return Refusal("unauthenticated", grpc.StatusCode.UNAUTHENTICATED, 401, str(exc))
    if isinstance(exc, PermanentError):
        return Refusal("invalid", grpc.StatusCode.INVALID_ARGUMENT, 400, str(exc))
    if isinstance(exc, RetryableError):
        return Refusal("retryable", grpc.StatusCode.UNAVAILABLE, 503, str(exc), exc.retry_after_s)
    raise TypeError(f"not a refusal: {exc!r}")


#: What ``refusal`` maps; receivers catch exactly these.
REFUSALS = (Unauthenticated, PermanentError, RetryableError)


def unreadable(message: str) -> Refusal:
    """An HTTP body that cannot be read as sent (e.g. not gzip although it says so)."""
    return refusal(PayloadError(message))


def too_large(message: str) -> Refusal:
    return Refusal("invalid", grpc.StatusCode.RESOURCE_EXHAUSTED, 413, message)


def unsupported(message: str) -> Refusal:
    return Refusal("invalid", grpc.StatusCode.INVALID_ARGUMENT, 415, message)


def busy(message: str, retry_after_s: int = 1) -> Refusal:
    return Refusal("retryable", grpc.StatusCode.UNAVAILABLE, 503, message, retry_after_s)
