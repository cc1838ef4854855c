"""The one narrow interface between pipeline stages, and the errors that cross it.

A stage receives a ``SpanBatch`` through ``consume`` and either returns (done: for the writer that
means committed) or raises. Errors say whether a retry can help; receivers map them to OTLP status
codes in one place (``collector.receivers.status``).
"""

from __future__ import annotations

from typing import Protocol

from collector.normalize import SpanBatch


class Consumer(Protocol):
    async def consume(self, batch: SpanBatch) -> None: ...


class RetryableError(Exception):
    """Nothing was kept; the client should send the same data again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(RetryableError):
    """The write queue is full: back-pressure instead of accepting and dropping."""


class StoreDown(RetryableError):
    """The store refused or failed the insert."""


class PermanentError(Exception):
    """The data itself is bad; sending it again cannot help."""


class RecordingConsumer:
    """Keeps every batch it is given: the test double for a downstream stage."""

    def __init__(self) -> None:
        self.batches: list[SpanBatch] = []

    async def consume(self, batch: SpanBatch) -> None:
        self.batches.append(batch)
