"""A span cannot make itself a drill (issue 16): ``agentwatch.drill`` is honoured only when it
names a drill an admin started (``POST /v1/gamedays``), in the span's own tenant and service.

Otherwise any exporter could mark a real agent's spans as a drill and so keep its incidents out
of on-call's production views and pages. Spans go through the real OTel SDK exporter (gRPC, with
the tenant's token) to a real collector; every read is of the real store or over HTTP.
"""

from __future__ import annotations

import pytest
import requests

from analyzer.gameday.repository import GamedayRepository
from tests.test_detect_e2e import run_agent, wait_for_incidents
from tests.test_gameday import drill_incident
from tests.test_tenants import TENANTS, bearer

REFUSED = "agentwatch_drill_claims_refused_total"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    from tests.conftest import run_collector

    with run_collector(
        tmp_path_factory.mktemp("drill_claims"), api_token="admin", tenants=TENANTS
    ) as collector:
        yield collector


def start_drill(running, tenant: str, service: str = "support-svc", token: str = "admin"):
    return requests.post(
        f"{running.api_url}/v1/gamedays",
        json={"scenario": "loop", "agent": "support", "service": service, "tenant": tenant},
        headers=bearer(token),
        timeout=30,
    )


def send_loop(running, session: str, claim, token: str, service: str = "support-svc", **more):
    """An agent calling lookup_order(42) six times (a loop: 7 spans), its resource claiming
    ``agentwatch.drill = claim``. One service per test: a loop's incident is one per service and
    agent (its fingerprint), whichever session repeats it."""
    resource = {"agentwatch.drill": claim, **more}
    run_agent(running, session, f"user-{session}", [42] * 6, service, token, resource)


def stored(running, session: str) -> dict:
    """How the session's spans were stored: their count, how many as a drill, their tenant."""
    [row] = running.wait_for_rows(
        "SELECT count() AS n, countIf(Drill) AS drill, any(Tenant) AS tenant FROM otel_traces"
        f" WHERE SessionId = '{session}' HAVING n = 7",
        1,
    )
    return {"spans": int(row["n"]), "drill": int(row["drill"]), "tenant": row["tenant"]}


def refused_claims(running) -> float:
    text = requests.get(f"{running.api_url}/metrics", timeout=30).text
    [line] = [x for x in text.splitlines() if x.startswith(REFUSED + " ")]
    return float(line.split()[1])


def production_incident(running, session: str) -> dict:
    [incident] = wait_for_incidents(running, f"detector = 'loop' AND session_id = '{session}'")
    assert incident["drill"] in (False, 0)
    open_now = running.query(
        "SELECT incident_id FROM open_incidents WHERE session_id = {s:String}", {"s": session}
    )
    assert [r["incident_id"] for r in open_now] == [incident["incident_id"]]  # on-call sees it
    return incident


@pytest.mark.parametrize(
    ("claim", "session"),
    [(True, "claims-bool"), ("true", "claims-text"), ("dr-0123456789ab", "claims-made-up-id")],
)
def test_a_span_claiming_a_drill_nobody_started_is_production(running, claim, session):
    before = refused_claims(running)
    send_loop(running, session, claim, token="acme-in", service=f"{session}-svc")
    assert stored(running, session) == {"spans": 7, "drill": 0, "tenant": "acme"}
    production_incident(running, session)
    assert refused_claims(running) - before == 7


def test_a_started_drills_spans_are_a_drill_in_its_service_only(running):
    started = start_drill(running, "acme")
    assert started.status_code == 201, started.text
    drill_id = started.json()["drill_id"]
    assert started.json()["resource"]["agentwatch.drill"] == drill_id  # what gameday run sends

    before = refused_claims(running)
    send_loop(running, f"{drill_id}-1", drill_id, token="acme-in")
    assert stored(running, f"{drill_id}-1") == {"spans": 7, "drill": 7, "tenant": "acme"}
    incident = drill_incident(running, drill_id)
    assert incident["drill"] in (True, 1) and incident["detector"] == "loop"
    assert not running.query(
        "SELECT 1 FROM open_incidents WHERE incident_id = {i:String}",
        {"i": incident["incident_id"]},
    )
    assert refused_claims(running) == before

    # the drill's id, once seen in its spans, cannot hide a real service's loop
    send_loop(running, "billing-real", drill_id, token="acme-in", service="billing-svc")
    assert stored(running, "billing-real")["drill"] == 0
    production_incident(running, "billing-real")
    assert refused_claims(running) - before == 7


def test_a_drill_of_another_tenant_cannot_be_claimed(running):
    started = start_drill(running, "beta", service="acme-claims-beta-svc")
    assert started.status_code == 201, started.text
    drill_id = started.json()["drill_id"]
    # acme's exporter names beta's drill, and beta as its tenant: the token decides the tenant
    send_loop(running, "acme-claims-beta", drill_id, token="acme-in",
              service="acme-claims-beta-svc", **{"tenant.id": "beta"})  # fmt: skip
    assert stored(running, "acme-claims-beta") == {"spans": 7, "drill": 0, "tenant": "acme"}
    production_incident(running, "acme-claims-beta")


@pytest.mark.parametrize("token", ["acme-in", "acme-read", "", "wrong"])
def test_only_the_admin_token_starts_a_drill(running, token):
    answer = start_drill(running, "acme", token=token)
    assert answer.status_code in (401, 403), answer.text
    assert "drill_id" not in answer.text


def test_a_drill_for_a_tenant_no_token_has_is_refused(running):
    answer = start_drill(running, "no-such-tenant")
    assert answer.status_code == 400 and "tenant: one of" in answer.json()["error"]


def test_an_ended_drill_stays_claimable_for_the_grace_period_only(running):
    started = start_drill(running, "acme")
    drill = {**started.json(), "status": "done"}
    gamedays = GamedayRepository(running.collector.store, running.collector.run_store)
    key = ("acme", drill["drill_id"], "support-svc")
    assert key in running.call(gamedays.claimable(grace_s=60, max_age_s=3600))
    running.call(gamedays.save(drill))  # resolved: written as done
    assert key in running.call(gamedays.claimable(grace_s=60, max_age_s=3600))  # late spans
    assert key not in running.call(gamedays.claimable(grace_s=0, max_age_s=3600))
