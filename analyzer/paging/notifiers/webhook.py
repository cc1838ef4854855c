"""Generic webhook: the incident and the action as JSON, optionally signed.

With a ``secret``, ``X-Agentwatch-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body
(the scheme GitHub and Stripe use), so the receiver can check the sender before acting.

``Idempotency-Key`` (and ``idempotency_key`` in the body) is the same for every attempt of one
page, also after a restart: a page in flight when the collector died is sent again (it cannot
know whether it arrived), and the receiver drops the repeat by this key. A re-send while the
incident fires (``repeat_interval_s``) is a new page with a new key. ``severity`` is the page's (the
worst of its incidents'); ``folded`` the other incidents of the run on this page.

An incident is sent as ``GET /v1/incidents`` answers it: ``evidence`` a JSON array (not a string
of JSON), times ISO 8601 UTC (``2026-11-22T06:14:38.696914422Z``; ``sent_at`` too).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field, fields

import orjson

from analyzer.incidents.model import IncidentRecord, utc_text
from analyzer.paging.notifiers import HttpNotifier, NotifierConfig, Page, Request
from analyzer.paging.notifiers.text import blast_radius

SIGNATURE_HEADER = "X-Agentwatch-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig(NotifierConfig):
    url: str
    secret: str = ""  # HMAC-SHA256 key of X-Agentwatch-Signature
    headers: dict[str, str] = field(default_factory=dict)


def iso_time(ns: int) -> str:
    """Nanoseconds since the epoch as the API writes times.

    >>> iso_time(1_763_000_000_123_456_789)
    '2025-11-13T02:13:20.123456789Z'
    """
    return utc_text(ns).replace(" ", "T") + "Z"


def incident_doc(incident: IncidentRecord) -> dict:
    """The incident as the API shows it: evidence as JSON, times in ISO 8601."""
    doc = {f.name: getattr(incident, f.name) for f in fields(incident)}
    doc["class"] = doc.pop("incident_class")
    doc["evidence"] = list(incident.evidence)
    doc["first_seen"] = iso_time(doc.pop("first_seen_ns"))
    doc["last_seen"] = iso_time(doc.pop("last_seen_ns"))
    return doc


class Webhook(HttpNotifier):
    config_type = WebhookConfig
    config: WebhookConfig

    def request(self, page: Page) -> Request:
        doc = {
            "version": "1",
            "idempotency_key": page.key,
            "action": page.action,
            "test": page.test,
            "route": page.route,
            "receiver": self.config.name,
            "sent_at": iso_time(time.time_ns()),
            "note": page.note,
            "blast_radius": blast_radius(page.incident),
            "runbook_url": self.config.runbook_url,
            "severity": page.severity,
            "incident": incident_doc(page.incident),
            "folded": [incident_doc(i) for i in page.folded],
        }
        body = orjson.dumps(doc)
        headers = {"Content-Type": "application/json", **self.config.headers}
        if page.key:
            headers[IDEMPOTENCY_HEADER] = page.key
        if self.config.secret:
            headers[SIGNATURE_HEADER] = sign(self.config.secret, body)
        return Request(self.config.url, body, headers)
