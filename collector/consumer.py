"""The one narrow interface between pipeline stages, what flows through it, and the errors that
cross it (the OpenTelemetry Collector's ``consumer.Traces`` and ``consumererror``, in small).

- ``SpanBatch``: normalised spans as columns, the unit every stage passes on.
- ``Consumer``: one method, ``consume(batch)``. It returns when done (for the writer: committed)
  or raises one of the errors below. A ``RecordingConsumer`` is the test double.
- ``Rejections``: what a request is told besides OK (OTLP partial success).
- Errors say whether a retry can help, and nothing else: ``RetryableError`` (nothing was kept;
  send the same data again later: ``Overloaded``, ``StoreDown``) or ``PermanentError`` (the data
  is bad; ``PayloadError`` when the whole request cannot be read). Receivers turn them into gRPC
  and HTTP statuses in one place, ``collector.receivers.status``.

This module imports nothing of the project's: every stage may import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import orjson

MAX_REJECTION_MESSAGES = 5


@dataclass(slots=True)
class Rejections:
    """What the exporter is told besides OK: ``count`` spans rejected, ``kept`` spans stored with
    an agent column left 0 (a warning), and the first few reasons of either."""

    count: int = 0
    messages: list[str] = field(default_factory=list)
    kept: int = 0

    def add(self, message: str, n: int = 1) -> None:
        self.count += n
        if len(self.messages) < MAX_REJECTION_MESSAGES:
            self.messages.append(message)

    def keep(self, message: str) -> None:
        """A span stored without one of its agent values (``message`` says which and why)."""
        self.kept += 1
        self.add(message, 0)

    def merge(self, other: Rejections) -> None:
        for message in other.messages:
            self.add(message, 0)
        self.count += other.count
        self.kept += other.kept

    def summary(self) -> str:
        more = self.count + self.kept - len(self.messages)
        text = "; ".join(self.messages)
        return f"{text}; and {more} more" if more > 0 and self.messages else text


#: Columns the detectors read that no table has (``ErrorText``: collector/normalize.py): the store
#: is never sent them (``SpanBatch.to_json``).
DETECTION_ONLY_COLUMNS = frozenset({"ErrorText"})


class SpanBatch:
    """Normalised spans as columns: the unit that flows from receivers to the store and analyzer.

    ``columns`` holds one Python list per column (``COLUMNS``); attribute maps are dicts. The
    analyzer reads the lists; the store inserts ``to_json()``, a ClickHouse ``JSONColumns`` block
    that is cheap to build (orjson) and that several batches can share one INSERT with.
    """

    __slots__ = ("columns", "num_spans")

    def __init__(self, columns: dict[str, list], num_spans: int) -> None:
        self.columns = columns
        self.num_spans = num_spans

    def __len__(self) -> int:
        return self.num_spans

    def rows(self, names: list[str]) -> list[tuple]:
        """The given columns as row tuples (for consumers that think in spans)."""
        return list(zip(*(self.columns[n] for n in names), strict=True))

    def to_json(self) -> bytes:
        """The stored columns as one ``JSONColumns`` block (``DETECTION_ONLY_COLUMNS`` left out)."""
        columns = self.columns
        if not DETECTION_ONLY_COLUMNS.isdisjoint(columns):
            columns = dict(columns)
            for name in DETECTION_ONLY_COLUMNS:
                columns.pop(name, None)
        return orjson.dumps(columns)


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


class PayloadError(PermanentError, ValueError):
    """The whole request is unreadable (not OTLP, broken framing or JSON); the message says why.
    A single bad span is not this: it goes in ``Rejections`` and its neighbours are kept."""


class RecordingConsumer:
    """Keeps every batch it is given: the test double for a downstream stage."""

    def __init__(self) -> None:
        self.batches: list[SpanBatch] = []

    async def consume(self, batch: SpanBatch) -> None:
        self.batches.append(batch)
