"""``agentwatch alerts outbox|test`` and ``agentwatch silence add|list|expire``.

Registered on the main group by ``agentwatch.cli.main`` (``register``), which passes its own client
options and API call.
"""

from __future__ import annotations

import re

import click

from agentwatch.cli.format import echo_rows, format_option, text_table
from analyzer.paging.routing import parse_matcher

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90m' -> 5400.0; units s, m, h, d."""
    found = _DURATION.match(text.strip())
    if not found:
        raise click.BadParameter(f"expected a number and s, m, h or d (e.g. 2h), got {text!r}")
    return float(found.group(1)) * _UNIT_S[found.group(2)]


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    header = [title for title, _ in columns]
    return text_table(header, [[str(row.get(key, "")) for _, key in columns] for row in rows])


def _outbox_table(rows: list[dict]) -> str:
    for row in rows:
        row["when"] = row["created_at"][:19].replace("T", " ")
        row["error"] = " ".join(str(row.get("last_error", "")).split())[:80]
        row["route/receiver"] = f"{row['route']}/{row['receiver']}"
    columns = [("CREATED", "when"), ("STATUS", "status"), ("ACTION", "action"),
               ("ROUTE/RECEIVER", "route/receiver"), ("INCIDENT", "incident_id"),
               ("SEV", "severity"), ("TRIES", "attempts"), ("LAST ERROR", "error")]  # fmt: skip
    return _table(rows, columns)


def _silence_table(rows: list[dict]) -> str:
    for row in rows:
        row["match"] = " ".join(row["matchers"])
        row["ends"] = row["ends_at"][:19].replace("T", " ")
    columns = [("ID", "silence_id"), ("MATCHERS", "match"), ("ENDS (UTC)", "ends"),
               ("BY", "created_by"), ("COMMENT", "comment")]  # fmt: skip
    return _table(rows, columns)


def register(main: click.Group, client_options, api_call) -> None:
    @main.group()
    def alerts() -> None:
        """The paging outbox of a running collector, and test pages.

        \b
        Examples:
          agentwatch alerts outbox                  # pending and failed notifications
          agentwatch alerts outbox --status all
          agentwatch alerts test --route pagerduty-sev1
        """

    @alerts.command("outbox")
    @click.option(
        "--status",
        type=click.Choice(["unsettled", "pending", "failed", "sent", "all"]),
        default="unsettled",
        show_default=True,
        help="unsettled = pending or failed.",
    )
    @click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
    @format_option
    @client_options
    def alerts_outbox(status, limit, fmt, api_url, token) -> None:
        """Notifications not yet accepted by their pager (pending) or given up on (failed)."""
        params = {"status": status, "limit": limit}
        rows = api_call(api_url, token, "GET", "/v1/alerts/outbox", params=params).json()
        echo_rows(rows, fmt, f"outbox empty ({status})", _outbox_table)

    @alerts.command("test")
    @click.option("--route", "route", required=True, help="Route name (see the config).")
    @client_options
    def alerts_test(route, api_url, token) -> None:
        """Send a test page (a trigger, then its resolve) through ROUTE's receiver."""
        out = api_call(api_url, token, "POST", "/v1/alerts/test", json={"route": route}).json()
        click.echo(
            f"test page {out['incident_id']} queued for {out['route']}/{out['receiver']};"
            " follow it with `agentwatch alerts outbox --status all`"
        )

    @main.group()
    def silence() -> None:
        """Mute pages for incidents that match, until the silence expires.

        \b
        Matchers: NAME=VALUE, NAME!=VALUE, NAME=~REGEX, NAME!~REGEX on severity, class,
        detector, kind, agent, service, tenant, fingerprint, incident_id (all must match).
        REGEX is RE2 syntax, anchored (no backreferences or lookaround; at most 1000 chars).
        Examples:
          agentwatch silence add agent=support severity=SEV3 --duration 2h --comment "deploy"
          agentwatch silence list
          agentwatch silence expire sil-3f2a9c1b7d4e
        """

    @silence.command("add")
    @click.argument("matchers", nargs=-1, required=True)
    @click.option("--duration", default="1h", show_default=True, help="e.g. 30m, 2h, 1d.")
    @click.option("--comment", default="", help="Why (shown in `silence list`).")
    @click.option("--created-by", default="cli", show_default=True)
    @client_options
    def silence_add(matchers, duration, comment, created_by, api_url, token) -> None:
        """Silence incidents matching every MATCHER."""
        for text in matchers:  # the collector checks them too; this says so before any call
            try:
                parse_matcher(text)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="MATCHERS") from None
        body = {
            "matchers": list(matchers),
            "duration_s": parse_duration(duration),
            "comment": comment,
            "created_by": created_by,
        }
        out = api_call(api_url, token, "POST", "/v1/silences", json=body).json()
        click.echo(f"{out['silence_id']} until {out['ends_at']} UTC: {' '.join(out['matchers'])}")

    @silence.command("list")
    @click.option(
        "--state", type=click.Choice(["active", "expired", "all"]), default="active",
        show_default=True,
    )  # fmt: skip
    @format_option
    @client_options
    def silence_list(state, fmt, api_url, token) -> None:
        """Silences, newest first."""
        rows = api_call(api_url, token, "GET", "/v1/silences", params={"state": state}).json()
        echo_rows(rows, fmt, f"no silences ({state})", _silence_table)

    @silence.command("expire")
    @click.argument("silence_id", metavar="ID")
    @client_options
    def silence_expire(silence_id, api_url, token) -> None:
        """End a silence now."""
        from urllib.parse import quote

        api_call(api_url, token, "DELETE", f"/v1/silences/{quote(silence_id, safe='')}")
        click.echo(f"{silence_id} expired")
