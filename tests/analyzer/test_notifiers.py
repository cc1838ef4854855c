"""What each pager is sent, built without a network: vendor fields, mappings and limits."""

from __future__ import annotations

import dataclasses
import logging
import re

import orjson
import pytest

from agentwatch.config import ReceiverConfig
from analyzer.incidents.model import IncidentRecord
from analyzer.paging.notifiers import Page, opsgenie, pagerduty, slack
from analyzer.paging.notifiers.http import HttpNotifiers
from analyzer.paging.notifiers.webhook import SIGNATURE_HEADER, sign

ROW = {
    "incident_id": "inc-1", "fingerprint": "fp1", "version": 1, "detector": "loop",
    "kind": "repeated_call", "class": "semantic", "severity": "SEV1", "status": "open",
    "title": "support: lookup_order called 4 times with the same arguments", "summary": "loop",
    "tenant": "acme", "service": "support-svc", "agent": "support", "session_id": "s1",
    "user_id": "u1", "trace_id": "t1", "span_id": "sp1", "evidence": "[]",
    "first_seen": "2026-11-22 06:14:38.696914422", "last_seen": "2026-11-22 06:15:00.000000000",
    "occurrences": 9, "sessions_affected": 3, "users_affected": 2, "link": "https://g/t1",
}  # fmt: skip
INCIDENT = IncidentRecord.from_row(ROW)


def receiver(**kw):
    """The receiver's notifier, as the collector builds it (no request is sent here)."""
    return HttpNotifiers()(ReceiverConfig.model_validate(kw))


def body(notifier, action="trigger", incident=INCIDENT, **page):
    return orjson.loads(notifier.request(Page(action, incident, **page)).body)


def test_pagerduty_maps_severity_and_carries_links_and_blast_radius():
    pd = receiver(name="pd", type="pagerduty", routing_key="k" * 32, runbook_url="https://rb")
    event = body(pd)
    assert (event["event_action"], event["dedup_key"]) == ("trigger", "fp1")
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["timestamp"] == "2026-11-22T06:14:38.696Z"
    assert event["links"] == [{"href": "https://g/t1", "text": "Incident"},
                              {"href": "https://rb", "text": "Runbook"}]  # fmt: skip
    assert event["payload"]["custom_details"]["blast_radius"] == (
        "3 session(s), 2 user(s), 9 occurrence(s)"
    )
    assert body(pd, "resolve") == {"routing_key": "k" * 32, "event_action": "resolve",
                                   "dedup_key": "fp1"}  # fmt: skip


def test_limits_cut_and_say_so(caplog):
    long = dataclasses.replace(INCIDENT, title="x" * 5000, summary="y" * 5000)
    pd = receiver(name="pd", type="pagerduty", routing_key="k" * 32)
    og = receiver(name="og", type="opsgenie", api_key="a")
    sl = receiver(name="sl", type="slack", url="https://hooks.slack.com/x")
    with caplog.at_level(logging.WARNING, "agentwatch.paging"):
        assert len(body(pd, incident=long)["payload"]["summary"]) == pagerduty.SUMMARY_MAX
        assert len(body(og, incident=long)["message"]) == opsgenie.MESSAGE_MAX
        blocks = body(sl, incident=long)["blocks"]
    assert len(blocks[0]["text"]["text"]) == slack.HEADER_MAX
    assert len(blocks[1]["text"]["text"]) == slack.BLOCK_TEXT_MAX
    cut = caplog.text
    assert "pd: summary cut from" in cut and "og: message cut from" in cut
    assert "sl: section text cut from" in cut


def test_opsgenie_acts_by_alias_with_priorities():
    og = receiver(name="og", type="opsgenie", api_key="a", priorities={"SEV1": "P2"})
    assert body(og)["priority"] == "P2"
    assert body(og)["alias"] == "fp1"
    request = og.request(Page("acknowledge", INCIDENT, note="ann"))
    assert request.url == "https://api.opsgenie.com/v2/alerts/fp1/acknowledge?identifierType=alias"
    assert request.headers["Authorization"] == "GenieKey a"


def test_alertmanager_has_no_acknowledge_and_ends_on_resolve():
    am = receiver(name="am", type="alertmanager", url="http://am:9093", resend_interval_s=30)
    assert am.actions == {"trigger", "resolve"}  # the retry stage skips an acknowledge
    assert am.resend_interval_s == 30
    [firing] = body(am)
    assert "endsAt" not in firing and firing["labels"]["severity"] == "SEV1"
    [resolved] = body(am, "resolve")
    assert resolved["endsAt"] and resolved["labels"] == firing["labels"]


def test_webhook_signature_is_hmac_sha256_of_the_body():
    hook = receiver(name="h", type="webhook", url="http://h", secret="s")
    request = hook.request(Page("trigger", INCIDENT))
    assert request.headers[SIGNATURE_HEADER] == sign("s", request.body)
    assert sign("s", b"{}") == "sha256=" + __import__("hmac").new(b"s", b"{}", "sha256").hexdigest()


def test_webhook_carries_one_idempotency_key_per_page_and_vendors_their_dedup_keys():
    """A page re-sent after a crash (same outbox entry) carries the same key; a receiver drops it."""
    from analyzer.paging.notifiers.webhook import IDEMPOTENCY_HEADER

    hook = receiver(name="h", type="webhook", url="http://h", secret="s")
    first = hook.request(Page("trigger", INCIDENT, key="ntf-1"))
    again = hook.request(Page("trigger", INCIDENT, key="ntf-1"))
    other = hook.request(Page("resolve", INCIDENT, key="ntf-2"))
    assert first.headers[IDEMPOTENCY_HEADER] == again.headers[IDEMPOTENCY_HEADER] == "ntf-1"
    assert orjson.loads(first.body)["idempotency_key"] == "ntf-1"
    assert other.headers[IDEMPOTENCY_HEADER] == "ntf-2"
    # the vendors deduplicate by their own key: the incident's fingerprint
    pd = receiver(name="p", type="pagerduty", routing_key="r" * 32)
    og = receiver(name="o", type="opsgenie", api_key="k")
    am = receiver(name="a", type="alertmanager", url="http://am")
    assert body(pd)["dedup_key"] == body(og)["alias"] == INCIDENT.fingerprint
    assert body(am)[0]["labels"]["fingerprint"] == INCIDENT.fingerprint


RECEIVERS = [
    {"name": "pd", "type": "pagerduty", "routing_key": "r" * 32},
    {"name": "og", "type": "opsgenie", "api_key": "k"},
    {"name": "sl", "type": "slack", "url": "https://hooks.slack.com/x"},
    {"name": "am", "type": "alertmanager", "url": "http://am"},
    {"name": "h", "type": "webhook", "url": "http://h"},
]


@pytest.mark.parametrize("given", RECEIVERS, ids=[r["type"] for r in RECEIVERS])
def test_every_notifier_has_a_typed_config_and_declares_what_it_can_do(given):
    notifier = receiver(**given)
    assert dataclasses.is_dataclass(notifier.config) and notifier.config.name == given["name"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        notifier.config.name = "other"  # type: ignore[misc]
    assert (
        notifier.actions <= {"trigger", "acknowledge", "resolve"} and "trigger" in notifier.actions
    )
    for action in sorted(notifier.actions):  # every declared action builds a request
        request = notifier.request(Page(action, INCIDENT, key="ntf-1"))
        assert request.url.startswith("http") and orjson.loads(request.body)
    resends = notifier.resend_interval_s
    assert (resends is not None) == (given["type"] == "alertmanager")


def test_the_webhook_sends_the_incident_as_the_api_shows_it():
    why = {"why": "lookup_order called 4 times", "rule": "repeated_call", "threshold": 4}
    incident = dataclasses.replace(INCIDENT, evidence=(why, {"span_id": "sp1"}))
    hook = receiver(name="h", type="webhook", url="http://h")
    doc = orjson.loads(hook.request(Page("trigger", incident)).body)
    sent = doc["incident"]
    # evidence is JSON a receiver can index, not a string of JSON
    assert sent["evidence"] == [why, {"span_id": "sp1"}]
    assert sent["evidence"][0]["rule"] == "repeated_call"
    # times as the API writes them: ISO 8601 UTC, to the nanosecond
    assert sent["first_seen"] == "2026-11-22T06:14:38.696914422Z"
    assert sent["last_seen"] == "2026-11-22T06:15:00.000000000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", doc["sent_at"])
    assert (sent["class"], sent["link"], sent["tool"]) == ("semantic", "https://g/t1", "")
    assert {k for k in sent if k.endswith("_ns")} == set()


# One problem, one page: a loop (SEV2) with a token-ratio spike (SEV2) and a context spiral (SEV1)
# of the same session, folded into the loop's page.
LOOP = dataclasses.replace(INCIDENT, severity="SEV2")
RATIO = dataclasses.replace(
    INCIDENT, incident_id="inc-2", fingerprint="fp2", detector="token_ratio", kind="ratio_spike",
    severity="SEV2", title="input/output 900:1", status="resolved",
)  # fmt: skip
SPIRAL = dataclasses.replace(
    INCIDENT, incident_id="inc-3", fingerprint="fp3", detector="context_growth", kind="spiral",
    severity="SEV1", title="context x8 in 6 steps",
)  # fmt: skip
FOLDED = (RATIO, SPIRAL)


def test_slack_lists_every_finding_folded_into_the_page_at_the_worst_severity():
    sl = receiver(name="sl", type="slack", url="https://hooks.slack.com/x")
    message = body(sl, incident=LOOP, folded=FOLDED)
    header, section = (block["text"]["text"] for block in message["blocks"])
    assert header.startswith(":rotating_light: SEV1 support: lookup_order called 4 times")
    assert header.endswith("(+2 more on this run)")
    assert "*Findings on this run (3):*" in section
    for line in (
        "SEV2 loop/repeated_call: support: lookup_order called 4 times with the same arguments (inc-1)",
        "SEV2 token_ratio/ratio_spike: input/output 900:1 (inc-2) [resolved]",
        "SEV1 context_growth/spiral: context x8 in 6 steps (inc-3)",
    ):
        assert line in section.splitlines()
    alone = body(sl, incident=LOOP)["blocks"][1]["text"]["text"]
    assert "Findings on this run" not in alone  # a page of one incident reads as before


def test_pagers_keep_the_first_incidents_dedup_key_and_take_the_worst_severity():
    pd = receiver(name="pd", type="pagerduty", routing_key="k" * 32)
    event = body(pd, incident=LOOP, folded=FOLDED)
    assert (event["dedup_key"], event["payload"]["severity"]) == ("fp1", "critical")
    findings = event["payload"]["custom_details"]["findings"]
    assert [(f["incident_id"], f["detector"], f["severity"]) for f in findings] == [
        ("inc-1", "loop", "SEV2"), ("inc-2", "token_ratio", "SEV2"), ("inc-3", "context_growth", "SEV1"),
    ]  # fmt: skip
    assert body(pd, "resolve", incident=LOOP, folded=FOLDED)["dedup_key"] == "fp1"

    og = receiver(name="og", type="opsgenie", api_key="a")
    alert = body(og, incident=LOOP, folded=FOLDED)
    assert (alert["alias"], alert["priority"]) == ("fp1", "P1")
    assert "context_growth/spiral" in alert["description"]

    hook = receiver(name="h", type="webhook", url="http://h")
    sent = body(hook, incident=LOOP, folded=FOLDED)
    assert sent["severity"] == "SEV1" and sent["incident"]["severity"] == "SEV2"
    assert [row["incident_id"] for row in sent["folded"]] == ["inc-2", "inc-3"]

    am = receiver(name="am", type="alertmanager", url="http://am")
    [alert] = body(am, incident=LOOP, folded=FOLDED)
    [alone] = body(am, incident=LOOP)
    assert alert["labels"] == alone["labels"]  # the same Alertmanager alert
    assert alert["annotations"]["page_severity"] == "SEV1"
    assert "token_ratio/ratio_spike" in alert["annotations"]["findings"]


@pytest.mark.parametrize(
    "given",
    [
        {"name": "pd", "type": "pagerduty", "routing_key": "k" * 32},
        {"name": "og", "type": "opsgenie", "api_key": "a"},
        {"name": "sl", "type": "slack", "url": "https://hooks.slack.com/x"},
        {"name": "am", "type": "alertmanager", "url": "http://am"},
        {"name": "h", "type": "webhook", "url": "http://h"},
    ],
    ids=lambda given: given["type"],
)
def test_every_pager_carries_the_incident_link(given):
    link = "http://agentwatch.internal:8080/incidents/inc-1"  # public_url's console page
    page = receiver(**given).request(Page("trigger", dataclasses.replace(INCIDENT, link=link)))
    assert link.encode() in page.body
