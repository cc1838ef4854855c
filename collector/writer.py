"""Group commit: many concurrent requests share one INSERT; each is acknowledged once committed.

A request's batch waits at most ``flush_interval_s`` (or until ``max_batch_spans`` are waiting) and
is then written with the other waiting batches, at most ``max_batch_spans`` spans per INSERT (which
bounds the store's memory per INSERT), on a thread of its own, so decoding the next requests goes
on meanwhile. When more than ``max_queue_spans`` wait, new batches are refused
with ``Overloaded`` (a retryable status for the client): memory stays bounded and nothing that
was acknowledged is lost. If the insert fails, every request in the group gets ``StoreDown``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from collector.consumer import Overloaded, StoreDown
from collector.metrics import Metrics
from collector.normalize import SpanBatch
from collector.store import Store, StoreError, StoreUnavailable

log = logging.getLogger("agentwatch.writer")

INGEST_TABLE = "otel_traces_ingest"
INGEST_FORMAT = "JSONColumns"


class GroupCommitWriter:
    def __init__(
        self,
        store: Store,
        executor: ThreadPoolExecutor,
        metrics: Metrics,
        *,
        flush_interval_s: float = 0.1,
        max_batch_spans: int = 3072,
        max_queue_spans: int = 100_000,
        retry_after_s: int = 1,
        inserts_in_flight: int = 1,
    ) -> None:
        self._store = store
        self._executor = executor
        self._metrics = metrics
        self._flush_interval_s = flush_interval_s
        self._max_batch_spans = max_batch_spans
        self._max_queue_spans = max_queue_spans
        self._retry_after_s = retry_after_s
        self._pending: list[tuple[bytes, int, asyncio.Future]] = []
        self._pending_spans = 0
        self._in_flight_spans = 0
        self._first_pending_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        # group commits in flight at once (each on an executor thread and store connection)
        self._slots = asyncio.Semaphore(inserts_in_flight)
        self._inserts: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def close(self) -> None:
        """Commit what is waiting, then stop."""
        self._closing = True
        self._wake.set()
        if self._task:
            await self._task

    async def consume(self, batch: SpanBatch) -> None:
        block, n = batch.to_json(), len(batch)
        del batch  # wait for the commit holding only the JSON block
        if self._closing:
            raise StoreDown("collector is shutting down", self._retry_after_s)
        waiting = self._pending_spans + self._in_flight_spans
        # An empty queue takes any batch, so one request larger than the limit is not refused forever.
        if waiting and waiting + n > self._max_queue_spans:
            self._metrics.spans_refused.labels("queue_full").inc(n)
            raise Overloaded(
                f"write queue full ({self._max_queue_spans} spans waiting); retry later",
                self._retry_after_s,
            )
        future = asyncio.get_running_loop().create_future()
        if not self._pending:
            self._first_pending_at = time.monotonic()
        self._pending.append((block, n, future))
        self._pending_spans += n
        self._metrics.queue_spans.set(self._pending_spans + self._in_flight_spans)
        if self._pending_spans >= self._max_batch_spans or len(self._pending) == 1:
            self._wake.set()
        await asyncio.shield(future)  # a client that hangs up does not cancel the group's commit

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._first_pending_at + self._flush_interval_s - time.monotonic()
            if wait > 0 and self._pending_spans < self._max_batch_spans and not self._closing:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
                continue
            await self._slots.acquire()  # batches keep gathering while every insert slot is busy
            group, spans = self._take_group()
            self._in_flight_spans += spans
            task = asyncio.get_running_loop().create_task(self._insert(group, spans))
            self._inserts.add(task)
            task.add_done_callback(self._inserts.discard)
        if self._inserts:
            await asyncio.gather(*self._inserts)

    def _take_group(self) -> tuple[list[tuple[bytes, int, asyncio.Future]], int]:
        """The oldest waiting batches, up to ``max_batch_spans`` (at least one batch): a group's
        size bounds the store's memory for one INSERT, however long the previous one took."""
        taken = spans = 0
        for _, n, _ in self._pending:
            if taken and spans + n > self._max_batch_spans:
                break
            taken += 1
            spans += n
        group, self._pending = self._pending[:taken], self._pending[taken:]
        self._pending_spans -= spans
        if self._pending:
            self._first_pending_at = time.monotonic() - self._flush_interval_s  # due now
        return group, spans

    async def _insert(self, group: list[tuple[bytes, int, asyncio.Future]], spans: int) -> None:
        started = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor,
                self._store.insert_blocks,
                INGEST_TABLE,
                INGEST_FORMAT,
                [g[0] for g in group],
            )
        except (
            Exception
        ) as exc:  # the store's own errors, and anything else: never leave a client hanging
            if not isinstance(exc, (StoreUnavailable, StoreError, OSError)):
                log.exception("insert of %d spans failed unexpectedly", spans)
            self._metrics.spans_refused.labels("store_error").inc(spans)
            error = StoreDown(f"store insert failed: {exc}", self._retry_after_s)
            for _, _, future in group:
                if not future.done():
                    future.set_exception(error)
        else:
            self._metrics.spans_stored.inc(spans)
            self._metrics.insert_seconds.observe(time.perf_counter() - started)
            self._metrics.insert_spans.observe(spans)
            for _, _, future in group:
                if not future.done():
                    future.set_result(None)
        finally:
            self._in_flight_spans -= spans
            self._metrics.queue_spans.set(self._pending_spans + self._in_flight_spans)
            self._slots.release()
