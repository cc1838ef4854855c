"""`agentwatch runbook`: the Markdown names this deployment's agents, tools, routes and receivers,
never prints a secret from its config, and every command it prints runs with this CLI (the
SQL ones against a real collector)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from agentwatch.cli.main import main as cli
from analyzer.detectors import REGISTRY

TEMPLATES = Path(__file__).resolve().parents[1] / "agentwatch" / "runbook"

SECRETS = {
    "api_token": "admin-tok-4f9c2e7a1b",
    "sql_token": "sql-tok-77d1e0c3aa",
    "acme_ingest": "acme-in-tok-91be4c",
    "acme_read": "acme-read-tok-0c3e9f",
    "routing_key": "R0UT1NGKEY0123456789abcdef012345",
    "api_key": "0psg3n1e-key-5b2d",
    "slack_path": "T000SECRET/B000SECRET/xoxb1234secretpath",
    "hmac": "hmac-signing-secret-8e1f",
    "header": "Bearer hdr-secret-3a7c",
    "am_password": "am-pass-44e1",
    "public_password": "console-pass-9f0d",
    "clickhouse_password": "ch-pass-1d2e3f",
    "webhook_secret": "pd-webhook-secret-6c1a",
    "link_token": "grafana-tok-5e5e5e",
}


def write_deployment(tmp_path: Path) -> tuple[Path, Path]:
    s = SECRETS
    policy = {
        "version": 1,
        "defaults": {"actions": {"SEV1": "pause_session"}},
        "agents": [
            {
                "name": "support",
                "match": {"service": "support-svc", "agent": "support"},
                "allowed_tools": ["lookup_order", "refund_order", "search_docs"],
                "consequential_tools": ["refund_*", "send_*"],
                "budgets": {"session_cost_usd": 2.0},
                "actions": {"loop": "freeze_session"},
            },
            {"name": "analysts", "match": {"service": "analytics", "agent": "sql-*"}},
        ],
    }
    config = {
        "api_token": s["api_token"],
        "sql_token": s["sql_token"],
        "tenants": {"acme": {"ingest_token": s["acme_ingest"], "read_token": s["acme_read"]}},
        "public_url": f"https://oncall:{s['public_password']}@aw.example:8443",
        "incident_link_template": f"https://grafana.example/explore?token={s['link_token']}&t={{trace_id}}",
        "clickhouse_url": f"http://agentwatch:{s['clickhouse_password']}@clickhouse.internal:8123/aw",
        "policy_file": str(tmp_path / "policy.yaml"),
        "paging": {
            "receivers": [
                {"name": "pd-oncall", "type": "pagerduty", "routing_key": s["routing_key"],
                 "webhook_secret": s["webhook_secret"]},
                {"name": "ops", "type": "opsgenie", "api_key": s["api_key"]},
                {"name": "slack-agents", "type": "slack",
                 "url": f"https://hooks.slack.com/services/{s['slack_path']}"},
                {"name": "am", "type": "alertmanager",
                 "url": f"http://alerts:{s['am_password']}@alertmanager:9093"},
                {"name": "audit", "type": "webhook", "url": "https://hooks.example/aw",
                 "secret": s["hmac"], "headers": {"Authorization": s["header"]}},
            ],
            "route": {
                "receiver": "slack-agents",
                "routes": [
                    {"match": {"severity": "SEV1"}, "receiver": "pd-oncall", "continue": True},
                    {"match": {"class": "infrastructure"}, "receiver": "ops"},
                    {"name": "billing-audit", "match_re": {"service": "billing-.*"},
                     "receiver": "audit"},
                    {"name": "semantic-to-am", "match": {"class": "semantic"}, "receiver": "am"},
                ],
            },
        },
    }  # fmt: skip
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    (tmp_path / "agentwatch.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "agentwatch.yaml", tmp_path / "policy.yaml"


@pytest.fixture
def runbook(tmp_path, monkeypatch) -> str:
    for name in [n for n in __import__("os").environ if n.startswith("AGENTWATCH_")]:
        monkeypatch.delenv(name)
    config, _ = write_deployment(tmp_path)
    out = tmp_path / "RUNBOOK.md"
    ran = CliRunner().invoke(cli, ["runbook", "--config", str(config), "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    return out.read_text()


def shell_commands(markdown: str) -> list[list[str]]:
    """The ``agentwatch`` commands of the runbook's ```sh blocks, as argument lists, cut at the
    first shell operator (a pipe, a redirection) and without comments."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, flags=re.DOTALL):
        for line in block.splitlines():
            if not line.startswith("agentwatch "):
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words = list(lexer)
            cut = next((i for i, w in enumerate(words) if set(w) <= set("|&;<>()")), len(words))
            commands.append(words[1:cut])
    return commands


def resolve_command(args: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """(command path, the click command, its own arguments) for ``agentwatch ARGS``."""
    command: click.Command = cli
    path: list[str] = []
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"no command `agentwatch {' '.join([*path, args[0]])}`"
        command, path, args = sub, [*path, args[0]], args[1:]
    return path, command, args


def test_the_runbook_names_this_deployments_agents_tools_routes_and_receivers(runbook):
    # agents and tools of the policy: exact containment commands and console links
    assert "#### support: service `support-svc`, agent `support`" in runbook
    pause = "agentwatch pause --service support-svc --agent support --incident INCIDENT_ID"
    assert pause in runbook
    assert "agentwatch pause --tool refund_order --service support-svc --agent support" in runbook
    assert "--tool search_docs" not in runbook  # allowed, but not consequential
    assert "https://aw.example:8443/sessions?service=support-svc&agent=support" in runbook
    assert "https://aw.example:8443/incidents/INCIDENT_ID" in runbook
    assert "agentwatch pause --service analytics --agent AGENT" in runbook  # sql-* is a glob
    assert "session_cost_usd = 2.0" in runbook and "loop → `freeze_session`" in runbook
    assert "tenants (acme)" in runbook
    # escalation: receivers by name and type, the route tree, who is paged for what
    for name, kind in (("pd-oncall", "pagerduty"), ("ops", "opsgenie"), ("slack-agents", "slack"),
                       ("am", "alertmanager"), ("audit", "webhook")):  # fmt: skip
        assert f"| `{name}` | {kind} |" in runbook
    assert "- `default` → `slack-agents` (slack): everything" in runbook
    assert "  - `pd-oncall` → `pd-oncall` (pagerduty) when severity=SEV1, then keeps matching" in (
        runbook
    )
    semantic = "| semantic | pd-oncall, am (route semantic-to-am) | am (route semantic-to-am) |"
    assert semantic in runbook
    assert "| infrastructure | pd-oncall, ops | ops | ops |" in runbook
    assert "agentwatch alerts test --route billing-audit" in runbook
    # one section per detector, each with its own guidance
    for name in REGISTRY:
        assert f"#### `{name}`" in runbook
        assert (TEMPLATES / "detectors" / f"{name}.md.j2").exists(), (
            f"no runbook section for {name}"
        )


def test_the_runbook_prints_no_secret_from_the_config(runbook):
    for key, secret in SECRETS.items():
        assert secret not in runbook, key
    for part in SECRETS["slack_path"].split("/") + SECRETS["header"].split():
        assert part == "Bearer" or part not in runbook
    assert "https://hooks.slack.com" in runbook  # where it sends, host only
    assert "$AGENTWATCH_TOKEN" in runbook or "AGENTWATCH_TOKEN=" in runbook


def test_every_command_the_runbook_prints_exists_in_the_cli(runbook):
    commands = shell_commands(runbook)
    assert len(commands) > 25
    runner = CliRunner()
    for args in commands:
        path, command, own = resolve_command(args)
        assert path, args
        helped = runner.invoke(cli, [*path, "--help"])
        assert helped.exit_code == 0, (args, helped.output)
        # its options and values parse (choices, required options, arguments)
        with command.make_context(" ".join(path), list(own)) as context:
            assert context.command is command


def test_the_runbooks_sql_runs_on_a_real_collector(runbook, collector):
    queries = [args for args in shell_commands(runbook) if args[0] == "sql"]
    assert len(queries) >= 4
    for args in queries:
        ran = CliRunner().invoke(cli, [*args, "--api-url", collector.api_url])
        assert ran.exit_code == 0, (args, ran.output)


def test_without_paging_or_policy_it_says_so(tmp_path, monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("AGENTWATCH_")]:
        monkeypatch.delenv(name)
    ran = CliRunner().invoke(cli, ["runbook"])
    assert ran.exit_code == 0, ran.output
    assert "**Paging is not configured**" in ran.output
    assert "agentwatch pause --service SERVICE --agent AGENT" in ran.output
    for args in shell_commands(ran.output):
        resolve_command(args)


def test_the_readme_section_shows_commands_that_exist():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Runbook and release gate", 1)[1].split("\n## ", 1)[0]
    commands = shell_commands(section)
    assert {args[0] for args in commands} == {"runbook", "recurrence", "deploy"}
    for args in commands:
        path, command, own = resolve_command(args)
        with command.make_context(" ".join(path), list(own)):
            pass
