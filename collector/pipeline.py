"""receiver -> decode -> normalise -> consumers (store writer, analyzer), plus optional forwarding.

Receivers call ``export`` once per request and translate its outcome into their protocol's status:
a returned ``Rejections`` is success (maybe partial), ``PayloadError``/``PermanentError`` is bad
data, ``RetryableError`` means nothing was kept and the client should retry.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from collector.consumer import Consumer
from collector.decode import decode_json, decode_protobuf
from collector.metrics import Metrics
from collector.normalize import Normalizer, Rejections


class Pipeline:
    def __init__(
        self, normalizer: Normalizer, consumers: list[Consumer], metrics: Metrics, forwarder=None
    ) -> None:
        self.normalizer = normalizer
        self.consumers = consumers
        self.metrics = metrics
        self.forwarder = forwarder

    async def export(
        self, body: bytes, encoding: Literal["protobuf", "json"], protocol: str
    ) -> Rejections:
        rejections = Rejections()
        # the fast C reader when it can; otherwise the reference reader over a decoded request
        batch = self.normalizer.read_wire(body, rejections) if encoding == "protobuf" else None
        request = None
        if batch is None:
            decode = decode_protobuf if encoding == "protobuf" else decode_json
            request = decode(body, rejections)
            batch, rejections = self.normalizer.normalize(request, rejections)
        self.metrics.requests_read.labels("native" if request is None else "python").inc()
        if self.forwarder is not None:
            # Forward what was received (all of it, unchanged for protobuf); never waits.
            self.forwarder.submit(body if encoding == "protobuf" else request.SerializeToString())
        del request  # memory: only what a consumer keeps may outlive this point
        n_spans = len(batch)
        self.metrics.spans_received.labels(protocol).inc(n_spans + rejections.count)
        if rejections.count:
            self.metrics.spans_rejected.labels(protocol).inc(rejections.count)
        if n_spans:
            # Start every consumer, then let go of the batch: while the commit is awaited, an
            # in-flight request holds only what the consumers kept (the writer: one JSON block).
            waits = [consumer.consume(batch) for consumer in self.consumers]
            del batch
            await (waits[0] if len(waits) == 1 else asyncio.gather(*waits))
        unpriced = len(self.normalizer.unpriced_models)
        if unpriced:
            self.metrics.unpriced_models.set(unpriced)
        return rejections
