"""``agentwatch gameday run|report|list`` and ``agentwatch incidents set-step``: drills with a score.

Client commands over the API (``agentwatch.api.gameday``). ``run`` starts the drill on the
collector and sends its spans to the collector's OTLP/gRPC port with the OpenTelemetry SDK, as an
instrumented agent would, then returns: the people on call do the rest on the real console and
pager, and ``report`` scores them.
"""

from __future__ import annotations

import getpass
import json
from urllib.parse import quote, urlsplit

import click

from analyzer.gameday.scenarios import SCENARIOS
from analyzer.gameday.score import CONTAIN_TARGET_S, STEP_TARGET_S


def register(main: click.Group, incidents: click.Group, client_options, api_call) -> None:
    """Add ``gameday`` to ``main`` and ``set-step`` to ``incidents`` (``cli.main``'s helpers)."""

    @main.group()
    def gameday() -> None:
        """Drills: a failure sent for real through the collector, the response timed.

        \b
        1. agentwatch gameday run --scenario loop --agent support
        2. on call: the page ([DRILL] in its title), ack, contain (agentwatch pause …),
           name the off-rails step (agentwatch incidents set-step ID SPAN),
           capture the case (agentwatch incidents capture ID …), resolve
        3. agentwatch gameday report
        """

    @gameday.command("run")
    @click.option("--scenario", required=True, type=click.Choice(list(SCENARIOS)))
    @click.option("--agent", required=True, help="The agent the drill is for (gen_ai.agent.name).")
    @click.option(
        "--service",
        help="service.name of the drill's spans.  [default: gameday-<drill id>: a service of its"
        " own, so the drill never adds to a real service's failure rates or baselines]",
    )
    @click.option("--tenant", help="The tenant the drill runs in.  [default: the collector's]")
    @click.option(
        "--otlp-endpoint",
        help="Where to send the spans (host:port of OTLP/gRPC, or http(s)://host:port)."
        "  [default: the API's host, the collector's OTLP/gRPC port]",
    )
    @click.option(
        "--ingest-token", envvar="AGENTWATCH_INGEST_TOKEN",
        help="Token for the OTLP port (a tenant's: give its --tenant too).  [default: --token]",
    )  # fmt: skip
    @click.option("--actor", help="Who runs the drill.  [default: your login name]")
    @client_options
    def gameday_run(
        scenario, agent, service, tenant, otlp_endpoint, ingest_token, actor, api_url, token
    ) -> None:
        """Start a drill: its spans go out now, marked agentwatch.drill=<its id>; the detectors open
        an incident titled [DRILL] and page it for real (routes may match drill: true)."""
        body = {"scenario": scenario, "agent": agent, "actor": actor or _login()}
        if service:
            body["service"] = service
        if tenant:
            body["tenant"] = tenant
        drill = api_call(api_url, token, "POST", "/v1/gamedays", json=body).json()
        endpoint = otlp_endpoint or _grpc_endpoint(api_url, drill["otlp_grpc_port"])
        spans = send_runs(endpoint, drill["resource"], drill["runs"], ingest_token or token)
        click.echo(f"{drill['drill_id']}: {scenario} drill for agent {agent} started")
        click.echo(f"  {spans} span(s) sent to {endpoint} as service {drill['service']}")
        click.echo(
            f"  targets: every step within {STEP_TARGET_S:.0f} s of the first span, containment"
            f" within {CONTAIN_TARGET_S:.0f} s of the ack"
        )
        click.echo(f"  score:   agentwatch gameday report {drill['drill_id']}")

    @gameday.command("report")
    @click.argument("drill_id", metavar="[DRILL_ID]", required=False)
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    @client_options
    def gameday_report(drill_id, fmt, api_url, token) -> None:
        """The drill's times (the latest drill without DRILL_ID), each against its target and the
        earlier drills of its scenario (previous and best)."""
        if not drill_id:
            drills = api_call(api_url, token, "GET", "/v1/gamedays", params={"limit": 1}).json()
            if not drills["drills"]:
                raise click.ClickException("no drills yet: agentwatch gameday run …")
            drill_id = drills["drills"][0]["drill_id"]
        report = api_call(api_url, token, "GET", f"/v1/gamedays/{quote(drill_id, safe='')}").json()
        if fmt == "json":
            click.echo(json.dumps(report, indent=2))
        else:
            click.echo(report_text(report))

    @gameday.command("list")
    @click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
    @client_options
    def gameday_list(limit, api_url, token) -> None:
        """The drills, newest first."""
        drills = api_call(api_url, token, "GET", "/v1/gamedays", params={"limit": limit}).json()
        for d in drills["drills"]:
            click.echo(
                f"{d['drill_id']}  {d['scenario']:<16} {d['agent']:<16} {d['status']:<8}"
                f" {d['incident_id'] or '-':<16} by {d['started_by']}"
            )

    @incidents.command("set-step")
    @click.argument("incident_id", metavar="ID")
    @click.argument("span_id", metavar="SPAN")
    @click.option("--actor", help="Who names it.  [default: your login name]")
    @client_options
    def incidents_set_step(incident_id, span_id, actor, api_url, token) -> None:
        """Name SPAN (16 hex digits) as the step where incident ID's run went off the rails."""
        api_call(
            api_url, token, "POST", f"/v1/incidents/{quote(incident_id, safe='')}/off-rails-step",
            json={"span_id": span_id.lower(), "actor": actor or _login()},
        )  # fmt: skip
        click.echo(f"{incident_id}: off-rails step {span_id.lower()}")


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "cli"


def _grpc_endpoint(api_url: str, port: int) -> str:
    host = urlsplit(api_url).hostname or "127.0.0.1"
    return f"{f'[{host}]' if ':' in host else host}:{port}"


def send_runs(endpoint: str, resource: dict, runs: list[dict], token: str | None) -> int:
    """The drill's runs as an instrumented agent sends them: the OpenTelemetry SDK, OTLP/gRPC.
    Returns the spans sent; raises ``ClickException`` when the collector refused any."""
    try:
        # lazy: the SDK is needed by this command only (the collector itself never loads it)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.trace import Status, StatusCode
    except ImportError:
        raise click.ClickException(
            "gameday run sends spans with the OpenTelemetry SDK: pip install opentelemetry-sdk"
            " opentelemetry-exporter-otlp-proto-grpc"
        ) from None

    secure = endpoint.startswith("https://")
    headers = {"authorization": f"Bearer {token}"} if token else None
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=not secure, headers=headers)
    results: list = []

    class Recorded(SpanExporter):
        def export(self, spans):
            result = exporter.export(spans)
            results.append((result, len(spans)))
            return result

        def shutdown(self):
            exporter.shutdown()

    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(BatchSpanProcessor(Recorded()))
    tracer = provider.get_tracer("agentwatch.gameday")
    for run in runs:
        # every span names its session, user and agent: a finding on any of them knows its run
        who = {
            "gen_ai.agent.name": run["agent"],
            "gen_ai.conversation.id": run["session"],
            "user.id": run["user"],
        }
        root = {"gen_ai.operation.name": "invoke_agent", **who}
        with tracer.start_as_current_span(f"invoke_agent {run['agent']}", attributes=root):
            for spec in run["spans"]:
                attributes = {**spec["attributes"], **who}
                with tracer.start_as_current_span(spec["name"], attributes=attributes) as span:
                    if spec.get("error"):
                        span.set_status(Status(StatusCode.ERROR, spec["error"]))
    provider.force_flush()
    provider.shutdown()
    if not results or any(result != SpanExportResult.SUCCESS for result, _ in results):
        raise click.ClickException(
            f"the collector at {endpoint} refused the drill's spans (see the log above); the"
            " drill is recorded but its incident will not open"
        )
    return sum(n for _, n in results)


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f} s"


def report_text(report: dict) -> str:
    """The report as a table, one step a line."""
    d = report["drill"]
    lines = [
        f"drill {d['drill_id']}  {d['scenario']}  agent {d['agent']}  service {d['service']}"
        f"  by {d['started_by']}  {d['status']}",
        f"incident {d.get('incident_id') or '(not opened yet)'}"
        + (
            f"  containment: agent.state {d['contained_state']}" if d.get("contained_state") else ""
        ),
        "",
        f"{'step':<26} {'time':>9} {'target':>8}  {'verdict':<8} {'previous':>9} {'best':>9}  note",
    ]
    for row in report["steps"]:
        note = row["why"] or row["change"]
        lines.append(
            f"{row['label']:<26} {_seconds(row['seconds']):>9} {row['target_s']:>6.0f} s"
            f"  {row['verdict']:<8} {_seconds(row['previous_s']):>9} {_seconds(row['best_s']):>9}"
            f"  {note}"
        )
    lines += [
        "",
        f"overall: {report['verdict']}  (times from the first span; containment within"
        f" {CONTAIN_TARGET_S:.0f} s of the ack; {report['earlier_drills']} earlier drill(s) of"
        " this scenario)",
    ]
    return "\n".join(lines)
