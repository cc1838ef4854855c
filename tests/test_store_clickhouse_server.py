"""The server path: a real ClickHouse server in Docker through testcontainers.

Skips cleanly where no Docker engine runs (as in CI here). The same code path — migrations and
inserts through clickhouse-connect over real HTTP — is covered without Docker by
tests/test_sql_endpoint.py, where a second collector uses the first one's ClickHouse-compatible
endpoint as its ClickHouse server.
"""

from __future__ import annotations

import pytest

from tests.otlp import request, span


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _docker_available(), reason="no Docker engine: ClickHouse server container cannot run"
)


@pytest.fixture(scope="module")
def clickhouse_url():
    from testcontainers.clickhouse import ClickHouseContainer

    with ClickHouseContainer("clickhouse/clickhouse-server:25.8") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(8123)
        yield f"http://{container.username}:{container.password}@{host}:{port}/{container.dbname}"


def test_spans_land_in_a_clickhouse_server(collector_factory, clickhouse_url):
    from tests.test_receivers import grpc_export

    with collector_factory(clickhouse_url=clickhouse_url) as collector:
        grpc_export(
            collector,
            request(span("on-server", {"gen_ai.operation.name": "chat"})).SerializeToString(),
        )
        rows = collector.wait_for_rows("SELECT SpanName, StepKind FROM otel_traces", 1)
        assert rows == [{"SpanName": "on-server", "StepKind": "llm"}]
