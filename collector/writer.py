"""Group commit: many concurrent requests share one INSERT; each is acknowledged once committed.

A request's batch waits at most ``flush_interval_s`` (or until ``max_batch_spans`` are waiting) and
is then written with the other waiting batches, at most ``max_batch_spans`` spans per INSERT (which
bounds the store's memory per INSERT), on a thread of its own, so decoding the next requests goes
on meanwhile. When more than ``max_queue_spans`` wait, new batches are refused
with ``Overloaded`` (a retryable status for the client): memory stays bounded and nothing that
was acknowledged is lost. If the store refuses the insert, every request in the group gets
``StoreDown``: nothing was kept.

No retry stores a span twice, whichever side retries:
- the writer's own: every group commit carries a ClickHouse insert deduplication token. When an
  insert's outcome is unknown (a timeout or a connection lost after the data was sent: the
  server may still commit it), the writer sends the same group with the same token again, with
  backoff, until the store answers, and only then answers the group's requests. ClickHouse keeps
  one copy whichever attempts arrive (schemas/008_insert_dedup.sql);
- the exporters': a retried request is grouped differently, so the token cannot catch it. Each
  request is keyed by a hash of its spans instead: a retry of a request still waiting for its
  commit waits for that commit, and a retry of one whose commit came late (after an unknown
  outcome, or slower than an exporter's deadline may be) is acknowledged without an insert for
  ``REMEMBER_S``.
The keys live in this process: a retry sent to another collector, or to this one after a
restart, while its first copy's outcome was unknown, can still be stored twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from collector.consumer import Overloaded, SpanBatch, StoreDown
from collector.metrics import Metrics
from collector.retry import Backoff
from collector.store import Store, StoreError, StoreUnavailable, insert_target

log = logging.getLogger("agentwatch.writer")

INGEST_TABLE = "otel_traces_ingest"
INGEST_FORMAT = "JSONColumns"

# An insert whose outcome is unknown is sent again after 0.5 s, then 1, 2, 4, 5, 5 … s.
BACKOFF = Backoff(initial_s=0.5, max_s=5.0)  # an insert whose outcome is unknown
# At shutdown, an insert still in doubt gets this long to settle before its requests are failed.
CLOSE_GRACE_S = 10.0
# Requests committed late are remembered this long (the OpenTelemetry Collector's exporters retry
# for up to 300 s), at most REMEMBER_MAX of them (~200 bytes each).
REMEMBER_S, REMEMBER_MAX = 300.0, 50_000
# "Late": waited longer than this, shorter than any common exporter deadline (SDKs 10 s,
# the Collector's exporters 5 s).
LATE_S = 1.0


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
        # (JSON block, spans, future, key, arrival): the requests waiting for a group commit
        self._pending: list[tuple[bytes, int, asyncio.Future, bytes, float]] = []
        self._waiting: dict[bytes, asyncio.Future] = {}  # key -> future, until its outcome
        self._remembered: OrderedDict[bytes, float] = OrderedDict()  # key -> committed at
        self._last_failure: str | None = None  # why the last insert attempt failed, if it did
        self._pending_spans = 0
        self._in_flight_spans = 0
        self._first_pending_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._closing_at = 0.0
        # group commits in flight at once (each on an executor thread and store connection)
        self._slots = asyncio.Semaphore(inserts_in_flight)
        self._inserts: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    @property
    def busy(self) -> bool:
        """Requests wait for a commit, or an insert is in flight (or in doubt)."""
        return bool(self._pending or self._in_flight_spans)

    @property
    def store_problem(self) -> str | None:
        """Why the last insert attempt failed, while requests still wait on the store."""
        return self._last_failure if self.busy else None

    async def close(self) -> None:
        """Commit what is waiting, then stop."""
        self._closing = True
        self._closing_at = time.monotonic()
        self._wake.set()
        if self._task:
            await self._task

    async def consume(self, batch: SpanBatch) -> bool:
        """Returns once the spans are committed: True, or False when they were an exporter's
        retry of spans committed (or being committed) already, which must not be analysed again."""
        block, n = batch.to_json(), len(batch)
        del batch  # wait for the commit holding only the JSON block
        key = hashlib.sha1(block).digest()  # the same spans: an exporter's retry
        same = self._waiting.get(key)
        if same is not None:  # its first copy still waits for its commit: wait for that one
            del block
            await asyncio.shield(same)
            return False
        if self._is_remembered(key):  # its first copy was committed
            return False
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
        self._pending.append((block, n, future, key, time.monotonic()))
        self._waiting[key] = future
        self._pending_spans += n
        self._metrics.queue_spans.set(self._pending_spans + self._in_flight_spans)
        if self._pending_spans >= self._max_batch_spans or len(self._pending) == 1:
            self._wake.set()
        await asyncio.shield(future)  # a client that hangs up does not cancel the group's commit
        return True

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

    def _take_group(self) -> tuple[list[tuple], int]:
        """The oldest waiting batches, up to ``max_batch_spans`` (at least one batch): a group's
        size bounds the store's memory for one INSERT, however long the previous one took."""
        taken = spans = 0
        for _, n, *_ in self._pending:
            if taken and spans + n > self._max_batch_spans:
                break
            taken += 1
            spans += n
        group, self._pending = self._pending[:taken], self._pending[taken:]
        self._pending_spans -= spans
        if self._pending:
            self._first_pending_at = time.monotonic() - self._flush_interval_s  # due now
        return group, spans

    async def _insert(self, group: list[tuple], spans: int) -> None:
        """Commit ``group``; its requests are answered only once the outcome is known."""
        # One token for every attempt: an attempt that arrives after another was committed is
        # dropped by ClickHouse (the token also reaches otel_traces through the ingest view).
        target = insert_target(
            INGEST_TABLE,
            {
                "insert_deduplication_token": uuid.uuid4().hex,
                "deduplicate_blocks_in_dependent_materialized_views": 1,
            },
        )
        blocks = [g[0] for g in group]
        started = time.perf_counter()
        attempts, in_doubt = 0, False
        try:
            while True:
                attempts += 1
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        self._executor, self._store.insert_blocks, target, INGEST_FORMAT, blocks
                    )
                    break
                except Exception as exc:  # the store's and any other: never leave a client hanging
                    if not isinstance(exc, (StoreUnavailable, StoreError, OSError)):
                        log.exception("insert of %d spans failed unexpectedly", spans)
                    in_doubt = in_doubt or (isinstance(exc, StoreUnavailable) and exc.in_doubt)
                    if isinstance(exc, StoreUnavailable) or in_doubt:
                        self._last_failure = f"insert failed: {exc}"
                    if not in_doubt or (
                        self._closing and time.monotonic() - self._closing_at > CLOSE_GRACE_S
                    ):
                        self._fail(group, spans, exc, in_doubt)
                        return
                    delay = BACKOFF.delay_s(attempts)
                    log.warning(
                        "insert of %d spans: outcome unknown (%s); sending the same group"
                        " again in %.1f s",
                        spans,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
            self._last_failure = None
            self._metrics.spans_stored.inc(spans)
            self._metrics.insert_seconds.observe(time.perf_counter() - started)
            self._metrics.insert_spans.observe(spans)
            now = time.monotonic()
            for _, _, future, key, arrived in group:
                del self._waiting[key]
                if attempts > 1 or now - arrived > LATE_S:  # its exporter may have given up
                    self._remember(key, now)
                if not future.done():
                    future.set_result(None)
        finally:
            self._in_flight_spans -= spans
            self._metrics.queue_spans.set(self._pending_spans + self._in_flight_spans)
            self._slots.release()

    def _fail(self, group: list[tuple], spans: int, exc: Exception, in_doubt: bool) -> None:
        self._metrics.spans_refused.labels("store_error").inc(spans)
        reason = "outcome unknown at shutdown" if in_doubt else "store insert failed"
        error = StoreDown(f"{reason}: {exc}", self._retry_after_s)
        for _, _, future, key, _ in group:
            del self._waiting[key]
            if not future.done():
                future.set_exception(error)

    def _remember(self, key: bytes, now: float) -> None:
        self._remembered[key] = now
        self._remembered.move_to_end(key)
        while len(self._remembered) > REMEMBER_MAX:
            self._remembered.popitem(last=False)

    def _is_remembered(self, key: bytes) -> bool:
        remembered = self._remembered
        expired = time.monotonic() - REMEMBER_S
        while remembered and next(iter(remembered.values())) < expired:
            remembered.popitem(last=False)
        return key in remembered
