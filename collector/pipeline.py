"""receiver -> decode -> normalise -> store writer -> after-commit consumers (the analyzer), plus
optional forwarding.

Receivers call ``export`` once per request and translate its outcome into their protocol's status:
a returned ``Rejections`` is success (maybe partial), a ``PermanentError`` (``PayloadError``) is bad
data, a ``RetryableError`` means nothing was kept and the client should retry
(``collector.consumer``; the statuses are ``collector.receivers.status``'s).

Two rules keep that promise honest:
- **Only what was committed is analysed.** The analyzer sees a batch after the writer committed
  it, so a refused request (queue full, store down) and its retries are never counted; and no
  failure after the commit fails the request (its retry would store the spans twice).
- **Memory is bounded by what is accepted.** A request is decoded on the event loop (one at a
  time) and handed to the writer before the next await, so its spans count against
  ``queue_max_spans`` at once; a full queue refuses it with a retryable status. (Starting the
  consumers as tasks, as before, let decoded requests pile up uncounted: 6 GB in the issue.)
  Once committed, a request's step columns wait for the detection process; every span from
  acceptance until then counts against ``max_held_spans`` (``queue_max_spans`` too). While that
  is full, a new request is refused before it is decoded (bench/adversarial.py --scenarios huge
  measured 1.8-2.5 GB without this bound).
"""

from __future__ import annotations

import logging
from typing import Literal

from collector.consumer import Consumer, Overloaded, Rejections, SpanBatch
from collector.decode import decode_json, decode_protobuf
from collector.metrics import Metrics
from collector.normalize import Normalizer

log = logging.getLogger("agentwatch.pipeline")


class Pipeline:
    def __init__(
        self,
        normalizer: Normalizer,
        writer: Consumer,
        metrics: Metrics,
        forwarder=None,
        after_commit: list[Consumer] | None = None,
        max_held_spans: int = 100_000,
        retry_after_s: int = 1,
    ) -> None:
        self.normalizer = normalizer
        self.writer = writer
        self.after_commit = after_commit or []
        # spans accepted and not yet done: waiting for their commit, then for the after-commit
        # consumers (the detection process), which the writer no longer counts
        self.max_held_spans = max_held_spans
        self.retry_after_s = retry_after_s
        self._held_spans = 0
        self.metrics = metrics
        self.forwarder = forwarder

    async def export(
        self,
        body: bytes,
        encoding: Literal["protobuf", "json"],
        protocol: str,
        tenant: str | None = None,
    ) -> Rejections:
        """``tenant``: the one the exporter's token names (``collector.auth``); it replaces
        whatever ``tenant.id`` the spans carry."""
        if self._held_spans >= self.max_held_spans:  # full: refuse before decoding multiplies it
            raise self._full()
        batch, rejections = self._read(body, encoding, protocol, tenant)
        # From here the writer counts these spans against queue_max_spans: it takes the batch
        # (or refuses it) before its first await, so no other request is decoded in between.
        n_spans = len(batch)
        if n_spans:
            held = self._held_spans
            if held and held + n_spans > self.max_held_spans:
                self.metrics.spans_refused.labels("queue_full").inc(n_spans)
                raise self._full()
            self._held_spans += n_spans
            try:
                await self._commit_then_analyse(batch, n_spans)
            finally:
                self._held_spans -= n_spans
        unpriced = len(self.normalizer.unpriced_models)
        if unpriced:
            self.metrics.unpriced_models.set(unpriced)
        return rejections

    def _full(self) -> Overloaded:
        return Overloaded(
            f"write queue full ({self._held_spans} spans wait for their commit or for detection,"
            f" queue_max_spans {self.max_held_spans}); retry later",
            self.retry_after_s,
        )

    async def _commit_then_analyse(self, batch: SpanBatch, n_spans: int) -> None:
        # While the commit is awaited, the request holds what the writer kept (one JSON block)
        # and the columns the after-commit consumers read, not the whole batch.
        later = [(c, _only(batch, getattr(c, "columns", None))) for c in self.after_commit]
        committed = self.writer.consume(batch)
        del batch
        if await committed is False:  # the writer had these spans already (a retry)
            return
        for consumer, kept in later:
            try:
                await consumer.consume(kept)
            except Exception:  # committed is committed: never fail the request now
                log.exception("after-commit consumer %r failed on %d spans", consumer, n_spans)

    def _read(self, body: bytes, encoding, protocol: str, tenant: str | None):
        rejections = Rejections()
        # the fast C reader when it can; otherwise the reference reader over a decoded request;
        # the token's tenant goes in there, before the spans' drill claims are checked in it
        normalizer = self.normalizer
        batch = normalizer.read_wire(body, rejections, tenant) if encoding == "protobuf" else None
        request = None
        if batch is None:
            decode = decode_protobuf if encoding == "protobuf" else decode_json
            request = decode(body, rejections)
            batch, rejections = normalizer.normalize(request, rejections, tenant)
        self.metrics.requests_read.labels("native" if request is None else "python").inc()
        if self.forwarder is not None:
            # Forward what was received (all of it, unchanged for protobuf); never waits.
            self.forwarder.submit(body if encoding == "protobuf" else request.SerializeToString())
        self.metrics.spans_received.labels(protocol).inc(len(batch) + rejections.count)
        if rejections.count:
            self.metrics.spans_rejected.labels(protocol).inc(rejections.count)
        return batch, rejections


def _only(batch: SpanBatch, names) -> SpanBatch:
    """``batch`` with just the columns ``names`` (all of them when ``None``)."""
    if names is None:
        return batch
    return SpanBatch({name: batch.columns[name] for name in names}, len(batch))
