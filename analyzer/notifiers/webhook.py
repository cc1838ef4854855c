"""Generic webhook: the incident and the action as JSON, optionally signed.

With a ``secret``, ``X-Agentwatch-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body
(the scheme GitHub and Stripe use), so the receiver can check the sender before acting.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import orjson

from analyzer.notifiers import Page, Request, blast_radius

SIGNATURE_HEADER = "X-Agentwatch-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhook:
    def __init__(self, receiver) -> None:
        self.receiver = receiver

    def request(self, page: Page) -> Request | None:
        doc = {
            "version": "1",
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
        if self.receiver.secret:
            headers[SIGNATURE_HEADER] = sign(self.receiver.secret, body)
        return Request(self.receiver.url, body, headers)
