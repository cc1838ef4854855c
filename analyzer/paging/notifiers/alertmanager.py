"""Prometheus Alertmanager API v2: ``POST /api/v2/alerts``, re-sent while the incident fires.

Alertmanager resolves an alert nobody re-sends (after its ``resolve_timeout``), so this notifier
declares ``resend_interval_s``: the repeat stage re-sends a firing incident that often. Resolve
sends the same labels with ``endsAt`` = now. Alertmanager has no acknowledge: the action is not
among its ``actions``, so the outbox marks it skipped. Grouping, inhibition and its own routing
are then Alertmanager's. A page carrying several findings of one run keeps its first incident's
labels (the alert's identity: a label that changed would be another alert) and lists the
findings, and the worst severity among them, in its annotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from analyzer.incidents.model import IncidentRecord
from analyzer.paging.notifiers import HttpNotifier, NotifierConfig, Page, Request, json_request
from analyzer.paging.notifiers.text import blast_radius, findings_text, iso_time
from analyzer.paging.routing import labels_of


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertmanagerConfig(NotifierConfig):
    url: str  # Alertmanager's base URL (``/api/v2/alerts`` is added)
    resend_interval_s: float = 60.0


def labels(incident: IncidentRecord) -> dict[str, str]:
    """Stable labels: the same incident is the same Alertmanager alert (same fingerprint)."""
    found = {"alertname": "AgentIncident", **labels_of(incident)}
    return {k: v for k, v in found.items() if v}


class Alertmanager(HttpNotifier):
    config_type = AlertmanagerConfig
    config: AlertmanagerConfig
    actions = frozenset({"trigger", "resolve"})

    def __init__(self, config: AlertmanagerConfig, http=None) -> None:
        super().__init__(config, http)
        self.url = config.url.rstrip("/") + "/api/v2/alerts"
        self.resend_interval_s = config.resend_interval_s

    def request(self, page: Page) -> Request:
        i = page.incident
        alert = {
            "labels": labels(i) | ({"test": "true"} if page.test else {}),
            "annotations": {
                "summary": i.title,
                "description": i.summary,
                "blast_radius": blast_radius(i),
                "trace_id": i.trace_id,
                "trace_link": i.link,
                "runbook_url": self.config.runbook_url,
            },
            "startsAt": iso_time(i.first_seen_ns),
        }
        if page.folded:
            alert["annotations"]["page_severity"] = page.severity
            alert["annotations"]["findings"] = findings_text(page.findings)
        if i.link:
            alert["generatorURL"] = i.link
        if page.action == "resolve":
            alert["endsAt"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return json_request(self.url, [alert])
