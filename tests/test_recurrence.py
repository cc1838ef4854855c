"""The release gate: `agentwatch recurrence check` on incidents made by real OTLP traffic through a
real collector, resolved over the API; a loop that comes back after its fix fails the gate."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import requests
from click.testing import CliRunner

from agentwatch.cli.main import main as cli
from tests.test_detect_e2e import run_agent, wait_for_incidents

TENANTS = {
    "acme": {"ingest_token": "acme-in", "read_token": "acme-read"},
    "beta": {"ingest_token": "beta-in", "read_token": "beta-read"},
}


def a_loop(collector, session: str, service: str = "support-svc") -> dict:
    """Six identical lookup_order calls from acme's exporter -> the loop incident they open."""
    run_agent(collector, session, f"user-{session}", [42] * 6, service=service, token="acme-in")
    [incident] = wait_for_incidents(collector, f"detector = 'loop' AND session_id = '{session}'")
    return incident


def resolve(collector, incident_id: str, false_alarm: bool = False) -> None:
    answer = requests.post(
        f"{collector.api_url}/v1/incidents/{incident_id}/resolve",
        json={"actor": "alice", "reason": "tool fixed", "false_alarm": false_alarm},
        headers={"Authorization": "Bearer admin"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def now_iso() -> str:
    time.sleep(0.01)  # strictly after what came before
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def check(collector, *args: str, token: str = "acme-read"):
    auth = ["--token", token] if token else []
    return CliRunner().invoke(
        cli, ["recurrence", "check", *args, "--api-url", collector.api_url, *auth]
    )


def test_a_fixed_loop_that_fires_again_after_the_deploy_fails_the_gate(collector_factory):
    with collector_factory(api_token="admin", tenants=TENANTS) as collector:
        fixed = a_loop(collector, "before-deploy")
        resolve(collector, fixed["incident_id"])
        # a loop of another service, resolved as a false alarm: nothing was fixed
        noise = a_loop(collector, "noise-1", service="billing-svc")
        resolve(collector, noise["incident_id"], false_alarm=True)

        deployed_at = now_iso()
        clean = check(collector, "--since", deployed_at)
        assert clean.exit_code == 0, clean.output
        assert f"no recurrence since {deployed_at[:19]}" in clean.output

        again = a_loop(collector, "after-deploy")
        a_loop(collector, "noise-2", service="billing-svc")
        assert again["fingerprint"] == fixed["fingerprint"]
        assert again["incident_id"] != fixed["incident_id"]

        gate = check(collector, "--since", deployed_at)
        assert gate.exit_code == 1, gate.output
        [line] = [ln for ln in gate.output.splitlines() if again["incident_id"] in ln]
        for cell in (
            fixed["fingerprint"], "loop/repeated_call", "support-svc", "support",
            fixed["incident_id"], "fixed", again["link"],
        ):  # fmt: skip
            assert cell in line, (cell, gate.output)
        assert "billing-svc" not in gate.output  # its earlier incident was a false alarm

        as_json = check(collector, "--since", deployed_at, "--format", "json")
        assert as_json.exit_code == 1
        [row] = json.loads(as_json.output)["recurrences"]
        assert (row["incident_id"], row["resolved_incident_id"], row["resolution"]) == (
            again["incident_id"], fixed["incident_id"], "fixed",
        )  # fmt: skip
        assert row["fired_again_at"] >= deployed_at[:19]

        # filters: another agent or service, or another tenant's read token, sees nothing
        assert check(collector, "--since", deployed_at, "--agent", "triage").exit_code == 0
        assert check(collector, "--since", deployed_at, "--service", "other").exit_code == 0
        other_tenant = check(collector, "--since", deployed_at, token="beta-read")
        assert other_tenant.exit_code == 0 and "no recurrence" in other_tenant.output
        assert check(collector, "--since", "1h", token="admin").exit_code == 1

        # a gate opened after the recurrence: nothing new fired since
        assert check(collector, "--since", now_iso()).exit_code == 0


def test_a_wrong_since_is_refused_with_what_it_takes(collector):
    refused = check(collector, "--since", "last tuesday'; DROP TABLE incidents --")
    assert refused.exit_code == 2  # could not check: not the same as "it recurred"
    assert "ISO 8601" in refused.output and "24h" in refused.output
    answer = requests.get(f"{collector.api_url}/v1/incidents/recurrence", timeout=30)
    assert answer.status_code == 400 and "'since' is required" in answer.json()["error"]


def drill_loop(collector, session: str) -> dict:
    """A loop sent as a gameday drill (resource attribute agentwatch.drill: the id of a drill an
    admin started) -> its incident."""
    started = requests.post(
        f"{collector.api_url}/v1/gamedays",
        json={"scenario": "loop", "agent": "support", "service": "support-svc"},
        timeout=30,
    )
    assert started.status_code == 201, started.text
    drill_id = started.json()["drill_id"]
    run_agent(collector, session, "", [42] * 6, resource={"agentwatch.drill": drill_id})
    [incident] = wait_for_incidents(collector, f"detector = 'loop' AND session_id = '{session}'")
    return incident


def test_drills_never_count_as_a_recurrence(collector):
    first = drill_loop(collector, "drill-1")
    assert first["drill"] in (True, 1)
    resolved = requests.post(
        f"{collector.api_url}/v1/incidents/{first['incident_id']}/resolve", json={}, timeout=30
    )
    assert resolved.status_code == 200, resolved.text
    since = now_iso()
    again = drill_loop(collector, "drill-2")
    assert again["fingerprint"] == first["fingerprint"]  # the same rehearsal, twice
    gate = check(collector, "--since", since, token="")
    assert gate.exit_code == 0 and "no recurrence" in gate.output, gate.output
