"""``agentwatch``: run the collector, and talk to a running one.

Client commands reach the collector through ``--api-url`` (default http://127.0.0.1:8080) with an
optional ``--token``; both can also come from AGENTWATCH_API_URL / AGENTWATCH_TOKEN, which only
ever fill an option that was not given.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click
import requests

from agentwatch.app import serve as run_collector
from agentwatch.cli.control import register as register_control
from agentwatch.cli.deploy import register as register_deploy
from agentwatch.cli.format import echo_rows, format_option, text_table
from agentwatch.cli.gameday import register as register_gameday
from agentwatch.cli.golden import register as register_golden
from agentwatch.cli.paging import register as register_paging
from agentwatch.cli.recurrence import register as register_recurrence
from agentwatch.cli.review import register as register_review
from agentwatch.cli.runbook import register as register_runbook
from agentwatch.config import ConfigError, load_config
from analyzer.policy import PolicyError, load_policy, policy_json_schema
from collector.store import StoreUnavailable

DEFAULT_API_URL = "http://127.0.0.1:8080"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="agentwatch")
def main() -> None:
    """agentwatch: an OpenTelemetry collector and trace-analysis backend for AI agents.

    Start it with `agentwatch serve`, point your agents' OTLP exporters at it
    (gRPC :4317, HTTP :4318), and query what they did with `agentwatch sql`.
    """


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config file.")
@click.option(
    "--listen", help="Address to bind every listener to.  [default: 127.0.0.1; 0.0.0.0 for all]"
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Embedded store directory.  [default: ./agentwatch-data]",
)
@click.option("--otlp-grpc-port", type=int, help="OTLP/gRPC port.  [default: 4317]")
@click.option("--otlp-http-port", type=int, help="OTLP/HTTP port.  [default: 4318]")
@click.option("--sql-port", type=int, help="ClickHouse-compatible SQL HTTP port.  [default: 8123]")
@click.option(
    "--api-port", type=int, help="API and web port (/healthz, /metrics).  [default: 8080]"
)
@click.option(
    "--clickhouse-url",
    help="Use a ClickHouse server, e.g. http://user:pass@host:8123/db, instead of chDB.",
)
@click.option("--clickhouse-user", help="ClickHouse user (overrides the URL's).")
@click.option(
    "--clickhouse-password",
    help="ClickHouse password (overrides the URL's). Visible to other users in `ps`: prefer"
    " AGENTWATCH_CLICKHOUSE_PASSWORD in the environment.",
)
@click.option("--clickhouse-database", help="ClickHouse database (overrides the URL's).")
@click.option(
    "--forward-endpoint", help="Processor mode: also send every request to this OTLP endpoint."
)
@click.option(
    "--forward-protocol",
    type=click.Choice(["grpc", "http/protobuf"]),
    help="Protocol of --forward-endpoint.",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(path_type=Path),
    help="YAML policy file (behavioural SLA per agent); SIGHUP reloads it.",
)
@click.option(
    "--sql-writable",
    is_flag=True,
    default=None,
    help="Let the SQL endpoint run writes (default: read-only).",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    default=None,
    help="Listen beyond loopback without api_token (anyone who reaches the ports reads and"
    " changes everything; start-up refuses it otherwise).",
)
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    show_default=True,
)
def serve(
    config_path, forward_endpoint, forward_protocol, sql_writable, log_level, **flags
) -> None:
    """Run the collector (embedded ClickHouse store unless --clickhouse-url is given).

    Beyond loopback (--listen 0.0.0.0) it needs an api_token. Tenants and their tokens are set in
    the config file (tenants:). Every setting also comes from AGENTWATCH_<KEY> (e.g.
    AGENTWATCH_API_TOKEN, or AGENTWATCH_API_TOKEN_FILE naming a file). Precedence: flag >
    environment > config file > default.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if flags.get("clickhouse_password") or _has_password(flags.get("clickhouse_url")):
        logging.getLogger("agentwatch").warning(
            "a ClickHouse password on the command line is visible to other users in `ps`;"
            " set AGENTWATCH_CLICKHOUSE_PASSWORD instead"
        )
    if forward_endpoint or forward_protocol:
        forward = {"endpoint": forward_endpoint}
        if forward_protocol:
            forward["protocol"] = forward_protocol
        flags["forward"] = forward
    if sql_writable:
        flags["sql_readonly"] = False
    try:
        config = load_config(config_path, flags, os.environ)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    def ready(collector) -> None:
        p = collector.ports
        click.echo(f"agentwatch collector running; store: {collector.store.description}")
        click.echo(f"  OTLP gRPC  {config.listen}:{p['otlp_grpc']}")
        click.echo(f"  OTLP HTTP  http://{config.listen}:{p['otlp_http']}/v1/traces")
        click.echo(f"  SQL        http://{config.listen}:{p['sql']}/  (ClickHouse HTTP interface)")
        click.echo(f"  API        http://{config.listen}:{p['api']}/  (/healthz, /metrics)")
        click.echo(f"  links      {config.link_template(p['api'])}  (public_url)")
        sys.stdout.flush()

    try:
        asyncio.run(run_collector(config, ready))
    except StoreUnavailable as exc:
        raise click.ClickException(f"store unavailable: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc}") from None


def _has_password(url: str | None) -> bool:
    try:
        return bool(urlsplit(url or "").password)
    except ValueError:
        return False  # the config check says what is wrong with it


def _client_options(fn):
    fn = click.option("--token", envvar="AGENTWATCH_TOKEN", help="API token of the collector.")(fn)
    fn = click.option(
        "--api-url",
        envvar="AGENTWATCH_API_URL",
        default=DEFAULT_API_URL,
        show_default=True,
        help="Running collector's API.",
    )(fn)
    return fn


def api_call(
    api_url: str, token: str | None, method: str, path: str, **kwargs
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = api_url.rstrip("/") + path
    try:
        response = requests.request(method, url, headers=headers, timeout=60, **kwargs)
    except requests.ConnectionError:
        raise click.ClickException(
            f"cannot reach the collector at {api_url} (is `agentwatch serve` running?)"
        ) from None
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise click.ClickException(f"{response.status_code}: {message}")
    return response


# A query may start with "-- comment" (the README's do): with unknown options taken as arguments,
# click leaves it to QUERY instead of failing with "No such option".
@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("query")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "tsv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Query parameter for {NAME:Type}.",
)
@_client_options
def sql(query: str, fmt: str, params: tuple[str, ...], api_url: str, token: str | None) -> None:
    """Run a read-only SQL QUERY against a running collector ('-' reads it from stdin).

    QUERY may start with a "-- comment" line and may end with one ';'.

    \b
    Examples:
      agentwatch sql "SELECT ServiceName, count() FROM otel_traces GROUP BY ServiceName"
      agentwatch sql "SELECT * FROM otel_traces WHERE TraceId = {t:String}" --param t=4bf9...
      agentwatch sql - --param id=inc-3f2a9c1b7d4e < blast_radius.sql
    """
    if query == "-":
        query = sys.stdin.read()
    values = {}
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--param")
        values[name] = value
    response = api_call(
        api_url, token, "POST", "/v1/sql", json={"query": query, "format": fmt, "params": values}
    )
    click.echo(response.text, nl=not response.text.endswith("\n"))


# --- incidents ------------------------------------------------------------------------------------


@main.group()
def incidents() -> None:
    """List, inspect, acknowledge and resolve incidents of a running collector.

    \b
    Examples:
      agentwatch incidents list                      # open and acknowledged, newest first
      agentwatch incidents list --status all --severity SEV1 --detector loop
      agentwatch incidents show inc-3f2a9c1b7d4e
      agentwatch incidents ack inc-3f2a9c1b7d4e --reason "looking"
      agentwatch incidents resolve inc-3f2a9c1b7d4e --reason "tool fixed"
      agentwatch incidents resolve inc-3f2a9c1b7d4e --false-alarm --reason "a normal retry"
      agentwatch incidents precision                 # each detector's field precision
    """


def _when(iso: str) -> str:
    """'2026-11-22T06:14:38.696914422Z' -> '2026-11-22 06:14:38Z (3m ago)'."""
    from datetime import UTC, datetime

    try:
        at = datetime.fromisoformat(iso[:19]).replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return str(iso)
    seconds = max(0, int((datetime.now(UTC) - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            ago = f"{seconds // size}{unit} ago"
            break
    else:
        ago = f"{seconds}s ago"
    return f"{at:%Y-%m-%d %H:%M:%S}Z ({ago})"


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _without_prefix(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text


def _incident_table(rows: list[dict]) -> str:
    header = ("ID", "SEV", "STATUS", "CLASS", "DETECTOR/KIND", "SERVICE", "AGENT", "TITLE")
    header += ("OCC", "SESS", "LAST SEEN")
    lines = [
        (
            r["incident_id"],
            r["severity"],
            r["status"],
            r["class"],
            f"{r['detector']}/{r['kind']}",
            _clip(r["service"], 24),  # two services may run agents of one name
            _clip(r["agent"] or "-", 24),
            _clip(_without_prefix(r["title"], f"{r['agent'] or r['service']}: "), 56),
            str(r["occurrences"]),
            str(r["sessions_affected"]),
            _when(r["last_seen"]),
        )
        for r in rows
    ]
    return text_table(header, lines)


@incidents.command("list")
@click.option(
    "--status",
    type=click.Choice(["open", "acknowledged", "resolved", "active", "all"]),
    default="active",
    show_default=True,
    help="active = open or acknowledged.",
)
@click.option("--severity", type=click.Choice(["SEV1", "SEV2", "SEV3"], case_sensitive=False))
@click.option("--detector", help="loop, context_growth, token_ratio, out_of_scope_tool, …")
@click.option("--service", help="Only this service (service.name).")
@click.option("--agent", help="Only this agent.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@format_option
@_client_options
def incidents_list(status, severity, detector, service, agent, limit, fmt, api_url, token) -> None:
    """Incidents, most recently seen first."""
    params = {"status": status, "limit": limit}
    filters = (("severity", severity), ("detector", detector), ("service", service))
    for name, value in (*filters, ("agent", agent)):
        if value:
            params[name] = value.upper() if name == "severity" else value
    rows = api_call(api_url, token, "GET", "/v1/incidents", params=params).json()
    echo_rows(rows, fmt, f"no incidents ({status})", _incident_table)


def _incident_path(incident_id: str, action: str = "") -> str:
    from urllib.parse import quote

    return f"/v1/incidents/{quote(incident_id, safe='')}" + (f"/{action}" if action else "")


@incidents.command("show")
@click.argument("incident_id", metavar="ID")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@_client_options
def incidents_show(incident_id, fmt, api_url, token) -> None:
    """One incident: what, where, evidence and its timeline."""
    import json

    i = api_call(api_url, token, "GET", _incident_path(incident_id)).json()
    if fmt == "json":
        click.echo(json.dumps(i, indent=2))
        return
    out = [
        f"{i['incident_id']}  {i['severity']}  {i['status'].upper()}  {i['class']}  "
        f"{i['detector']}/{i['kind']}",
        f"  {i['title']}",
        f"  {i['summary']}",
        f"  service     {i['service']}   agent {i['agent'] or '-'}   tenant {i['tenant']}",
        f"  session     {i['session_id'] or '-'}   user {i['user_id'] or '-'}",
        f"  trace       {i['trace_id']}   flagged span {i['span_id']}",
        f"  first seen  {_when(i['first_seen'])}",
        f"  last seen   {_when(i['last_seen'])}",
        f"  seen        {i['occurrences']} time(s) in {i['sessions_affected']} session(s), "
        f"{i['users_affected']} user(s)",
        f"  fingerprint {i['fingerprint']}",
    ]
    if i.get("link"):
        out.append(f"  link        {i['link']}")
    if i.get("resolution"):
        out.append(f"  resolution  {i['resolution']}")
    evidence = i["evidence"] if isinstance(i["evidence"], list) else [i["evidence"]]
    if evidence and isinstance(evidence[0], dict) and evidence[0].get("why"):
        out.append(f"  why         {evidence[0]['why']}")  # analyzer.finding.explain
    out.append("evidence:")
    out += [f"  {json.dumps(item, sort_keys=True)}" for item in evidence]
    out.append("timeline:")
    for e in i.get("timeline", []):
        detail = f"  {e['detail']}" if e["detail"] else ""
        out.append(f"  {e['at'][:19].replace('T', ' ')}Z  {e['event']:<12} {e['actor']}{detail}")
    click.echo("\n".join(out))


def _set_status(
    action: str, incident_id, reason, actor, api_url, token, false_alarm: bool = False
) -> None:
    import getpass

    if not actor:
        try:
            actor = getpass.getuser()
        except (KeyError, OSError):  # no login name (e.g. a container's anonymous uid)
            actor = "cli"
    i = api_call(
        api_url,
        token,
        "POST",
        _incident_path(incident_id, action),
        json={"actor": actor, "reason": reason or "", "false_alarm": false_alarm},
    ).json()
    status = f"{i['status']} as a false alarm" if false_alarm else i["status"]
    click.echo(f"{i['incident_id']} {status} by {actor}: {i['title']}")


def _status_options(fn):
    fn = click.option("--actor", help="Who does it.  [default: your login name]")(fn)
    fn = click.option("--reason", help="Why (kept in the incident's timeline).")(fn)
    fn = click.argument("incident_id", metavar="ID")(fn)
    return fn


@incidents.command("ack")
@_status_options
@_client_options
def incidents_ack(incident_id, reason, actor, api_url, token) -> None:
    """Acknowledge incident ID (someone is on it)."""
    _set_status("ack", incident_id, reason, actor, api_url, token)


@incidents.command("resolve")
@_status_options
@click.option(
    "--false-alarm",
    is_flag=True,
    help="It should not have fired (counted against its detector's field precision).",
)
@_client_options
def incidents_resolve(incident_id, reason, actor, false_alarm, api_url, token) -> None:
    """Resolve incident ID (the same problem again opens a new incident)."""
    _set_status("resolve", incident_id, reason, actor, api_url, token, false_alarm)


def _precision_table(rows: list[dict]) -> str:
    header = ("TENANT", "DETECTOR/KIND", "RESOLVED BY PEOPLE", "FALSE ALARMS", "PRECISION")
    header += ("RESOLVED QUIETLY",)
    lines = [
        (
            r["tenant"],
            f"{r['detector']}/{r['kind']}",
            str(r["resolved_by_people"]),
            str(r["false_alarms"]),
            "-" if r["field_precision"] is None else f"{r['field_precision']:.0%}",
            str(r["resolved_quietly"]),
        )
        for r in rows
    ]
    return text_table(header, lines)


@incidents.command("precision")
@format_option
@_client_options
def incidents_precision(fmt, api_url, token) -> None:
    """Each detector's field precision: 1 - false alarms / incidents resolved by people
    (the SQL view detector_precision). Incidents the quiet-period timer resolved do not count."""
    rows = api_call(api_url, token, "GET", "/v1/incidents/precision").json()
    echo_rows(rows, fmt, "no incidents resolved yet", _precision_table)


@main.group()
def policy() -> None:
    """Check the policy file (the behavioural SLA per agent) before the collector uses it."""


@policy.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--agent",
    "agent",
    metavar="SERVICE/AGENT",
    help="Also show the policy resolved for this service and agent name.",
)
def policy_check(file: Path, agent: str | None) -> None:
    """Validate FILE: print a summary of its rules (exit 0) or its errors (exit 1).

    \b
    Examples:
      agentwatch policy check deploy/policy.example.yaml
      agentwatch policy check policy.yaml --agent support-eu/triage
    """

    try:
        loaded = load_policy(file)
    except PolicyError as exc:
        raise click.ClickException(f"invalid policy\n{exc}") from None
    spec = loaded.spec
    click.echo(f"{file}: OK, {len(spec.agents)} agents rules (first match wins)")
    if spec.defaults is not None:
        click.echo(f"  defaults: {_policy_sections(spec.defaults) or '(empty)'}")
    for i, rule in enumerate(spec.agents):
        sections = _policy_sections(rule)
        click.echo(
            f"  {loaded.rule_name(i)}: service={rule.match.service!r} agent={rule.match.agent!r}"
            + (f"  [{sections}]" if sections else "")
        )
    if agent is not None:
        service, sep, name = agent.partition("/")
        if not sep:
            raise click.BadParameter("expected SERVICE/AGENT", param_hint="--agent")
        click.echo(f"\n{service}/{name} resolves to:")
        click.echo(_format_agent_policy(loaded.for_agent(service, name)))


@policy.command("schema")
def policy_schema() -> None:
    """Print the policy file's JSON Schema (generated; schemas/policy.schema.json is this)."""
    import json

    click.echo(json.dumps(policy_json_schema(), indent=2))


def _policy_sections(body) -> str:
    """The sections a rule sets, e.g. ``allowed_tools(3), budgets, thresholds(loop)``."""
    parts = []
    for key in type(body).model_fields:
        if key in ("match", "name", "version", "defaults", "agents"):
            continue
        value = getattr(body, key)
        if value is None:
            continue
        if isinstance(value, list):
            parts.append(f"{key}({len(value)})")
        elif isinstance(value, dict):
            parts.append(f"{key}({', '.join(value)})")
        else:
            parts.append(f"{key}({', '.join(value.model_dump(exclude_none=True))})")
    return ", ".join(parts)


def _format_agent_policy(resolved) -> str:
    import json
    from dataclasses import asdict

    def plain(value):
        if isinstance(value, dict) or hasattr(value, "items"):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    fields = {
        "rule": resolved.rule,
        "allowed_tools": resolved.allowed_tools,
        "tool_constraints": {k: asdict(v) for k, v in resolved.tool_constraints.items()},
        "consequential_tools": resolved.consequential_tools,
        "builtin_tools": resolved.builtin_tools,
        "session_cost_usd": resolved.session_cost_usd,
        "session_tokens": resolved.session_tokens,
        "thresholds": resolved.thresholds,
        "severity": resolved.severity,
        "actions": resolved.actions,
        "tool_circuit": {
            "sessions": resolved.tool_circuit_sessions,
            "window_s": resolved.tool_circuit_window_s,
            "scope": resolved.tool_circuit_scope,
        },
        "escalation": {
            "sessions": resolved.escalation_sessions,
            "users": resolved.escalation_users,
            "window_s": resolved.escalation_window_s,
        },
    }
    return json.dumps(plain(fields), indent=2)


register_control(main, _client_options, api_call)  # kill, pause, …, resume, control
register_paging(main, _client_options, api_call)  # alerts outbox|test, silence add|list|expire
register_golden(main, _client_options, api_call)  # golden mark|list
register_review(incidents, _client_options, api_call)  # incidents capture|cases|review
register_gameday(main, incidents, _client_options, api_call)  # gameday run|report|list, set-step
register_recurrence(main, _client_options, api_call)  # recurrence check (release gate)
register_deploy(main, _client_options, api_call)  # deploy mark|list (the gate's markers)
register_runbook(main)  # runbook: Markdown for this deployment's on-call

if __name__ == "__main__":
    main()
