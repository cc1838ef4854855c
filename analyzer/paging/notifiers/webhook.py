"""Generic webhook: the incident and the action as JSON, optionally signed.

With a ``secret``, ``X-Agentwatch-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body
(the scheme GitHub and Stripe use), so the receiver can check the sender before acting.

``Idempotency-Key`` (and ``idempotency_key`` in the body) is the same for every attempt of one
page, also after a restart: a page in flight when the collector died is sent again (it cannot
know whether it arrived), and the receiver drops the repeat by this key. A re-send while the
incident fires (``repeat_interval_s``) is a new page with a new key.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import orjson

from analyzer.paging.notifiers import Page, Request, blast_radius

SIGNATURE_HEADER = "X-Agentwatch-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhook:
    def __init__(self, receiver) -> None:
        self.receiver = receiver

    def request(self, page: Page) -> Request | None:
        doc = {
            "version": "1",
            "idempotency_key": page.key,
            "action": page.action,
            "test": page.test,
            "route": page.route,
            "receiver": self.receiver.name,
            "sent_at": time.time(),
            "note": page.note,
            "blast_radius": blast_radius(page.incident),
            "runbook_url": self.receiver.runbook_url,
            "incident": page.incident,
        }
        body = orjson.dumps(doc)
        headers = {"Content-Type": "application/json", **self.receiver.headers}
        if page.key:
            headers[IDEMPOTENCY_HEADER] = page.key
        if self.receiver.secret:
            headers[SIGNATURE_HEADER] = sign(self.receiver.secret, body)
        return Request(self.receiver.url, body, headers)
