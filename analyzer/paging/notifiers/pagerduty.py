"""PagerDuty Events API v2: trigger, acknowledge and resolve, one PagerDuty alert per incident.

``dedup_key`` is the incident's fingerprint, so PagerDuty itself folds repeats of one problem
into one alert, and acknowledge/resolve find it again. Trigger carries the trace link, the
runbook and the blast radius (links and ``custom_details``) so the first question is answered
on the phone. A page carrying several findings of one run keeps its first incident's
``dedup_key``, takes the worst severity among them and lists them all in ``custom_details``.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from analyzer.paging.notifiers import HttpNotifier, NotifierConfig, Page, Request, json_request
from analyzer.paging.notifiers.text import (
    blast_radius,
    clip,
    evidence_text,
    findings_details,
    iso_time,
    log,
)

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
# https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ ("summary": max 1024 chars)
SUMMARY_MAX = 1024
# https://developer.pagerduty.com/docs/events-api-v2/overview/#size-limits (512 KB per event)
PAYLOAD_MAX_BYTES = 512 * 1024
SEVERITY = {"SEV1": "critical", "SEV2": "error", "SEV3": "warning"}


@dataclass(frozen=True, slots=True, kw_only=True)
class PagerDutyConfig(NotifierConfig):
    routing_key: str
    url: str = EVENTS_URL
    webhook_secret: str = ""  # verifies its webhooks to us (agentwatch.api.pager_webhooks)


class PagerDuty(HttpNotifier):
    config_type = PagerDutyConfig
    config: PagerDutyConfig

    def request(self, page: Page) -> Request:
        i, config = page.incident, self.config
        event = {
            "routing_key": config.routing_key,
            "event_action": page.action,
            "dedup_key": i.fingerprint,
        }
        if page.action == "trigger":
            more = f" (+{len(page.folded)} more on this run)" if page.folded else ""
            title = ("[TEST] " if page.test else "") + f"[{page.severity}] {i.title}{more}"
            links = [{"href": i.link, "text": "Incident"}] if i.link else []
            if config.runbook_url:
                links.append({"href": config.runbook_url, "text": "Runbook"})
            event["payload"] = {
                "summary": clip(title, SUMMARY_MAX, "summary", config.name),
                "source": i.service or "agentwatch",
                "severity": SEVERITY.get(page.severity, "warning"),
                "timestamp": iso_time(i.first_seen_ns),
                "component": i.agent or i.service,
                "group": i.tenant,
                "class": f"{i.incident_class}/{i.detector}/{i.kind}",
                "custom_details": {
                    "incident_id": i.incident_id,
                    "class": i.incident_class,
                    "severity": page.severity,
                    "agent": i.agent,
                    "blast_radius": blast_radius(i),
                    "sessions_affected": i.sessions_affected,
                    "users_affected": i.users_affected,
                    "occurrences": i.occurrences,
                    "trace_id": i.trace_id,
                    "span_id": i.span_id,
                    "session_id": i.session_id,
                    "summary": i.summary,
                    "evidence": evidence_text(i),
                    "trace_link": i.link,
                    "runbook_url": config.runbook_url,
                    "findings": findings_details(page.findings),
                },
            }
            event["links"] = links
            event["client"] = "agentwatch"
            if i.link:
                event["client_url"] = i.link
            if len(orjson.dumps(event)) > PAYLOAD_MAX_BYTES:
                log.warning(
                    "%s: event over %d bytes; evidence dropped", config.name, PAYLOAD_MAX_BYTES
                )
                event["payload"]["custom_details"]["evidence"] = "(dropped: event too large)"
        return json_request(config.url, event)
