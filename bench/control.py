"""How fast a containment check is, and how soon a flip is seen.

    python -m bench.control [--controls 1000] [--checks 2000]

1. ``decide``: the in-memory check alone (``ControlTable.decide``), with nothing in force and with
   ``--controls`` controls spread over five scope shapes (agent, session, user, agent+tool, global).
2. Over HTTP against ``agentwatch serve`` in a subprocess: ``GET /v1/control/check`` and an OFREP
   evaluation through the real OpenFeature SDK, sequential, client time included (p50/p99).
3. Flip to visible: after ``agentwatch pause`` returns, the next check sees it (same collector);
   a row written straight into ``control_state`` (as another collector sharing the ClickHouse
   server would) is seen after the next refresh (every second).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit
from pathlib import Path

import requests

from analyzer.containment.control import Context, Control, ControlTable, Scope
from bench.ingest import CollectorProcess, percentile


def table_with(n: int) -> ControlTable:
    shapes = [
        lambda i: Scope(agent=f"agent-{i}"),
        lambda i: Scope(session=f"s-{i}"),
        lambda i: Scope(user=f"u-{i}"),
        lambda i: Scope(agent=f"agent-{i}", tool="refund"),
        lambda i: Scope(service=f"svc-{i}"),
    ]
    controls = [
        Control(shapes[i % len(shapes)](i), "circuit_open" if i % 5 == 3 else "paused", "b", "person", "x")
        for i in range(n)
    ]  # fmt: skip
    return ControlTable(controls)


def decide_cost(n: int) -> float:
    table = table_with(n)
    context = Context(service="svc-x", agent="agent-x", session="s-x", user="u-x", tool="refund")
    runs = 200_000
    return min(timeit.repeat(lambda: table.decide(context), number=runs, repeat=3)) / runs * 1e6


def http_latency(api: str, checks: int) -> dict:
    from openfeature import api as openfeature
    from openfeature.contrib.provider.ofrep import OFREPProvider
    from openfeature.evaluation_context import EvaluationContext

    session = requests.Session()
    params = {"agent": "support", "session": "s-1", "tool": "refund"}
    times = []
    for _ in range(checks):
        t = time.perf_counter()
        session.get(f"{api}/v1/control/check", params=params).raise_for_status()
        times.append((time.perf_counter() - t) * 1e3)
    openfeature.set_provider(OFREPProvider(api))
    client = openfeature.get_client()
    context = EvaluationContext("s-1", {"agent": "support"})
    ofrep = []
    for _ in range(checks):
        t = time.perf_counter()
        client.get_boolean_value("tool.refund.enabled", False, context)
        ofrep.append((time.perf_counter() - t) * 1e3)
    openfeature.shutdown()
    return {
        "check_p50_ms": percentile(times, 50),
        "check_p99_ms": percentile(times, 99),
        "ofrep_p50_ms": percentile(ofrep, 50),
        "ofrep_p99_ms": percentile(ofrep, 99),
    }


def flip_latency(api: str, sql_url: str, rounds: int = 5) -> dict:
    same, other = [], []
    for i in range(rounds):
        body = {"mode": "paused", "scope": {"agent": f"flip-{i}"}, "reason": "bench"}
        requests.post(f"{api}/v1/control", json=body).raise_for_status()
        t = time.perf_counter()
        state = requests.get(f"{api}/v1/control/check", params={"agent": f"flip-{i}"}).json()
        same.append(0.0 if state["state"] == "paused" else float("inf"))
        sql = (
            "INSERT INTO control_state (key, user_id, mode, actor, source, reason, at, version)"
            f" VALUES ('user=other-{i}', 'other-{i}', 'quarantined', 'b', 'person', 'x', now64(9), 1)"
        )
        requests.post(sql_url, data=sql).raise_for_status()
        t = time.perf_counter()
        while (
            requests.get(f"{api}/v1/control/check", params={"user": f"other-{i}"}).json()["state"]
            != "quarantined"
        ):
            time.sleep(0.005)
        other.append((time.perf_counter() - t) * 1e3)
    return {"same_collector_ms": max(same), "other_writer_max_ms": max(other)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controls", type=int, default=1000)
    parser.add_argument("--checks", type=int, default=2000)
    args = parser.parse_args()

    empty, full = decide_cost(0), decide_cost(args.controls)
    print(f"decide(), in memory: {empty:.2f} µs with nothing in force, "
          f"{full:.2f} µs with {args.controls} controls in force")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "agentwatch.yaml"
        config.write_text("sql_readonly: false\n")
        collector = CollectorProcess(Path(tmp) / "data", Path(tmp) / "log", str(config))
        try:
            collector.wait_healthy(120)
            api = collector.api_url
            sql_url = f"http://127.0.0.1:{collector.ports['sql']}/"
            requests.post(
                f"{api}/v1/control",
                json={"mode": "paused", "scope": {"agent": "support"}, "reason": "bench"},
            ).raise_for_status()
            latency = http_latency(api, args.checks)
            print(
                f"GET /v1/control/check: p50 {latency['check_p50_ms']:.2f} ms, p99 "
                f"{latency['check_p99_ms']:.2f} ms; OpenFeature OFREP evaluation: p50 "
                f"{latency['ofrep_p50_ms']:.2f} ms, p99 {latency['ofrep_p99_ms']:.2f} ms "
                f"({args.checks} sequential each, client included)"
            )
            flips = flip_latency(api, sql_url)
            print(
                f"flip visible: through this collector at the next check "
                f"({flips['same_collector_ms']:.0f} ms after the change returned); written by "
                f"another writer: at most {flips['other_writer_max_ms']:.0f} ms (refresh every 1 s)"
            )
        finally:
            collector.stop()


if __name__ == "__main__":
    main()
