"""PagerDuty Events API v2: trigger, acknowledge and resolve, one PagerDuty alert per incident.

``dedup_key`` is the incident's fingerprint, so PagerDuty itself folds repeats of one problem
into one alert, and acknowledge/resolve find it again. Trigger carries the trace link, the
runbook and the blast radius (links and ``custom_details``) so the first question is answered
on the phone.
"""

from __future__ import annotations

import orjson

from analyzer.paging.notifiers import Page, Request, blast_radius, clip, iso_time, json_request, log

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
# https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ ("summary": max 1024 chars)
SUMMARY_MAX = 1024
# https://developer.pagerduty.com/docs/events-api-v2/overview/#size-limits (512 KB per event)
PAYLOAD_MAX_BYTES = 512 * 1024
SEVERITY = {"SEV1": "critical", "SEV2": "error", "SEV3": "warning"}


class PagerDuty:
    def __init__(self, receiver) -> None:
        self.receiver = receiver
        self.url = receiver.url or EVENTS_URL

    def request(self, page: Page) -> Request | None:
        i, name = page.incident, self.receiver.name
        event = {
            "routing_key": self.receiver.routing_key,
            "event_action": page.action,
            "dedup_key": i["fingerprint"],
        }
        if page.action == "trigger":
            title = ("[TEST] " if page.test else "") + f"[{i['severity']}] {i['title']}"
            links = [{"href": i["link"], "text": "Trace"}] if i.get("link") else []
            if self.receiver.runbook_url:
                links.append({"href": self.receiver.runbook_url, "text": "Runbook"})
            event["payload"] = {
                "summary": clip(title, SUMMARY_MAX, "summary", name),
                "source": i.get("service") or "agentwatch",
                "severity": SEVERITY.get(i["severity"], "warning"),
                "timestamp": iso_time(i.get("first_seen", "")),
                "component": i.get("agent") or i.get("service") or "",
                "group": i.get("tenant") or "",
                "class": f"{i['class']}/{i['detector']}/{i['kind']}",
                "custom_details": {
                    "incident_id": i["incident_id"],
                    "class": i["class"],
                    "severity": i["severity"],
                    "agent": i.get("agent", ""),
                    "blast_radius": blast_radius(i),
                    "sessions_affected": i.get("sessions_affected", 0),
                    "users_affected": i.get("users_affected", 0),
                    "occurrences": i.get("occurrences", 0),
                    "trace_id": i.get("trace_id", ""),
                    "span_id": i.get("span_id", ""),
                    "session_id": i.get("session_id", ""),
                    "summary": i.get("summary", ""),
                    "evidence": i.get("evidence", ""),
                    "trace_link": i.get("link", ""),
                    "runbook_url": self.receiver.runbook_url,
                },
            }
            event["links"] = links
            event["client"] = "agentwatch"
            if i.get("link"):
                event["client_url"] = i["link"]
            if len(orjson.dumps(event)) > PAYLOAD_MAX_BYTES:
                log.warning("%s: event over %d bytes; evidence dropped", name, PAYLOAD_MAX_BYTES)
                event["payload"]["custom_details"]["evidence"] = "(dropped: event too large)"
        return json_request(self.url, event)
