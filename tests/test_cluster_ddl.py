"""The cluster DDL variant (config ``clickhouse_cluster``).

No cluster runs here: every rendered statement is parsed by chDB (ClickHouse's own parser, through
``formatQuery`` and ``EXPLAIN AST``), the sharding keys are checked against the tables the
single-node DDL creates, and chDB given a cluster of itself runs the rendered schema with real
Distributed tables (without Keeper: Replicated engines and ON CLUSTER stand aside). The last test
runs a one-host cluster with Keeper in Docker, and skips where no Docker engine runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentwatch.config import ConfigError, load_config
from collector.store import insert_rows, insert_target, query_rows
from collector.store.cluster_ddl import GLOBAL_TABLES, for_cluster
from collector.store.embedded import EmbeddedStore
from collector.store.lease import LEASES_TABLE
from collector.store.migrations import (
    MIGRATIONS_TABLE,
    SchemaMismatch,
    migrate,
    migration_files,
    statements,
)
from tests.test_store_clickhouse_server import _docker_available

SINGLE_NODE = [MIGRATIONS_TABLE, LEASES_TABLE] + [
    statement for _, _, path in migration_files() for statement in statements(path.read_text())
]


def test_a_table_read_with_final_becomes_replicated_shards_and_a_distributed_table_over_them():
    ddl = """CREATE TABLE IF NOT EXISTS page_outbox
(
    notification_id String,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY notification_id"""
    assert for_cluster(ddl, "main") == [
        "CREATE TABLE IF NOT EXISTS page_outbox_local ON CLUSTER 'main'\n"
        "(\n    notification_id String,\n    version UInt64\n)\n"
        "ENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/{database}/page_outbox_local', '{replica}', version)\n"
        "ORDER BY notification_id",
        "CREATE TABLE IF NOT EXISTS page_outbox ON CLUSTER 'main' AS page_outbox_local\n"
        "ENGINE = Distributed('main', currentDatabase(), page_outbox_local,"
        " cityHash64(notification_id))",
    ]


def test_a_coordination_table_is_one_replication_group_across_the_cluster():
    assert for_cluster(LEASES_TABLE, "main") == [
        "CREATE TABLE IF NOT EXISTS leases ON CLUSTER 'main'\n"
        "(\n"
        "    name LowCardinality(String),\n"
        "    term UInt64,\n"
        "    holder String,\n"
        "    kind LowCardinality(String),\n"
        "    at DateTime64(9, 'UTC') DEFAULT now64(9)\n"
        ")\n"
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/global/{database}/leases', '{replica}')\n"
        "ORDER BY (name, term, at)\n"
        "TTL toDateTime(at) + INTERVAL 7 DAY\n"
        "SETTINGS replicated_deduplication_window = 1000",
    ]


def test_views_and_alters_go_to_the_local_tables_on_every_host():
    view = (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS session_traces_mv TO session_traces AS\n"
        "SELECT Tenant, SessionId, TraceId FROM otel_traces GROUP BY Tenant, SessionId, TraceId"
    )
    assert for_cluster(view, "main") == [
        "CREATE MATERIALIZED VIEW IF NOT EXISTS session_traces_mv ON CLUSTER 'main'"
        " TO session_traces_local AS\n"
        "SELECT Tenant, SessionId, TraceId FROM otel_traces_local"
        " GROUP BY Tenant, SessionId, TraceId"
    ]
    add_column = "ALTER TABLE otel_traces ADD COLUMN IF NOT EXISTS H UInt64 CODEC(LZ4) AFTER X"
    assert for_cluster(add_column, "main") == [
        "ALTER TABLE otel_traces_local ON CLUSTER 'main'"
        " ADD COLUMN IF NOT EXISTS H UInt64 CODEC(LZ4) AFTER X",
        "ALTER TABLE otel_traces ON CLUSTER 'main' ADD COLUMN IF NOT EXISTS H UInt64 AFTER X",
    ]
    window = "ALTER TABLE otel_traces MODIFY SETTING non_replicated_deduplication_window = 10000"
    assert for_cluster(window, "main") == [
        "ALTER TABLE otel_traces_local ON CLUSTER 'main'"
        " MODIFY SETTING replicated_deduplication_window = 10000"
    ]


def test_a_form_it_does_not_know_is_refused_rather_than_run_on_one_host():
    with pytest.raises(ValueError, match="joins tables"):
        for_cluster("CREATE VIEW v AS SELECT * FROM a JOIN b USING (k)", "main")
    with pytest.raises(ValueError, match="no cluster form"):
        for_cluster("DROP TABLE otel_traces", "main")
    with pytest.raises(ValueError, match="cluster name"):
        for_cluster("ALTER TABLE t DROP COLUMN c", "main' SETTINGS x = 1 --")


@pytest.fixture
def chdb_store(tmp_path: Path) -> EmbeddedStore:
    """A chDB store with the single-node schema."""
    store = EmbeddedStore(tmp_path / "single-node")
    migrate(store)
    yield store
    store.close()


def test_every_schema_statement_renders_to_ddl_clickhouse_parses(chdb_store):
    rendered = [r for statement in SINGLE_NODE for r in for_cluster(statement, "main")]
    created = set()
    for statement in rendered:
        chdb_store.query("EXPLAIN AST " + statement, "TSV")
        formatted = chdb_store.query(
            "SELECT formatQuery({ddl:String})", "TSVRaw", {"ddl": statement}
        ).decode()
        assert "ON CLUSTER main" in formatted, statement
        if match := re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement):
            created.add(match.group(1))
    # every table of the single-node schema exists under its own name (queries are unchanged)
    single_node_tables = {
        row.split("\t")[0]
        for row in chdb_store.query(
            "SELECT name FROM system.tables WHERE database = currentDatabase()"
            " AND engine NOT LIKE '%View'",
            "TSV",
        )
        .decode()
        .splitlines()
    }
    assert single_node_tables <= created
    assert {t + "_local" for t in single_node_tables - GLOBAL_TABLES} <= created


def test_rows_merged_by_final_are_on_one_shard(chdb_store):
    """A table read with FINAL shards by columns of its sorting key, so every version of a row
    goes to one shard (where FINAL merges them); every sharding key names real columns."""
    distributed = re.compile(
        r"CREATE TABLE IF NOT EXISTS (\w+) .*Distributed\('main', \w+\(\), \w+, (.*)\)$"
    )
    keys = dict(
        match.groups()
        for statement in SINGLE_NODE
        for rendered in for_cluster(statement, "main")
        if (match := distributed.search(rendered.replace("\n", " ")))
    )
    tables = chdb_store.query(
        "SELECT name, engine, sorting_key FROM system.tables"
        " WHERE database = currentDatabase() AND engine LIKE '%MergeTree'",
        "TSV",
    ).decode()
    checked = set()
    for line in tables.splitlines():
        name, engine, sorting_key = line.split("\t")
        if name in GLOBAL_TABLES:
            continue
        key = keys[name]
        chdb_store.query(f"SELECT {key} FROM {name} LIMIT 0", "TSV")  # the columns exist
        if engine in ("ReplacingMergeTree", "AggregatingMergeTree"):
            columns = set(re.findall(r"\w+", key.removeprefix("cityHash64")))
            assert columns <= {c.strip() for c in sorting_key.split(",")}, name
            checked.add(name)
    assert checked >= {"session_traces", "incidents", "page_outbox", "regression_cases"}
    assert keys["otel_traces"] == keys["session_traces"] == "cityHash64(Tenant, TraceId)"


CLUSTER_OF_ITSELF = """<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers><main><shard>
    <replica><host>localhost</host><port>9000</port></replica>
  </shard></main></remote_servers>
</clickhouse>
"""


def without_keeper(statement: str) -> str:
    """A rendered statement as chDB can run it: no ON CLUSTER (no DDL queue without Keeper) and
    the plain engine for a Replicated one (its path and replica name dropped)."""
    statement = statement.replace(" ON CLUSTER 'main'", "")
    statement = re.sub(
        r"Replicated(\w+)\('[^']*', '\{replica\}'(?:, )?([^()]*)\)",
        lambda m: m.group(1) + (f"({m.group(2)})" if m.group(2) else ""),
        statement,
    )
    return re.sub(
        r"\breplicated_deduplication_window", "non_replicated_deduplication_window", statement
    )


def test_spans_flow_through_the_distributed_tables_of_a_one_shard_cluster(tmp_path: Path):
    """chDB given a cluster of itself (one shard, this host) runs the rendered schema with real
    Distributed tables: spans inserted into the Distributed ingest table reach the local spans
    table through the local view, the session table through its view, and agent_spans joins
    them back. Keeper's part (replication, ON CLUSTER) is left out: chDB has none."""
    (tmp_path / "cluster.xml").write_text(CLUSTER_OF_ITSELF)
    store = EmbeddedStore(tmp_path / "data", {"config-file": str(tmp_path / "cluster.xml")})
    try:
        for statement in SINGLE_NODE:
            for rendered in for_cluster(statement, "main"):
                store.command(without_keeper(rendered))
        spans = [
            {"TimestampNs": 1_700_000_000_000_000_000, "TraceId": "t1", "SpanId": "root",
             "SpanName": "invoke_agent support", "Tenant": "acme", "SessionId": "sess-1"},
            {"TimestampNs": 1_700_000_000_100_000_000, "TraceId": "t1", "SpanId": "child",
             "ParentSpanId": "root", "SpanName": "chat gpt-4o", "Tenant": "acme"},
        ]  # fmt: skip
        target = insert_target(
            "otel_traces_ingest",
            {"distributed_foreground_insert": 1, "insert_deduplication_token": "batch-1"},
        )
        insert_rows(store, target, spans)
        insert_rows(store, target, spans)  # a retry: dropped by its token on the shard
        assert query_rows(
            store, "SELECT SpanName, SessionId FROM agent_spans ORDER BY SpanName"
        ) == [
            {"SpanName": "chat gpt-4o", "SessionId": "sess-1"},
            {"SpanName": "invoke_agent support", "SessionId": "sess-1"},
        ]
        assert query_rows(store, "SELECT count() AS n FROM otel_traces_local") == [{"n": 2}]
        engines = query_rows(
            store,
            "SELECT name, engine FROM system.tables WHERE name IN"
            " ('otel_traces', 'otel_traces_ingest', 'otel_traces_ingest_local') ORDER BY name",
        )
        assert [row["engine"] for row in engines] == ["Distributed", "Distributed", "Null"]
        with pytest.raises(SchemaMismatch, match="set clickhouse_cluster"):
            migrate(store)  # a collector started without clickhouse_cluster on it
    finally:
        store.close()


def test_a_cluster_needs_a_clickhouse_server():
    with pytest.raises(ConfigError, match="clickhouse_cluster"):
        load_config(None, {"clickhouse_cluster": "main"})
    with pytest.raises(ConfigError, match="clickhouse_cluster"):
        load_config(None, {"clickhouse_url": "http://ch:8123", "clickhouse_cluster": "a'b"})
    config = load_config(
        None,
        environ={
            "AGENTWATCH_CLICKHOUSE_URL": "http://ch:8123",
            "AGENTWATCH_CLICKHOUSE_CLUSTER": "main",
        },
    )
    assert config.clickhouse_cluster == "main"


CLUSTER_XML = """<clickhouse>
  <macros><shard>01</shard><replica>r1</replica><cluster>agentwatch</cluster></macros>
  <remote_servers>
    <agentwatch>
      <shard>
        <internal_replication>true</internal_replication>
        <replica><host>localhost</host><port>9000</port>
          <user>test</user><password>test</password></replica>
      </shard>
    </agentwatch>
  </remote_servers>
  <keeper_server>
    <tcp_port>9181</tcp_port>
    <server_id>1</server_id>
    <log_storage_path>/var/lib/clickhouse/coordination/log</log_storage_path>
    <snapshot_storage_path>/var/lib/clickhouse/coordination/snapshots</snapshot_storage_path>
    <raft_configuration>
      <server><id>1</id><hostname>localhost</hostname><port>9234</port></server>
    </raft_configuration>
  </keeper_server>
  <zookeeper><node><host>localhost</host><port>9181</port></node></zookeeper>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</clickhouse>
"""


@pytest.mark.skipif(not _docker_available(), reason="no Docker engine: no cluster can run")
def test_spans_land_in_a_cluster(collector_factory, tmp_path: Path):
    """One host as a cluster of one shard (Keeper inside): the rendered DDL runs, spans go in
    through the Distributed ingest table and come back out of the Distributed otel_traces."""
    from testcontainers.clickhouse import ClickHouseContainer

    from tests.otlp import request, span
    from tests.test_receivers import grpc_export

    (tmp_path / "cluster.xml").write_text(CLUSTER_XML)
    container = ClickHouseContainer(
        "clickhouse/clickhouse-server:25.8", username="test", password="test", dbname="agentwatch"
    )
    container.with_volume_mapping(
        str(tmp_path / "cluster.xml"), "/etc/clickhouse-server/config.d/cluster.xml"
    )
    with container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(8123)
        url = f"http://test:test@{host}:{port}/agentwatch"
        with collector_factory(clickhouse_url=url, clickhouse_cluster="agentwatch") as collector:
            grpc_export(
                collector,
                request(span("on-cluster", {"gen_ai.operation.name": "chat"})).SerializeToString(),
            )
            rows = collector.wait_for_rows("SELECT SpanName, StepKind FROM otel_traces", 1)
            assert rows == [{"SpanName": "on-cluster", "StepKind": "llm"}]
            engines = collector.query(
                "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
                " AND name IN ('otel_traces', 'otel_traces_local', 'leases') ORDER BY name"
            )
            assert engines == [
                {"name": "leases", "engine": "ReplicatedMergeTree"},
                {"name": "otel_traces", "engine": "Distributed"},
                {"name": "otel_traces_local", "engine": "ReplicatedMergeTree"},
            ]


def test_a_database_made_for_the_other_variant_is_refused_at_start(chdb_store):
    with pytest.raises(SchemaMismatch, match="made by a single-node collector"):
        migrate(chdb_store, cluster="main")
