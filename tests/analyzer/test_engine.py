"""Detector -> incident -> rows in the real embedded ClickHouse, queryable with SQL."""

from __future__ import annotations

import asyncio

import orjson

from analyzer.detectors.loop import LoopDetector
from analyzer.engine import Analyzer, Detection
from analyzer.incidents.lifecycle import IncidentManager
from analyzer.incidents.repository import IncidentRepository
from analyzer.session import SessionTable
from collector.consumer import Rejections
from collector.decode import decode_protobuf
from collector.normalize import Normalizer
from collector.store.embedded import EmbeddedStore
from collector.store.migrations import migrate
from tests.otlp import request, span

T0 = 1_763_000_000_000_000_000


def loop_request(session: str, user: str, calls: int, trace: bytes):
    spans = [
        span(
            "execute_tool lookup_order",
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "lookup_order",
                "gen_ai.tool.call.arguments": '{"order_id": 42}',
                "gen_ai.conversation.id": session,
                "gen_ai.agent.name": "support",
                "user.id": user,
            },
            trace_id=trace,
            start_ns=T0 + i * 1_000_000_000,
        )
        for i in range(calls)
    ]
    return request(*spans, resource={"service.name": "support-svc"})


def test_a_loop_becomes_one_incident_row_with_its_flagged_span(tmp_path):
    store = EmbeddedStore(tmp_path / "data")
    migrate(store)

    async def run_store(fn, *args):
        return fn(*args)

    clock = iter(range(T0 + 10**10, T0 + 10**12, 10**9))
    analyzer = Analyzer(
        Detection([LoopDetector()], SessionTable()),
        IncidentManager(link_template="http://grafana/trace/{trace_id}?span={span_id}"),
        IncidentRepository(store, run_store).write,
        clock=lambda: next(clock),
    )
    normalizer = Normalizer()

    async def feed(req):
        batch, _ = normalizer.normalize(decode_protobuf(req.SerializeToString(), Rejections()))
        await analyzer.consume(batch)
        return batch

    first = asyncio.run(feed(loop_request("s1", "u1", 5, b"\x01" * 16)))
    asyncio.run(feed(loop_request("s2", "u2", 4, b"\x02" * 16)))  # the same loop in another session

    rows = [
        orjson.loads(line)
        for line in store.query("SELECT * FROM incidents_current", "JSONEachRow").splitlines()
    ]
    assert len(rows) == 1  # one problem, one incident
    [incident] = rows
    assert (incident["detector"], incident["kind"], incident["class"], incident["severity"], incident["status"]) == (
        "loop", "repeated_call", "semantic", "SEV2", "open",
    )  # fmt: skip
    assert incident["span_id"] == first.columns["SpanId"][3]  # the fourth identical call
    assert incident["trace_id"] == "01" * 16 and incident["session_id"] == "s1"
    assert (incident["occurrences"], incident["sessions_affected"], incident["users_affected"]) == (
        2,
        2,
        2,
    )
    assert incident["link"] == f"http://grafana/trace/{'01' * 16}?span={incident['span_id']}"
    assert orjson.loads(incident["evidence"])[0]["tool"] == "lookup_order"
    events = store.query("SELECT event FROM incident_events ORDER BY at", "TSV").decode().split()
    assert events == ["opened", "updated"]
    store.close()


def test_a_loop_spreading_across_two_collectors_escalates_to_sev1(tmp_path):
    """Each collector sees only its own sessions; the store sees all of them, and so does the
    escalation: 3 + 3 sessions reach the policy's 5 although neither collector alone does."""
    import time

    from analyzer.policy import parse_policy

    store = EmbeddedStore(tmp_path / "data")
    migrate(store)

    async def run_store(fn, *args):
        return fn(*args)

    policy = parse_policy({"defaults": {"escalation": {"sessions": 5, "users": 0}}})
    repository = IncidentRepository(store, run_store)

    def collector():
        return Analyzer(
            Detection([LoopDetector()], SessionTable(policy_for=policy.for_agent)),
            IncidentManager(quiet_period_s=10**9),  # the spans are from 2025: never quiet here
            repository.write,
            clock=time.time_ns,  # the spread window is counted back from the store's own clock
            read_spread=repository.spread,
            policy_for=policy.for_agent,
        )

    first, second = collector(), collector()
    normalizer = Normalizer()

    async def feed(analyzer, session: str, trace: int) -> None:
        req = loop_request(session, f"user-{session}", 4, bytes([trace]) * 16)
        batch, _ = normalizer.normalize(decode_protobuf(req.SerializeToString(), Rejections()))
        await analyzer.consume(batch)

    async def scenario():
        for i in range(3):
            await feed(first, f"a{i}", 10 + i)
            await feed(second, f"b{i}", 20 + i)
        await first.tick()

    asyncio.run(scenario())
    rows = [
        orjson.loads(line)
        for line in store.query(
            "SELECT incident_id, severity, sessions_affected FROM incidents_current"
            " ORDER BY severity",
            "JSONEachRow",
        ).splitlines()
    ]
    # one incident per collector (ids are per collector); the first one escalated on its tick
    assert [(r["severity"], r["sessions_affected"]) for r in rows] == [("SEV1", 6), ("SEV2", 3)]
    escalated = store.query(
        "SELECT detail FROM incident_events WHERE event = 'escalated'", "TSV"
    ).decode()
    assert "spreading: 6 sessions" in escalated
    store.close()


def test_a_loop_in_few_sessions_is_not_escalated(tmp_path):
    import time

    store = EmbeddedStore(tmp_path / "data")
    migrate(store)

    async def run_store(fn, *args):
        return fn(*args)

    repository = IncidentRepository(store, run_store)
    analyzer = Analyzer(
        Detection([LoopDetector()], SessionTable()),  # default policy: SEV1 from 10 sessions
        IncidentManager(quiet_period_s=10**9),
        repository.write,
        clock=time.time_ns,
        read_spread=repository.spread,
    )
    normalizer = Normalizer()

    async def scenario():
        for i in range(3):
            req = loop_request(f"s{i}", f"u{i}", 4, bytes([i + 1]) * 16)
            batch, _ = normalizer.normalize(decode_protobuf(req.SerializeToString(), Rejections()))
            await analyzer.consume(batch)
        await analyzer.tick()

    asyncio.run(scenario())
    out = store.query("SELECT severity, sessions_affected FROM incidents_current", "TSV").decode()
    assert out.split() == ["SEV2", "3"]
    store.close()
