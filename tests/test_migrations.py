"""Migrations applied exactly once when several collectors start together.

Each "collector" here is a ClickHouseStore of its own: an independent HTTP client of one real
chDB store, through a collector's ClickHouse-compatible SQL endpoint with writes on (chDB's data
directory belongs to one process, so this is how several clients share one ClickHouse here).
The test migrations INSERT into a counter table, which is not idempotent: a file applied twice
shows as a count of 2.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from collector.store.clickhouse import ClickHouseStore
from collector.store.lease import Lease
from collector.store.migrations import (
    MigrationsBusy,
    migrate,
    record_applied,
    statements,
)

# Versions far above schemas/'s, as the collector under test has applied those already.
MIGRATIONS = {
    "901_counter.sql": """
        CREATE TABLE IF NOT EXISTS applied_count (file String) ENGINE = MergeTree ORDER BY file;
        INSERT INTO applied_count VALUES ('901');
    """,
    "902_more.sql": "INSERT INTO applied_count VALUES ('902');\n",
    "903_again.sql": "INSERT INTO applied_count VALUES ('903');\n",
}


@pytest.fixture
def schemas(tmp_path: Path) -> Path:
    directory = tmp_path / "schemas"
    directory.mkdir()
    for name, sql in MIGRATIONS.items():
        (directory / name).write_text(sql)
    return directory


@pytest.fixture
def clickhouse(collector_factory):
    """Opens independent clients of one ClickHouse; closes them after."""
    with collector_factory(sql_readonly=False) as upstream:
        opened: list[ClickHouseStore] = []

        def connect() -> ClickHouseStore:
            opened.append(ClickHouseStore(upstream.sql_url))
            return opened[-1]

        yield connect
        for store in opened:
            store.close()


def applied_counts(store) -> dict[str, int]:
    rows = store.query("SELECT file, count() FROM applied_count GROUP BY file", "TSV")
    return {file: int(n) for file, n in (line.split("\t") for line in rows.decode().splitlines())}


def recorded(store) -> dict[int, int]:
    rows = store.query(
        "SELECT version, count() FROM schema_migrations WHERE version > 900 GROUP BY version",
        "TSV",
    )
    return {int(v): int(n) for v, n in (line.split("\t") for line in rows.decode().splitlines())}


def test_collectors_starting_together_apply_each_migration_once(clickhouse, schemas):
    stores = [clickhouse() for _ in range(4)]
    start = threading.Barrier(len(stores))
    results: dict[int, list[str] | BaseException] = {}

    def start_collector(index: int) -> None:
        start.wait()
        try:
            results[index] = migrate(stores[index], schemas, holder=f"collector-{index}")
        except BaseException as exc:  # reported below, with the others' results
            results[index] = exc

    threads = [threading.Thread(target=start_collector, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert sorted(map(str, results.values())) == [
        "['901_counter', '902_more', '903_again']",
        "[]",
        "[]",
        "[]",
    ]
    assert applied_counts(stores[0]) == {"901": 1, "902": 1, "903": 1}
    assert recorded(stores[0]) == {901: 1, 902: 1, 903: 1}


def test_the_next_collector_finishes_what_a_dead_one_started(clickhouse, schemas):
    crashed, restarted = clickhouse(), clickhouse()
    # A collector took the lease, applied 901, ran 902 and died before recording it.
    lease = Lease(crashed, "migrations", "crashed-collector", ttl_s=3, margin_s=1)
    assert lease.acquire()
    for name in ("901_counter.sql", "902_more.sql"):
        for statement in statements(MIGRATIONS[name]):
            crashed.command(statement)
    record_applied(crashed, 901, "counter")

    # The next one waits for the dead holder's lease to lapse, then applies the rest.
    applied = migrate(restarted, schemas, holder="restarted", lease_ttl_s=3, wait_s=60)

    assert applied == ["902_more", "903_again"]
    assert recorded(restarted) == {901: 1, 902: 1, 903: 1}
    # 902 ran twice: once cut off by the crash, once to finish (real migrations are idempotent)
    assert applied_counts(restarted) == {"901": 1, "902": 2, "903": 1}


def test_a_collector_gives_up_waiting_on_a_live_holder_and_names_it(clickhouse, schemas):
    busy, waiting = clickhouse(), clickhouse()
    lease = Lease(busy, "migrations", "host-a:4242:slow", ttl_s=60)
    assert lease.acquire()

    with pytest.raises(MigrationsBusy, match="host-a:4242:slow"):
        migrate(waiting, schemas, holder="waiting", wait_s=1)
    assert recorded(waiting) == {}

    lease.release()
    assert migrate(waiting, schemas, holder="waiting") == ["901_counter", "902_more", "903_again"]
    # with nothing pending, no lease is needed: a start while another holds it does not wait
    assert lease.acquire()
    assert migrate(busy, schemas, holder="late", wait_s=0) == []
