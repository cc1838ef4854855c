"""Instructions per span of the collector's Python stages, counted by valgrind: a figure that does
not move with the shared machine's load, so two versions of the code compare exactly.

    python -m bench.instructions                      # this checkout
    python -m bench.instructions --against HEAD~3     # and another commit, in a git worktree

Stages, on 40 requests (20,480 spans) of the ingest benchmark's workload (``bench.detectors``):

- ``normalise``: decode + normalise + JSONColumns block, as the collector's event loop does it;
- ``normalise, tuned GC``: the same after ``collector.gc_tuning.tune_gc()``;
- ``C reader, tuned GC``: ``Normalizer.read_wire`` (the C reader of ``collector/_otlp_reader.c``,
  agent fields, JSONColumns block), as ``serve`` runs it; "n/a" where the checkout has no C
  reader (a checkout given to ``--against`` has its extension built in its worktree first);
- ``detection``: ``orjson.loads`` -> ``steps_from_columns`` -> ``Detection.observe``, as the
  detection process does it (``tune_gc()`` applied there too when the checkout has it).

Each stage runs twice under ``valgrind --tool=callgrind``: once stopping just before the work and
once doing it; the difference divided by the spans is the figure. Instructions are not time
(cache misses and allocation differ), but a change that removes instructions from a stage almost
always removes time, and the count is the same on every run. Needs ``valgrind`` (Debian package);
takes about a minute per checkout.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 40

#: Runs inside the checkout under test (its own ``collector``/``analyzer`` on sys.path).
STAGE = r"""
import pickle, sys, time
stage, data, go = sys.argv[1], sys.argv[2], sys.argv[3] == "run"
bodies, frames = pickle.load(open(data, "rb"))
import orjson
from collector.decode import decode_protobuf
from collector.normalize import Normalizer
try:
    from collector.consumer import Rejections
except ImportError:  # a checkout from before the contract moved to collector.consumer
    from collector.normalize import Rejections
from analyzer.engine import Detection, default_detectors
from analyzer.session import SessionTable
from analyzer.step import steps_from_columns
try:  # only this checkout's own (an editable install would offer another checkout's)
    import os, collector.gc_tuning as gc_tuning
    tune_gc = gc_tuning.tune_gc if gc_tuning.__file__.startswith(os.getcwd()) else None
except ImportError:
    tune_gc = None
if stage != "normalise" and tune_gc is not None:
    tune_gc()
if stage.startswith("C reader"):
    import collector.normalize as normalize
    if getattr(normalize, "READER", "python") != "native":
        print("unavailable")
        sys.exit(0)
if not go:
    sys.exit(0)
if stage.startswith("C reader"):
    normalizer = normalize.Normalizer()
    for body in bodies:
        normalizer.read_wire(body, Rejections()).to_json()
elif stage.startswith("normalise"):
    normalizer = Normalizer()
    for body in bodies:
        batch, _ = normalizer.normalize(decode_protobuf(body, Rejections()))
        batch.to_json()
else:
    detection, now = Detection(default_detectors(), SessionTable()), time.time_ns()
    for frame in frames:
        detection.observe(steps_from_columns(orjson.loads(frame)), now)
"""

STAGES = ("normalise", "normalise, tuned GC", "C reader, tuned GC", "detection")


def instructions(checkout: Path, stage: str, data: Path, go: bool) -> int | None:
    script = checkout / ".bench_stage.py"
    script.write_text(STAGE)
    try:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             str(script), stage, str(data), "run" if go else "skip"],
            cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        script.unlink()
    if "unavailable" in done.stdout:
        return None
    return int(re.search(r"Collected : (\d+)", done.stderr).group(1))


def per_span(checkout: Path, data: Path, spans: int) -> dict[str, float | None]:
    out = {}
    for stage in STAGES:
        ran = instructions(checkout, stage, data, True)
        out[stage] = (
            None if ran is None else (ran - instructions(checkout, stage, data, False)) / spans
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="also count this commit (a git worktree is made)")
    args = parser.parse_args()
    from bench.detectors import workload_frames

    bodies, frames = workload_frames(1)
    bodies, frames = bodies[:REQUESTS], frames[:REQUESTS]
    spans = 512 * REQUESTS
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "workload.pickle"
        data.write_bytes(pickle.dumps((bodies, frames)))
        checkouts = {"this checkout": ROOT}
        if args.against:
            other = Path(tmp) / "other"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), args.against],
                check=True, capture_output=True,
            )  # fmt: skip
            if (other / "setup.py").exists():  # its C reader, built in place
                subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                               cwd=other, check=True, capture_output=True)  # fmt: skip
            checkouts = {args.against: other, **checkouts}
        try:
            results = {name: per_span(path, data, spans) for name, path in checkouts.items()}
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
                               check=False, capture_output=True)  # fmt: skip
    names = list(results)
    print(f"instructions per span, {spans:,} spans ({REQUESTS} requests of the ingest workload)")
    print(
        f"{'stage':24s}"
        + "".join(f"{n:>16s}" for n in names)
        + ("   change" if len(names) > 1 else "")
    )
    for stage in STAGES:
        row = [results[n][stage] for n in names]
        both = len(row) > 1 and None not in row
        change = f"   {row[-1] / row[0] - 1:+.1%}" if both else ""
        cells = "".join(f"{v:16,.0f}" if v is not None else f"{'n/a':>16s}" for v in row)
        print(f"{stage:24s}" + cells + change)


if __name__ == "__main__":
    main()
