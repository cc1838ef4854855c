"""The embedded store: chDB, the ClickHouse engine in this process, with data in ``data_dir``.

One chDB connection serves every caller through a lock (chDB runs one statement at a time per
connection). chDB releases the GIL while it works, so inserts overlap with request decoding.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

from collector.store import StoreError, StoreUnavailable, quote_string

_CODE = re.compile(r"Code: (\d+)\.")
log = logging.getLogger("agentwatch.store")


#: Server settings for a small machine, measured with bench/ingest.py (each can be overridden in
#: ``embedded_server_settings``): without the JIT-compiled expression cache the ingest view's
#: expressions run as fast, and peak RSS is ~20 MB lower.
DEFAULT_SERVER_SETTINGS = {
    "compiled_expression_cache_size": "0",
    "compiled_expression_cache_elements_size": "0",
}


def configure_allocator(malloc_conf: str) -> None:
    """Tune chDB's jemalloc; only possible before chDB is first loaded in this process.

    ClickHouse's jemalloc keeps freed pages for seconds; returning them sooner lowered peak RSS
    under the ingest benchmark by ~40 MB (bench/ingest.py) at no measurable cost in throughput.
    """
    if not malloc_conf:
        return
    if "chdb" in sys.modules:
        log.warning("chDB already loaded: embedded_malloc_conf %r not applied", malloc_conf)
        return
    os.environ["JE_MALLOC_CONF"] = malloc_conf


_MADV_PAGEOUT = 21  # Linux 5.4+


def release_startup_pages(library_marker: str = "chdb") -> int:
    """Hand back the chDB library's pages that start-up touched; returns the MiB released.

    Importing chDB and opening a store touch ~200 MB of its ~500 MB shared library (static
    initialisers, function registration) that ingest never runs again, and they stay in RSS.
    ``madvise(MADV_PAGEOUT)`` on the library's file-backed mappings drops them from this
    process; a page that is used again is read back from the page cache (a minor fault). Nothing
    of the process's own memory (anonymous pages) is touched. No-op where the call is missing.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        before = _rss_file_kib()
        with open("/proc/self/maps") as maps:
            regions = [line.split() for line in maps]
        for fields in regions:
            if len(fields) >= 6 and library_marker in fields[5] and ".so" in fields[5]:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                madvise(start, end - start, _MADV_PAGEOUT)
        return max(0, before - _rss_file_kib()) // 1024
    except (OSError, AttributeError, ValueError):
        return 0


def _rss_file_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    return 0


class EmbeddedStore:
    def __init__(
        self, data_dir: Path, server_settings: dict[str, str] | None = None, malloc_conf: str = ""
    ) -> None:
        configure_allocator(malloc_conf)
        import chdb

        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create data directory {data_dir}: {exc}") from None
        self.description = f"embedded chDB at {data_dir.resolve()}"
        self._lock = threading.Lock()
        # Inserts run on connections of their own, one per inserting thread at most, so that
        # group commits overlap each other and the queries on ``_conn`` (chDB runs one
        # statement at a time per connection, several connections at once).
        self._insert_conns: queue.SimpleQueue = queue.SimpleQueue()
        try:
            settings = {**DEFAULT_SERVER_SETTINGS, **(server_settings or {})}
            self._dsn = str(data_dir) + _connection_params(settings)
            self._conn = chdb.connect(self._dsn)
        except Exception as exc:  # chDB raises plain RuntimeError
            raise StoreUnavailable(f"cannot open {data_dir} with chDB: {exc}") from None

    def insert_blocks(self, table: str, fmt: str, blocks: list[bytes]) -> dict[str, int]:
        """Returns ClickHouse's counters for the insert (``written_rows``, ``written_bytes``)."""
        try:
            conn = self._insert_conns.get_nowait()
        except queue.Empty:
            import chdb

            conn = chdb.connect(self._dsn)
        try:
            return _Session(conn).insert_blocks(table, fmt, blocks)
        finally:
            self._insert_conns.put(conn)

    def query(self, sql: str, fmt: str = "JSONEachRow", params: dict | None = None) -> bytes:
        return self.query_with_summary(sql, fmt, params)[0]

    def query_with_summary(
        self, sql: str, fmt: str = "JSONEachRow", params: dict | None = None
    ) -> tuple[bytes, dict[str, int]]:
        """``query`` plus ClickHouse's counters for it (the SQL endpoint's X-ClickHouse-Summary)."""
        with self._lock:
            try:
                result = self._conn.query(sql, fmt, params=_escaped(params))
            except Exception as exc:
                raise _translate(exc) from None
        return _output_and_summary(result)

    @contextmanager
    def session(self, settings: dict[str, str], readonly: bool = True):
        """A connection of its own for one client statement (the SQL port, ``/v1/sql``).

        ``settings`` apply first; with ``readonly`` the connection is then locked by ClickHouse
        (``readonly = 1``: no writes, no DDL, no setting changes). Closed afterwards, so nothing a
        statement leaves behind (partial output, temporary tables, settings) reaches another.
        """
        import chdb

        try:
            conn = chdb.connect(self._dsn)
        except Exception as exc:
            raise _translate(exc) from None
        try:
            session = _Session(conn)
            if settings:
                session.query(
                    "SET " + ", ".join(f"{k} = {quote_string(v)}" for k, v in settings.items())
                )
            if readonly:
                session.query("SET readonly = 1")
            yield session
        finally:
            conn.close()

    def ping(self, timeout_s: float) -> None:
        """``SELECT 1`` on a connection of its own (``/healthz``): never behind the store lock."""
        with self.session({"max_execution_time": str(timeout_s)}, readonly=True) as session:
            session.query("SELECT 1")

    def cancel(self, tag: str) -> None:
        """Stop the session statement whose ``log_comment`` is ``tag`` (its client went away)."""
        with self.session({}, readonly=False) as session:
            session.query(
                "KILL QUERY WHERE Settings['log_comment'] = {tag:String} ASYNC", "TSV", {"tag": tag}
            )

    def command(self, sql: str) -> None:
        self.query(sql, "TSV")

    def close(self) -> None:
        with self._lock:
            while not self._insert_conns.empty():
                self._insert_conns.get_nowait().close()
            self._conn.close()


class _Session:
    def __init__(self, conn) -> None:
        self._conn = conn

    def query(self, sql: str, fmt: str = "TSV", params: dict | None = None):
        """(output, ClickHouse's counters) of one statement."""
        try:
            return _output_and_summary(self._conn.query(sql, fmt, params=_escaped(params)))
        except Exception as exc:
            raise _translate(exc) from None

    def insert_blocks(self, table: str, fmt: str, blocks: list[bytes]) -> dict[str, int]:
        try:
            with self._conn.send_insert(
                f"INSERT INTO {table}", fmt
            ) as inserter:  # cancelled on error
                for block in blocks:
                    inserter.append(block)
                result = inserter.finish()
        except Exception as exc:
            raise _translate(exc) from None
        return {"written_rows": result.rows_written, "written_bytes": result.bytes_written}


def _output_and_summary(result) -> tuple[bytes, dict[str, int]]:
    if result is None:
        return b"", {}
    summary = {  # chDB's rows_read counts result rows; what was read from tables is storage_*
        "read_rows": result.storage_rows_read(),
        "read_bytes": result.storage_bytes_read(),
        "written_rows": result.rows_written(),
        "written_bytes": result.bytes_written(),
        "result_rows": result.rows_read(),
        "result_bytes": result.bytes_read(),
        "elapsed_ns": int(result.elapsed() * 1e9),
    }
    return result.bytes(), summary


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


_NULL = "\\N"  # a parameter's NULL, as ClickHouse reads it


def _escaped(params: dict | None) -> dict | None:
    """Query parameters as ClickHouse reads them: each value is parsed like a TSV field, so a
    backslash, tab or newline in it must be escaped (clickhouse-connect does the same for a
    server). Callers pass plain values on both stores."""
    if not params:
        return None
    return {
        name: value.translate(_ESCAPES)
        if isinstance(value, str)
        else _NULL
        if value is None
        else value
        for name, value in params.items()
    }


def _connection_params(settings: dict[str, str]) -> str:
    """ClickHouse server settings (e.g. max_server_memory_usage) as chDB connection parameters."""
    return ("?" + urlencode(settings)) if settings else ""


def _translate(exc: Exception) -> Exception:
    text = str(exc)
    match = _CODE.search(text)
    if match:
        # Strip chDB's wrapper text so the ClickHouse message reads as it would from a server.
        return StoreError(text[match.start() :], int(match.group(1)))
    return StoreUnavailable(f"chDB failed: {text}")
