"""The pipeline's promise to exporters and detectors: only committed spans are analysed, and
nothing after the commit can fail the request.

The detectors are the real ones (an in-process ``Analyzer`` writing incidents to a real chDB);
the writer is a stand-in only where the real one cannot be made to refuse on cue (store down).
"""

from __future__ import annotations

import asyncio

import pytest

from analyzer.detectors.loop import LoopDetector
from analyzer.engine import Analyzer, Detection
from analyzer.incidents.lifecycle import IncidentManager
from analyzer.incidents.repository import IncidentRepository
from analyzer.session import SessionTable
from collector.consumer import StoreDown
from collector.metrics import Metrics
from collector.normalize import Normalizer
from collector.pipeline import Pipeline
from collector.store import query_rows
from collector.store.embedded import EmbeddedStore
from collector.store.migrations import migrate
from tests.analyzer.test_engine import loop_request


class Writer:
    """The store writer's contract: commit (return), refuse (raise), or say it had the spans."""

    def __init__(self) -> None:
        self.down = False
        self.committed: list[int] = []
        self.seen: set[bytes] = set()

    async def consume(self, batch):
        if self.down:
            raise StoreDown("store down")
        block = batch.to_json()
        if block in self.seen:
            return False  # an exporter's retry of spans already committed
        self.seen.add(block)
        self.committed.append(len(batch))


class Failing:
    columns = ("SpanName",)

    async def consume(self, batch):
        raise RuntimeError("a bug after the commit")


@pytest.fixture
def store(tmp_path):
    s = EmbeddedStore(tmp_path)
    migrate(s)
    yield s
    s.close()


def analyzer_on(store) -> Analyzer:
    async def run_store(fn, *args):
        return fn(*args)

    return Analyzer(
        Detection([LoopDetector()], SessionTable()),
        IncidentManager(quiet_period_s=10**9),
        IncidentRepository(store, run_store).write,
    )


def test_spans_refused_or_retried_are_never_analysed(store):
    """Two identical calls sent four times (three retries) must not look like four calls."""
    writer, analyzer = Writer(), analyzer_on(store)
    pipeline = Pipeline(Normalizer(), writer, Metrics(), after_commit=[analyzer])
    body = loop_request("s1", "u1", 2, b"\x01" * 16).SerializeToString()

    async def scenario():
        writer.down = True
        for _ in range(3):
            with pytest.raises(StoreDown):
                await pipeline.export(body, "protobuf", "grpc")
        writer.down = False
        await pipeline.export(body, "protobuf", "grpc")  # stored
        await pipeline.export(body, "protobuf", "grpc")  # a retry after a lost answer
        await analyzer.flush()

    asyncio.run(scenario())
    assert writer.committed == [2]
    assert query_rows(store, "SELECT count() AS n FROM incidents") == [{"n": 0}]

    # the same spans in a loop that really happened (four calls) are still caught
    async def real_loop():
        loop_body = loop_request("s2", "u2", 4, b"\x02" * 16).SerializeToString()
        await pipeline.export(loop_body, "protobuf", "grpc")
        await analyzer.flush()

    asyncio.run(real_loop())
    assert query_rows(store, "SELECT detector FROM incidents") == [{"detector": "loop"}]


def test_a_failure_after_the_commit_does_not_fail_the_request():
    writer = Writer()
    pipeline = Pipeline(Normalizer(), writer, Metrics(), after_commit=[Failing()])
    body = loop_request("s1", "u1", 1, b"\x03" * 16).SerializeToString()
    rejections = asyncio.run(pipeline.export(body, "protobuf", "grpc"))
    assert rejections.count == 0  # acknowledged: a retry would store the span twice
    assert writer.committed == [1]
