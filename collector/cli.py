"""``agentwatch``: run the collector, and talk to a running one.

Client commands reach the collector through ``--api-url`` (default http://127.0.0.1:8080) with an
optional ``--token``; both can also come from AGENTWATCH_API_URL / AGENTWATCH_TOKEN, which only
ever fill an option that was not given.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click
import requests

from collector.config import ConfigError, load_config

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
@click.option("--clickhouse-password", help="ClickHouse password (overrides the URL's).")
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
    "--sql-writable",
    is_flag=True,
    default=None,
    help="Let the SQL endpoint run writes (default: read-only).",
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
    """Run the collector (embedded ClickHouse store unless --clickhouse-url is given)."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if forward_endpoint or forward_protocol:
        forward = {"endpoint": forward_endpoint}
        if forward_protocol:
            forward["protocol"] = forward_protocol
        flags["forward"] = forward
    if sql_writable:
        flags["sql_readonly"] = False
    try:
        config = load_config(config_path, flags)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    from collector.app import serve as run
    from collector.store import StoreUnavailable

    def ready(collector) -> None:
        p = collector.ports
        click.echo(f"agentwatch collector running; store: {collector.store.description}")
        click.echo(f"  OTLP gRPC  {config.listen}:{p['otlp_grpc']}")
        click.echo(f"  OTLP HTTP  http://{config.listen}:{p['otlp_http']}/v1/traces")
        click.echo(f"  SQL        http://{config.listen}:{p['sql']}/  (ClickHouse HTTP interface)")
        click.echo(f"  API        http://{config.listen}:{p['api']}/  (/healthz, /metrics)")
        sys.stdout.flush()

    try:
        asyncio.run(run(config, ready))
    except StoreUnavailable as exc:
        raise click.ClickException(f"store unavailable: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc}") from None


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


@main.command()
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

    \b
    Examples:
      agentwatch sql "SELECT ServiceName, count() FROM otel_traces GROUP BY ServiceName"
      agentwatch sql "SELECT * FROM otel_traces WHERE TraceId = {t:String}" --param t=4bf9...
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


if __name__ == "__main__":
    main()
