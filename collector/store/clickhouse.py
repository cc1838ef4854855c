"""A ClickHouse server (self-hosted, cluster or Cloud) through clickhouse-connect over HTTP(S).

Every call has a connect and a send/receive timeout (clickhouse-connect waits 300 s by default):
a stopped or unreachable server fails a call in bounded time with ``StoreUnavailable``.
"""

from __future__ import annotations

import threading
from urllib.parse import unquote, urlparse

from collector.store import StoreError, StoreUnavailable

#: What a collector needs of every statement on a cluster (``clickhouse_cluster``): ``IN``
#: subqueries over distributed tables run once, globally, instead of being refused; an INSERT
#: into a distributed table returns once the shards have it, not when it is queued to be sent,
#: so an acknowledged span is stored and a retry with its deduplication token is safe.
CLUSTER_SETTINGS = {"distributed_product_mode": "global", "distributed_foreground_insert": 1}


class ClickHouseStore:
    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        *,
        connect_timeout_s: float = 5.0,
        query_timeout_s: float = 30.0,
        settings: dict[str, str | int] | None = None,
    ) -> None:
        """``settings``: ClickHouse settings sent with every statement (``CLUSTER_SETTINGS`` when
        the collector writes to a cluster)."""
        parsed = urlparse(url)
        self.database = database or parsed.path.strip("/") or "default"
        self.description = (
            f"ClickHouse at {parsed.scheme}://{parsed.hostname}:{parsed.port or ''}/{self.database}"
        )
        self._options = dict(
            host=parsed.hostname,
            port=parsed.port or (8443 if parsed.scheme == "https" else 8123),
            username=user or unquote(parsed.username or "") or "default",
            password=password or unquote(parsed.password or ""),
            database=self.database,
            secure=parsed.scheme == "https",
            compress=False,
            autogenerate_session_id=False,
            settings=dict(settings or {}),
        )
        self._client = self._connect(connect_timeout_s, query_timeout_s)
        self._health_client = None  # for ping: apart from the inserts' and queries' timeouts
        self._health_lock = threading.Lock()

    def _connect(self, connect_timeout_s: float, query_timeout_s: float):
        import clickhouse_connect
        from urllib3 import Timeout

        try:
            client = clickhouse_connect.get_client(
                **self._options,
                # whole seconds here (clickhouse-connect truncates), exact ones just below
                connect_timeout=max(1, round(connect_timeout_s)),
                send_receive_timeout=max(1, round(query_timeout_s)),
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot connect to {self.description}: {exc}") from None
        client.timeout = Timeout(connect=connect_timeout_s, read=query_timeout_s)
        return client

    def insert_blocks(self, table: str, fmt: str, blocks: list[bytes]) -> None:
        self._call(self._client.raw_insert, table, insert_block=b"".join(blocks), fmt=fmt)

    def query(self, sql: str, fmt: str = "JSONEachRow", params: dict | None = None) -> bytes:
        return self._call(self._client.raw_query, sql, parameters=params or None, fmt=fmt)

    def command(self, sql: str) -> None:
        self._call(self._client.command, sql)

    def ping(self, timeout_s: float) -> None:
        """``SELECT 1`` within ``timeout_s`` on a connection of its own (health checks), so it
        neither waits for the inserts' and queries' longer timeouts nor shortens them."""
        with self._health_lock:
            if self._health_client is None:
                self._health_client = self._connect(timeout_s, timeout_s)
            self._call(self._health_client.raw_query, "SELECT 1", fmt="TSV")

    def close(self) -> None:
        self._client.close()
        if self._health_client is not None:
            self._health_client.close()

    def _call(self, fn, *args, **kwargs):
        from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:  # connection refused, timeouts, 5xx
            raise StoreUnavailable(str(exc), in_doubt=not _not_sent(exc)) from None
        except DatabaseError as exc:
            raise StoreError(str(exc)) from None


def _not_sent(exc: Exception) -> bool:
    """Whether the request cannot have reached the server: no connection was made. A timeout
    or a reset after that leaves a write's outcome unknown."""
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

    cause = exc.__cause__
    if isinstance(cause, MaxRetryError):
        cause = cause.reason
    return isinstance(cause, ConnectTimeoutError)  # NewConnectionError (refused) is one too
