"""Read-only SQL for people and tools: only one reading statement, enforced by ClickHouse itself.

ClickHouse's own parser (``formatQuerySingleLine``) checks that the text is exactly one statement
(chDB would otherwise run every statement of a multi-statement string) and tells its kind; the
statement then runs with ``readonly = 2``, so ClickHouse refuses writes, DDL and file or network
table functions even inside a SELECT. Nothing here parses SQL by hand beyond the first keyword.
"""

from __future__ import annotations

from collector.store import Store, StoreError

READING_KEYWORDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN")
_NEEDS_SETTING = ("SELECT", "WITH")  # statements that can read tables and take a SETTINGS clause


class ReadOnlyViolation(Exception):
    """The statement would write, or is not a single statement; the message says what is allowed."""


def _escape_param(value: str) -> str:
    # Query parameters are parsed like TSV fields: escape backslash, tab and newline.
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def read_only_query(store: Store, query: str) -> str:
    """The statement to run in place of ``query``; raises ``ReadOnlyViolation`` or ``StoreError``.

    Blocking: call it on the store's thread.
    """
    try:
        out = store.query("SELECT formatQuerySingleLine({q:String})", "TSVRaw", {"q": _escape_param(query)})
    except StoreError as exc:
        if "Multi-statements are not allowed" in str(exc):
            raise ReadOnlyViolation("send one statement at a time (multi-statement queries are refused)") from None
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
    if keyword in _NEEDS_SETTING:
        return f"{statement} SETTINGS readonly = 2"
    return statement
