"""Read-only SQL for people and tools: the boundary between a client's query and the store.

Every reading statement from the SQL port and ``POST /v1/sql`` runs through ``run_read_only``.
ClickHouse enforces the boundary wherever it can; our checks close what it leaves open:

1. **A session locked by ClickHouse.** Each statement gets a read session of its own (a fresh
   chDB connection; on a server, the request's settings). The allow-listed settings and the
   resource limits are applied first, then ``readonly = 1``: from then on ClickHouse refuses any
   write, DDL, ``SET``, a ``SETTINGS`` clause that changes anything, and the table functions that
   reach files or the network (``file``, ``url``, ``remote``, ``executable``, ``format`` …).
   Settings are the dangerous surface (``additional_result_filter`` runs a subquery,
   ``format_template_resultset`` reads a file, ``output_format_schema`` writes one), so a client
   may set only ``allowed_setting`` ones, and only as URL parameters.
2. **One statement of a reading kind**, by ClickHouse's own parser (``formatQuerySingleLine``;
   chDB would otherwise run every statement of a multi-statement string).
3. **What readonly = 1 still lets through**, read from ``EXPLAIN AST``: the scalar ``file()``
   (reads any file), table functions outside ``SAFE_TABLE_FUNCTIONS``, a ``SETTINGS`` clause in a
   subquery (accepted by ClickHouse at readonly = 1), ``INTO OUTFILE`` (chDB writes the file).
4. **Output formats** from ``OUTPUT_FORMATS``: not Template or Protobuf, whose schema files are
   named by settings.

A fresh session per statement also means no output, temporary table or setting of one client
can reach another (chDB puts a failed query's partial output in front of the next query's on the
same connection).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import orjson

from collector.store import StoreError, quote_string

#: Table functions that only compute or read this store's own tables.
SAFE_TABLE_FUNCTIONS = frozenset(
    {
        "numbers", "numbers_mt", "zeros", "zeros_mt", "generateSeries", "generate_series", "primes",
        "values", "null", "view", "viewIfPermitted", "merge", "generateRandom", "loop",
        "SQLStandardValues",
    }
)  # fmt: skip
#: Scalar functions that reach outside the store although ClickHouse allows them at readonly = 1.
REFUSED_FUNCTIONS = frozenset({"file", "catboostEvaluate"})
_FUNCTION_IN_AST = re.compile(r"^\s*Function (\w+)", re.MULTILINE)
_SETTINGS_IN_AST = re.compile(r"^\s*Set\s*$", re.MULTILINE)

READING_KEYWORDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN")

#: Output formats a client may ask for (``default_format`` or a ``FORMAT`` clause).
OUTPUT_FORMATS = frozenset(
    name.lower()
    for name in """
    TabSeparated TabSeparatedRaw TabSeparatedWithNames TabSeparatedWithNamesAndTypes
    TabSeparatedRawWithNames TabSeparatedRawWithNamesAndTypes TSV TSVRaw TSVWithNames
    TSVWithNamesAndTypes TSVRawWithNames TSVRawWithNamesAndTypes
    CSV CSVWithNames CSVWithNamesAndTypes CustomSeparated CustomSeparatedWithNames
    CustomSeparatedWithNamesAndTypes
    JSON JSONStrings JSONColumns JSONColumnsWithMetadata JSONCompact JSONCompactStrings
    JSONCompactColumns JSONEachRow JSONEachRowWithProgress JSONStringsEachRow
    JSONStringsEachRowWithProgress JSONCompactEachRow JSONCompactEachRowWithNames
    JSONCompactEachRowWithNamesAndTypes JSONCompactEachRowWithProgress JSONCompactStringsEachRow
    JSONCompactStringsEachRowWithNames JSONCompactStringsEachRowWithNamesAndTypes
    JSONCompactStringsEachRowWithProgress JSONObjectEachRow JSONLines JSONL NDJSON
    PrettyJSONEachRow PrettyJSONLines PrettyNDJSON
    Pretty PrettyNoEscapes PrettyMonoBlock PrettyNoEscapesMonoBlock PrettyCompact
    PrettyCompactNoEscapes PrettyCompactMonoBlock PrettyCompactNoEscapesMonoBlock PrettySpace
    PrettySpaceNoEscapes PrettySpaceMonoBlock PrettySpaceNoEscapesMonoBlock
    Vertical Values XML Markdown MD TSKV SQLInsert LineAsString LineAsStringWithNames
    LineAsStringWithNamesAndTypes Raw RawWithNames RawWithNamesAndTypes RawBLOB
    Native RowBinary RowBinaryWithNames RowBinaryWithNamesAndTypes
    Parquet Arrow ArrowStream ORC Avro MsgPack BSONEachRow Npy Null Prometheus
    """.split()
)

#: Settings a client may give (as URL parameters): output shape and limits, nothing that names a
#: file, a URL, a filter or a schema. Limits are capped by the collector's own (``SqlLimits``).
_ALLOWED_SETTINGS = frozenset(
    {
        "session_timezone", "date_time_output_format", "interval_output_format", "extremes",
        "join_use_nulls", "max_block_size", "max_threads", "log_comment", "result_overflow_mode", "timeout_overflow_mode",
        "read_overflow_mode", "max_result_rows", "max_rows_to_read", "max_bytes_to_read",
        "enable_analyzer", "allow_experimental_analyzer", "prefer_column_name_to_alias",
        "aggregate_functions_null_for_empty", "cast_keep_nullable", "transform_null_in",
        "count_distinct_implementation", "joined_subquery_requires_alias", "final",
        "use_skip_indexes", "optimize_read_in_order", "bool_true_representation",
        "bool_false_representation", "format_csv_delimiter", "format_csv_null_representation",
        "format_tsv_null_representation", "format_custom_escaping_rule",
        "format_custom_field_delimiter", "format_custom_row_before_delimiter",
        "format_custom_row_after_delimiter", "format_custom_row_between_delimiter",
        "format_custom_result_before_delimiter", "format_custom_result_after_delimiter",
    }
)  # fmt: skip
_ALLOWED_PREFIXES = ("output_format_",)
_SETTING_NAME = re.compile(r"[a-z][a-z0-9_]*")
_NEVER = re.compile(r"schema|file|path|url|template|filter|directory|dictionar")
#: Settings clients send on every request that only shape *input* data; a read has none, so they
#: are accepted and not applied (clickhouse-connect sends ``date_time_input_format``).
_IGNORED_PREFIXES = ("input_format_", "date_time_input_format", "cast_string_to_dynamic")


def allowed_setting(name: str) -> bool:
    """May a client set ``name``? ``max_*`` limits are allowed too, capped (``SqlLimits.cap``)."""
    if not _SETTING_NAME.fullmatch(name) or _NEVER.search(name):
        return False
    return (
        name in _ALLOWED_SETTINGS or name in SqlLimits.CAPPED or name.startswith(_ALLOWED_PREFIXES)
    )


class ReadOnlyViolation(Exception):
    """The statement would write, reach outside the store, or is not a single statement; the
    message says what is allowed."""


@dataclass(frozen=True)
class SqlLimits:
    """Resource limits of every read (config ``sql_max_*``); a client may only lower them."""

    max_execution_time_s: float = 60
    max_memory_usage_mib: int = 1024
    max_result_mib: int = 128

    #: setting name -> this object's attribute and the factor from its unit to the setting's
    CAPPED = {
        "max_execution_time": ("max_execution_time_s", 1),
        "max_memory_usage": ("max_memory_usage_mib", 1 << 20),
        "max_result_bytes": ("max_result_mib", 1 << 20),
    }

    def settings(self, requested: dict[str, str]) -> dict[str, str]:
        """The limits, each lowered to the client's value where that is lower (and not 0)."""
        out = {}
        for name, (attribute, factor) in self.CAPPED.items():
            cap = getattr(self, attribute) * factor
            try:
                asked = float(requested[name])
            except (KeyError, ValueError):
                asked = 0
            value = asked if 0 < asked < cap else cap
            out[name] = str(int(value)) if float(value).is_integer() else str(value)
        return out


def session_settings(requested: dict[str, str], limits: SqlLimits, tag: str) -> dict[str, str]:
    """What a read session runs with: the client's allowed settings, the limits, and ``tag``
    (as ``log_comment``) to find the query again to cancel it."""
    refused = sorted(
        name
        for name in requested
        if not allowed_setting(name) and not name.startswith(_IGNORED_PREFIXES)
    )
    if refused:
        raise ReadOnlyViolation(
            f"Cannot modify '{refused[0]}' setting in readonly mode: the SQL endpoint takes only "
            "output-format settings and lower limits (see README, 'SQL interface')"
        )
    settings = {
        name: value
        for name, value in requested.items()
        if allowed_setting(name) and name not in SqlLimits.CAPPED
    }
    settings.update(limits.settings(requested))
    settings["result_overflow_mode"] = "throw"  # a result over the limit fails, never truncates
    settings["log_comment"] = tag
    return settings


def new_tag() -> str:
    return f"agentwatch-sql:{uuid.uuid4()}"


def check_format(name: str) -> str:
    if name.lower() not in OUTPUT_FORMATS:
        raise ReadOnlyViolation(
            f"format {name} is refused by the read-only SQL endpoint (Template and Protobuf read"
            " or write schema files); use a format such as JSONEachRow, TabSeparated, CSV, Native"
        )
    return name


_KEYWORD = re.compile(r"[\s(]*(\w*)")


def _keyword(statement: str) -> str:
    """A formatted statement's kind; ``(SELECT …) EXCEPT …`` is a SELECT."""
    return _KEYWORD.match(statement).group(1).upper()


_FORMAT_CLAUSE = re.compile(r"\sFORMAT\s+(\w+)$", re.I)


def check_statement(session, query: str, params: dict | None) -> tuple[str, str | None]:
    """(the statement to run, the format its FORMAT clause names, or None); raises
    ``ReadOnlyViolation``.

    ``session`` is a read session (``Store.session``): ClickHouse's parser runs there.
    """
    try:
        out, _ = session.query("SELECT formatQuerySingleLine({q:String})", "TSVRaw", {"q": query})
    except StoreError as exc:
        if "Multi-statements are not allowed" in str(exc):
            raise ReadOnlyViolation(
                "send one statement at a time (multi-statement queries are refused)"
            ) from None
        raise
    statement = out.decode().strip()
    keyword = _keyword(statement)
    if keyword not in READING_KEYWORDS:
        raise ReadOnlyViolation(
            f"the SQL endpoint is read-only: {keyword or 'this'} statements are refused "
            f"(allowed: {', '.join(READING_KEYWORDS)}); start the collector with sql_readonly: false to write"
        )
    if " INTO OUTFILE " in f" {statement.upper()} ":
        raise ReadOnlyViolation("the SQL endpoint is read-only: INTO OUTFILE is refused")
    # EXPLAIN's own output would take the statement's FORMAT clause (Native: nothing to read)
    match = _FORMAT_CLAUSE.search(statement)
    if match:
        check_format(match.group(1))
    body = statement[: match.start()] if match else statement
    ast, _ = session.query(f"EXPLAIN AST {body}", "TSVRaw", params)
    ast = ast.decode()
    if _SETTINGS_IN_AST.search(ast):
        raise ReadOnlyViolation(
            "SETTINGS clauses are refused by the read-only SQL endpoint; pass allowed settings as"
            " URL parameters (output formats and lower limits)"
        )
    called = set(_FUNCTION_IN_AST.findall(ast))
    if called:
        table_functions = _table_functions(session)
        outside = sorted(
            name
            for name in called
            if name in REFUSED_FUNCTIONS
            or (name in table_functions and name not in SAFE_TABLE_FUNCTIONS)
        )
        if outside:
            raise ReadOnlyViolation(
                "the SQL endpoint is read-only and reads only this store's tables: "
                f"{', '.join(outside)}() is refused"
            )
    return statement, match.group(1) if match else None


_table_functions_cache: list[frozenset[str]] = []


def _table_functions(session) -> frozenset[str]:
    if not _table_functions_cache:
        out, _ = session.query("SELECT name FROM system.table_functions", "TSVRaw", None)
        _table_functions_cache.append(frozenset(out.decode().split()))
    return _table_functions_cache[0]


def run_read_only(
    store,
    query: str,
    fmt: str,
    params: dict | None = None,
    settings: dict[str, str] | None = None,
    limits: SqlLimits | None = None,
    tenant: str | None = None,
    tag: str | None = None,
) -> tuple[bytes, dict, str]:
    """(output, ClickHouse's counters, the format used) of one reading statement; with
    ``tenant``, of that tenant's rows only (``tenant_scope``).

    Blocking: run it on a thread of the SQL pool (``collector.run_sql``), never the store thread.
    """
    check_format(fmt)
    applied = session_settings(settings or {}, limits or SqlLimits(), tag or new_tag())
    scope = None
    if tenant is not None:
        scope = tenant_scope(store)
        applied["additional_table_filters"] = scope.filters(tenant)
    with store.session(applied, readonly=True) as session:
        statement, clause_format = check_statement(session, query, params)
        if scope is not None:
            scope.check(session, statement, clause_format, params)
        output, summary = session.query(statement, fmt, params)
    return output, summary, clause_format or fmt


# --- tenants -------------------------------------------------------------------------------------

#: Table functions a tenant's statement may call: they compute, and read no table.
TENANT_TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "generateSeries", "generate_series", "values",
     "null", "generateRandom"}
)  # fmt: skip
#: System tables a tenant may read: they describe the server, not anyone's data (clients such as
#: clickhouse-connect read some when they connect).
TENANT_SYSTEM_TABLES = frozenset(
    f"system.{name}"
    for name in ("one", "numbers", "numbers_mt", "zeros", "zeros_mt", "settings", "functions",
                 "table_functions", "formats", "data_type_families", "time_zones", "build_options")
)  # fmt: skip
_TABLE_IN_TREE = re.compile(r"^\s*TABLE id: \d+.*?, table_name: ([^\s,]+)", re.MULTILINE)
_TABLE_FUNCTION_IN_TREE = re.compile(
    r"^\s*TABLE_FUNCTION id: \d+.*?, table_function_name: (\w+)", re.MULTILINE
)


@dataclass(frozen=True)
class TenantScope:
    """What a tenant's statement may read, and the filters that keep it to the tenant's rows.

    ClickHouse applies ``additional_table_filters`` to every read of a filtered table, through
    views, CTEs and subqueries, and a readonly session cannot change it. What it does not cover is
    refused here, from ClickHouse's own resolution of the statement (``EXPLAIN QUERY TREE``):
    any table that is not filtered or a view over filtered tables (system tables, the outbox,
    materialized views, which read their target unfiltered), and table functions that read
    tables (``merge``, ``loop``, ``view``…).
    """

    filtered: dict[str, str]  # "db.table" -> its tenant column
    readable: frozenset[str]  # filtered tables and the views over them only

    def filters(self, tenant: str) -> str:
        condition = {
            name: f"{column} = {quote_string(tenant)}" for name, column in self.filtered.items()
        }
        return (
            "{"
            + ", ".join(f"{quote_string(n)}: {quote_string(c)}" for n, c in condition.items())
            + "}"
        )

    def check(self, session, statement: str, clause_format: str | None, params) -> None:
        keyword = _keyword(statement)
        if keyword not in ("SELECT", "WITH"):
            raise ReadOnlyViolation(f"a tenant's read_token runs SELECT only, not {keyword}")
        if clause_format:  # EXPLAIN's own output would take it
            statement = _FORMAT_CLAUSE.sub("", statement)
        tree, _ = session.query(f"EXPLAIN QUERY TREE {statement}", "TSVRaw", params)
        tree = tree.decode()
        outside = sorted(set(_TABLE_IN_TREE.findall(tree)) - self.readable)
        functions = sorted(set(_TABLE_FUNCTION_IN_TREE.findall(tree)) - TENANT_TABLE_FUNCTIONS)
        if outside or functions:
            names = outside + [f"{name}()" for name in functions]
            raise ReadOnlyViolation(
                "a tenant's read_token reads only its tenant's tables"
                f" ({', '.join(sorted(n for n in self.readable if not n.startswith('system.')))}):"
                f" {', '.join(names)} refused"
            )


_scopes: dict[int, TenantScope] = {}


def tenant_scope(store) -> TenantScope:
    """The store's tables with a tenant column, read once (the schema is migrated at start-up)."""
    key = id(store)
    if key not in _scopes:
        with store.session({}, readonly=True) as session:
            rows, _ = session.query(
                "SELECT t.database || '.' || t.name, t.engine, t.as_select,"
                " anyIf(c.name, lower(c.name) = 'tenant')"
                " FROM system.tables AS t LEFT JOIN system.columns AS c"
                " ON c.database = t.database AND c.table = t.name"
                " WHERE t.database = currentDatabase() GROUP BY ALL",
                "JSONCompactEachRow",
            )
            tables = [orjson.loads(line) for line in rows.splitlines()]
            filtered = {
                name: column
                for name, engine, _, column in tables
                if column and engine.endswith("MergeTree")
            }
            reads = {}  # view -> the tables and views it reads
            for name, engine, as_select, column in tables:
                if engine == "View" and column and as_select:
                    tree, _ = session.query(f"EXPLAIN QUERY TREE {as_select}", "TSVRaw")
                    reads[name] = set(_TABLE_IN_TREE.findall(tree.decode()))
            readable = set(filtered) | TENANT_SYSTEM_TABLES
            while grown := {
                v for v, read in reads.items() if v not in readable and read <= readable
            }:
                readable |= grown  # views over views: until nothing more is readable
        _scopes[key] = TenantScope(filtered, frozenset(readable))
    return _scopes[key]
