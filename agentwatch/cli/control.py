"""``agentwatch kill | pause | quarantine | freeze | resume`` and ``agentwatch control list|check``.

Registered on the main group by ``agentwatch.cli.main`` (``register``), which passes its own client
options and API call so that ``python -m agentwatch.cli.main`` and the console script behave the same.
"""

from __future__ import annotations

import json

import click

from agentwatch.cli.format import echo_rows, format_option, text_table

SCOPE_OPTIONS = ("tenant", "service", "agent", "session", "trace", "user", "tool")

EXAMPLES = """
\b
Scope: --global, or any of --tenant, --service, --agent, --session, --trace, --user, --tool
(combined: all must match; without --tenant, every tenant). --trace stops the run in progress
(32 hex digits; agents check with their current trace id). With --tool, kill and pause open
that tool's circuit (for the agent/service given, or everyone). Agents see the change on their
next check, within a second.
\b
Examples:
  agentwatch pause --agent support --reason "refund loop, INC-42"
  agentwatch pause --session s-81 --incident inc-3f2a9c01b7d4 --reason "looping on refunds"
  agentwatch quarantine --user u-1893 --reason "prompt-injection attempts"
  agentwatch pause --trace 4bf92f3577b34da6a3ce929d0e0e4736 --reason "refund loop mid-run"
  agentwatch pause --tool refund_order --agent support --reason "refunds going to wrong orders"
  agentwatch kill --global --reason "provider outage, stop everything"
  agentwatch resume --agent support --reason "fix deployed"
"""


def _scope_options(fn):
    for name in reversed(SCOPE_OPTIONS):
        metavar = "NAME" if name in ("tenant", "service", "agent", "tool") else "ID"
        fn = click.option(f"--{name}", metavar=metavar, help=f"Only this {name}.")(fn)
    fn = click.option("--global", "everyone", is_flag=True, help="Everyone (no other scope).")(fn)
    return fn


def _scope(everyone: bool, values: dict) -> dict:
    scope = {name: value for name, value in values.items() if value}
    if everyone and scope:
        raise click.UsageError("--global stands alone: drop it, or drop the other scope options")
    if not everyone and not scope:
        raise click.UsageError(
            "say whom: --global for everyone, or"
            " --tenant/--service/--agent/--session/--trace/--user/--tool"
        )
    return scope


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def register(main: click.Group, client_options, api_call) -> None:
    def change_command(name: str, mode: str | None, summary: str):
        @main.command(name, help=summary + "\n" + EXAMPLES)
        @_scope_options
        @click.option("--reason", required=True, help="Why (required; kept in the audit trail).")
        @click.option("--actor", help="Who does it.  [default: your login name]")
        @click.option(
            "--incident",
            metavar="ID",
            help="The incident this is for: the control names it, and the incident's timeline"
            " gets a 'contained' event.",
        )
        @client_options
        def command(everyone, reason, actor, incident, api_url, token, **values):
            scope = _scope(everyone, values)
            body = {"scope": scope, "reason": reason, "actor": _actor(actor)}
            if incident:
                if mode is None:
                    raise click.UsageError(
                        "--incident names what a control was set for: not resume"
                    )
                body["incident"] = incident
            if mode is None:
                out = api_call(api_url, token, "POST", "/v1/control/resume", json=body).json()
                click.echo(f"resumed {out['scope']} (was {out['previous_mode']}): {reason}")
                return
            body["mode"] = (
                "circuit_open" if scope.get("tool") and mode in ("killed", "paused") else mode
            )
            out = api_call(api_url, token, "POST", "/v1/control", json=body).json()
            click.echo(f"{out['mode']} {out['scope']} (was {out['previous_mode']}): {reason}")

        return command

    change_command("kill", "killed", "Kill switch: stop now, in-flight work included.")
    change_command(
        "pause", "paused", "Pause: no new consequential actions or runs; in-flight work drains."
    )
    change_command(
        "quarantine",
        "quarantined",
        "Quarantine one user, session or run (needs --user, --session or --trace).",
    )
    change_command("freeze", "budget_frozen", "Budget freeze: new runs are refused.")
    change_command("resume", None, "Lift the control in force for exactly this scope.")

    @main.group()
    def control() -> None:
        """What containment is in force, and what an agent would be told."""

    @control.command("list")
    @format_option
    @client_options
    def control_list(fmt, api_url, token) -> None:
        """Controls in force: scope, mode, since when, by whom and why."""
        controls = api_call(api_url, token, "GET", "/v1/control").json()["controls"]
        echo_rows(controls, fmt, "nothing in force: every agent is enabled", _control_table)

    @control.command("check")
    @_scope_options
    @client_options
    def control_check(everyone, api_url, token, **values) -> None:
        """What an agent with this context is told (as GET /v1/control/check)."""
        params = {name: value for name, value in values.items() if value}
        out = api_call(api_url, token, "GET", "/v1/control/check", params=params).json()
        click.echo(json.dumps(out, indent=2))


def _control_table(controls: list[dict]) -> str:
    rows = [
        (c["scope"], c["mode"], c["since"][:19] + "Z", f"{c['actor']} ({c['source']})",
         c["reason"] + (f" [{c['incident_id']}]" if c["incident_id"] else ""))
        for c in controls
    ]  # fmt: skip
    return text_table(("SCOPE", "MODE", "SINCE", "BY", "WHY"), rows)
