"""End-to-end ingest benchmark: OTLP/gRPC in, committed rows in chDB out.

What it measures, the way a user runs the collector:

1. ``agentwatch serve`` is started as a subprocess on a fresh temporary data directory and free
   ports; the benchmark waits for ``/healthz`` on its API port.
2. A realistic agent workload (``bench/workload.py``: sessions of ``invoke_agent`` -> ``chat`` /
   ``execute_tool`` spans, ~12.5 attributes each) is pre-serialised. ``workload.py`` produces about
   550 B per span; real tool results are larger, so by default ``gen_ai.tool.call.result`` is grown
   into realistic JSON search results until the average span is ``--span-bytes`` (970) on the wire.
   The attribute count is unchanged. The measured averages are printed.
3. Load-generator process(es) (``--processes``, each a ``grpc.aio`` channel with its share of
   ``--concurrency`` in-flight calls) send the raw bytes through a generic unary call to
   ``TraceService/Export`` for ``--warmup`` + ``--duration`` seconds. OK responses count as
   acknowledged spans (minus any ``partial_success.rejected_spans``). UNAVAILABLE and
   RESOURCE_EXHAUSTED count as refused (retryable back-pressure; the sender waits ``--backoff``
   seconds). Anything else counts as an error.
4. For the measured window it reports: acknowledged spans/s; committed spans/s (the change in
   ``SELECT count() FROM otel_traces`` through ``POST /v1/sql``); collector and load-generator
   CPU-seconds per 1,000 spans (psutil user+system, all threads); the collector's peak RSS (sampled
   every 100 ms from start until the load has drained, plus VmHWM read then, before the
   benchmark's own duplicate check, whose peak is shown apart); request latency p50/p99; refused
   requests; and group-commit statistics
   from ``/metrics``. When the load has drained it checks that the committed total equals the
   acknowledged total.
5. ``--profile`` runs ``py-spy record`` against the collector during the measured window. It
   prints the top functions by own time, the hottest lines, a breakdown by pipeline stage, and the
   CPU of every collector thread (from /proc). py-spy only samples Python threads, so CPU spent in
   chDB's own native threads shows up only in the per-thread table.

Run from the repository root (py-spy: ``pip install py-spy``; needs ptrace, e.g. root)::

    /work/venv/bin/python -m bench.ingest                     # 30 s, concurrency 16
    /work/venv/bin/python -m bench.ingest --concurrency 32 --json-out bench/results/c32.json
    /work/venv/bin/python -m bench.ingest --profile           # plus a py-spy profile

Bars: >= 30,000 committed spans/s and <= 500 MB peak RSS. For reference, Arize Phoenix ingests
about 90 spans/s on the same 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
BAR_COMMITTED_SPANS_PER_S = 30_000
BAR_PEAK_RSS_MB = 500
PHOENIX_SPANS_PER_S = 90  # Arize Phoenix on this machine, for reference
REFUSED_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")  # retryable back-pressure in OTLP
MIB = 1024 * 1024


# --- workload -------------------------------------------------------------------------------

_WORDS = (
    "order shipped refund customer invoice warehouse delayed tracking carrier label address "
    "return policy within days receipt account payment card declined support ticket escalated "
    "priority agent reply email subscription renewal plan upgrade discount coupon expired stock "
    "available backorder estimated delivery window weekend express standard international customs"
).split()


def _tool_result(rnd: random.Random, size: int) -> str:
    """JSON search results (ids, titles, text snippets) of about ``size`` characters."""
    items = []
    doc = {"status": "ok", "items": items}
    while len(json.dumps(doc)) < size:
        words = rnd.choices(_WORDS, k=rnd.randint(18, 40))
        items.append(
            {
                "id": f"doc-{rnd.randrange(10**6):06d}",
                "title": " ".join(rnd.choices(_WORDS, k=4)).capitalize(),
                "score": round(rnd.random(), 3),
                "snippet": " ".join(words) + ".",
            }
        )
    text = json.dumps(doc)
    if len(text) > size and items:  # shorten the last snippet so the whole is about ``size``
        last = items[-1]
        last["snippet"] = last["snippet"][: max(0, len(last["snippet"]) - (len(text) - size))]
        text = json.dumps(doc)
    return text


def grow_tool_results(body: bytes, span_bytes: int, seed: int) -> bytes:
    """Re-serialise ``body`` with larger tool results so spans average ``span_bytes`` on the wire.

    Only the value of ``gen_ai.tool.call.result`` on ``execute_tool`` spans changes, so the number
    of attributes stays the same. Returns ``body`` unchanged when it is already large enough.
    """
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest.FromString(body)
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    results = [
        kv.value
        for s in spans
        if s.name.startswith("execute_tool")
        for kv in s.attributes
        if kv.key == "gen_ai.tool.call.result"
    ]
    missing = span_bytes * len(spans) - len(body)
    if missing <= 0 or not results:
        return body
    rnd = random.Random(seed)
    per_result = missing // len(results)
    for value in results:
        # -3: a longer value also lengthens the length prefixes of the messages around it
        value.string_value = _tool_result(rnd, len(value.string_value) + per_result - 3)
    return request.SerializeToString()


@dataclass
class Workload:
    requests: list[bytes]
    trace_id_offsets: list[list[int]]  # per request: where each span's trace id starts in it
    session_offsets: list[list[int]]  # per request: where each session id's digits start
    spans_per_request: int
    bytes_per_span: float
    attributes_per_span: float
    untuned_bytes_per_span: float


def build_workload(count: int, spans_per_request: int, span_bytes: int) -> Workload:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from bench.workload import make_requests

    raw = make_requests(count, spans_per_request=spans_per_request)
    untuned = sum(map(len, raw)) / (count * spans_per_request)
    if span_bytes:
        raw = [grow_tool_results(body, span_bytes, seed=i) for i, body in enumerate(raw)]
    spans = attributes = 0
    offsets, session_offsets = [], []
    for body in raw:
        request = ExportTraceServiceRequest.FromString(body)
        trace_ids = set()
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                spans += len(ss.spans)
                attributes += sum(len(s.attributes) for s in ss.spans)
                trace_ids.update(s.trace_id for s in ss.spans)
        offsets.append(sorted(o for t in trace_ids for o in _occurrences(body, t)))
        session_offsets.append([o + len(b"sess-") for o in _occurrences(body, b"sess-")])
    assert spans == count * spans_per_request, (spans, count, spans_per_request)
    mean_bytes = sum(map(len, raw)) / spans
    return Workload(
        raw, offsets, session_offsets, spans_per_request, mean_bytes, attributes / spans, untuned
    )


def _occurrences(body: bytes, needle: bytes) -> list[int]:
    """Offsets of ``needle`` (a random 16-byte trace id: it matches nothing else) in ``body``."""
    found = []
    at = body.find(needle)
    while at >= 0:
        found.append(at)
        at = body.find(needle, at + 1)
    return found


def with_fresh_trace_ids(
    body: bytes, offsets: list[int], round_: int, session_offsets: list[int] = ()
) -> bytes:
    """``body`` for its ``round_``-th sending: the first 4 bytes of every trace id are ``round_``,
    and so are the first 4 digits of every session id (``session_offsets``) unless none are given.

    The requests are sent in turn, again and again; this keeps every stored span distinct (the
    other 12 bytes of each id are random) at the cost of one copy per request. Fresh session ids
    keep the workload realistic for the detectors: a session replaying the same calls every
    round would be a loop in every session (``--repeat-sessions`` measures that worst case).
    """
    if round_ == 0:
        return body
    buf = bytearray(body)
    stamp = round_.to_bytes(4, "big")
    for offset in offsets:
        buf[offset : offset + 4] = stamp
    digits = f"{round_ % 10_000:04d}".encode()
    for offset in session_offsets:
        buf[offset : offset + 4] = digits
    return bytes(buf)


# --- load generator (runs in its own process) -------------------------------------------------


def loadgen_process(grpc_target, bodies, offsets, spans_per_request, concurrency, args, pipe):
    """Entry point of one load-generator process; talks to the parent through ``pipe``."""
    job = _loadgen(grpc_target, bodies, offsets, spans_per_request, concurrency, args, pipe)
    asyncio.run(job)


async def _loadgen(grpc_target, bodies, offsets, spans_per_request, concurrency, args, pipe):
    """``concurrency`` senders, each with one Export call in flight at a time, until the end."""
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    options = [
        ("grpc.max_send_message_length", 64 * MIB),
        ("grpc.max_receive_message_length", 64 * MIB),
    ]
    async with grpc.aio.insecure_channel(grpc_target, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        # request_serializer=None: the pre-serialised bytes go on the wire as they are
        export = channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=None
        )
        pipe.send("ready")
        start_at, window_start, window_end = pipe.recv()
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))

        stats = {
            "acked_spans_total": 0,  # everything acknowledged (warm-up, window, drain)
            "acked_spans_window": 0,  # acknowledged inside the measured window
            "ok_requests_window": 0,
            "rejected_spans_total": 0,  # partial_success.rejected_spans
            "latencies_window": [],  # seconds, OK requests completed inside the window
            "errors_total": Counter(),  # status code name -> requests
            "errors_window": Counter(),
        }
        sequence = itertools.count()

        async def sender() -> None:
            while time.monotonic() < window_end:
                round_, i = divmod(next(sequence), len(bodies))
                trace_offsets, session_offsets = offsets[i]
                body = with_fresh_trace_ids(bodies[i], trace_offsets, round_, session_offsets)
                started = time.perf_counter()
                try:
                    response = await export(body, timeout=args.timeout)
                except grpc.aio.AioRpcError as exc:
                    name = exc.code().name
                    stats["errors_total"][name] += 1
                    if window_start <= time.monotonic() <= window_end:
                        stats["errors_window"][name] += 1
                    await asyncio.sleep(args.backoff)
                    continue
                latency = time.perf_counter() - started
                rejected = ExportTraceServiceResponse.FromString(
                    response
                ).partial_success.rejected_spans
                acked = spans_per_request - rejected
                stats["acked_spans_total"] += acked
                stats["rejected_spans_total"] += rejected
                if window_start <= time.monotonic() <= window_end:
                    stats["acked_spans_window"] += acked
                    stats["ok_requests_window"] += 1
                    stats["latencies_window"].append(latency)

        await asyncio.gather(*(sender() for _ in range(concurrency)))
    stats["errors_total"] = dict(stats["errors_total"])
    stats["errors_window"] = dict(stats["errors_window"])
    pipe.send(stats)


# --- the collector under test -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PORT_NAMES = ("otlp_grpc", "otlp_http", "sql", "api")


class CollectorProcess:
    """``agentwatch serve`` in a subprocess, with helpers to query and measure it."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        config: str | None = None,
        ports: dict[str, int] | None = None,
    ) -> None:
        # ``ports``: a restart on the ports of a collector that was stopped (or killed)
        self.ports = dict(ports) if ports else {name: free_port() for name in _PORT_NAMES}
        while len(set(self.ports.values())) < 4:
            self.ports = {name: free_port() for name in self.ports}
        self.api_url = f"http://127.0.0.1:{self.ports['api']}"
        self.grpc_target = f"127.0.0.1:{self.ports['otlp_grpc']}"
        # the console script next to this interpreter is what `pip install` gives a user
        exe = Path(sys.executable).parent / "agentwatch"
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "agentwatch.cli.main"]
        command += ["serve", "--data-dir", str(data_dir)]
        if config:
            command += ["--config", config]
        command += [f"--{name.replace('_', '-')}-port={port}" for name, port in self.ports.items()]
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.log_path = log_path
        self.popen = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.process = psutil.Process(self.popen.pid)
        self.peak_rss = 0
        self.window_peak_rss = 0
        self.in_window = False
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample_rss, name="rss-sampler", daemon=True)
        self._sampler.start()

    def _sample_rss(self) -> None:
        while self._sampling:
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            for child in self.processes()[1:]:  # the detection process counts too
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            if self.in_window:
                self.window_peak_rss = max(self.window_peak_rss, rss)
            time.sleep(0.1)

    def wait_healthy(self, timeout: float) -> float:
        """Seconds until ``/healthz`` answered 200."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"collector exited with {self.popen.returncode}; see {self.log_path}"
                )
            try:
                if requests.get(self.api_url + "/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"collector not healthy after {timeout} s; see {self.log_path}")

    def sql(self, query: str) -> list[dict]:
        response = requests.post(
            self.api_url + "/v1/sql", json={"query": query, "format": "json"}, timeout=120
        )
        response.raise_for_status()
        return response.json()["data"]

    def span_count(self) -> int:
        return int(self.sql("SELECT count() AS n FROM otel_traces")[0]["n"])

    def store_stats(self) -> dict[str, float]:
        """chDB's own view: memory it tracks, active parts and disk bytes of otel_traces."""
        memory = self.sql("SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'")
        parts = self.sql(
            "SELECT count() AS parts, sum(rows) AS rows, sum(bytes_on_disk) AS disk"
            " FROM system.parts WHERE table = 'otel_traces' AND active"
        )[0]
        return {
            "memory_tracked_mb": int(memory[0]["value"]) / MIB if memory else float("nan"),
            "active_parts": int(parts["parts"]),
            "disk_bytes_per_span": int(parts["disk"]) / max(1, int(parts["rows"])),
        }

    def distinct_span_count(self) -> int:
        """Distinct (TraceId, SpanId) pairs, hashed to 64 bits so the check holds ~16 B per row
        rather than both strings (a collision among a few million rows: ~1e-7)."""
        sql = "SELECT uniqExact(cityHash64(TraceId, SpanId)) AS n FROM otel_traces"
        return int(self.sql(sql)[0]["n"])

    def metrics(self) -> dict[str, float]:
        """``/metrics`` samples as {'name{labels}': value}."""
        text = requests.get(self.api_url + "/metrics", timeout=30).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def processes(self) -> list[psutil.Process]:
        """The collector and its children (the detection process, ``analyzer.worker``)."""
        try:
            return [self.process, *self.process.children(recursive=True)]
        except psutil.Error:
            return [self.process]

    def cpu_seconds(self) -> float:
        # every thread of the collector and of its detection process, user + system
        return _processes_cpu(self.processes())

    def thread_cpu(self) -> dict[int, tuple[str, float]]:
        """tid -> (thread name from /proc, user+system CPU seconds)."""
        out = {}
        for t in self.process.threads():
            try:
                name = Path(f"/proc/{self.process.pid}/task/{t.id}/comm").read_text().strip()
            except OSError:
                continue
            out[t.id] = (name, t.user_time + t.system_time)
        return out

    def memory_status(self) -> dict[str, float]:
        """VmHWM (peak RSS as the kernel recorded it), VmRSS, RssAnon, RssFile in MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        fields = dict(re.findall(r"^(VmHWM|VmRSS|RssAnon|RssFile):\s+(\d+) kB", status, re.M))
        return {key: int(kb) / 1024 for key, kb in fields.items()}

    def stop(self, timeout: float = 60) -> float:
        """SIGTERM (commits what was accepted), then wait; returns the seconds it took."""
        self._sampling = False
        started = time.monotonic()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()
        return time.monotonic() - started


# --- profile ----------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")

#: Pipeline stages, recognised by the innermost frame of a stack whose function is listed here.
STAGES = {
    "EmbeddedStore.insert_blocks": "chDB INSERT (store thread)",
    "EmbeddedStore.query": "chDB query (store thread)",
    "SpanBatch.to_json": "JSONColumns block (orjson.dumps)",
    "decode_protobuf": "protobuf decode (upb FromString)",
    "Normalizer.normalize": "normalise: attributes, rows, columns",
    "Normalizer._agent_fields": "normalise: agent fields",
    "_inherit_along_trace": "normalise: inherit session along trace",
    "Pipeline.export": "pipeline (metrics, dispatch)",
    "GrpcReceiver._export": "gRPC handler (response, metrics)",
    "GroupCommitWriter._run": "group-commit writer loop",
}


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path


def _parse_frame(frame: str) -> tuple[str, str, str]:
    match = _FRAME.match(frame)
    if not match:
        return frame, "", ""
    return match["func"], _short_path(match["file"]), match["line"] or ""


@dataclass
class Profile:
    samples: int = 0
    rate: int = 100
    self_by_function: Counter = field(default_factory=Counter)
    total_by_function: Counter = field(default_factory=Counter)
    self_by_line: Counter = field(default_factory=Counter)
    by_stage: Counter = field(default_factory=Counter)
    by_thread: Counter = field(default_factory=Counter)


def parse_pyspy_raw(path: Path, rate: int) -> Profile:
    """Aggregate py-spy's raw (collapsed-stack) output: ``thread (tid);frame;...;frame count``."""
    profile = Profile(rate=rate)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames.pop(0) if frames[0].startswith("thread (") else "?"
        parsed = [_parse_frame(f) for f in frames]
        if not parsed:
            continue
        profile.samples += n
        profile.by_thread[thread] += n
        func, file, line_no = parsed[-1]
        profile.self_by_function[f"{func} ({file})"] += n
        profile.self_by_line[f"{func} ({file}:{line_no})"] += n
        for key in {f"{f} ({p})" for f, p, _ in parsed}:
            profile.total_by_function[key] += n
        stage = next((STAGES[f] for f, _, _ in reversed(parsed) if f in STAGES), None)
        profile.by_stage[stage or "event loop, gRPC and other"] += n
    return profile


def start_pyspy(pid: int, duration: float, args: argparse.Namespace, out: Path) -> subprocess.Popen:
    """``py-spy record`` in raw (collapsed-stack) format, one root frame per thread.

    Non-blocking (the collector is not paused to take a sample): less overhead, and py-spy's
    idle detection then leaves out threads that wait in native code (gRPC's poller, the store
    thread while chDB works on its own threads). ``--gil`` keeps only the thread holding the GIL.
    """
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [exe, "record", "-p", str(pid), "--duration", str(int(round(duration)))]
    command += ["--rate", str(args.profile_rate), "--format", "raw", "--threads", "-o", str(out)]
    command.append("--nonblocking")
    if args.profile_gil:
        command.append("--gil")
    if args.profile_native:
        command.append("--native")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


# --- the run ----------------------------------------------------------------------------------


def code_revision() -> str:
    """The commit under test, plus uncommitted changes to the collector's code or schemas."""
    root = Path(__file__).resolve().parents[1]

    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True)
        return done.stdout.rstrip("\n") if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "collector", "schemas").splitlines()
    return f"{commit} + uncommitted: {', '.join(c[3:] for c in changed)}" if changed else commit


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _processes_cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def _wait_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def run(args: argparse.Namespace) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="agentwatch-bench-"))
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    log_path = results_dir / "collector.log"
    revision = code_revision()
    print(f"starting agentwatch serve at {revision} (data dir {data_dir}) ...", flush=True)
    collector = CollectorProcess(data_dir, log_path, args.collector_config)
    loadgens: list[mp.Process] = []
    try:
        startup_s = collector.wait_healthy(args.startup_timeout)
        idle_memory = collector.memory_status()
        print(f"collector healthy (pid {collector.popen.pid}, ports {collector.ports})", flush=True)
        started = time.monotonic()
        workload = build_workload(args.distinct_requests, args.spans_per_request, args.span_bytes)
        w = workload
        print(
            f"workload: {len(w.requests)} distinct requests x {w.spans_per_request} spans,"
            f" {w.bytes_per_span:.0f} B/span (workload.py gave {w.untuned_bytes_per_span:.0f}),"
            f" {w.attributes_per_span:.2f} attributes/span;"
            f" built in {time.monotonic() - started:.1f} s",
            flush=True,
        )

        # Each load generator gets its own slice of the requests, so no span is sent twice at once.
        ctx = mp.get_context("spawn")  # no gRPC state crosses a fork
        pipes = []
        for worker in range(args.processes):
            share, extra = divmod(args.concurrency, args.processes)
            concurrency = share + (worker < extra)
            bodies = workload.requests[worker :: args.processes]
            sessions = workload.session_offsets[worker :: args.processes]
            offsets = [
                (trace_ids, () if args.repeat_sessions else session_ids)
                for trace_ids, session_ids in zip(
                    workload.trace_id_offsets[worker :: args.processes], sessions, strict=True
                )
            ]
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(
                target=loadgen_process,
                args=(
                    collector.grpc_target,
                    bodies,
                    offsets,
                    workload.spans_per_request,
                    concurrency,
                    args,
                    child_end,
                ),
                name=f"loadgen-{worker}",
            )
            p.start()
            loadgens.append(p)
            pipes.append(parent_end)
        for pipe in pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise RuntimeError("a load generator did not get ready")
        start_at = time.monotonic() + 0.2
        window_start = start_at + args.warmup
        window_end = window_start + args.duration
        for pipe in pipes:
            pipe.send((start_at, window_start, window_end))
        loadgen_ps = [psutil.Process(p.pid) for p in loadgens]
        print(f"load: {args.warmup:g} s warm-up, then {args.duration:g} s measured ...", flush=True)

        _wait_until(window_start)
        pyspy = None
        profile_path = results_dir / "profile.raw.txt"
        if args.profile:
            pyspy = start_pyspy(collector.popen.pid, args.duration, args, profile_path)
        t0 = time.monotonic()
        cpu0, lg_cpu0 = collector.cpu_seconds(), _processes_cpu(loadgen_ps)
        detection_cpu0 = _processes_cpu(collector.processes()[1:])
        machine0 = psutil.cpu_times()
        threads0 = collector.thread_cpu()
        metrics0 = collector.metrics()
        count0, count0_at = collector.span_count(), time.monotonic()
        collector.in_window = True

        _wait_until(window_end)
        t1 = time.monotonic()
        cpu1, lg_cpu1 = collector.cpu_seconds(), _processes_cpu(loadgen_ps)
        detection_cpu1 = _processes_cpu(collector.processes()[1:])
        machine1 = psutil.cpu_times()
        threads1 = collector.thread_cpu()
        collector.in_window = False
        metrics1 = collector.metrics()
        store_at_end = collector.store_stats()
        count1, count1_at = collector.span_count(), time.monotonic()

        stats = []
        for pipe in pipes:  # each sends its stats once its last calls have returned
            if not pipe.poll(args.timeout + 60):
                raise RuntimeError("a load generator did not report")
            stats.append(pipe.recv())
        for p in loadgens:
            p.join(30)
        pyspy_output = ""
        if pyspy:
            pyspy_output = pyspy.communicate(timeout=120)[0].decode(errors="replace").strip()
        committed_total = collector.span_count()
        # Memory under load ends here: the duplicate check below is the benchmark's own query
        # (an aggregation over every stored row), not ingest, and is reported apart.
        end_memory = collector.memory_status()
        sampled_peak = collector.peak_rss
        window_peak = collector.window_peak_rss
        distinct_total = collector.distinct_span_count()
        after_checks_memory = collector.memory_status()
        peak_with_checks = max(collector.peak_rss / MIB, after_checks_memory["VmHWM"])
    finally:
        for p in loadgens:
            if p.is_alive():
                p.terminate()
        shutdown_s = collector.stop()
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)

    window = t1 - t0
    acked_window = sum(s["acked_spans_window"] for s in stats)
    acked_total = sum(s["acked_spans_total"] for s in stats)
    committed_window = count1 - count0
    latencies = [x for s in stats for x in s["latencies_window"]]
    errors_total: Counter = Counter()
    errors_window: Counter = Counter()
    for s in stats:
        errors_total.update(s["errors_total"])
        errors_window.update(s["errors_window"])
    refused_window = sum(errors_window[c] for c in REFUSED_CODES)
    refused_total = sum(errors_total[c] for c in REFUSED_CODES)
    collector_cpu = cpu1 - cpu0
    loadgen_cpu = lg_cpu1 - lg_cpu0

    # The whole machine over the window, in cores: was it saturated, and by whom?
    def cores(name: str) -> float:
        return (getattr(machine1, name, 0.0) - getattr(machine0, name, 0.0)) / window

    all_fields = [f for f in machine1._fields if f not in ("guest", "guest_nice")]  # in user
    idle = cores("idle") + cores("iowait")
    busy = sum(cores(f) for f in all_fields) - idle
    machine = {
        "busy": busy,
        "idle": idle,
        "steal": cores("steal"),  # counted as busy: the hypervisor gave the CPU to someone else
        "other_processes": busy - cores("steal") - (collector_cpu + loadgen_cpu) / window,
    }

    def metric_delta(name: str) -> float:
        return metrics1.get(name, 0.0) - metrics0.get(name, 0.0)

    inserts = metric_delta("agentwatch_store_insert_seconds_count")
    insert_seconds = metric_delta("agentwatch_store_insert_seconds_sum")
    insert_spans = metric_delta("agentwatch_store_insert_spans_sum")

    threads = defaultdict(float)  # thread group -> CPU seconds in the window
    main_thread_name = threads1.get(collector.popen.pid, ("", 0.0))[0]
    for tid, (name, cpu) in threads1.items():
        before = threads0.get(tid, (name, 0.0))[1]
        if tid == collector.popen.pid:
            group = "main thread (asyncio loop)"
        elif name == main_thread_name:  # Python threads keep the process's name; chDB names its own
            group = "other Python threads (store executor)"
        else:
            group = re.sub(r"\d+$", "", name)
        threads[group] += cpu - before

    result = {
        "config": {
            "concurrency": args.concurrency,
            "processes": args.processes,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "spans_per_request": workload.spans_per_request,
            "distinct_requests": len(workload.requests),
            "profile": args.profile,
            "collector_config": args.collector_config,
            "code": revision,
        },
        "workload": {
            "bytes_per_span": round(workload.bytes_per_span, 1),
            "attributes_per_span": round(workload.attributes_per_span, 2),
            "untuned_bytes_per_span": round(workload.untuned_bytes_per_span, 1),
            "request_bytes": round(workload.bytes_per_span * workload.spans_per_request),
        },
        "window_s": round(window, 3),
        "acked_spans_per_s": acked_window / window,
        "committed_spans_per_s": committed_window / (count1_at - count0_at),
        "acked_spans_total": acked_total,
        "committed_spans_total": committed_total,
        "committed_equals_acked": committed_total == acked_total,
        "duplicate_spans": committed_total - distinct_total,
        "rejected_spans_total": sum(s["rejected_spans_total"] for s in stats),
        "collector_cpu_s": collector_cpu,
        "collector_cores": collector_cpu / window,
        "collector_cpu_s_per_1k_spans": 1000 * collector_cpu / max(1, committed_window),
        "detection_process_cpu_s_per_1k_spans": 1000
        * (detection_cpu1 - detection_cpu0)
        / max(1, committed_window),
        "loadgen_cpu_s": loadgen_cpu,
        "loadgen_cores": loadgen_cpu / window,
        "loadgen_cpu_s_per_1k_spans": 1000 * loadgen_cpu / max(1, acked_window),
        "peak_rss_mb_sampled": sampled_peak / MIB,
        "peak_rss_mb_window": window_peak / MIB,
        "peak_rss_mb_vmhwm": end_memory["VmHWM"],
        "peak_rss_mb_with_checks": peak_with_checks,
        "idle_rss_mb": idle_memory["VmRSS"],
        "idle_rss_anon_file_mb": (idle_memory["RssAnon"], idle_memory["RssFile"]),
        "end_rss_anon_file_mb": (end_memory["RssAnon"], end_memory["RssFile"]),
        "ok_requests_window": sum(s["ok_requests_window"] for s in stats),
        "latency_ms_p50": 1000 * percentile(latencies, 50),
        "latency_ms_p99": 1000 * percentile(latencies, 99),
        "latency_ms_max": 1000 * max(latencies, default=float("nan")),
        "refused_requests_window": refused_window,
        "refused_requests_total": refused_total,
        "errors_total": dict(errors_total),
        "inserts_window": inserts,
        "spans_per_insert": insert_spans / inserts if inserts else 0.0,
        "insert_ms_mean": 1000 * insert_seconds / inserts if inserts else 0.0,
        "store_thread_busy": insert_seconds / window,
        "chdb_memory_tracked_mb_window_end": store_at_end["memory_tracked_mb"],
        "active_parts_window_end": store_at_end["active_parts"],
        "disk_bytes_per_span": store_at_end["disk_bytes_per_span"],
        "machine_cores": {k: round(v, 3) for k, v in machine.items()},
        "thread_cpu_s": {k: round(v, 3) for k, v in sorted(threads.items(), key=lambda kv: -kv[1])},
        "startup_s": startup_s,
        "shutdown_s": shutdown_s,
    }
    if args.profile:
        result["pyspy"] = pyspy_output.splitlines()[-1:] if pyspy_output else []
        if profile_path.exists() and profile_path.stat().st_size:
            result["profile"] = parse_pyspy_raw(profile_path, args.profile_rate)
        else:
            print(f"py-spy produced no profile:\n{pyspy_output}", file=sys.stderr)
    return result


# --- report -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_report(r: dict, top: int) -> None:
    c, w = r["config"], r["workload"]
    print()
    print(
        f"agentwatch ingest benchmark: {r['window_s']:.1f} s measured after"
        f" {c['warmup_s']:g} s warm-up, concurrency {c['concurrency']}"
        f" ({c['processes']} load-generator process(es)), {os.cpu_count()} CPUs"
    )
    print(f"code: {c['code']}; collector config: {c['collector_config'] or 'defaults'}")
    print(
        f"workload: {c['distinct_requests']} distinct requests x {c['spans_per_request']} spans"
        f" ({w['request_bytes'] / 1024:.0f} KiB each), {w['bytes_per_span']:.0f} B/span,"
        f" {w['attributes_per_span']:.2f} attributes/span"
    )
    committed = r["committed_spans_per_s"]
    peak_rss = max(r["peak_rss_mb_sampled"], r["peak_rss_mb_vmhwm"])
    other_errors = {k: v for k, v in r["errors_total"].items() if k not in REFUSED_CODES}
    rows = [
        ("acknowledged spans/s", f"{r['acked_spans_per_s']:,.0f}", ""),
        (
            "committed spans/s (count() delta)",
            f"{r['committed_spans_per_s']:,.0f}",
            f">= {BAR_COMMITTED_SPANS_PER_S:,}  {verdict(committed >= BAR_COMMITTED_SPANS_PER_S)}",
        ),
        (
            "committed total vs acknowledged total",
            f"{r['committed_spans_total']:,} vs {r['acked_spans_total']:,}",
            "equal  " + ("OK" if r["committed_equals_acked"] else "MISMATCH"),
        ),
        ("  vs Arize Phoenix (~90 spans/s)", f"x{committed / PHOENIX_SPANS_PER_S:,.0f}", ""),
        (
            "collector CPU-s per 1k spans",
            f"{r['collector_cpu_s_per_1k_spans']:.4f}",
            f"({r['collector_cores']:.2f} cores busy)",
        ),
        (
            "  of which the detection process",
            f"{r['detection_process_cpu_s_per_1k_spans']:.4f}",
            "",
        ),
        (
            "load generator CPU-s per 1k spans",
            f"{r['loadgen_cpu_s_per_1k_spans']:.4f}",
            f"({r['loadgen_cores']:.2f} cores busy)",
        ),
        (
            "collector peak RSS under load, with its detection process (100 ms samples)",
            f"{r['peak_rss_mb_sampled']:.0f} MB",
            f"<= {BAR_PEAK_RSS_MB} MB  {verdict(peak_rss <= BAR_PEAK_RSS_MB)}",
        ),
        ("collector process alone, peak RSS (VmHWM)", f"{r['peak_rss_mb_vmhwm']:.0f} MB", ""),
        (
            "  then during the benchmark's duplicate check",
            f"{r['peak_rss_mb_with_checks']:.0f} MB",
            "(its own query over every row; not the bar)",
        ),
        (
            "collector RSS idle after start",
            f"{r['idle_rss_mb']:.0f} MB",
            "anon {:.0f} + file {:.0f} MB; after the load: anon {:.0f} + file {:.0f} MB".format(
                *r["idle_rss_anon_file_mb"], *r["end_rss_anon_file_mb"]
            ),
        ),
        (
            "request latency p50 / p99",
            f"{r['latency_ms_p50']:.0f} / {r['latency_ms_p99']:.0f} ms",
            f"(max {r['latency_ms_max']:.0f} ms)",
        ),
        ("OK requests in window", f"{r['ok_requests_window']:,}", ""),
        (
            "refused (retryable) requests",
            f"{r['refused_requests_window']} in window, {r['refused_requests_total']} in all",
            "",
        ),
        ("other errors", str(other_errors or 0), ""),
        ("rejected spans (partial success)", f"{r['rejected_spans_total']:,}", ""),
        ("duplicate (TraceId, SpanId) rows", f"{r['duplicate_spans']:,}", ""),
        (
            "group commits in window",
            f"{r['inserts_window']:.0f} x {r['spans_per_insert']:,.0f} spans",
            f"mean {r['insert_ms_mean']:.0f} ms;"
            f" store thread busy {100 * r['store_thread_busy']:.0f}%",
        ),
        (
            "chDB at the window's end",
            f"{r['chdb_memory_tracked_mb_window_end']:.0f} MB tracked",
            f"{r['active_parts_window_end']} active parts;"
            f" {r['disk_bytes_per_span']:.0f} B/span on disk",
        ),
        (
            f"machine CPU in window ({os.cpu_count()} cores)",
            f"{r['machine_cores']['busy']:.2f} cores busy",
            f"idle {r['machine_cores']['idle']:.2f}, steal {r['machine_cores']['steal']:.2f},"
            f" other processes (incl. this script) {r['machine_cores']['other_processes']:.2f}",
        ),
        ("collector startup / shutdown", f"{r['startup_s']:.1f} s / {r['shutdown_s']:.1f} s", ""),
    ]
    width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    print()
    print(f"{'metric':<{width}}  {'result':>{value_width}}  bar / note")
    print("-" * (width + value_width + 30))
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {note}")

    print()
    print("collector CPU by thread in the window (from /proc; main thread = the asyncio loop)")
    total = sum(r["thread_cpu_s"].values()) or 1.0
    for name, cpu in list(r["thread_cpu_s"].items())[:10]:
        if cpu > 0.005:
            print(f"  {name:<40} {cpu:7.2f} CPU-s  {100 * cpu / total:5.1f}%")

    profile: Profile | None = r.get("profile")
    if profile is None:
        return
    seconds = profile.samples / profile.rate
    print()
    print(
        f"py-spy profile of the collector: {profile.samples:,} samples at {profile.rate} Hz"
        f" (~{seconds:.1f} s on Python threads; idle threads not sampled)"
    )
    print("samples by thread:")
    for thread, n in profile.by_thread.most_common():
        print(f"  {thread:<42} {100 * n / profile.samples:5.1f}%  (~{n / profile.rate:.1f} s)")
    print("by pipeline stage (innermost recognised frame):")
    for stage, n in profile.by_stage.most_common():
        print(f"  {stage:<42} {100 * n / profile.samples:5.1f}%")
    print(f"top {top} functions by own time:")
    print(f"  {'own':>6} {'total':>6}  function")
    for key, n in profile.self_by_function.most_common(top):
        total_share = profile.total_by_function[key] / profile.samples
        print(f"  {100 * n / profile.samples:5.1f}% {100 * total_share:5.1f}%  {key}")
    print(f"top {top} lines by own time (native calls are charged to the line that makes them):")
    for key, n in profile.self_by_line.most_common(top):
        print(f"  {100 * n / profile.samples:5.1f}%  {key}")


def _json_ready(r: dict, top: int) -> dict:
    out = dict(r)
    profile: Profile | None = out.pop("profile", None)
    if profile is not None:
        share = lambda n: round(100 * n / profile.samples, 2)  # noqa: E731
        out["profile"] = {
            "samples": profile.samples,
            "rate_hz": profile.rate,
            "by_stage_pct": {k: share(n) for k, n in profile.by_stage.most_common()},
            "top_functions_own_pct": {
                k: share(n) for k, n in profile.self_by_function.most_common(top)
            },
            "top_lines_own_pct": {k: share(n) for k, n in profile.self_by_line.most_common(top)},
        }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description="End-to-end OTLP/gRPC ingest benchmark of `agentwatch serve` (embedded chDB).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--duration", type=float, default=30.0, help="measured seconds")
    add("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    add("--concurrency", type=int, default=16, help="in-flight Export calls in total")
    add("--processes", type=int, default=1, help="load-generator processes")
    add("--spans-per-request", type=int, default=512, help="spans per Export request")
    add(
        "--repeat-sessions",
        action="store_true",
        help="resend the same session ids every round (each session then replays its tool calls:"
        " a loop in every session, the detectors' worst case)",
    )
    add("--distinct-requests", type=int, default=96, help="pre-serialised requests, sent in turn")
    add(
        "--span-bytes",
        type=int,
        default=970,
        help="grow tool results to this mean span size on the wire (0: as workload.py makes them)",
    )
    add("--collector-config", help="YAML config for `agentwatch serve --config` (e.g. batch sizes)")
    add("--timeout", type=float, default=30.0, help="deadline of one Export call (s)")
    add("--backoff", type=float, default=0.5, help="pause of a sender after a refused call (s)")
    add("--startup-timeout", type=float, default=120.0, help="seconds to wait for /healthz")
    add("--profile", action="store_true", help="profile the collector with py-spy")
    add("--profile-rate", type=int, default=100, help="py-spy samples per second")
    add("--profile-native", action="store_true", help="py-spy --native (C/C++ frames too)")
    add("--profile-gil", action="store_true", help="py-spy --gil (only the thread holding the GIL)")
    add("--top", type=int, default=15, help="profile lines to print")
    add("--results-dir", default="bench/results", help="for the collector log and raw profile")
    add("--json-out", help="also write the results as JSON to this file")
    add("--keep-data", action="store_true", help="keep the collector's temporary data dir")
    args = parser.parse_args(argv)
    if args.concurrency < args.processes or args.processes < 1:
        parser.error("need 1 <= --processes <= --concurrency")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the collector subprocess is stopped and its data removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result = run(args)
    print_report(result, args.top)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(_json_ready(result, args.top), indent=2) + "\n")
        print(f"\nwrote {args.json_out}")
    ok = (
        result["committed_equals_acked"]
        and result["committed_spans_per_s"] >= BAR_COMMITTED_SPANS_PER_S
        and max(result["peak_rss_mb_sampled"], result["peak_rss_mb_vmhwm"]) <= BAR_PEAK_RSS_MB
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
