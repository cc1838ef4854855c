"""Slack incoming webhook: a message a person can read at a glance.

Incoming webhooks cannot edit a message, so acknowledge and resolve post a short follow-up that
names the incident. A page carrying several findings of one run lists them all, at the worst
severity among them. Slack answers 200 ``ok`` when it took the message; anything else is an error
(``invalid_payload``, ``no_service``…), retried only for 429 and 5xx.
"""

from __future__ import annotations

from dataclasses import dataclass

from analyzer.paging.notifiers import HttpNotifier, NotifierConfig, Page, Request, json_request
from analyzer.paging.notifiers.text import blast_radius, clip, findings_text

# https://api.slack.com/methods/chat.postMessage#truncating ("text" over 40,000 chars is cut)
TEXT_MAX = 40_000
# https://api.slack.com/reference/block-kit/blocks#section (section text: max 3000 chars)
BLOCK_TEXT_MAX = 3000
# https://api.slack.com/reference/block-kit/blocks#header (header text: max 150 chars)
HEADER_MAX = 150
EMOJI = {"SEV1": ":rotating_light:", "SEV2": ":warning:", "SEV3": ":information_source:"}


@dataclass(frozen=True, slots=True, kw_only=True)
class SlackConfig(NotifierConfig):
    url: str  # the incoming webhook's


class Slack(HttpNotifier):
    config_type = SlackConfig
    config: SlackConfig

    def request(self, page: Page) -> Request:
        i, name, runbook = page.incident, self.config.name, self.config.runbook_url
        test = "[TEST] " if page.test else ""
        severity = page.severity
        more = f" (+{len(page.folded)} more on this run)" if page.folded else ""
        if page.action == "trigger":
            head = f"{EMOJI.get(severity, '')} {test}{severity} {i.title}{more}".strip()
            lines = [
                f"*What:* {i.summary}",
                f"*Class:* {i.incident_class}   *Severity:* {i.severity}   "
                f"*Detector:* {i.detector}/{i.kind}",
                f"*Agent:* {i.agent or '-'}   *Service:* {i.service or '-'}",
                f"*Blast radius:* {blast_radius(i)}",
                f"*Trace:* <{i.link}|{i.trace_id or 'trace'}>"
                if i.link
                else f"*Trace:* {i.trace_id}",
                f"*Runbook:* {runbook}" if runbook else "",
                f"*Incident:* `{i.incident_id}`",
                f"*Findings on this run ({len(page.findings)}):*\n{findings_text(page.findings)}"
                if page.folded
                else "",
            ]
            body = "\n".join(line for line in lines if line)
            blocks = [
                {"type": "header", "text": {"type": "plain_text", "text": clip(head, HEADER_MAX, "header", name)}},
                {"type": "section", "text": {"type": "mrkdwn", "text": clip(body, BLOCK_TEXT_MAX, "section text", name)}},
            ]  # fmt: skip
            text = f"{head}\n{body}"
        else:
            done = "acknowledged" if page.action == "acknowledge" else "resolved"
            text = (
                f":white_check_mark: {test}{done}: {severity} {i.title}{more} (`{i.incident_id}`)"
            )
            if page.note:
                text += f" by {page.note}"
            blocks = None
        doc = {"text": clip(text, TEXT_MAX, "text", name)}
        if blocks:
            doc["blocks"] = blocks
        return json_request(self.config.url, doc)

    def accepted(self, status: int, text: str) -> bool:
        return status == 200 and text.strip() == "ok"
