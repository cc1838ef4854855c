"""A ClickHouse server (self-hosted, cluster or Cloud) through clickhouse-connect over HTTP(S)."""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from collector.store import StoreError, StoreUnavailable


class ClickHouseStore:
    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
    ) -> None:
        import clickhouse_connect

        parsed = urlparse(url)
        self.database = database or parsed.path.strip("/") or "default"
        self.description = (
            f"ClickHouse at {parsed.scheme}://{parsed.hostname}:{parsed.port or ''}/{self.database}"
        )
        try:
            self._client = clickhouse_connect.get_client(
                host=parsed.hostname,
                port=parsed.port or (8443 if parsed.scheme == "https" else 8123),
                username=user or unquote(parsed.username or "") or "default",
                password=password or unquote(parsed.password or ""),
                database=self.database,
                secure=parsed.scheme == "https",
                compress=False,
                autogenerate_session_id=False,
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot connect to {self.description}: {exc}") from None

    def insert_blocks(self, table: str, fmt: str, blocks: list[bytes]) -> None:
        self._call(self._client.raw_insert, table, insert_block=b"".join(blocks), fmt=fmt)

    def query(self, sql: str, fmt: str = "JSONEachRow", params: dict | None = None) -> bytes:
        return self._call(self._client.raw_query, sql, parameters=params or None, fmt=fmt)

    def command(self, sql: str) -> None:
        self._call(self._client.command, sql)

    def close(self) -> None:
        self._client.close()

    def _call(self, fn, *args, **kwargs):
        from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:  # connection refused, timeouts, 5xx
            raise StoreUnavailable(str(exc)) from None
        except DatabaseError as exc:
            raise StoreError(str(exc)) from None
