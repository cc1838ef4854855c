"""The single-node DDL of ``schemas/`` rendered for a ClickHouse cluster (config
``clickhouse_cluster``): pure text to text, one statement at a time.

ClickHouse Cloud takes the single-node DDL as it is (its SharedMergeTree replicates every
MergeTree table already); this is for a self-managed cluster of shards and replicas with Keeper,
``internal_replication = true`` and the ``{shard}`` and ``{replica}`` macros (``{replica}``
unique across the cluster: the host name).

=====================================  =============================================================
single node                            cluster
=====================================  =============================================================
``CREATE TABLE t (...) ENGINE = X``    ``CREATE TABLE t_local ON CLUSTER c (...) ENGINE =
(X a MergeTree family engine)          ReplicatedX('/clickhouse/tables/{shard}/{database}/t_local',
                                       '{replica}', ...)`` and ``CREATE TABLE t ON CLUSTER c AS
                                       t_local ENGINE = Distributed(c, currentDatabase(), t_local,
                                       <SHARDING_KEYS[t]>)``: queries and inserts keep using ``t``
``... ENGINE = Null`` (ingest)         ``t_local`` stays Null, ``t`` Distributed over it: an insert
                                       is sent to the row's shard, where the view below runs
a table of ``GLOBAL_TABLES``           one table ``ON CLUSTER``, replicated in ONE group across the
                                       cluster (path ``/clickhouse/tables/global/...``, no
                                       ``{shard}``), no Distributed: every host reads all of it
``non_replicated_deduplication_        ``replicated_deduplication_window``: insert deduplication
window = N``                           tokens (the writer's retries, leases, migration records)
                                       hold across replicas through Keeper
``CREATE MATERIALIZED VIEW v TO t AS   ``... v ON CLUSTER c TO t_local AS ... FROM s_local``: it
SELECT ... FROM s``                    runs on each shard's inserts into its local table
``ALTER TABLE t ...``                  ``ALTER TABLE t_local ON CLUSTER c ...``, and the same on the
                                       Distributed ``t`` when it adds, drops or changes columns
                                       (without codecs); ``MODIFY QUERY`` of a view: its ``FROM``
                                       local
``CREATE [OR REPLACE] VIEW v AS ...``  ``... v ON CLUSTER c AS ...`` over the Distributed tables; a
                                       view with a JOIN (``JOINED_ON_SHARDING_KEY``) gets
                                       ``distributed_product_mode = 'local'``
``INSERT ...``                         unchanged (into the Distributed table)
=====================================  =============================================================

Sharding (``SHARDING_KEYS``). Spans shard by ``(Tenant, TraceId)``, not by session: the session id
is often on the root span only (OTel GenAI exports it last), so a trace's children carry none when
they are inserted and would land on another shard than their root. By trace, every span of a
trace is on one shard, ``session_traces`` (built on each shard by its view from the spans there)
sits beside them, and ``agent_spans``' join of the two on (Tenant, TraceId) runs on each shard
alone (``distributed_product_mode = 'local'`` in the view; other IN and JOIN subqueries need the
collector's profile to say ``'global'``: some are keyed by session). A session's traces spread
over the shards; reading a session asks every shard for its key range of ``session_traces``, then
its traces by TraceId. Tables read with ``FINAL``
(ReplacingMergeTree, AggregatingMergeTree) shard by columns of their sorting key, so all versions
of a row are on one shard, where FINAL merges them; incidents and their events both by
``incident_id``, so ``incident_mttr``'s join is local too. A table not listed shards by its whole
sorting key (always right for FINAL).
"""

from __future__ import annotations

import re

#: One table for the whole cluster: coordination (leases, migrations, the collectors' registry)
#: and what every collector must see at once (controls in force, silences); small, replicated
#: everywhere, read locally.
GLOBAL_TABLES = frozenset(
    {"schema_migrations", "leases", "collectors", "control_state", "control_audit", "silences"}
)

#: The Distributed tables' sharding keys (see the module's docstring for why).
SHARDING_KEYS = {
    "otel_traces": "cityHash64(Tenant, TraceId)",
    "otel_traces_ingest": "cityHash64(Tenant, TraceId)",
    "session_traces": "cityHash64(Tenant, TraceId)",
    "incidents": "cityHash64(incident_id)",
    "incident_events": "cityHash64(incident_id)",
    "regression_cases": "cityHash64(incident_id)",
    "page_outbox": "cityHash64(notification_id)",
    "golden_runs": "cityHash64(tenant, agent, label)",
    "gamedays": "cityHash64(drill_id)",
}

#: Views whose JOIN pairs tables sharded on the join key, so each shard joins its own rows.
JOINED_ON_SHARDING_KEY = frozenset({"agent_spans", "incident_mttr"})

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_.{}-]{1,128}")
_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\s*(?=\()")
_ENGINE = re.compile(r"ENGINE\s*=\s*(\w+)(?:\(([^()]*)\))?")
_ORDER_BY = re.compile(r"ORDER BY\s+(?:\(([^()]*)\)|(\w+))")
_MATERIALIZED_VIEW = re.compile(
    r"CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+) AS\s", re.DOTALL
)
_VIEW = re.compile(r"(CREATE (?:OR REPLACE )?VIEW (?:IF NOT EXISTS )?(\w+)) AS\s", re.DOTALL)
_ALTER = re.compile(r"ALTER TABLE (\w+)\s+(.*)", re.DOTALL)
_COLUMN_CHANGE = re.compile(r"^(ADD|DROP|MODIFY|RENAME|COMMENT) COLUMN\b")
_FROM = re.compile(r"\bFROM\s+(\w+)")
_CODEC = re.compile(r"\s+CODEC\([^()]*(?:\([^()]*\)[^()]*)*\)")
_SETTINGS_AT_END = re.compile(r"\nSETTINGS\s+[^\n]*$")


def check_cluster_name(cluster: str) -> str:
    """``cluster`` if it is a plain cluster name or a ``{macro}`` (it is quoted into DDL)."""
    if not _CLUSTER_NAME.fullmatch(cluster):
        raise ValueError(f"cluster name {cluster!r}: expected 1-128 of A-Z a-z 0-9 _ . - {{ }}")
    return cluster


def for_cluster(statement: str, cluster: str) -> list[str]:
    """The cluster form of one single-node statement (one or two statements)."""
    on = f"ON CLUSTER '{check_cluster_name(cluster)}'"
    statement = statement.strip()
    if match := _CREATE_TABLE.match(statement):
        return _create_table(match.group(1), statement[match.end() :], cluster, on)
    if match := _MATERIALIZED_VIEW.match(statement):
        name, target = match.groups()
        select = statement[match.end() :]
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name} {on} TO {_local(target)} AS\n"
            + _local_sources(select)
        ]
    if match := _VIEW.match(statement):
        head, name = match.groups()
        return [f"{head} {on} AS\n" + _view_body(name, statement[match.end() :])]
    if match := _ALTER.match(statement):
        return _alter(match.group(1), match.group(2), on)
    if statement.upper().startswith("INSERT "):
        return [statement]
    raise ValueError(f"no cluster form for this statement: {statement.splitlines()[0]!r}")


def _create_table(name: str, rest: str, cluster: str, on: str) -> list[str]:
    close = _closing_paren(rest)
    columns, tail = rest[: close + 1], rest[close + 1 :]
    engine = _ENGINE.search(tail)
    if engine is None:
        raise ValueError(f"{name}: no ENGINE clause")
    kind, args = engine.group(1), engine.group(2)
    if name in GLOBAL_TABLES:
        path = f"/clickhouse/tables/global/{{database}}/{name}"
        table = name
    else:
        path = f"/clickhouse/tables/{{shard}}/{{database}}/{name}_local"
        table = f"{name}_local"
    if kind == "Null" and name not in GLOBAL_TABLES:
        new_engine = "ENGINE = Null"
    elif kind.endswith("MergeTree"):
        replicated_args = ", ".join([f"'{path}'", "'{replica}'"] + ([args] if args else []))
        new_engine = f"ENGINE = Replicated{kind}({replicated_args})"
        tail = tail.replace(
            "non_replicated_deduplication_window", "replicated_deduplication_window"
        )
    else:
        raise ValueError(f"{name}: no cluster form for ENGINE = {kind}")
    tail = tail[: engine.start()] + new_engine + tail[engine.end() :]
    local = f"CREATE TABLE IF NOT EXISTS {table} {on}\n{columns}{tail}"
    if name in GLOBAL_TABLES:
        return [local]
    key = SHARDING_KEYS.get(name) or _sorting_key_hash(name, tail)
    distributed = (
        f"CREATE TABLE IF NOT EXISTS {name} {on} AS {table}\n"
        f"ENGINE = Distributed('{cluster}', currentDatabase(), {table}, {key})"
    )
    return [local, distributed]


def _alter(name: str, command: str, on: str) -> list[str]:
    if command.startswith("MODIFY QUERY"):  # a materialized view's query
        return [f"ALTER TABLE {name} {on} " + _local_sources(command)]
    local_command = command.replace(
        "non_replicated_deduplication_window", "replicated_deduplication_window"
    )
    if name in GLOBAL_TABLES:
        return [f"ALTER TABLE {name} {on} {local_command}"]
    rendered = [f"ALTER TABLE {name}_local {on} {local_command}"]
    if _COLUMN_CHANGE.match(command):
        rendered.append(f"ALTER TABLE {name} {on} " + _CODEC.sub("", command))
    return rendered


def _view_body(name: str, body: str) -> str:
    if not re.search(r"\bJOIN\b", body):
        return body
    if name not in JOINED_ON_SHARDING_KEY:
        raise ValueError(
            f"view {name} joins tables: add it to JOINED_ON_SHARDING_KEY if both sides are"
            " sharded on the join key, or give it a cluster form"
        )
    if _SETTINGS_AT_END.search(body):
        return body + ", distributed_product_mode = 'local'"
    return body + "\nSETTINGS distributed_product_mode = 'local'"


def _local(table: str) -> str:
    return table if table in GLOBAL_TABLES else f"{table}_local"


def _local_sources(select: str) -> str:
    return _FROM.sub(lambda m: f"FROM {_local(m.group(1))}", select)


def _sorting_key_hash(name: str, tail: str) -> str:
    order = _ORDER_BY.search(tail)
    if order is None:
        raise ValueError(f"{name}: no ORDER BY to shard by")
    return f"cityHash64({order.group(1) or order.group(2)})"


def _closing_paren(text: str) -> int:
    """Index of the parenthesis closing the one ``text`` starts with."""
    depth = 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
    raise ValueError("unbalanced parentheses")
