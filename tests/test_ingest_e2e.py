"""End to end through real clients: a real agent process, a real instrumentation of the official
OpenAI SDK per convention, the real OTel SDK exporters (gRPC, HTTP protobuf, HTTP JSON) -> the
collector -> rows in the embedded ClickHouse with the normalised fields right."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.agents.fake_openai import FakeOpenAI
from tests.conftest import run_collector

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shared_collector(tmp_path_factory):
    with run_collector(tmp_path_factory.mktemp("e2e") / "data") as running:
        yield running


@pytest.fixture(scope="module")
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.close()


def run_agent(
    collector, fake_openai, convention: str, exporter: str, compression: str = "none", **extra
) -> str:
    session = f"sess-{uuid.uuid4().hex[:12]}"
    endpoint = collector.grpc_endpoint if exporter == "grpc" else collector.http_url
    cmd = [
        sys.executable, "-m", "tests.agents.support_agent",
        "--convention", convention, "--exporter", exporter, "--compression", compression,
        "--endpoint", endpoint, "--openai-base-url", fake_openai.base_url, "--session", session,
    ]  # fmt: skip
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", value]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return session


CASES = [
    ("otel_genai", "grpc", "none"),
    ("openinference", "grpc", "gzip"),
    ("openllmetry", "grpc", "none"),
    ("otel_genai", "http-protobuf", "gzip"),
    ("openinference", "http-protobuf", "none"),
    ("openllmetry", "http-json", "none"),
    ("otel_genai", "http-json", "none"),
]


@pytest.mark.parametrize(("convention", "exporter", "compression"), CASES)
def test_agent_session_lands_normalised(
    shared_collector, fake_openai, convention, exporter, compression
):
    session = run_agent(shared_collector, fake_openai, convention, exporter, compression)
    rows = shared_collector.wait_for_rows(
        f"SELECT * FROM agent_spans WHERE SessionId = '{session}' ORDER BY Timestamp", 4
    )
    assert len(rows) == 4, rows
    steps = [r["StepKind"] for r in rows]
    assert steps == ["agent", "llm", "tool", "llm"]
    agent, llm1, tool, llm2 = rows
    assert agent["AgentName"] == "support"
    assert {r["UserId"] for r in rows} == {"user-1"}
    assert {r["TraceId"] for r in rows} == {agent["TraceId"]}
    assert llm1["ParentSpanId"] == agent["SpanId"]
    assert llm1["ServiceName"] == "support-agent"
    # token counts reported by the (fake) API arrive through each instrumentation's own attribute names
    assert (llm1["InputTokens"], llm1["OutputTokens"]) == (40, 12)
    assert (llm2["InputTokens"], llm2["OutputTokens"]) == (120, 12)
    assert llm1["Model"].startswith("gpt-4o")
    assert llm1["CostUsd"] > 0
    assert agent["InputTokens"] == 0 and agent["CostUsd"] == 0
    assert tool["ToolName"] == "lookup_order"
    assert tool["ToolArgs"] == '{"order_id":42}'
    # the raw span is kept too: every attribute in the exporter-compatible map
    assert llm1["SpanAttributes"], llm1
    expected_convention = {
        "otel_genai": "otel_genai",
        "openinference": "openinference",
        "openllmetry": "openllmetry",
    }
    assert agent["Convention"] == expected_convention[convention]


def test_failed_model_call_is_stored_with_http_status(shared_collector, fake_openai):
    """The SDK raises RateLimitError; each instrumentation records it differently, we find the 429."""
    for convention in ("otel_genai", "openinference", "openllmetry"):
        session = f"sess-{uuid.uuid4().hex[:12]}"
        cmd = [
            sys.executable, "-m", "tests.agents.support_agent", "--convention", convention,
            "--endpoint", shared_collector.grpc_endpoint, "--openai-base-url", fake_openai.base_url,
            "--session", session, "--model", "gpt-ratelimit",
        ]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and "RateLimitError" in done.stderr
        rows = shared_collector.wait_for_rows(
            f"SELECT StepKind, StatusCode, ErrorType, HttpStatus FROM agent_spans "
            f"WHERE SessionId = '{session}' AND StepKind = 'llm'",
            1,
        )
        assert rows, convention
        assert rows[0]["StatusCode"] == "Error", (convention, rows)
        assert rows[0]["HttpStatus"] == 429, (convention, rows)
