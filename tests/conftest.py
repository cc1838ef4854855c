"""Shared fixtures: a real collector running in this process on free ports, with its own store."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agentwatch.app import Collector
from agentwatch.config import load_config


class RunningCollector:
    """A collector on a background event loop; ``call`` runs a coroutine on that loop."""

    def __init__(self, collector: Collector, loop: asyncio.AbstractEventLoop) -> None:
        self.collector = collector
        self.loop = loop
        self.ports = collector.ports

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['otlp_grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['otlp_http']}"

    @property
    def sql_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sql']}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def query(self, sql: str, params: dict | None = None) -> list[dict]:
        """Rows of ``sql`` straight from the store (bypasses the read-only gate)."""
        import orjson

        out = self.call(
            self.collector.run_store(self.collector.store.query, sql, "JSONEachRow", params)
        )
        return [orjson.loads(line) for line in out.splitlines() if line.strip()]

    def wait_for_rows(self, sql: str, count: int, timeout: float = 10.0) -> list[dict]:
        """Poll until ``sql`` returns ``count`` rows (commits are asynchronous to the test)."""
        import time

        deadline = time.monotonic() + timeout
        rows = self.query(sql)
        while len(rows) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            rows = self.query(sql)
        return rows


@contextmanager
def run_collector(data_dir: Path, **settings) -> Iterator[RunningCollector]:
    """Start a collector on free ports (0) with ``settings`` over the defaults; stop it after."""
    overrides = {
        "otlp_grpc_port": 0,
        "otlp_http_port": 0,
        "sql_port": 0,
        "api_port": 0,
        "data_dir": data_dir,
    }
    overrides.update(settings)
    config = load_config(None, overrides)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="collector-loop", daemon=True)
    thread.start()
    collector = Collector(config)
    try:
        asyncio.run_coroutine_threadsafe(collector.start(), loop).result(120)
        yield RunningCollector(collector, loop)
    finally:
        asyncio.run_coroutine_threadsafe(collector.stop(), loop).result(120)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[RunningCollector]:
    """A collector with default settings on an empty embedded store."""
    with run_collector(tmp_path / "data") as running:
        yield running


@pytest.fixture
def collector_factory(tmp_path: Path):
    """``with collector_factory(**settings) as c:`` for tests that need non-default settings."""
    counter = iter(range(1000))

    @contextmanager
    def make(**settings):
        with run_collector(tmp_path / f"data{next(counter)}", **settings) as running:
            yield running

    return make


@pytest.fixture
def listener():
    """A loopback HTTP server that records every request: the attacks on the SQL port must
    never make the collector call it (SSRF)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"1\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
