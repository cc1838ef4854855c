"""Server mode under a hung ClickHouse: a server that is stopped (SIGSTOP), not dead.

Collector A (embedded chDB) runs in a process of its own and is the "ClickHouse server"
through its SQL port; collector B stores there (``clickhouse_url``). Exporters send to B, each
request retried with the same bytes after a per-attempt deadline, as the OpenTelemetry
Collector's exporters do. A is stopped for longer than that deadline, then resumed. B's
``/healthz`` must say 503 in bounded time meanwhile, and afterwards every span acknowledged to
an exporter must be stored exactly once: the requests B sent before the stop commit when A
resumes, and neither B's own retries nor the exporters' may add a second copy.
"""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import orjson
import pytest
import requests

from tests.conftest import run_collector
from tests.otlp import request, span
from tests.test_receivers import EXPORT

EXPORTER_DEADLINE_S = 4.0  # per attempt (the Collector's exporters: 5 s; the SDKs: 10 s)
STOPPED_FOR_S = 8.0  # longer than the deadline: every request in flight then times out
CLIENTS, REQUESTS_PER_CLIENT, SPANS_PER_REQUEST = 8, 6, 25
HEALTH_BOUND_S = (
    5.0  # the check answers in 2 s; slack for a loaded 2-core machine, far below the 8 s stop
)


@pytest.fixture
def server(tmp_path: Path):
    """Collector A in a process of its own, writes allowed on its SQL port: (process, SQL URL)."""
    config = tmp_path / "server.yaml"
    config.write_text(f"data_dir: {tmp_path / 'server-data'}\ndetect: false\n")
    ports = ["--otlp-grpc-port", "0", "--otlp-http-port", "0", "--sql-port", "0", "--api-port", "0"]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentwatch.cli.main",
            "serve",
            "--config",
            str(config),
            "--sql-writable",
        ]
        + ports,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    try:
        sql_url = None
        while sql_url is None:  # the start-up banner names the ports it bound
            match = re.search(r"SQL\s+(http://\S+?)/\s", lines.get(timeout=120))
            sql_url = match and match.group(1)
        yield process, sql_url
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def export_until_acknowledged(endpoint: str, body: bytes, give_up_at: float) -> bool:
    """One request, sent again (same bytes) on every retryable failure, with backoff."""
    retryable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    with grpc.insecure_channel(endpoint) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        backoff = 0.5
        while time.monotonic() < give_up_at:
            try:
                export(body, timeout=EXPORTER_DEADLINE_S)
                return True
            except grpc.RpcError as exc:
                if exc.code() not in retryable:
                    return False
            time.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, 2.0)
    return False


def test_a_hung_server_keeps_healthz_honest_and_retries_store_each_span_once(server, tmp_path):
    process, sql_url = server
    with run_collector(
        tmp_path / "unused",
        clickhouse_url=sql_url,
        detect=False,
        clickhouse_query_timeout_s=2.0,
    ) as b:
        acknowledged: list[str] = []
        sent: list[str] = []
        lock = threading.Lock()
        give_up_at = time.monotonic() + 40

        def client() -> None:
            for _ in range(REQUESTS_PER_CLIENT):
                spans = [span("step") for _ in range(SPANS_PER_REQUEST)]
                ids = [s.span_id.hex() for s in spans]
                with lock:
                    sent.extend(ids)
                if export_until_acknowledged(
                    b.grpc_endpoint, request(*spans).SerializeToString(), give_up_at
                ):
                    with lock:
                        acknowledged.extend(ids)
                time.sleep(0.25)

        clients = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in clients:
            thread.start()
        time.sleep(0.7)

        os.kill(process.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        polls = []  # (started after the stop, seconds to answer, status)
        while time.monotonic() - stopped_at < STOPPED_FOR_S:
            started = time.monotonic()
            try:
                status = requests.get(f"{b.api_url}/healthz", timeout=10).status_code
            except requests.RequestException:
                status = None
            polls.append((started - stopped_at, time.monotonic() - started, status))
            time.sleep(0.3)
        os.kill(process.pid, signal.SIGCONT)

        for thread in clients:
            thread.join(60)
        deadline = time.monotonic() + 20  # anything still in doubt at B commits or fails now
        while b.collector._writer.busy and time.monotonic() < deadline:
            time.sleep(0.1)
        healthy_again = requests.get(f"{b.api_url}/healthz", timeout=10).status_code

    assert all(seconds < HEALTH_BOUND_S for _, seconds, _ in polls), polls
    during = [status for started, _, status in polls if started > 0.5]
    assert during and all(status == 503 for status in during), polls
    assert healthy_again == 200

    response = requests.post(
        sql_url, data="SELECT SpanId FROM otel_traces FORMAT JSONCompactEachRow", timeout=30
    )
    stored = [orjson.loads(line)[0] for line in response.content.splitlines()]
    duplicates = len(stored) - len(set(stored))
    assert duplicates == 0, f"{duplicates} duplicate rows of {len(stored)}"
    missing = set(acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged spans not stored"
    assert len(acknowledged) > len(sent) // 2  # the exporters' retries did get through
