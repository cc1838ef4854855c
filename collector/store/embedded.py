"""The embedded store: chDB, the ClickHouse engine in this process, with data in ``data_dir``.

One chDB connection serves every caller through a lock (chDB runs one statement at a time per
connection). chDB releases the GIL while it works, so inserts overlap with request decoding.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from collector.store import StoreError, StoreUnavailable

_CODE = re.compile(r"Code: (\d+)\.")


class EmbeddedStore:
    def __init__(self, data_dir: Path) -> None:
        import chdb

        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create data directory {data_dir}: {exc}") from None
        self.description = f"embedded chDB at {data_dir.resolve()}"
        self._lock = threading.Lock()
        try:
            self._conn = chdb.connect(str(data_dir))
        except Exception as exc:  # chDB raises plain RuntimeError
            raise StoreUnavailable(f"cannot open {data_dir} with chDB: {exc}") from None

    def insert_blocks(self, table: str, fmt: str, blocks: list[bytes]) -> None:
        with self._lock:
            try:
                inserter = self._conn.send_insert(f"INSERT INTO {table}", fmt)
                for block in blocks:
                    inserter.append(block)
                inserter.finish()
            except Exception as exc:
                raise _translate(exc) from None

    def query(self, sql: str, fmt: str = "JSONEachRow", params: dict | None = None) -> bytes:
        with self._lock:
            try:
                result = self._conn.query(sql, fmt, params=params or None)
            except Exception as exc:
                raise _translate(exc) from None
        return result.bytes() if result is not None else b""

    def command(self, sql: str) -> None:
        self.query(sql, "TSV")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _translate(exc: Exception) -> Exception:
    text = str(exc)
    match = _CODE.search(text)
    if match:
        # Strip chDB's wrapper text so the ClickHouse message reads as it would from a server.
        return StoreError(text[match.start() :], int(match.group(1)))
    return StoreUnavailable(f"chDB failed: {text}")
