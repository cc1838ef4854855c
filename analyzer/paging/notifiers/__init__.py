"""Pagers: one module per vendor, each turning an incident action into one HTTP request.

A notifier builds the request and judges the response; it keeps no state, never sleeps and never
retries: the outbox (``analyzer/paging/pager.py``) decides when to send and when to try again. Like
Alertmanager's notifiers, every delivery says whether a retry can help (``Delivery.retry``):
network errors, 408, 429 and 5xx can; any other 4xx means the request itself is wrong.

Actions: ``trigger`` (opened, escalated, or re-sent while firing), ``acknowledge`` and ``resolve``.
A notifier returns ``None`` for an action its API does not have (nothing is sent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import orjson

from collector.retry import http_retryable, retry_after_s

log = logging.getLogger("agentwatch.paging")

ACTIONS = ("trigger", "acknowledge", "resolve")


@dataclass(frozen=True)
class Page:
    """What a notifier is asked to send: an action on an incident row (``analyzer.incidents``)."""

    action: str
    incident: dict
    route: str = ""
    note: str = ""  # who acknowledged/resolved, and why
    test: bool = False
    key: str = ""  # the outbox entry's id: the same for every attempt, across restarts


@dataclass(frozen=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    ok: bool
    retry: bool = False
    retry_after_s: float | None = None
    error: str = ""


def json_request(url: str, doc, headers: dict[str, str] | None = None) -> Request:
    return Request(url, orjson.dumps(doc), {"Content-Type": "application/json", **(headers or {})})


def clip(text: str, limit: int, what: str, receiver: str) -> str:
    """``text`` cut to a vendor's ``limit`` characters; a cut is logged, never silent."""
    text = str(text)
    if len(text) <= limit:
        return text
    log.warning("%s: %s cut from %d to %d characters", receiver, what, len(text), limit)
    return text[: limit - 1] + "…"


def blast_radius(incident: dict) -> str:
    return (
        f"{incident.get('sessions_affected', 0)} session(s), "
        f"{incident.get('users_affected', 0)} user(s), "
        f"{incident.get('occurrences', 0)} occurrence(s)"
    )


def iso_time(text: str) -> str:
    """The store's '2026-11-22 06:14:38.696914422' (UTC) -> RFC 3339 '2026-11-22T06:14:38.696Z'."""
    text = str(text or "").replace(" ", "T").rstrip("Z")
    if not text:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    head, _, frac = text.partition(".")
    return f"{head}.{(frac + '000')[:3]}Z"


def _accepted(status: int, text: str) -> bool:
    return 200 <= status < 300


async def deliver(
    session: aiohttp.ClientSession,
    request: Request,
    accepted: Callable[[int, str], bool] = _accepted,
) -> Delivery:
    """POST ``request`` and judge the response (``accepted`` may also read the body)."""
    try:
        async with session.post(request.url, data=request.body, headers=request.headers) as resp:
            text = await resp.text(errors="replace")
            status, after = resp.status, retry_after_s(resp.headers.get("Retry-After"))
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return Delivery(False, retry=True, error=f"{type(exc).__name__}: {exc}"[:500])
    if accepted(status, text):
        return Delivery(True)
    error = f"HTTP {status}: {' '.join(text.split())[:500]}"
    retryable = http_retryable(status)
    return Delivery(False, retry=retryable, retry_after_s=after if retryable else None, error=error)


def build_notifier(receiver):
    """A ``agentwatch.config.ReceiverConfig`` -> its notifier."""
    from analyzer.paging.notifiers import alertmanager, opsgenie, pagerduty, slack, webhook

    kinds = {
        "pagerduty": pagerduty.PagerDuty,
        "opsgenie": opsgenie.Opsgenie,
        "slack": slack.Slack,
        "alertmanager": alertmanager.Alertmanager,
        "webhook": webhook.Webhook,
    }
    return kinds[receiver.type](receiver)
