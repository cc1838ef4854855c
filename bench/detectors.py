"""Cost of the streaming detectors per span, alone and together, on the ingest workload.

    python -m bench.detectors

Normalises the benchmark workload once, then feeds the batches through ``analyzer.engine.Analyzer``
with one detector at a time and with all of them, and prints microseconds per span. Compare with
the ingest path's own cost (``python -m bench.ingest``: ~19 µs/span to decode and normalise).
"""

from __future__ import annotations

import asyncio
import time

from analyzer.detectors.context_growth import ContextGrowthDetector
from analyzer.detectors.cost_runaway import CostRunawayDetector
from analyzer.detectors.infrastructure import InfrastructureDetector
from analyzer.detectors.loop import LoopDetector
from analyzer.detectors.out_of_scope_tool import OutOfScopeToolDetector
from analyzer.detectors.token_ratio import TokenRatioDetector
from analyzer.engine import Analyzer, Detection
from analyzer.incidents import IncidentManager
from analyzer.session import SessionTable
from bench.workload import make_requests
from collector.decode import decode_protobuf
from collector.normalize import Normalizer, Rejections

DETECTORS = [
    LoopDetector,
    ContextGrowthDetector,
    TokenRatioDetector,
    OutOfScopeToolDetector,
    CostRunawayDetector,
    InfrastructureDetector,
]


async def _discard(rows) -> None:
    return None


def measure(detectors: list, batches: list) -> float:
    analyzer = Analyzer(Detection(detectors, SessionTable()), IncidentManager(), _discard)
    spans = sum(len(b) for b in batches)
    started = time.perf_counter()
    for batch in batches:
        asyncio.run(analyzer.consume(batch))
    return (time.perf_counter() - started) / spans * 1e6


def main() -> None:
    normalizer = Normalizer()
    batches = [normalizer.normalize(decode_protobuf(b, Rejections()))[0] for b in make_requests(40)]
    print(f"{'detectors':24s} {'us/span':>8s}")
    print(f"{'(none: steps + sessions)':24s} {measure([], batches):8.1f}")
    for cls in DETECTORS:
        print(f"{cls.name:24s} {measure([cls()], batches):8.1f}")
    print(f"{'all':24s} {measure([cls() for cls in DETECTORS], batches):8.1f}")


if __name__ == "__main__":
    main()
