"""Retries, one way for every sender: the store writer, the OTLP forwarder and the pager.

Three things every retrying sender needs, in one place so they cannot drift apart:

- **When to retry**: which answers a retry can help. Two contracts, named here side by side:
  the OTLP specification's (``otlp_http_retryable``, ``OTLP_RETRYABLE_GRPC_CODES``) for OTLP
  downstreams, and the common HTTP one (``http_retryable``: network errors, 408, 429, 5xx) for
  webhooks and pagers, whose 500 is usually a passing fault.
- **How long the server asked**: ``retry_after_s`` reads ``Retry-After`` (delta-seconds or an
  HTTP date); gRPC's ``RetryInfo`` is read by the forwarder, which speaks gRPC.
- **How long to wait**: ``Backoff``: exponential from ``initial_s`` doubling up to ``max_s``, each
  delay drawn uniformly from [d/2, d] ("equal jitter": senders do not retry in lockstep, and no
  delay exceeds ``max_s``), and never sooner than the server asked (so ``Retry-After: 0`` cannot
  turn into a busy loop). The caller bounds the whole by its own deadline (``give_up_after_s``,
  ``max_retry_time_s``): a pager's next attempt time is stored in its outbox so that a restart
  keeps it, which is why the delay is computed here rather than slept inside a retry decorator.

>>> backoff = Backoff(initial_s=1, max_s=8)
>>> [backoff.ceiling_s(n) for n in range(1, 6)]
[1, 2, 4, 8, 8]
>>> backoff.delay_s(2, rand=lambda: 0.0), backoff.delay_s(2, rand=lambda: 1.0)
(1.0, 2.0)
>>> backoff.delay_s(1, asked_s=5.0)  # the server's delay wins when it is longer
5.0
>>> retry_after_s("3"), retry_after_s("soon"), retry_after_s(None)
(3.0, None, None)
>>> http_retryable(503), http_retryable(404), otlp_http_retryable(500)
(True, False, False)
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

# OTLP/HTTP: "the client SHOULD retry on 429, 502, 503 and 504" (the OTLP specification,
# "Failures" under OTLP/HTTP); any other 4xx/5xx is permanent for the request.
OTLP_RETRYABLE_HTTP_STATUSES = frozenset({429, 502, 503, 504})
# OTLP/gRPC: the specification's table of retryable codes. RESOURCE_EXHAUSTED is retryable only
# with RetryInfo (without it the limit may be a quota, which retrying cannot help): the caller
# checks that, since only it has the trailers.
OTLP_RETRYABLE_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def otlp_http_retryable(status: int) -> bool:
    """Can a retry help this OTLP/HTTP answer? (The OTLP specification's list.)"""
    return status in OTLP_RETRYABLE_HTTP_STATUSES


def http_retryable(status: int) -> bool:
    """Can a retry help this answer of a webhook or pager API? 408 and 429 say "later", 5xx is the
    receiver's fault; any other 4xx means the request itself is wrong and is never retried."""
    return status in (408, 429) or status >= 500


def retry_after_s(value: str | None, now: Callable[[], datetime] | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110 10.2.3);
    None if absent or unreadable. A date in the past is 0.

    >>> retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT",
    ...               now=lambda: datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC))
    30.0
    >>> retry_after_s("-1"), retry_after_s("1.5")
    (None, None)
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or _utc_now)()).total_seconds())


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential backoff; ``attempt`` counts the failed tries so far (1 after the first)."""

    initial_s: float = 1.0
    max_s: float = 30.0

    def ceiling_s(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** min(max(attempt, 1) - 1, 62))

    def delay_s(
        self,
        attempt: int,
        asked_s: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait before the next try: from [ceiling/2, ceiling], or what the server
        asked (``asked_s``) if that is longer."""
        ceiling = self.ceiling_s(attempt)
        delay = ceiling / 2 + rand() * ceiling / 2
        return delay if asked_s is None else max(delay, asked_s)


async def sleep_unless(stopping: asyncio.Event, delay_s: float) -> bool:
    """Sleep ``delay_s``, or less if ``stopping`` is set meanwhile; True if it was (a shutdown must
    not wait for a backoff to run out)."""
    try:
        await asyncio.wait_for(stopping.wait(), delay_s)
    except TimeoutError:
        return False
    return True
