"""Opsgenie Alert API: create (alias = incident fingerprint), acknowledge and close by alias.

The alias is what makes Opsgenie deduplicate repeats and lets acknowledge/close find the alert
without remembering Opsgenie's own ids. SEV1..3 map to P1..P3 unless ``priorities`` says
otherwise (P4/P5 are there for teams that page SEV3 quietly).
"""

from __future__ import annotations

from urllib.parse import quote

from analyzer.paging.notifiers import Page, Request, blast_radius, clip, json_request

API_URL = "https://api.opsgenie.com"  # EU accounts: https://api.eu.opsgenie.com
# https://docs.opsgenie.com/docs/alert-api#create-alert (field limits below)
MESSAGE_MAX = 130
ALIAS_MAX = 512
DESCRIPTION_MAX = 15000
SOURCE_MAX = 100
ENTITY_MAX = 512
NOTE_MAX = 25000
TAGS_MAX, TAG_MAX = 20, 50
DETAILS_MAX = 8000  # all key-value pairs of "details" together
PRIORITY = {"SEV1": "P1", "SEV2": "P2", "SEV3": "P3"}


class Opsgenie:
    def __init__(self, receiver) -> None:
        self.receiver = receiver
        self.base = (receiver.url or API_URL).rstrip("/")
        self.headers = {"Authorization": f"GenieKey {receiver.api_key}"}

    def request(self, page: Page) -> Request | None:
        i, name = page.incident, self.receiver.name
        alias = clip(i["fingerprint"], ALIAS_MAX, "alias", name)
        if page.action == "trigger":
            message = ("[TEST] " if page.test else "") + f"[{i['severity']}] {i['title']}"
            description = "\n".join(
                line
                for line in (
                    i.get("summary", ""),
                    f"Class: {i['class']}   Agent: {i.get('agent') or i.get('service')}",
                    f"Blast radius: {blast_radius(i)}",
                    f"Trace: {i['link']}" if i.get("link") else "",
                    f"Runbook: {self.receiver.runbook_url}" if self.receiver.runbook_url else "",
                    f"Evidence: {i.get('evidence', '')}",
                )
                if line
            )
            details = {
                "incident_id": i["incident_id"],
                "class": i["class"],
                "detector": f"{i['detector']}/{i['kind']}",
                "agent": i.get("agent", ""),
                "service": i.get("service", ""),
                "tenant": i.get("tenant", ""),
                "blast_radius": blast_radius(i),
                "trace_id": i.get("trace_id", ""),
                "trace_link": i.get("link", ""),
                "runbook_url": self.receiver.runbook_url,
            }
            while sum(len(k) + len(str(v)) for k, v in details.items()) > DETAILS_MAX:
                details.pop(max(details, key=lambda k: len(str(details[k]))))
            tags = [i["severity"], i["class"], i["detector"], i.get("agent") or i.get("service")]
            doc = {
                "message": clip(message, MESSAGE_MAX, "message", name),
                "alias": alias,
                "description": clip(description, DESCRIPTION_MAX, "description", name),
                "priority": self.receiver.priorities.get(
                    i["severity"], PRIORITY.get(i["severity"], "P3")
                ),
                "source": clip("agentwatch", SOURCE_MAX, "source", name),
                "entity": clip(i.get("agent") or i.get("service", ""), ENTITY_MAX, "entity", name),
                "tags": [clip(t, TAG_MAX, "tag", name) for t in tags if t][:TAGS_MAX],
                "details": details,
            }
            return json_request(f"{self.base}/v2/alerts", doc, self.headers)
        verb = {"acknowledge": "acknowledge", "resolve": "close"}[page.action]
        doc = {
            "source": "agentwatch",
            "note": clip(page.note or page.action, NOTE_MAX, "note", name),
        }
        url = f"{self.base}/v2/alerts/{quote(alias, safe='')}/{verb}?identifierType=alias"
        return json_request(url, doc, self.headers)
