"""``agentwatch golden mark SESSION --label L`` and ``agentwatch golden list``.

Registered on the main group by ``agentwatch.cli.main`` (``register``), which passes its own client
options and API call (``POST``/``GET /v1/golden``).
"""

from __future__ import annotations

import os

import click

from agentwatch.cli.format import echo_rows, format_option, text_table


def _golden_table(rows: list[dict]) -> str:
    columns = [("AGENT", "agent"), ("LABEL", "label"), ("SESSION", "session_id"),
               ("TENANT", "tenant"), ("MARKED (UTC)", "marked_at"), ("BY", "marked_by"),
               ("NOTE", "note")]  # fmt: skip
    for row in rows:
        row["marked_at"] = row["marked_at"][:16].replace("T", " ")
    header = [title for title, _ in columns]
    return text_table(header, [[str(row.get(key, "")) for _, key in columns] for row in rows])


def register(main: click.Group, client_options, api_call) -> None:
    @main.group()
    def golden() -> None:
        """Golden runs: the known-good session of an agent and input class (label).

        An incident's run is diffed against the golden run of its agent, tool call by tool call,
        in the console (the incident page's "Against the golden run").

        \b
        Examples:
          agentwatch golden mark sess-8812 --agent support --label "order status"
          agentwatch golden list --agent support
        """

    @golden.command("mark")
    @click.argument("session_id", metavar="SESSION")
    @click.option("--label", required=True, help="The input class, e.g. 'order status'.")
    @click.option("--agent", default="", help="The session's agent (checked; default: its own).")
    @click.option("--tenant", default="", help="Needed only when two tenants have this session.")
    @click.option("--note", default="", help="Why this run is the good one.")
    @click.option(
        "--actor",
        default=lambda: os.environ.get("USER", "cli"),
        help="Who marks it.  [default: $USER]",
    )
    @client_options
    def golden_mark(session_id, label, agent, tenant, note, actor, api_url, token) -> None:
        """Mark SESSION as the golden run of its agent and LABEL (replacing the previous one)."""
        body = {"session_id": session_id, "label": label, "agent": agent, "tenant": tenant,
                "note": note, "actor": actor}  # fmt: skip
        row = api_call(api_url, token, "POST", "/v1/golden", json=body).json()
        click.echo(f"golden run of {row['agent']} / {row['label']}: session {row['session_id']}")

    @golden.command("list")
    @click.option("--agent", help="Only this agent's.")
    @click.option("--label", help="Only this input class.")
    @format_option
    @client_options
    def golden_list(agent, label, fmt, api_url, token) -> None:
        """The golden runs, newest first."""
        params = {k: v for k, v in (("agent", agent), ("label", label)) if v}
        rows = api_call(api_url, token, "GET", "/v1/golden", params=params).json()
        echo_rows(rows, fmt, "no golden runs (mark one: agentwatch golden mark SESSION ...)",
                  _golden_table)  # fmt: skip
