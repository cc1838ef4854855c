"""Apply the numbered DDL files in ``schemas/`` once each, in order, recording them in a table.

Several collectors may start together against one ClickHouse (or one cluster): exactly one of
them applies what is pending. Each takes the lease ``migrations`` (``collector.store.lease``)
before applying anything, re-reads what is applied once it holds it (another may have finished
meanwhile), renews it before every statement, and records each version with the insert
deduplication token ``migration:<version>``, so even a record sent twice (a retry, a holder that
froze past its lease) is kept once. The others wait for the lease, find nothing left and apply
nothing. A holder that dies mid-way stops renewing; once its lease lapses the next collector
takes it and applies the rest (statements are idempotent, ``IF NOT EXISTS``, so a file cut off
half-way is safe to run again).

With ``cluster`` set (config ``clickhouse_cluster``), every statement is rendered for that
cluster first (``collector.store.cluster_ddl``); a database made for the other variant is refused.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from collector.store import (
    Store,
    StoreError,
    StoreUnavailable,
    insert_rows,
    insert_target,
    query_rows,
)
from collector.store.cluster_ddl import for_cluster
from collector.store.lease import LEASES_TABLE, Lease, collector_id, read_state

log = logging.getLogger("agentwatch.migrations")

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

LEASE_NAME = "migrations"
#: A holder renews before every statement, so ttl only bounds one statement (an ALTER ... ON
#: CLUSTER waits for every host, up to distributed_ddl_task_timeout) and how long the others
#: wait after a holder died.
LEASE_TTL_S = 60.0
#: How long a collector waits for another to finish before it gives up starting.
WAIT_S = 600.0
POLL_S = 0.2

# The deduplication window keeps a second record of a version (``migration:<version>``) out.
MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime64(3) DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY version
SETTINGS non_replicated_deduplication_window = 1000
"""
# schema_migrations made before the window existed
_MIGRATIONS_WINDOW = (
    "ALTER TABLE schema_migrations MODIFY SETTING non_replicated_deduplication_window = 1000"
)


class SchemaMismatch(StoreUnavailable):
    """The database was made for the other variant (single node or cluster) than the config's."""


class MigrationsBusy(StoreUnavailable):
    """Another collector held the migrations lease past the wait (a long or hung migration):
    starting again later can help."""


class MigrationLeaseLost(StoreUnavailable):
    """This collector lost the migrations lease mid-way (it froze past the lease's ttl):
    another one has taken over and applies the rest."""


def migration_files(directory: Path = SCHEMAS_DIR) -> list[tuple[int, str, Path]]:
    files = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match:
            files.append((int(match.group(1)), match.group(2), path))
    return files


def statements(sql: str) -> list[str]:
    """Split a DDL file on semicolons that end a line (the DDL has none inside strings)."""
    without_comments = "\n".join(
        line for line in sql.splitlines() if not line.strip().startswith("--")
    )
    return [
        s.strip() for s in re.split(r";\s*$", without_comments, flags=re.MULTILINE) if s.strip()
    ]


def applied_versions(store: Store) -> set[int]:
    return {int(r["version"]) for r in query_rows(store, "SELECT version FROM schema_migrations")}


def record_applied(store: Store, version: int, name: str) -> None:
    """Record ``version`` as applied; a second record of it is dropped by its token."""
    target = insert_target(
        "schema_migrations", {"insert_deduplication_token": f"migration:{version}"}
    )
    insert_rows(store, target, [{"version": version, "name": name}])


def migrate(
    store: Store,
    directory: Path = SCHEMAS_DIR,
    *,
    cluster: str | None = None,
    holder: str | None = None,
    lease_ttl_s: float = LEASE_TTL_S,
    wait_s: float = WAIT_S,
) -> list[str]:
    """Apply pending migrations; returns the names this caller applied ([] when another
    collector applied them, or nothing was pending)."""

    def run(statement: str) -> None:
        for rendered in for_cluster(statement, cluster) if cluster else [statement]:
            store.command(rendered)

    _check_variant(store, cluster)
    run(MIGRATIONS_TABLE)
    run(LEASES_TABLE)
    files = migration_files(directory)
    done = applied_versions(store)
    if all(version in done for version, _, _ in files):
        return []

    lease = Lease(
        store, LEASE_NAME, holder or collector_id(), ttl_s=lease_ttl_s, sync_replica=bool(cluster)
    )
    _acquire(store, lease, wait_s)
    try:
        if cluster:  # this host's replica may lag: catch up before reading what is done
            store.command("SYSTEM SYNC REPLICA schema_migrations")
        else:
            store.command(_MIGRATIONS_WINDOW)  # replicated tables deduplicate by default
        done = applied_versions(store)
        applied = []
        for version, name, path in files:
            if version in done:
                continue
            for statement in statements(path.read_text()):
                _renew(lease)
                run(statement)
            _renew(lease)
            record_applied(store, version, name)
            applied.append(f"{version:03d}_{name}")
        if not applied:  # pending when first read: another collector applied them meanwhile
            log.info("migrations: none left to apply, another collector applied them")
        return applied
    finally:
        try:
            lease.release()
        except (StoreUnavailable, StoreError) as exc:  # it lapses after its ttl all the same
            log.warning("migrations: could not release the lease: %s", exc)


def _check_variant(store: Store, cluster: str | None) -> None:
    """Refuse a database made for the other variant: its tables would be left as they are (every
    CREATE is IF NOT EXISTS) and the next ALTER would reach the wrong table."""
    engines = {
        row["name"]: row["engine"]
        for row in query_rows(
            store,
            "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
            " AND name IN ('schema_migrations', 'otel_traces')",
        )
    }
    made_by = engines.get("schema_migrations", "")
    if cluster and made_by and not made_by.startswith("Replicated"):
        raise SchemaMismatch(
            f"clickhouse_cluster: {cluster}, but this database was made by a single-node collector"
            f" (schema_migrations is {made_by}); the cluster variant needs a database of its own"
        )
    if not cluster and engines.get("otel_traces") == "Distributed":
        raise SchemaMismatch(
            "this database was made for a ClickHouse cluster (otel_traces is Distributed): set"
            " clickhouse_cluster to the cluster's name"
        )


def _acquire(store: Store, lease: Lease, wait_s: float) -> None:
    """Take the lease, waiting up to ``wait_s`` for its holder."""
    deadline = time.monotonic() + wait_s
    waited = False
    while not lease.acquire():
        if time.monotonic() >= deadline:
            holder = read_state(store, LEASE_NAME).holder
            raise MigrationsBusy(
                f"migrations: waited {wait_s:g} s for {holder or 'another collector'}, which holds"
                " the migrations lease and is still applying them; start again once it is done"
            )
        if not waited:
            log.info(
                "migrations: waiting for %s to apply them", read_state(store, LEASE_NAME).holder
            )
            waited = True
        time.sleep(POLL_S)


def _renew(lease: Lease) -> None:
    if not lease.acquire():
        raise MigrationLeaseLost(
            f"migrations: lease lost by {lease.holder} (held past its {lease.ttl_s:g} s without"
            " renewing); another collector applies the rest"
        )
