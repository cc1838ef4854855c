"""The retry stage: one attempt of a notification through its notifier, and what comes of it.

- An action the notifier does not declare (``Notifier.actions``, e.g. acknowledge to
  Alertmanager) is ``skipped``, and so is an acknowledge or resolve made in this receiver's own
  pager (``echoes_its_pager``); a receiver no longer configured is ``failed``.
- Accepted: ``sent``. Network errors, 408, 429 and 5xx (``Delivery.retry``) stay ``pending``:
  the next attempt is ``collector.retry.Backoff`` away (``retry_initial_s`` doubling up to
  ``retry_max_s``, each delay drawn from [d/2, d]) and never sooner than the pager's
  ``Retry-After``. Any other 4xx is ``failed``, and so is a notification still failing
  ``give_up_after_s`` after it was created.

The delay is computed here, not slept inside a retry decorator (tenacity, backoff): the next
attempt time is a column of the outbox row, which a restart keeps and a coroutine's sleep would
forget.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from analyzer.paging.model import Notification
from analyzer.paging.notifiers import Notifier, Page
from collector.retry import Backoff

log = logging.getLogger("agentwatch.paging")


#: How a status change made in a pager names the receiver it came through (its webhook,
#: ``agentwatch.api.pager_webhooks``): the end of the change's note.
VIA_RECEIVER = "(via receiver {})"


def echoes_its_pager(n: Notification) -> bool:
    """An acknowledge or resolve made in this receiver's own pager: it knows already, and
    sending it back would only echo (and loop, were the pager to answer with a webhook)."""
    return n.action != "trigger" and n.note.endswith(VIA_RECEIVER.format(n.receiver))


@dataclass(frozen=True)
class Outcome:
    status: str  # sent | pending (retry) | failed | skipped
    error: str = ""
    retry_after_s: float | None = None


class RetryStage:
    def __init__(
        self,
        notifiers: Mapping[str, Notifier],
        config,
        metrics,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._notifiers = notifiers
        self._backoff = Backoff(config.retry_initial_s, config.retry_max_s)
        self._give_up_after_s = config.give_up_after_s
        self._metrics = metrics
        self._rand = rand

    async def attempt(self, n: Notification) -> Outcome:
        notifier = self._notifiers.get(n.receiver)
        if notifier is None:
            return Outcome("failed", f"receiver {n.receiver!r} is no longer configured")
        if n.action not in notifier.actions:
            return Outcome("skipped", f"{n.action} is not in this receiver's API")
        if echoes_its_pager(n):
            return Outcome("skipped", f"{n.action} came from this receiver's pager")
        test = n.reason == "test"
        page = Page(n.action, n.incident, n.route, n.note, test, n.notification_id, n.folded)
        delivery = await notifier.notify(page)
        if delivery.ok:
            return Outcome("sent")
        if delivery.retry:
            return Outcome("pending", delivery.error, delivery.retry_after_s)
        return Outcome("failed", delivery.error)

    def settle(self, n: Notification, outcome: Outcome, now_ns: int) -> None:
        """Record ``outcome`` on ``n``: its status, and when a pending one is tried next."""
        n.attempts += 1
        n.last_error = outcome.error
        status = outcome.status
        if status == "pending":
            if now_ns - n.created_ns > self._give_up_after_s * 1e9:
                status = "failed"
                n.last_error = f"gave up after {n.attempts} attempts: {outcome.error}"
            else:
                delay_s = self._backoff.delay_s(n.attempts, outcome.retry_after_s, self._rand)
                n.next_attempt_ns = now_ns + int(min(delay_s, self._give_up_after_s) * 1e9)
                log.warning(
                    "page %s to %s not accepted (attempt %d, next in %.1fs): %s",
                    n.action, n.receiver, n.attempts, (n.next_attempt_ns - now_ns) / 1e9,
                    outcome.error,
                )  # fmt: skip
        n.status = status
        label = "retry" if status == "pending" else status
        self._metrics.page_attempts.labels(n.receiver, n.action, label).inc()
        if status == "sent":
            n.sent_ns = now_ns
        elif status == "failed":
            log.error("page %s to %s failed for good: %s", n.action, n.receiver, n.last_error)
