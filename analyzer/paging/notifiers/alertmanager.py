"""Prometheus Alertmanager API v2: ``POST /api/v2/alerts``, re-sent while the incident fires.

Alertmanager resolves an alert nobody re-sends (after its ``resolve_timeout``), so the outbox
re-sends a firing incident every ``resend_interval_s``; resolve sends the same labels with
``endsAt`` = now. Alertmanager has no acknowledge: that action sends nothing. Grouping,
inhibition and its own routing are then Alertmanager's.
"""

from __future__ import annotations

from datetime import UTC, datetime

from analyzer.paging.notifiers import Page, Request, blast_radius, json_request


def labels(incident: dict) -> dict[str, str]:
    """Stable labels: the same incident is the same Alertmanager alert (same fingerprint)."""
    keys = ("severity", "class", "detector", "kind", "tenant", "service", "agent")
    found = {"alertname": "AgentIncident", "fingerprint": incident["fingerprint"]}
    found["incident_id"] = incident["incident_id"]
    found.update({k: str(incident.get(k) or "") for k in keys})
    return {k: v for k, v in found.items() if v}


class Alertmanager:
    def __init__(self, receiver) -> None:
        self.receiver = receiver
        self.url = receiver.url.rstrip("/") + "/api/v2/alerts"

    def request(self, page: Page) -> Request | None:
        if page.action == "acknowledge":
            return None
        i = page.incident
        alert = {
            "labels": labels(i) | ({"test": "true"} if page.test else {}),
            "annotations": {
                "summary": i["title"],
                "description": i.get("summary", ""),
                "blast_radius": blast_radius(i),
                "trace_id": i.get("trace_id", ""),
                "trace_link": i.get("link", ""),
                "runbook_url": self.receiver.runbook_url,
            },
            "startsAt": _rfc3339(i.get("first_seen")),
        }
        if i.get("link"):
            alert["generatorURL"] = i["link"]
        if page.action == "resolve":
            alert["endsAt"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return json_request(self.url, [alert])


def _rfc3339(text) -> str:
    from analyzer.paging.notifiers import iso_time

    return iso_time(text or "")
