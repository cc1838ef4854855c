"""The cyclic garbage collector, tuned for processes that make and drop many small objects.

Normalising a batch makes a dict per span and a tuple per row, and the detection process a Step
per span; nearly all of them are freed by reference counting once the batch is done. With
CPython's default threshold (a young collection every 700 net allocations) the collector still
ran about 600 times per 150k spans, each older collection walking every long-lived object: the
start-up imports (gRPC, chDB, pydantic) in the collector, the live sessions in the detection
process. Measured with ``python -m bench.detectors --gc`` (figures in bench/README.md): GC was
~6 % of normalisation and ~9 % of detection, and nearly nothing after this.

Objects in reference cycles are still collected, only after more allocations; start-up objects
are moved out of the collector's reach (``gc.freeze``), as they live as long as the process.
"""

from __future__ import annotations

import gc

#: Net container allocations between young collections (CPython's default is 700).
YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Call once, when start-up is done."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
