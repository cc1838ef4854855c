"""The collector's notifier factory: each receiver's vendor notifier, sending over HTTP."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from analyzer.paging.notifiers import Delivery, HttpNotifier, Request, config_from
from analyzer.paging.notifiers.alertmanager import Alertmanager
from analyzer.paging.notifiers.opsgenie import Opsgenie
from analyzer.paging.notifiers.pagerduty import PagerDuty
from analyzer.paging.notifiers.slack import Slack
from analyzer.paging.notifiers.webhook import Webhook
from collector.retry import http_retryable, retry_after_s

# ``ReceiverConfig.type`` -> its notifier
KINDS: dict[str, type[HttpNotifier]] = {
    "pagerduty": PagerDuty,
    "opsgenie": Opsgenie,
    "slack": Slack,
    "alertmanager": Alertmanager,
    "webhook": Webhook,
}


class HttpNotifiers:
    """The collector's notifier factory: vendor notifiers sending over one aiohttp session
    (opened at the first send, on the running loop), each request bounded by its receiver's
    ``timeout_s``."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def __call__(self, receiver) -> HttpNotifier:
        kind = KINDS[receiver.type]
        return kind(config_from(kind.config_type, receiver), self)

    async def post(
        self, request: Request, accepted: Callable[[int, str], bool], timeout_s: float
    ) -> Delivery:
        """POST ``request`` and judge the answer (``accepted`` may also read the body)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                text = await resp.text(errors="replace")
                status, after = resp.status, retry_after_s(resp.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Delivery(False, retry=True, error=f"{type(exc).__name__}: {exc}"[:500])
        if accepted(status, text):
            return Delivery(True)
        error = f"HTTP {status}: {' '.join(text.split())[:500]}"
        retryable = http_retryable(status)
        return Delivery(
            False, retry=retryable, retry_after_s=after if retryable else None, error=error
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
