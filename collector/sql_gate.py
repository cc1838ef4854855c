"""Read-only SQL for people and tools: only one reading statement, enforced by ClickHouse itself.

ClickHouse's own parser does the reading, never a regex of ours:

1. ``formatQuerySingleLine`` checks that the text is exactly one statement (chDB would otherwise
   run every statement of a multi-statement string) and gives its kind (first keyword).
2. ``EXPLAIN AST`` lists every function the statement calls; one that ClickHouse knows as a table
   function (``system.table_functions``) must be in ``SAFE_TABLE_FUNCTIONS``. ``readonly = 2``
   alone does not stop ``file()``, ``url()``, ``s3()``, ``python()`` … from reading the host's
   files, the network or the process's memory, so those are refused by name, and so is the
   scalar ``file()``.
3. The statement runs with ``readonly = 2``: ClickHouse refuses writes and DDL even inside it.
"""

from __future__ import annotations

import re

from collector.store import Store, StoreError

#: Table functions that only compute or read this store's own tables.
SAFE_TABLE_FUNCTIONS = frozenset(
    {
        "numbers", "numbers_mt", "zeros", "zeros_mt", "generateSeries", "generate_series", "primes",
        "values", "null", "view", "viewIfPermitted", "merge", "format", "generateRandom", "loop",
        "SQLStandardValues",
    }
)  # fmt: skip
_FUNCTION_IN_AST = re.compile(r"^\s*Function (\w+)", re.MULTILINE)

READING_KEYWORDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN")
_NEEDS_SETTING = ("SELECT", "WITH")  # statements that can read tables and take a SETTINGS clause


class ReadOnlyViolation(Exception):
    """The statement would write, or is not a single statement; the message says what is allowed."""


def _escape_param(value: str) -> str:
    # Query parameters are parsed like TSV fields: escape backslash, tab and newline.
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def read_only_query(store: Store, query: str, params: dict | None = None) -> str:
    """The statement to run in place of ``query``; raises ``ReadOnlyViolation`` or ``StoreError``.

    Blocking: call it on the store's thread.
    """
    try:
        out = store.query(
            "SELECT formatQuerySingleLine({q:String})", "TSVRaw", {"q": _escape_param(query)}
        )
    except StoreError as exc:
        if "Multi-statements are not allowed" in str(exc):
            raise ReadOnlyViolation(
                "send one statement at a time (multi-statement queries are refused)"
            ) from None
        raise
    statement = out.decode().strip()
    keyword = statement.split(None, 1)[0].upper() if statement else ""
    if keyword not in READING_KEYWORDS:
        raise ReadOnlyViolation(
            f"the SQL endpoint is read-only: {keyword or 'this'} statements are refused "
            f"(allowed: {', '.join(READING_KEYWORDS)}); start the collector with sql_readonly: false to write"
        )
    if " INTO OUTFILE " in f" {statement.upper()} ":
        raise ReadOnlyViolation("the SQL endpoint is read-only: INTO OUTFILE is refused")
    _refuse_outside_access(store, statement, params)
    if keyword in _NEEDS_SETTING:
        return f"{statement} SETTINGS readonly = 2"
    return statement


def _refuse_outside_access(store: Store, statement: str, params: dict | None) -> None:
    """Refuse table functions that reach outside the store (files, network, other databases)."""
    ast = store.query(f"EXPLAIN AST {statement}", "TSVRaw", params).decode()
    called = set(_FUNCTION_IN_AST.findall(ast))
    if not called:
        return
    table_functions = _table_functions(store)
    outside = sorted(
        name for name in called if (name in table_functions and name not in SAFE_TABLE_FUNCTIONS)
    )
    if outside:
        raise ReadOnlyViolation(
            f"the SQL endpoint is read-only and reads only this store's tables: {', '.join(outside)}() is refused"
        )


_table_functions_cache: dict[int, frozenset[str]] = {}


def _table_functions(store: Store) -> frozenset[str]:
    key = id(store)
    if key not in _table_functions_cache:
        out = store.query("SELECT name FROM system.table_functions", "TSVRaw").decode()
        _table_functions_cache[key] = frozenset(out.split())
    return _table_functions_cache[key]
