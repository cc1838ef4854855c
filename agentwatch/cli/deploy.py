"""``agentwatch deploy mark|list``: deploy markers, for the release gate and for on call.

Client commands over ``POST``/``GET /v1/deploys`` (``agentwatch.api.deploys``); registered on the
main group by ``agentwatch.cli.main``. ``agentwatch recurrence check --since deploy`` reads them.
"""

from __future__ import annotations

import getpass
import json

import click

from agentwatch.cli.format import echo_rows, format_option, text_table


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _table(rows: list[dict]) -> str:
    header = ("DEPLOYED (UTC)", "SERVICE", "AGENT", "VERSION", "TENANT", "BY", "NOTE")
    lines = [
        (row["at"][:19].replace("T", " "), row["service"], row["agent"] or "(all)",
         row["version"] or "-", row["tenant"], row["actor"], row["note"])
        for row in rows
    ]  # fmt: skip
    return text_table(header, lines)


def register(main: click.Group, client_options, api_call) -> None:
    @main.group()
    def deploy() -> None:
        """Deploy markers: what was deployed when (the release gate starts from one).

        \b
        Examples:
          agentwatch deploy mark --service support-svc --version "$GIT_SHA"
          agentwatch recurrence check --since deploy --service support-svc
          agentwatch deploy list --service support-svc
        """

    @deploy.command("mark")
    @click.option("--service", required=True, help="The service deployed (its service.name).")
    @click.option("--agent", default="", help="Only this agent of it.  [default: all of them]")
    @click.option("--version", default="", help="What was deployed: a tag, a semver, a git sha.")
    @click.option("--note", default="", help="Anything on-call should know (a link, a summary).")
    @click.option("--tenant", default="", help="The tenant it runs in.  [default: the collector's]")
    @click.option("--actor", help="Who deploys.  [default: your login name]")
    @format_option
    @client_options
    def deploy_mark(service, agent, version, note, tenant, actor, fmt, api_url, token) -> None:
        """Record a deploy now (admin token)."""
        body = {"service": service, "agent": agent, "version": version, "note": note,
                "actor": actor or _login()}  # fmt: skip
        if tenant:
            body["tenant"] = tenant
        row = api_call(api_url, token, "POST", "/v1/deploys", json=body).json()
        if fmt == "json":  # CI keeps it: row["at"] is what the gate starts from
            click.echo(json.dumps(row, indent=2))
            return
        what = row["service"] + (f" (agent {row['agent']})" if row["agent"] else "")
        version_text = f" version {row['version']}" if row["version"] else ""
        click.echo(f"deploy of {what}{version_text} marked at {row['at']} by {row['actor']}")

    @deploy.command("list")
    @click.option("--service", default="", help="Only this service's.")
    @click.option("--agent", default="", help="Only this agent's.")
    @click.option("--version", default=None, help="Only this version's.")
    @click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
    @format_option
    @client_options
    def deploy_list(service, agent, version, limit, fmt, api_url, token) -> None:
        """Deploys, newest first: what changed, and when."""
        params = {"limit": limit}
        for name, value in (("service", service), ("agent", agent), ("version", version)):
            if value:
                params[name] = value
        rows = api_call(api_url, token, "GET", "/v1/deploys", params=params).json()
        echo_rows(
            rows, fmt, "no deploys marked (agentwatch deploy mark --service NAME ...)", _table
        )
