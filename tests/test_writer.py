"""The group commit writer against a scripted store: retries that cannot store a span twice.

The store here keeps one copy per insert deduplication token, as ClickHouse does with
``non_replicated_deduplication_window`` (schemas/008_insert_dedup.sql); tests/test_store_hung.py
drives the same paths with a real hung server.
"""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from collector.consumer import Rejections, StoreDown
from collector.decode import decode_protobuf
from collector.metrics import Metrics
from collector.normalize import Normalizer
from collector.store import StoreError, StoreUnavailable
from collector.writer import GroupCommitWriter
from tests.otlp import request, span

_TOKEN = re.compile(r"insert_deduplication_token = '(\w+)'")


class ScriptedStore:
    """Commits by token (a repeated token is dropped); ``script`` says what each call does:
    "ok", "commit-then-timeout" (the server commits, the client never hears), "timeout",
    "refused" (no connection), "error" (ClickHouse refuses the statement)."""

    def __init__(self, script: list[str] | None = None) -> None:
        self.script = list(script or [])
        self.tokens: list[str] = []  # of every call
        self.committed: dict[str, list[bytes]] = {}
        self.release = threading.Event()
        self.release.set()

    def insert_blocks(self, table: str, fmt: str, blocks: list[bytes]) -> None:
        self.release.wait(10)
        token = _TOKEN.search(table).group(1)
        self.tokens.append(token)
        outcome = self.script.pop(0) if self.script else "ok"
        if outcome in ("ok", "commit-then-timeout"):
            self.committed.setdefault(token, list(blocks))
        if outcome in ("commit-then-timeout", "timeout"):
            raise StoreUnavailable("read timed out")
        if outcome == "refused":
            raise StoreUnavailable("connection refused", in_doubt=False)
        if outcome == "error":
            raise StoreError("Code: 60. Unknown table", 60)

    def stored_blocks(self) -> list[bytes]:
        return [block for blocks in self.committed.values() for block in blocks]


def body(*names: str) -> bytes:
    return request(*(span(name) for name in names)).SerializeToString()


def batch(*names: str, body_: bytes | None = None):
    """The batch a receiver makes of a request (of ``body_``, or of new spans named ``names``)."""
    data = body_ or body(*names)
    return Normalizer().normalize(decode_protobuf(data, Rejections()))[0]


def run(store, scenario, **options):
    async def main():
        writer = GroupCommitWriter(
            store, ThreadPoolExecutor(2), Metrics(), flush_interval_s=0.01, **options
        )
        writer.start()
        try:
            return await scenario(writer)
        finally:
            await writer.close()

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    from collector.retry import Backoff

    monkeypatch.setattr("collector.writer.BACKOFF", Backoff(initial_s=0.01, max_s=5.0))


def test_an_insert_in_doubt_is_sent_again_with_the_same_token_and_answered_once_known():
    store = ScriptedStore(["commit-then-timeout", "timeout", "ok"])
    one = batch("a", "b")

    async def scenario(writer):
        await writer.consume(one)
        assert writer.store_problem is None

    run(store, scenario)
    assert len(store.tokens) == 3 and len(set(store.tokens)) == 1
    assert store.stored_blocks() == [one.to_json()]


def test_an_exporters_retry_waits_for_the_first_copys_commit_and_adds_nothing():
    store = ScriptedStore(["timeout", "timeout", "ok"])
    store.release.clear()  # the first attempt hangs until released
    sent = body("a")
    first, retry = batch(body_=sent), batch(body_=sent)  # the same bytes, received twice

    async def scenario(writer):
        original = asyncio.ensure_future(writer.consume(first))
        await asyncio.sleep(0.05)
        again = asyncio.ensure_future(writer.consume(retry))
        await asyncio.sleep(0.05)
        assert writer.store_problem is None  # still the first attempt: no failure seen yet
        store.release.set()
        await asyncio.gather(original, again)

    run(store, scenario)
    assert store.stored_blocks() == [first.to_json()]
    assert len(set(store.tokens)) == 1


def test_a_retry_after_a_late_commit_is_acknowledged_without_an_insert():
    store = ScriptedStore(["commit-then-timeout", "ok"])
    sent = body("a")
    first = batch(body_=sent)

    async def scenario(writer):
        await writer.consume(first)  # committed on the second attempt: remembered
        await writer.consume(batch("b"))
        calls = len(store.tokens)
        await writer.consume(batch(body_=sent))  # the exporter gave up, and sends it again
        assert len(store.tokens) == calls

    run(store, scenario)
    assert len(store.stored_blocks()) == 2


@pytest.mark.parametrize("outcome", ["refused", "error"])  # the store cannot have committed
def test_a_refused_insert_fails_at_once_and_the_retry_is_stored(outcome):
    store = ScriptedStore([outcome])
    sent = body("a")

    async def scenario(writer):
        with pytest.raises(StoreDown):
            await writer.consume(batch(body_=sent))
        await writer.consume(batch(body_=sent))

    run(store, scenario)
    assert len(store.tokens) == 2 and store.stored_blocks() == [batch(body_=sent).to_json()]


def test_store_problem_is_reported_while_an_insert_is_in_doubt():
    store = ScriptedStore(["timeout"] * 50)
    seen = []

    async def scenario(writer):
        task = asyncio.ensure_future(writer.consume(batch("a")))
        while not writer.store_problem:
            await asyncio.sleep(0.01)
        seen.append(writer.store_problem)
        store.script.clear()  # the store is back
        await task
        seen.append(writer.store_problem)

    run(store, scenario)
    assert seen[0].startswith("insert failed: read timed out") and seen[1] is None
