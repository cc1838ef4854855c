"""Two-way pagers: PagerDuty's and Opsgenie's webhooks acknowledge and resolve the incident.

A real collector with its real store pages a local PagerDuty / Opsgenie (``tests/fake_pagers.py``);
the tests then post what the vendor posts back (PagerDuty's v3 webhook, signed; Opsgenie's
webhook integration, with the secret header) to the collector's API port over HTTP.
"""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
import requests

from tests.fake_pagers import FakeOpsgenie, FakePagerDuty
from tests.test_paging import a_loop, eventually, outbox, paging, pd_receiver, timeline

SECRET = "pd-subscription-secret"
OG_SECRET = "og-webhook-secret"


@pytest.fixture
def pagerduty():
    fake = FakePagerDuty()
    yield fake
    fake.close()


@pytest.fixture
def opsgenie():
    fake = FakeOpsgenie(api_key="og-key")
    yield fake
    fake.close()


def pd_webhook(incident: dict, event_type: str, who: str = "Ann Example") -> bytes:
    """What a PagerDuty v3 webhook subscription posts (developer.pagerduty.com, webhooks)."""
    doc = {
        "event": {
            "id": "01DEN1HNLUHLRR1TWLSH1E9YUB",
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": "2026-12-07T06:30:00.000Z",
            "agent": {"id": "PLH1HKV", "type": "user_reference", "summary": who},
            "client": None,
            "data": {
                "id": "PGR0VU2",
                "type": "incident",
                "number": 2,
                "status": event_type.removeprefix("incident."),
                "incident_key": incident["fingerprint"],
                "title": "[SEV2] loop",
            },
        }
    }
    return orjson.dumps(doc)


def signature(body: bytes, secret: str = SECRET) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(collector, path: str, body: bytes, headers: dict) -> requests.Response:
    return requests.post(collector.api_url + path, data=body, headers=headers, timeout=30)


def status_of(collector, incident_id: str) -> str:
    return requests.get(f"{collector.api_url}/v1/incidents/{incident_id}", timeout=30).json()[
        "status"
    ]


def test_pagerduty_acknowledges_and_resolves_once_by_signature(collector_factory, pagerduty):
    receiver = pd_receiver(pagerduty, webhook_secret=SECRET)
    with collector_factory(**paging(receiver)) as collector:
        incident = a_loop(collector)
        iid = incident["incident_id"]
        eventually(lambda: pagerduty.bodies(), what="the trigger")

        ack = pd_webhook(incident, "incident.acknowledged")
        bad = post(collector, "/v1/webhooks/pagerduty", ack, {"X-PagerDuty-Signature": "v1=00"})
        unsigned = post(collector, "/v1/webhooks/pagerduty", ack, {})
        assert (bad.status_code, unsigned.status_code) == (401, 401)
        assert status_of(collector, iid) == "open"  # a refused webhook changes nothing

        signed = {"X-PagerDuty-Signature": signature(ack)}
        first = post(collector, "/v1/webhooks/pagerduty", ack, signed)
        assert first.status_code == 200, first.text
        assert first.json()["changed"] == [iid]
        replay = post(collector, "/v1/webhooks/pagerduty", ack, signed)
        assert (replay.status_code, replay.json()["changed"]) == (200, [])
        assert status_of(collector, iid) == "acknowledged"
        acks = [e for e in timeline(collector, iid) if e["event"] == "acknowledged"]
        assert [e["actor"] for e in acks] == ["pagerduty:Ann Example"]  # once, by name

        # PagerDuty rotating the secret signs with the new and the old one
        resolve = pd_webhook(incident, "incident.resolved", who="Bo Example")
        rotated = f"{signature(resolve, 'the-new-secret')},{signature(resolve)}"
        done = post(
            collector, "/v1/webhooks/pagerduty", resolve, {"X-PagerDuty-Signature": rotated}
        )
        assert (done.status_code, done.json()["changed"]) == (200, [iid])
        assert status_of(collector, iid) == "resolved"
        again = post(
            collector, "/v1/webhooks/pagerduty", resolve, {"X-PagerDuty-Signature": rotated}
        )
        assert (again.status_code, again.json()["changed"]) == (200, [])

        # what came from PagerDuty is not sent back to it: the outbox skips both
        eventually(
            lambda: len([r for r in outbox(collector) if r["status"] == "skipped"]) == 2,
            what="the acknowledge and resolve skipped",
        )
        assert [e["event_action"] for e in pagerduty.bodies()] == ["trigger"]
        events = [(e["event"], e["actor"]) for e in timeline(collector, iid)]
        assert ("resolved", "pagerduty:Bo Example") in events
        assert not any(e == "page_resolved" for e, _ in events)


def test_acknowledged_here_then_echoed_by_pagerduty_changes_nothing(collector_factory, pagerduty):
    """Our acknowledge reaches PagerDuty, whose webhook then says 'acknowledged': no loop."""
    with collector_factory(**paging(pd_receiver(pagerduty, webhook_secret=SECRET))) as collector:
        incident = a_loop(collector)
        iid = incident["incident_id"]
        eventually(lambda: pagerduty.bodies(), what="the trigger")
        requests.post(
            f"{collector.api_url}/v1/incidents/{iid}/ack", json={"actor": "cy"}, timeout=30
        )
        eventually(lambda: len(pagerduty.bodies()) == 2, what="the acknowledge to PagerDuty")
        echo = pd_webhook(incident, "incident.acknowledged", who="agentwatch")
        answer = post(
            collector, "/v1/webhooks/pagerduty", echo, {"X-PagerDuty-Signature": signature(echo)}
        )
        assert (answer.status_code, answer.json()["changed"]) == (200, [])
        assert [e["actor"] for e in timeline(collector, iid) if e["event"] == "acknowledged"] == [
            "cy"
        ]


def og_webhook(incident: dict, action: str, who: str = "ann@example.com") -> bytes:
    """What Opsgenie's webhook integration posts (docs.opsgenie.com, alert action data)."""
    alert = {"alertId": "052652ac", "alias": incident["fingerprint"], "tinyId": "23",
             "message": "[SEV2] loop", "username": who, "source": who, "entity": ""}  # fmt: skip
    doc = {"source": {"name": "", "type": "web"}, "alert": alert, "action": action,
           "integrationId": "37c8f316", "integrationName": "agentwatch"}  # fmt: skip
    return orjson.dumps(doc)


def test_opsgenie_acknowledges_and_closes_by_its_secret_header(collector_factory, opsgenie):
    receiver = {"name": "og", "type": "opsgenie", "url": opsgenie.url, "api_key": "og-key",
                "webhook_secret": OG_SECRET}  # fmt: skip
    with collector_factory(**paging(receiver)) as collector:
        incident = a_loop(collector)
        iid = incident["incident_id"]
        eventually(lambda: opsgenie.bodies("/v2/alerts"), what="the create")

        ack = og_webhook(incident, "Acknowledge")
        wrong = post(collector, "/v1/webhooks/opsgenie", ack, {"X-Agentwatch-Secret": "nope"})
        assert wrong.status_code == 401
        assert status_of(collector, iid) == "open"
        good = {"X-Agentwatch-Secret": OG_SECRET}
        assert post(collector, "/v1/webhooks/opsgenie", ack, good).json()["changed"] == [iid]
        replay = post(collector, "/v1/webhooks/opsgenie", ack, good)
        assert (replay.status_code, replay.json()["changed"]) == (200, [])

        close = og_webhook(incident, "Close", who="bo@example.com")
        assert post(collector, "/v1/webhooks/opsgenie", close, good).json()["changed"] == [iid]
        assert post(collector, "/v1/webhooks/opsgenie", close, good).json()["changed"] == []
        assert status_of(collector, iid) == "resolved"
        actors = {e["event"]: e["actor"] for e in timeline(collector, iid)}
        assert actors["acknowledged"] == "opsgenie:ann@example.com"
        assert actors["resolved"] == "opsgenie:bo@example.com"
        eventually(
            lambda: len([r for r in outbox(collector) if r["status"] == "skipped"]) == 2,
            what="the acknowledge and close skipped",
        )
        assert [a["path"] for a in opsgenie.accepted] == ["/v2/alerts"]  # nothing sent back


def test_webhooks_without_a_configured_secret_are_refused(collector_factory, pagerduty):
    with collector_factory(**paging(pd_receiver(pagerduty))) as collector:
        body = orjson.dumps({"event": {}})
        answer = post(collector, "/v1/webhooks/pagerduty", body, {"X-PagerDuty-Signature": "v1=0"})
        assert answer.status_code == 404
        assert "webhook_secret" in answer.json()["error"]
