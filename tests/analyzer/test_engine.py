"""Detector -> incident -> rows in the real embedded ClickHouse, queryable with SQL."""

from __future__ import annotations

import asyncio

import orjson

from analyzer.detectors.loop import LoopDetector
from analyzer.engine import Analyzer, store_writer
from analyzer.incidents import IncidentManager
from analyzer.session import SessionTable
from collector.decode import decode_protobuf
from collector.normalize import Normalizer, Rejections
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
        [LoopDetector()],
        SessionTable(),
        IncidentManager(link_template="http://grafana/trace/{trace_id}?span={span_id}"),
        store_writer(store, run_store),
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
