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
        batch = None
        if encoding == "protobuf":
            batch = self.normalizer.read_wire(body, rejections)  # the fast C reader, when it can
        if batch is None:
            if encoding == "protobuf":
                request = decode_protobuf(body, rejections)
            else:
                request = decode_json(body, rejections)
            if self.forwarder is not None and encoding == "json":
                self.forwarder.submit(request.SerializeToString())
            batch, rejections = self.normalizer.normalize(request, rejections)
            del request  # memory: only what a consumer keeps may outlive this point
            self.metrics.requests_read.labels("python").inc()
        else:
            self.metrics.requests_read.labels("native").inc()
        if self.forwarder is not None and encoding == "protobuf":
            # Forward what was received, all of it and unchanged; never waits.
            self.forwarder.submit(body)
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
