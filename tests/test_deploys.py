"""Deploy markers on a real collector: `agentwatch deploy mark|list` (admin marks, each tenant's
reader sees its own), and the release gate started from one (`recurrence check --since deploy`)
on incidents made by real OTLP traffic."""

from __future__ import annotations

import json

import requests
from click.testing import CliRunner

from agentwatch.cli.main import main as cli
from tests.test_recurrence import TENANTS, a_loop, check, resolve


def deploy(collector, *args: str, token: str = "admin"):
    return CliRunner().invoke(
        cli, ["deploy", *args, "--api-url", collector.api_url, "--token", token]
    )


def deploys(collector, token: str, **params) -> requests.Response:
    return requests.get(
        f"{collector.api_url}/v1/deploys", params=params,
        headers={"Authorization": f"Bearer {token}"}, timeout=30,
    )  # fmt: skip


def mark(collector, token: str, **body) -> requests.Response:
    return requests.post(
        f"{collector.api_url}/v1/deploys", json=body,
        headers={"Authorization": f"Bearer {token}"}, timeout=30,
    )  # fmt: skip


def test_deploys_are_marked_by_admin_and_read_per_tenant(collector_factory):
    with collector_factory(api_token="admin", tenants=TENANTS) as collector:
        marked = deploy(collector, "mark", "--service", "support-svc", "--version", "v1.4.2",
                        "--tenant", "acme", "--note", "new refund flow", "--actor", "ci-bot")  # fmt: skip
        assert marked.exit_code == 0, marked.output
        assert "deploy of support-svc version v1.4.2 marked at 20" in marked.output
        assert "by ci-bot" in marked.output
        tricky = "billing'); DROP TABLE deploys; --"  # a name is data, never SQL
        beta_deploy = mark(collector, "admin", service=tricky, agent="payer", tenant="beta")
        assert beta_deploy.status_code == 201, beta_deploy.text

        # only the admin token marks: an ingest or read token is refused, nothing is recorded
        for token in ("acme-in", "acme-read"):
            assert mark(collector, token, service="support-svc", version="evil").status_code == 403
        refused = deploy(collector, "mark", "--service", "support-svc", token="acme-read")
        assert refused.exit_code != 0 and "403" in refused.output
        for body, why in (
            ({"service": ""}, "service"),
            ({"service": "s", "version": "1.0'; DROP TABLE deploys"}, "version"),
            ({"service": "s", "tenant": "nobody"}, "tenant"),
        ):
            answer = mark(collector, "admin", **body)
            assert answer.status_code == 400 and why in answer.json()["error"], answer.text

        # each tenant's reader sees its own deploys; the admin sees all, newest first
        [acme] = deploys(collector, "acme-read").json()
        assert (acme["service"], acme["agent"], acme["version"], acme["tenant"]) == (
            "support-svc", "", "v1.4.2", "acme",
        )  # fmt: skip
        assert (acme["actor"], acme["note"]) == ("ci-bot", "new refund flow")
        [beta] = deploys(collector, "beta-read").json()
        assert (beta["service"], beta["agent"]) == (tricky, "payer")
        everyone = deploys(collector, "admin").json()
        assert [d["tenant"] for d in everyone] == ["beta", "acme"]
        assert deploys(collector, "beta-read", tenant="acme").json() == [beta]  # not escaped
        assert deploys(collector, "admin", service=tricky).json() == [beta]
        assert deploys(collector, "admin", version="v9").json() == []
        assert deploys(collector, "acme-in").status_code == 403

        listed = deploy(collector, "list", token="acme-read")
        assert listed.exit_code == 0, listed.output
        [row] = [ln for ln in listed.output.splitlines() if "support-svc" in ln]
        for cell in ("v1.4.2", "(all)", "acme", "ci-bot", "new refund flow"):
            assert cell in row, (cell, listed.output)
        as_json = deploy(collector, "list", "--format", "json", token="admin")
        assert [d["service"] for d in json.loads(as_json.output)] == [tricky, "support-svc"]
        none = deploy(collector, "list", "--service", "nothing-here", token="admin")
        assert none.exit_code == 0 and "no deploys marked" in none.output


def test_the_gate_starts_from_the_deploy_marker(collector_factory):
    with collector_factory(api_token="admin", tenants=TENANTS) as collector:
        fixed = a_loop(collector, "before-v2")
        resolve(collector, fixed["incident_id"])
        v2 = deploy(collector, "mark", "--service", "support-svc", "--version", "v2",
                    "--tenant", "acme")  # fmt: skip
        assert v2.exit_code == 0, v2.output

        # nothing fired since the deploy: the release passes
        clean = check(collector, "--since", "deploy", "--service", "support-svc")
        assert clean.exit_code == 0, clean.output
        assert "no recurrence since" in clean.output and "(deploy v2 of support-svc" in clean.output
        assert check(collector, "--since", "deploy:v2").exit_code == 0

        # the fixed loop fires again after the deploy: the release is blocked
        again = a_loop(collector, "after-v2")
        assert again["fingerprint"] == fixed["fingerprint"]
        gate = check(collector, "--since", "deploy", "--service", "support-svc")
        assert gate.exit_code == 1, gate.output
        assert again["incident_id"] in gate.output and "(deploy v2 of support-svc" in gate.output
        as_json = check(collector, "--since", "deploy:v2", "--agent", "support", "--format", "json")
        assert as_json.exit_code == 1, as_json.output
        found = json.loads(as_json.output)
        assert [r["incident_id"] for r in found["recurrences"]] == [again["incident_id"]]
        assert (found["deploy"]["version"], found["deploy"]["tenant"]) == ("v2", "acme")
        assert check(collector, "--since", "deploy:v2", token="admin").exit_code == 1

        # a later deploy of the agent alone: the gate starts from it, the older one still answers
        v3 = deploy(collector, "mark", "--service", "support-svc", "--agent", "support",
                    "--version", "v3", "--tenant", "acme")  # fmt: skip
        assert v3.exit_code == 0, v3.output
        after_v3 = check(collector, "--since", "deploy", "--service", "support-svc",
                         "--agent", "support")  # fmt: skip
        assert after_v3.exit_code == 0 and "(deploy v3 of support-svc agent support" in (
            after_v3.output
        ), after_v3.output
        assert check(collector, "--since", "deploy:v2").exit_code == 1

        # a marker naming no deploy cannot check (2), not "it recurred" (1)
        unknown = check(collector, "--since", "deploy:v9")
        assert unknown.exit_code == 2 and "no deploy of version 'v9'" in unknown.output
        other_service = check(collector, "--since", "deploy", "--service", "billing-svc")
        assert other_service.exit_code == 2 and "no deploy" in other_service.output
        assert check(collector, "--since", "deploy:v2", token="beta-read").exit_code == 2
        whose = check(collector, "--since", "deploy")
        assert whose.exit_code == 2 and "--service or --agent" in whose.output
        injected = check(collector, "--since", "deploy:v2' OR 1=1 --")
        assert injected.exit_code == 2 and "version" in injected.output
