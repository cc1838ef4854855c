"""Several ``agentwatch serve`` processes sharing one store, as the ``scale`` deploy runs them.

No ClickHouse server and no OpenTelemetry Collector binary run on this machine, so:

- the shared store is a third ``agentwatch serve`` whose ClickHouse-compatible SQL port takes
  writes (``sql_readonly: false``): the two collectors use it as their ClickHouse
  (``clickhouse_url``) over real HTTP, each with its own connections, exactly as they would use a
  server (the same path ``tests/test_sql_endpoint.py`` checks statement by statement);
- the gateway's routing is done here the way its ``loadbalancing`` exporter does it with
  ``routing_key: traceID``: every span of a trace goes to one collector, and the traces of one
  session are spread over both. The agents are real OpenTelemetry SDK exporters.

What a user of several collectors would notice is asserted: the schema is migrated once when
they start together, one collector pages and the others don't, a problem seen by both is paged
once, an acknowledge on either console reaches the pager, and when the collector that pages is
killed the other one takes over, with what was pending delivered and nothing twice.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.fake_pagers import FakeReceiver
from tests.test_detect_e2e import run_agent
from tests.test_paging import eventually

LEASE_TTL_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """One ``agentwatch serve`` process with a config file of its own, as an operator starts it."""

    def __init__(self, tmp_path: Path, name: str, settings: dict) -> None:
        self.name = name
        self.ports = {
            key: free_port() for key in ("otlp_grpc_port", "otlp_http_port", "sql_port", "api_port")
        }
        config = {"listen": "127.0.0.1", "data_dir": str(tmp_path / name), **self.ports, **settings}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / f"{name}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentwatch.cli.main", "serve", "--config", str(path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['otlp_grpc_port']}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api_port']}"

    @property
    def sql_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sql_port']}/"

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout_s: float = 120.0) -> Serve:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(self.api_url + "/healthz", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{self.name} not ready in {timeout_s} s:\n{self.log()[-3000:]}")

    def api(self, method: str, path: str, **kwargs):
        response = requests.request(method, self.api_url + path, timeout=30, **kwargs)
        assert response.status_code < 300, response.text
        return response.json()

    def kill(self) -> None:
        """SIGKILL: no clean stop, no lease released (a crash, an OOM kill)."""
        self.process.kill()
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self._log.close()


class Store(Serve):
    """The shared store: a collector whose SQL port takes writes, standing for a ClickHouse."""

    def query(self, sql: str) -> list[dict]:
        response = requests.post(self.sql_url, data=sql + " FORMAT JSONEachRow", timeout=30)
        response.raise_for_status()
        import orjson

        return [orjson.loads(line) for line in response.content.splitlines() if line.strip()]

    def empty(self) -> None:
        """Drop every table (views first), so the collectors find an empty ClickHouse."""
        tables = self.query(
            "SELECT name FROM system.tables WHERE database = 'default'"
            " ORDER BY engine LIKE '%View' DESC"
        )
        for row in tables:
            requests.post(
                self.sql_url, data=f"DROP TABLE {row['name']}", timeout=30
            ).raise_for_status()


@pytest.fixture
def running(tmp_path):
    started: list[Serve] = []

    def start(kind, name: str, settings: dict) -> Serve:
        serve = kind(tmp_path, name, settings)
        started.append(serve)
        return serve

    yield start
    for serve in started:
        serve.stop()


@pytest.fixture
def store(running) -> Store:
    return running(Store, "store", {"sql_readonly": False, "detect": False}).wait_ready()


@pytest.fixture
def hook():
    fake = FakeReceiver()
    yield fake
    fake.close()


def collector_settings(store: Store, hook: FakeReceiver | None = None) -> dict:
    settings = {"clickhouse_url": store.sql_url}
    if hook is not None:
        settings["paging"] = {
            "receivers": [{"name": "hook", "type": "webhook", "url": hook.url}],
            "route": {"receiver": "hook", "group_wait_s": 0},
            "retry_initial_s": 0.2,
            "retry_max_s": 0.5,
            "lease_ttl_s": LEASE_TTL_S,
        }
    return settings


def two_collectors(running, store, hook=None) -> tuple[Serve, Serve]:
    a = running(Serve, "collector-a", collector_settings(store, hook))
    b = running(Serve, "collector-b", collector_settings(store, hook))
    return a.wait_ready(), b.wait_ready()


def pager_holder(store: Store) -> str:
    rows = store.query(
        "SELECT holder FROM leases WHERE name = 'paging' AND kind = 'claim'"
        " ORDER BY term DESC LIMIT 1"
    )
    return rows[0]["holder"] if rows else ""


def triggers(hook: FakeReceiver) -> list[dict]:
    return [b for b in hook.bodies() if b["action"] == "trigger" and not b["test"]]


def test_collectors_starting_together_migrate_the_store_once(running, store):
    store.empty()
    a, b = two_collectors(running, store)  # both started before either is ready
    rows = store.query("SELECT version, count() AS n FROM schema_migrations GROUP BY version")
    assert rows and all(row["n"] == 1 for row in rows), rows
    logs = a.log() + b.log()
    assert logs.count("applied migrations:") == 1, logs


def test_one_collector_pages_and_a_problem_seen_by_both_is_paged_once(running, store, hook):
    a, b = two_collectors(running, store, hook)
    holder = eventually(lambda: pager_holder(store), what="a paging lease holder")
    assert sum("this collector pages now" in s.log() for s in (a, b)) == 1

    # One loop, seen by each collector in a session of its own (the gateway sent each run's
    # trace to a different collector): two incidents of one fingerprint, one page.
    run_agent(a, "loop-on-a", "u-1", [42] * 6)
    run_agent(b, "loop-on-b", "u-2", [42] * 6)
    incidents = eventually(
        lambda: (
            [r for r in store.query("SELECT * FROM incidents_current") if r["detector"] == "loop"]
            if len(store.query("SELECT 1 FROM incidents_current WHERE detector = 'loop'")) == 2
            else None
        ),
        what="an incident on each collector",
    )
    assert len({i["fingerprint"] for i in incidents}) == 1
    eventually(lambda: triggers(hook), what="the page")
    time.sleep(2 * LEASE_TTL_S)  # time for a second page, were there one
    [page] = triggers(hook)
    paged = page["incident"]["incident_id"]
    [other_incident] = {i["incident_id"] for i in incidents} - {paged}
    folded = store.query(
        "SELECT incident_id, page_of FROM page_outbox FINAL WHERE status = 'folded'"
    )  # the page was sent before the second collector's incident joined it, or carried it
    assert folded == [{"incident_id": other_incident, "page_of": paged}] or other_incident in {
        f["incident_id"] for f in page["folded"]
    }

    # acknowledged on the collector that does not page: the page is acknowledged all the same
    other = b if holder.split(":")[1] == str(a.process.pid) else a
    other.api("POST", f"/v1/incidents/{paged}/ack", json={"actor": "ann"})
    eventually(lambda: [x for x in hook.bodies() if x["action"] == "acknowledge"], what="the ack")
    # a test page asked of the collector that does not page goes out through the one that does
    other.api("POST", "/v1/alerts/test", json={"route": "default", "note": "from b"})
    eventually(lambda: [x for x in hook.bodies() if x["test"]], what="the test page")


def test_when_the_collector_that_pages_is_killed_the_other_takes_over(running, store, hook):
    a, b = two_collectors(running, store, hook)
    holder = eventually(lambda: pager_holder(store), what="a paging lease holder")
    leader, follower = (a, b) if holder.split(":")[1] == str(a.process.pid) else (b, a)

    # The receiver is down: the page waits in the outbox, pending, when the leader dies.
    hook.stop()
    run_agent(follower, "loop-1", "u-1", [42] * 6)
    eventually(
        lambda: store.query("SELECT 1 FROM page_outbox FINAL WHERE status = 'pending'"),
        what="a pending page",
    )
    leader.kill()
    hook.start()

    new_holder = eventually(
        lambda: (h := pager_holder(store)) != holder and h, timeout_s=30, what="a new lease holder"
    )
    assert new_holder.split(":")[1] == str(follower.process.pid)
    [page] = eventually(lambda: triggers(hook), timeout_s=30, what="the pending page")
    assert page["incident"]["session_id"] == "loop-1"

    # and it pages what happens next: a new problem on the surviving collector
    run_agent(follower, "loop-2", "u-2", [7] * 6, service="billing-svc")
    eventually(lambda: len(triggers(hook)) == 2, timeout_s=30, what="the next page")
    time.sleep(2 * LEASE_TTL_S)
    assert len(triggers(hook)) == 2  # nothing paged twice
    statuses = store.query("SELECT status, count() AS n FROM page_outbox FINAL GROUP BY status")
    assert {r["status"]: r["n"] for r in statuses}.get("pending", 0) == 0


def test_a_loop_split_across_collectors_by_trace_routing_is_found_once(running, store):
    settings = {**collector_settings(store), "detection": {"session_sweep_s": 1}}
    a = running(Serve, "collector-a", settings).wait_ready()
    b = running(Serve, "collector-b", settings).wait_ready()

    # One session, two turns (two traces): the gateway sends one to each collector. Two identical
    # calls in each: neither collector sees a loop, the session has four.
    run_agent(a, "split-session", "u-1", [42, 42])
    run_agent(b, "split-session", "u-1", [42, 42])

    def loops() -> list[dict]:
        return store.query("SELECT * FROM incidents_current WHERE detector = 'loop'")

    [incident] = eventually(loops, timeout_s=30, what="the loop found by the session sweep")
    assert incident["session_id"] == "split-session"
    assert '"merged_from_store":true' in incident["evidence"].replace(" ", "")
    time.sleep(3)  # several sweeps later, on whichever collector sweeps: still one
    assert len(loops()) == 1
    holders = store.query(
        "SELECT DISTINCT holder FROM leases WHERE name = 'session_sweep' AND kind = 'claim'"
    )
    assert len(holders) == 1  # one collector sweeps
