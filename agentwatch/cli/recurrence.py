"""``agentwatch recurrence check``: the release gate. Exit 1 when a problem that was resolved has
fired again since a time (a deploy), so CI can block the release on it.

A client of ``GET /v1/incidents/recurrence`` (``agentwatch.api.recurrence``, where the meaning is
spelled out); registered on the main group by ``agentwatch.cli.main``.
"""

from __future__ import annotations

import json

import click

from agentwatch.cli.format import text_table
from analyzer.incidents.repository import MAX_LIMIT

#: exit statuses, for CI: something recurred; the check could not be made (a wrong option, the
#: collector unreachable or refusing), as click's usage errors
RECURRED = 1
CANNOT_CHECK = 2


def register(main: click.Group, client_options, api_call) -> None:
    @main.group()
    def recurrence() -> None:
        """Release gate: has a resolved problem fired again?

        \b
        Examples:
          agentwatch recurrence check --since 24h
          agentwatch recurrence check --since 2026-12-07T10:00:00Z --agent support
          agentwatch recurrence check --since deploy --service support-svc   # in CI
          agentwatch recurrence check --since deploy:v1.4.2 --agent support
        """

    @recurrence.command("check")
    @click.option(
        "--since",
        required=True,
        metavar="TIME",
        help="ISO 8601 time (UTC unless it has an offset); a duration back from now: 90m, 24h,"
        " 7d; or a deploy marker (agentwatch deploy mark): 'deploy', the latest deploy of"
        " --service/--agent, or 'deploy:VERSION'.",
    )
    @click.option("--agent", help="Only this agent's incidents.")
    @click.option("--service", help="Only this service's incidents.")
    @click.option(
        "--format", "fmt", type=click.Choice(["table", "json"]), default="table",
        show_default=True,
    )  # fmt: skip
    @client_options
    def recurrence_check(since, agent, service, fmt, api_url, token) -> None:
        """Exit 1 and list them when an incident first seen since TIME has a fingerprint whose
        earlier incident was resolved before it fired (resolved as a false alarm does not count:
        nothing was fixed; drills never count); exit 0 otherwise, 2 when it cannot check (also
        when --since names a deploy nobody marked)."""
        if since == "deploy" and not (agent or service):
            raise click.UsageError("--since deploy: whose deploy? give --service or --agent")
        params = {"since": since}
        for name, value in (("agent", agent), ("service", service)):
            if value:
                params[name] = value
        try:
            answer = api_call(api_url, token, "GET", "/v1/incidents/recurrence", params=params)
        except click.ClickException as exc:
            exc.exit_code = CANNOT_CHECK  # not "it recurred": CI tells the two apart
            raise
        found = answer.json()
        rows = found["recurrences"]
        since = found["since"] + _deploy_text(found.get("deploy"))
        if fmt == "json":
            click.echo(json.dumps(found, indent=2))
        elif rows:
            click.echo(f"{len(rows)} resolved problem(s) fired again since {since}:")
            click.echo(_table(rows))
            if len(rows) >= MAX_LIMIT:
                click.echo(
                    f"(the first {MAX_LIMIT} only: narrow with --agent, --service or --since)"
                )
        else:
            click.echo(f"no recurrence since {since}")
        if rows:
            raise SystemExit(RECURRED)


def _table(rows: list[dict]) -> str:
    header = ("FINGERPRINT", "DETECTOR/KIND", "SERVICE", "AGENT", "RESOLVED")
    header += ("AS", "FIRED AGAIN", "NEW INCIDENT", "LINK")
    lines = [
        (
            r["fingerprint"],
            f"{r['detector']}/{r['kind']}",
            r["service"],
            r["agent"] or "-",
            f"{_utc(r['resolved_at'])} ({r['resolved_incident_id']})",
            r["resolution"] or "-",
            _utc(r["fired_again_at"]),
            r["incident_id"],
            r["link"] or "-",
        )
        for r in rows
    ]
    return text_table(header, lines)


def _deploy_text(deploy: dict | None) -> str:
    """' (deploy v1.4.2 of support-svc, by alice)' when the gate started from a marker."""
    if not deploy:
        return ""
    version = f" {deploy['version']}" if deploy["version"] else ""
    agent = f" agent {deploy['agent']}" if deploy["agent"] else ""
    return f" (deploy{version} of {deploy['service']}{agent}, by {deploy['actor']})"


def _utc(iso: str) -> str:
    """'2026-12-07T10:00:01.123456789Z' -> '2026-12-07 10:00:01Z'."""
    return str(iso)[:19].replace("T", " ") + "Z"
