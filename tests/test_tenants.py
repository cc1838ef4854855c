"""Two tenants on one collector: the token decides the tenant, and a tenant's read token reads
that tenant's rows only, on the API, /v1/sql and the SQL port (clickhouse-connect).

Spans are sent by the real OTel SDK exporter (gRPC, with the token in its headers) and by a
plain gRPC client; every read goes over real HTTP.
"""

from __future__ import annotations

import time

import clickhouse_connect
import grpc
import pytest
import requests
from clickhouse_connect.driver.exceptions import DatabaseError
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.analyzer.test_engine import loop_request
from tests.test_receivers import EXPORT

TENANTS = {
    "acme": {"ingest_token": "acme-in", "read_token": "acme-read"},
    "beta": {"ingest_token": "beta-in", "read_token": "beta-read"},
}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def send_loop(running, token: str | None, session: str, claimed_tenant: str) -> grpc.StatusCode:
    """Six identical tool calls (a loop) whose resource *claims* ``claimed_tenant``."""
    req = loop_request(session, f"user-{session}", 6, session.encode().ljust(16, b"-")[:16])
    req.resource_spans[0].resource.attributes.add(
        key="tenant.id"
    ).value.string_value = claimed_tenant
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(running.grpc_endpoint) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        try:
            call(req.SerializeToString(), timeout=30, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def sdk_export(running, token: str, claimed_tenant: str) -> None:
    resource = Resource.create({"service.name": "sdk-svc", "tenant.id": claimed_tenant})
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(
        endpoint=running.grpc_endpoint, insecure=True, headers={"authorization": f"Bearer {token}"}
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("tests.tenants").start_as_current_span("chat", attributes={
        "gen_ai.operation.name": "chat", "gen_ai.conversation.id": f"sdk-{claimed_tenant}"
    }):  # fmt: skip
        pass
    provider.shutdown()


def wait_for_incidents(running, count: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if len(running.query("SELECT incident_id FROM incidents_current")) >= count:
            return
        time.sleep(0.1)
    raise AssertionError("the loops opened no incidents")


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    from tests.conftest import run_collector

    with run_collector(
        tmp_path_factory.mktemp("tenants"), api_token="admin", tenants=TENANTS
    ) as collector:
        # acme's exporter claims beta in its spans: the token wins
        assert (
            send_loop(collector, "acme-in", "acme-s1", claimed_tenant="beta") == grpc.StatusCode.OK
        )
        assert (
            send_loop(collector, "beta-in", "beta-s1", claimed_tenant="acme") == grpc.StatusCode.OK
        )
        sdk_export(collector, "acme-in", claimed_tenant="beta")
        wait_for_incidents(collector, 2)
        yield collector


def test_the_ingest_token_decides_the_tenant(running):
    rows = running.query(
        "SELECT Tenant, count() AS n FROM otel_traces GROUP BY Tenant ORDER BY Tenant"
    )
    assert rows == [{"Tenant": "acme", "n": 7}, {"Tenant": "beta", "n": 6}]
    tenants = running.query("SELECT tenant FROM incidents_current ORDER BY tenant")
    assert [r["tenant"] for r in tenants] == ["acme", "beta"]


def test_ingest_without_a_valid_token_is_refused_and_stores_nothing(running):
    before = running.query("SELECT count() AS n FROM otel_traces")
    assert send_loop(running, None, "anon", "acme") == grpc.StatusCode.UNAUTHENTICATED
    assert send_loop(running, "acme-read", "reader", "acme") == grpc.StatusCode.UNAUTHENTICATED
    refused = requests.post(
        f"{running.http_url}/v1/traces",
        data=b"",
        headers={"Content-Type": "application/x-protobuf", **bearer("nope")},
    )
    assert refused.status_code == 401
    assert running.query("SELECT count() AS n FROM otel_traces") == before
    # the admin token may send for any tenant: the spans' own tenant.id stands
    assert send_loop(running, "admin", "admin-s1", "gamma") == grpc.StatusCode.OK
    assert running.wait_for_rows("SELECT 1 FROM otel_traces WHERE Tenant = 'gamma'", 6)


def test_a_read_token_sees_its_tenant_only_on_the_api(running):
    url = f"{running.api_url}/v1/incidents"
    mine = requests.get(url, headers=bearer("acme-read")).json()
    assert {i["tenant"] for i in mine} == {"acme"}
    # a filter cannot widen it
    assert requests.get(url, params={"tenant": "beta"}, headers=bearer("acme-read")).json() == []
    beta_id = requests.get(url, headers=bearer("beta-read")).json()[0]["incident_id"]
    assert requests.get(f"{url}/{beta_id}", headers=bearer("acme-read")).status_code == 404
    assert requests.get(f"{url}/{beta_id}", headers=bearer("beta-read")).status_code == 200
    assert {i["tenant"] for i in requests.get(url, headers=bearer("admin")).json()} >= {
        "acme",
        "beta",
    }
    # reading is all it does
    ack = requests.post(f"{url}/{beta_id}/ack", json={"reason": "x"}, headers=bearer("beta-read"))
    assert ack.status_code == 403
    assert (
        requests.get(f"{running.api_url}/v1/control", headers=bearer("acme-read")).status_code
        == 403
    )
    assert requests.get(url, headers=bearer("acme-in")).status_code == 403


def test_a_read_token_sees_its_tenant_only_in_sql(running):
    sql = f"{running.api_url}/v1/sql"
    query = {"query": "SELECT DISTINCT Tenant FROM agent_spans ORDER BY Tenant", "format": "json"}
    answer = requests.post(sql, json=query, headers=bearer("acme-read")).json()
    assert [r["Tenant"] for r in answer["data"]] == ["acme"]
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=running.ports["sql"], password="beta-read"
    )
    assert client.query("SELECT DISTINCT Tenant FROM otel_traces").result_rows == [("beta",)]
    assert client.query(
        "WITH t AS (SELECT tenant FROM incidents_current) SELECT DISTINCT tenant FROM t"
    ).result_rows == [("beta",)]
    for escape in (
        "SELECT DISTINCT Tenant FROM merge('otel_traces')",
        "SELECT count() FROM otel_traces_ingest_mv",  # a materialized view reads unfiltered
        "SELECT query FROM system.processes",
        "SELECT * FROM page_outbox",
        "SELECT (SELECT count() FROM system.processes)",
        "SELECT Tenant FROM otel_traces UNION ALL SELECT name FROM system.tables",
        "SELECT count() FROM incidents JOIN page_outbox ON 1",
        "SELECT DISTINCT Tenant FROM merge('otel_traces') FORMAT Native",  # EXPLAIN must not take it
        "SHOW TABLES",
        "SELECT DISTINCT Tenant FROM otel_traces SETTINGS additional_table_filters = {'otel_traces': '1'}",
    ):
        try:
            leaked = client.query(escape).result_rows
        except DatabaseError:
            leaked = None
        assert leaked is None, (escape, leaked)
        refused = requests.post(sql, json={"query": escape}, headers=bearer("acme-read"))
        assert refused.status_code == 403, (escape, refused.text)
    admin = clickhouse_connect.get_client(
        host="127.0.0.1", port=running.ports["sql"], password="admin"
    )
    assert {r[0] for r in admin.query("SELECT DISTINCT Tenant FROM otel_traces").result_rows} >= {
        "acme",
        "beta",
    }


def test_containment_is_per_tenant(running):
    """A control naming a tenant stops that tenant's agents only, and a tenant's token checks as
    its own tenant whatever its context claims (it can neither escape nor probe another's)."""
    api = running.api_url
    paused = requests.post(
        f"{api}/v1/control",
        json={"mode": "paused", "scope": {"tenant": "acme", "agent": "support"}, "reason": "t"},
        headers=bearer("admin"),
    )
    assert paused.status_code == 201, paused.text
    assert paused.json()["scope"] == "tenant=acme;agent=support"

    def enabled(token: str, context: dict) -> bool:
        answer = requests.post(
            f"{api}/ofrep/v1/evaluate/flags/agent.enabled",
            json={"context": context},
            headers=bearer(token),
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["value"]

    try:
        assert enabled("acme-in", {"agent": "support"}) is False
        assert enabled("acme-in", {"agent": "support", "tenant.id": "beta"}) is False  # no escape
        assert enabled("beta-in", {"agent": "support"}) is True
        assert enabled("beta-in", {"agent": "support", "tenant": "acme"}) is True  # no probing
        assert enabled("admin", {"agent": "support", "tenant": "acme"}) is False
        assert enabled("admin", {"agent": "support"}) is True  # the default tenant
        check = requests.get(
            f"{api}/v1/control/check", params={"agent": "support", "tenant": "acme"},
            headers=bearer("admin"),
        )  # fmt: skip
        assert check.json()["state"] == "paused"
        # a control without a tenant is everyone's
        requests.post(
            f"{api}/v1/control",
            json={"mode": "killed", "scope": {"agent": "billing"}, "reason": "t"},
            headers=bearer("admin"),
        ).raise_for_status()
        assert enabled("beta-in", {"agent": "billing"}) is False
        assert enabled("acme-in", {"agent": "billing"}) is False
    finally:
        for scope in ({"tenant": "acme", "agent": "support"}, {"agent": "billing"}):
            requests.post(
                f"{api}/v1/control/resume",
                json={"scope": scope, "reason": "test over"},
                headers=bearer("admin"),
            )
