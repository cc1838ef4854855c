"""``agentwatch sql`` and the API port, as a person at a terminal uses them."""

from __future__ import annotations

import json
import subprocess
import sys

import requests

from tests.otlp import request, span
from tests.test_receivers import grpc_export


def agentwatch(
    *args: str, api_url: str | None = None, token: str | None = None
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "agentwatch.cli.main", *args]
    if api_url:
        cmd += ["--api-url", api_url]
    if token:
        cmd += ["--token", token]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_sql_formats(collector):
    grpc_export(
        collector,
        request(span("alpha", {"gen_ai.operation.name": "chat"}), span("beta")).SerializeToString(),
    )
    collector.wait_for_rows("SELECT 1 FROM otel_traces", 2)
    query = "SELECT SpanName, StepKind FROM otel_traces ORDER BY SpanName"

    table = agentwatch("sql", query, api_url=collector.api_url)
    assert table.returncode == 0, table.stderr
    assert "alpha" in table.stdout and "│" in table.stdout  # a drawn table for people

    as_json = agentwatch("sql", query, "--format", "json", api_url=collector.api_url)
    assert [r["SpanName"] for r in json.loads(as_json.stdout)["data"]] == ["alpha", "beta"]

    as_csv = agentwatch("sql", query, "--format", "csv", api_url=collector.api_url)
    assert as_csv.stdout.splitlines() == [
        '"SpanName","StepKind"',
        '"alpha","llm"',
        '"beta","other"',
    ]

    with_param = agentwatch(
        "sql", "SELECT count() AS n FROM otel_traces WHERE SpanName = {name:String}", "--param", "name=beta",
        "--format", "json", api_url=collector.api_url,
    )  # fmt: skip
    assert json.loads(with_param.stdout)["data"] == [{"n": 1}]


def test_sql_errors_are_clear(collector):
    write = agentwatch(
        "sql", "INSERT INTO otel_traces (SpanName) VALUES ('x')", api_url=collector.api_url
    )
    assert write.returncode != 0 and "read-only" in write.stderr

    bad = agentwatch("sql", "SELECT nope FROM otel_traces", api_url=collector.api_url)
    assert bad.returncode != 0
    assert (
        "400:" in bad.stderr and "nope" in bad.stderr
    )  # ClickHouse's own message reaches the user

    down = agentwatch("sql", "SELECT 1", api_url="http://127.0.0.1:9")
    assert down.returncode != 0 and "cannot reach the collector" in down.stderr


def test_api_token_protects_v1_but_not_health(collector_factory):
    with collector_factory(api_token="s3cret") as collector:
        assert requests.get(collector.api_url + "/healthz", timeout=10).json()["status"] == "ok"
        refused = agentwatch("sql", "SELECT 1", api_url=collector.api_url)
        assert refused.returncode != 0 and "API token" in refused.stderr
        ok = agentwatch(
            "sql", "SELECT 1 AS one", "--format", "csv", api_url=collector.api_url, token="s3cret"
        )
        assert ok.stdout.splitlines() == ['"one"', "1"]


def test_metrics_count_what_happened(collector):
    grpc_export(collector, request(span("m1"), span("m2", trace_id=b"short")).SerializeToString())
    collector.wait_for_rows("SELECT 1 FROM otel_traces", 1)
    metrics = requests.get(collector.api_url + "/metrics", timeout=10).text
    assert 'agentwatch_spans_received_total{protocol="grpc"} 2.0' in metrics
    assert 'agentwatch_spans_rejected_total{protocol="grpc"} 1.0' in metrics
    assert "agentwatch_spans_stored_total 1.0" in metrics
    assert 'agentwatch_otlp_requests_total{outcome="partial",protocol="grpc"} 1.0' in metrics


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    refused = agentwatch("serve", "--listen", "0.0.0.0", "--data-dir", str(tmp_path))
    assert refused.returncode != 0
    assert "api_token" in refused.stderr and "--allow-unauthenticated" in refused.stderr
    assert not any(tmp_path.iterdir())  # stopped before opening the store
