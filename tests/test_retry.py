"""collector.retry: the one backoff, Retry-After reading and retryable-status rules that the
writer, the forwarder and the pager share."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from collector.retry import (
    Backoff,
    http_retryable,
    otlp_http_retryable,
    retry_after_s,
    sleep_unless,
)


@given(
    initial=st.floats(0.01, 10),
    maximum=st.floats(0.01, 120),
    attempt=st.integers(1, 10_000),
    rand=st.floats(0, 1),
    asked=st.none() | st.floats(0, 1000),
)
def test_a_delay_is_jittered_within_its_ceiling_and_never_sooner_than_asked(
    initial, maximum, attempt, rand, asked
):
    backoff = Backoff(initial, maximum)
    ceiling = backoff.ceiling_s(attempt)
    assert ceiling <= maximum
    delay = backoff.delay_s(attempt, asked, rand=lambda: rand)
    assert delay >= ceiling / 2
    if asked is None:
        assert delay <= ceiling
    else:
        assert delay == max(asked, delay) and (delay <= ceiling or delay == asked)


def test_the_ceiling_doubles_then_stays():
    backoff = Backoff(0.5, 5.0)
    assert [backoff.ceiling_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_spreads_senders():
    """Senders failing together must not retry in lockstep."""
    delays = {round(Backoff(1, 30).delay_s(3), 3) for _ in range(50)}
    assert len(delays) > 10 and min(delays) >= 2.0 and max(delays) <= 4.0


def test_retry_after_in_seconds_or_as_an_http_date():
    now = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s("120") == 120.0
    assert retry_after_s(" 7 ") == 7.0
    assert retry_after_s("Mon, 07 Dec 2026 12:00:30 GMT", now=lambda: now) == 30.0
    assert retry_after_s("Mon, 07 Dec 2026 11:00:00 GMT", now=lambda: now) == 0.0  # past
    for unreadable in (None, "", "soon", "-5", "1e9", "Mon, 99 Foo"):
        assert retry_after_s(unreadable) is None, unreadable


def test_the_two_retry_contracts():
    # OTLP/HTTP: only what the specification lists; a 500 from a collector is permanent
    assert [s for s in (400, 408, 429, 500, 502, 503, 504) if otlp_http_retryable(s)] == [
        429,
        502,
        503,
        504,
    ]
    # webhooks and pager APIs: 408, 429 and every 5xx; other 4xx never
    assert [s for s in (400, 401, 404, 408, 429, 500, 502, 599) if http_retryable(s)] == [
        408,
        429,
        500,
        502,
        599,
    ]


async def test_a_backoff_sleep_ends_at_shutdown():
    stopping = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stopping.set)
    started = time.monotonic()
    assert await sleep_unless(stopping, 30) is True
    assert time.monotonic() - started < 10
    assert await sleep_unless(asyncio.Event(), 0.01) is False
