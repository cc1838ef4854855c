"""What detection costs per span, stage by stage, as the detection process does it.

    python -m bench.detectors            # stages, then each detector alone
    python -m bench.detectors --gc       # also: CPython's default GC against collector.gc_tuning

The workload is the ingest benchmark's (``bench.ingest.build_workload``: 96 requests of 512 spans,
~970 B per span), sent ``--rounds`` times with fresh trace and session ids each round, as
``bench.ingest`` sends it, so sessions come and go as they would (about ten steps each). Each
batch goes the way it goes in the collector: normalised, its step columns serialised with orjson
(the collector's side), then, timed, ``orjson.loads`` -> ``steps_from_columns`` ->
``Detection.observe`` (the detection process's side). Time spent in the cyclic garbage collector
is measured with ``gc.callbacks``. CPU time of this process only; compare figures within one run,
the machine is shared.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import orjson

from analyzer.detectors import REGISTRY
from analyzer.engine import Detection, default_detectors
from analyzer.session import SessionTable
from analyzer.step import STEP_COLUMNS, steps_from_columns
from bench.ingest import build_workload, with_fresh_trace_ids
from collector.consumer import Rejections
from collector.decode import decode_protobuf
from collector.gc_tuning import tune_gc
from collector.normalize import Normalizer

DETECTORS = list(REGISTRY.values())  # every registered detector, in the order the engine runs them


class GcClock:
    """Wall time spent inside the cyclic garbage collector while it is installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)


def workload_frames(rounds: int) -> tuple[list[bytes], list[bytes]]:
    """The requests as sent (fresh ids per round) and each batch's step columns as orjson."""
    wl = build_workload(96, 512, 970)
    bodies = [
        with_fresh_trace_ids(body, offsets, round_, session_offsets)
        for round_ in range(rounds)
        for body, offsets, session_offsets in zip(
            wl.requests, wl.trace_id_offsets, wl.session_offsets, strict=True
        )
    ]
    normalizer = Normalizer()
    frames = []
    for body in bodies:
        batch, _ = normalizer.normalize(decode_protobuf(body, Rejections()))
        frames.append(orjson.dumps({name: batch.columns[name] for name in STEP_COLUMNS}))
    return bodies, frames


def detection_stages(frames: list[bytes], detectors: list) -> dict[str, float]:
    """µs per span of each stage of the detection process, and of the GC within them."""
    detection = Detection(detectors, SessionTable())
    now = time.time_ns()
    spans = 512 * len(frames)
    took = {"orjson.loads": 0.0, "steps_from_columns": 0.0, "Detection.observe": 0.0}
    with GcClock() as gc_clock:
        for frame in frames:
            t0 = time.process_time()
            columns = orjson.loads(frame)
            t1 = time.process_time()
            steps = steps_from_columns(columns)
            t2 = time.process_time()
            detection.observe(steps, now)
            t3 = time.process_time()
            took["orjson.loads"] += t1 - t0
            took["steps_from_columns"] += t2 - t1
            took["Detection.observe"] += t3 - t2
    out = {stage: seconds / spans * 1e6 for stage, seconds in took.items()}
    out["total"] = sum(out.values())
    out["of which GC"] = gc_clock.seconds / spans * 1e6
    return out


def normalise_cost(bodies: list[bytes]) -> dict[str, float]:
    """µs per span of the collector's decode + normalise + JSON block, and of the GC within."""
    normalizer = Normalizer()
    spans = 512 * len(bodies)
    with GcClock() as gc_clock:
        started = time.process_time()
        for body in bodies:
            batch, _ = normalizer.normalize(decode_protobuf(body, Rejections()))
            batch.to_json()
        took = time.process_time() - started
    return {"total": took / spans * 1e6, "of which GC": gc_clock.seconds / spans * 1e6}


def _default_gc() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)


def compare_gc(bodies: list[bytes], frames: list[bytes], pairs: int) -> None:
    """Default GC and tuned GC in turn, ``pairs`` times; medians."""
    results: dict[str, dict[str, list[float]]] = {"default": {}, "tuned": {}}
    for _ in range(pairs):
        for setting in ("default", "tuned"):
            _default_gc() if setting == "default" else tune_gc()
            for name, figures in (
                ("normalise", normalise_cost(bodies)),
                ("detection", detection_stages(frames, default_detectors())),
            ):
                for key in ("total", "of which GC"):
                    results[setting].setdefault(f"{name} {key}", []).append(figures[key])
    print(
        f"\nGC: CPython's default against collector.gc_tuning, {pairs} alternating pairs, medians"
    )
    print(f"{'us/span':34s} {'default':>8s} {'tuned':>8s}")
    for key in results["default"]:
        default = statistics.median(results["default"][key])
        tuned = statistics.median(results["tuned"][key])
        print(f"{key:34s} {default:8.2f} {tuned:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the 96 requests")
    parser.add_argument("--gc", action="store_true", help="compare default and tuned GC")
    parser.add_argument("--pairs", type=int, default=3, help="alternating pairs for --gc")
    args = parser.parse_args()
    bodies, frames = workload_frames(args.rounds)
    tune_gc()  # as the detection process runs

    stages = detection_stages(frames, default_detectors())
    print(f"detection process, all detectors, {512 * len(frames):,} spans (us/span)")
    for stage, us in stages.items():
        print(f"  {stage:22s} {us:6.2f}")

    base = min(detection_stages(frames, [])["Detection.observe"] for _ in range(2))
    print(f"\nDetection.observe, one detector at a time (us/span; sessions alone {base:.2f})")
    for cls in DETECTORS:
        alone = min(detection_stages(frames, [cls()])["Detection.observe"] for _ in range(2))
        print(f"  {cls.name:22s} +{alone - base:5.2f}")

    if args.gc:
        compare_gc(bodies, frames, args.pairs)


if __name__ == "__main__":
    main()
