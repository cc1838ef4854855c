"""Opsgenie Alert API: create (alias = incident fingerprint), acknowledge and close by alias.

The alias is what makes Opsgenie deduplicate repeats and lets acknowledge/close find the alert
without remembering Opsgenie's own ids. SEV1..3 map to P1..P3 unless ``priorities`` says
otherwise (P4/P5 are there for teams that page SEV3 quietly). A page carrying several findings
of one run keeps its first incident's alias, the worst priority among them, and lists them in
the description.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from analyzer.paging.notifiers import HttpNotifier, NotifierConfig, Page, Request, json_request
from analyzer.paging.notifiers.text import blast_radius, clip, evidence_text, findings_text

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
VERB = {"acknowledge": "acknowledge", "resolve": "close"}


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsgenieConfig(NotifierConfig):
    api_key: str
    url: str = API_URL
    webhook_secret: str = ""  # verifies its webhooks to us (agentwatch.api.pager_webhooks)
    priorities: dict[str, str] = field(default_factory=dict)  # SEVn -> Pn overrides


class Opsgenie(HttpNotifier):
    config_type = OpsgenieConfig
    config: OpsgenieConfig

    @property
    def base(self) -> str:
        return self.config.url.rstrip("/")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"GenieKey {self.config.api_key}"}

    def request(self, page: Page) -> Request:
        i, name = page.incident, self.config.name
        alias = clip(i.fingerprint, ALIAS_MAX, "alias", name)
        if page.action == "trigger":
            return json_request(f"{self.base}/v2/alerts", self._create(page, alias), self.headers)
        doc = {
            "source": "agentwatch",
            "note": clip(page.note or page.action, NOTE_MAX, "note", name),
        }
        url = f"{self.base}/v2/alerts/{quote(alias, safe='')}/{VERB[page.action]}?identifierType=alias"
        return json_request(url, doc, self.headers)

    def _create(self, page: Page, alias: str) -> dict:
        i, name, runbook = page.incident, self.config.name, self.config.runbook_url
        severity, more = page.severity, f" (+{len(page.folded)} more)" if page.folded else ""
        message = ("[TEST] " if page.test else "") + f"[{severity}] {i.title}{more}"
        description = "\n".join(
            line
            for line in (
                i.summary,
                f"Class: {i.incident_class}   Agent: {i.agent or i.service}",
                f"Blast radius: {blast_radius(i)}",
                f"Trace: {i.link}" if i.link else "",
                f"Runbook: {runbook}" if runbook else "",
                f"Findings on this run:\n{findings_text(page.findings)}" if page.folded else "",
                f"Evidence: {evidence_text(i)}",
            )
            if line
        )
        details = {
            "incident_id": i.incident_id,
            "class": i.incident_class,
            "detector": f"{i.detector}/{i.kind}",
            "agent": i.agent,
            "service": i.service,
            "tenant": i.tenant,
            "blast_radius": blast_radius(i),
            "trace_id": i.trace_id,
            "trace_link": i.link,
            "runbook_url": runbook,
        }
        while sum(len(k) + len(str(v)) for k, v in details.items()) > DETAILS_MAX:
            details.pop(max(details, key=lambda k: len(str(details[k]))))
        tags = [severity, i.incident_class, i.detector, i.agent or i.service]
        return {
            "message": clip(message, MESSAGE_MAX, "message", name),
            "alias": alias,
            "description": clip(description, DESCRIPTION_MAX, "description", name),
            "priority": self.config.priorities.get(severity, PRIORITY.get(severity, "P3")),
            "source": clip("agentwatch", SOURCE_MAX, "source", name),
            "entity": clip(i.agent or i.service, ENTITY_MAX, "entity", name),
            "tags": [clip(t, TAG_MAX, "tag", name) for t in tags if t][:TAGS_MAX],
            "details": details,
        }
