"""Ingest throughput with the detectors on against off, in alternating pairs on one machine.

    python -m bench.detection_overhead --pairs 3 --duration 20

The bar (the Detect issue): with all detectors on, ingest stays within 20 % of the detectors-off
figure, i.e. the on/off ratio of committed spans/s is at least 0.80. This machine is shared and its
speed drifts by tens of percent within minutes, so a ratio is only meaningful between runs made
back to back: each pair runs ``bench.ingest`` with the default config (detectors on, in their own
process) and then with ``detect: false``, and the order alternates from pair to pair so that a
drift does not favour one side. Prints every pair and the median ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_ingest(detect: bool, duration: float, out: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "bench.ingest",
        "--duration",
        str(duration),
        "--json-out",
        str(out),
    ]
    if not detect:
        config = out.with_suffix(".yaml")
        config.write_text("detect: false\n")
        command += ["--collector-config", str(config)]
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    args = parser.parse_args()
    ratios = []
    print(f"{'pair':>4s} {'on spans/s':>11s} {'off spans/s':>12s} {'ratio':>6s}  "
          f"{'on: CPU-s/1k (of which detection)':>36s} {'off: CPU-s/1k':>14s}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            results = {
                detect: run_ingest(detect, args.duration, Path(tmp) / f"{pair}-{detect}.json")
                for detect in order
            }
            on, off = results[True], results[False]
            ratio = on["committed_spans_per_s"] / off["committed_spans_per_s"]
            ratios.append(ratio)
            print(
                f"{pair + 1:4d} {on['committed_spans_per_s']:11,.0f} "
                f"{off['committed_spans_per_s']:12,.0f} {ratio:6.2f}  "
                f"{on['collector_cpu_s_per_1k_spans']:27.4f} "
                f"({on['detection_process_cpu_s_per_1k_spans']:.4f}) "
                f"{off['collector_cpu_s_per_1k_spans']:14.4f}",
                flush=True,
            )
    print(f"median on/off ratio {statistics.median(ratios):.2f} over {len(ratios)} pairs "
          f"(bar: >= 0.80); lowest {min(ratios):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
