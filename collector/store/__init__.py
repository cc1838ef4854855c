"""Where spans and everything else live: chDB in-process (default) or a ClickHouse server.

Both stores run the same DDL (``schemas/``) and the same SQL. They are blocking and not safe for
concurrent use; callers run them on their own thread (see ``collector.writer``).
"""

from __future__ import annotations

from typing import Protocol

import orjson


class StoreError(Exception):
    """ClickHouse refused a statement (bad SQL, unknown table …): the caller's fault, not retryable."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class StoreUnavailable(Exception):
    """The store cannot be reached or is failing: retry later.

    ``in_doubt``: a write may have been committed all the same (a timeout or a connection lost
    after the statement was sent); False only when it cannot have reached the store.
    """

    def __init__(self, message: str, *, in_doubt: bool = True) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt


class Store(Protocol):
    description: str

    def insert_blocks(self, table: str, fmt: str, blocks: list[bytes]) -> None:
        """Insert several blocks of one format in one INSERT (one commit). ``table`` may carry
        the INSERT's settings (``insert_target``)."""

    def query(self, sql: str, fmt: str = "JSONEachRow", params: dict | None = None) -> bytes:
        """Run one statement and return its output in ClickHouse format ``fmt``."""

    def command(self, sql: str) -> None:
        """Run one statement for its effect (DDL)."""

    def close(self) -> None: ...


def insert_target(table: str, settings: dict[str, str | int]) -> str:
    """``table SETTINGS k = v, …``: the target of ``INSERT INTO … FORMAT``. Settings inside the
    statement apply on every path (chDB, a server, another collector's SQL endpoint), where
    settings sent beside it (URL parameters) may be dropped."""
    values = ", ".join(
        f"{name} = {value}" if isinstance(value, int) else f"{name} = {quote_string(value)}"
        for name, value in settings.items()
    )
    return f"{table} SETTINGS {values}" if values else table


def quote_string(value: str) -> str:
    """``value`` as a ClickHouse string literal."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def insert_rows(store: Store, table: str, rows: list[dict]) -> None:
    """Rows (dicts keyed by column) into ``table`` in one JSONEachRow INSERT; blocking, so run it
    on the store's thread (``await collector.run_store(insert_rows, store, table, rows)``)."""
    if rows:
        store.insert_blocks(table, "JSONEachRow", [b"\n".join(orjson.dumps(r) for r in rows)])


def query_rows(
    store: Store, sql: str, params: dict | None = None, fmt: str = "JSONEachRow"
) -> list:
    """The result rows of ``sql``, parsed: dicts (JSONEachRow) or lists (JSONCompactEachRow);
    blocking, like ``insert_rows`` (``await collector.run_store(query_rows, store, sql)``)."""
    out = store.query(sql, fmt, params)
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]
