"""Adversarial runs against a real ``agentwatch serve``: the long part of issue 11's suite.

    python -m bench.adversarial                          # every scenario, ~3 min on 2 cores
    python -m bench.adversarial --scenarios kill9 --kill-rounds 5
    python -m bench.adversarial --scenarios huge --rss-ceiling-mb 1000

Each scenario starts the collector as a user would (``bench.ingest.CollectorProcess``: a
subprocess on free ports, a fresh data directory), attacks it, and prints one PASS/FAIL line
against a promise of the README's "Reliability and security" section, with the figures:

- ``kill9``: OTLP/gRPC exporters keep many requests in flight while the collector is killed with
  SIGKILL and restarted on the same data directory, several times; they retry refused and failed
  requests with the same bytes, as the OpenTelemetry SDK does. Every span acknowledged to an
  exporter must be stored. Spans stored twice are counted apart: a request whose
  acknowledgement was lost in the kill is sent again, and after a restart the collector cannot
  know that it was committed (the README states this limit).
- ``huge``: 12 exporters each send requests at the size limit (75k small spans, ~3.9 MiB) at once,
  The collector with its detection process must stay under an RSS ceiling, refuse what it cannot
  take with a retryable status, and store exactly what it acknowledged.
- ``bomb``: gzip and deflate bodies that expand far past ``max_recv_msg_size_mib`` (413, little
  RSS growth), then a few hundred malformed requests at the OTLP ports (never a 5xx) mixed with
  valid ones, which must all be stored.
- ``pager``: a webhook receiver is down while incidents open, comes back, and the collector is
  killed while the pages are in flight; after the restart every incident is paged, and each
  repeat carries the ``Idempotency-Key`` of the lost attempt.

Everything listens and connects on 127.0.0.1 only. Every wait has a deadline, so a hung collector
makes a scenario FAIL instead of hanging the script. Logs go to ``bench/results/adversarial/``.
The exit status is 0 only when every scenario run passed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
import yaml
from aiohttp import web

from bench.detect_latency import probe_request
from bench.ingest import (
    EXPORT_METHOD,
    MIB,
    REFUSED_CODES,
    CollectorProcess,
    build_workload,
    code_revision,
    with_fresh_trace_ids,
)
from bench.workload import _kv, make_request
from tests.fake_pagers import FakeReceiver

LOOPBACK = "127.0.0.1"  # the only address this script binds or connects to
PROTOBUF = "application/x-protobuf"
SCENARIOS = ("kill9", "huge", "bomb", "pager")
# The codes the OpenTelemetry SDK's gRPC exporter retries (opentelemetry-exporter-otlp-proto-grpc).
SDK_RETRYABLE = frozenset(
    {
        "CANCELLED",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNAVAILABLE",
        "DATA_LOSS",
    }
)
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 * MIB),
    ("grpc.max_receive_message_length", 64 * MIB),
    # reconnect soon after a restart (gRPC's default backoff grows to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass
class Result:
    scenario: str
    promise: str
    passed: bool
    figures: list[str] = field(default_factory=list)


# --- the collector under test -----------------------------------------------------------------


class Run:
    """Where a scenario's collectors keep their data, configs and logs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="agentwatch-adversarial-"))
        self.logs = Path(args.results_dir)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.startup_timeout = args.startup_timeout
        self.starts = Counter()

    def start(self, name: str, settings: dict, ports: dict | None = None) -> CollectorProcess:
        """``agentwatch serve`` on loopback with ``settings`` as its YAML config, once healthy.
        The same ``name`` reuses the data directory (a restart); ``ports`` keeps the endpoints."""
        config = self.tmp / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"listen": LOOPBACK, **settings}))
        n = self.starts[name]
        self.starts[name] += 1
        log = self.logs / (f"{name}.log" if n == 0 else f"{name}.restart{n}.log")
        collector = CollectorProcess(self.tmp / name, log, str(config), ports=ports)
        try:
            collector.wait_healthy(self.startup_timeout)
        except BaseException:  # SIGTERM and Ctrl-C too: never leave a collector behind
            collector.stop()
            raise
        return collector

    def close(self, keep: bool) -> None:
        if keep:
            print(f"data kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def kill9(collector: CollectorProcess) -> int:
    """SIGKILL the collector process alone, as the OOM killer would. Returns how many of its
    children (the detection process) were still alive 5 s later; those are killed then."""
    children = collector.processes()[1:]
    collector.popen.send_signal(signal.SIGKILL)
    collector.popen.wait()
    collector.stop()  # the process is gone: this only closes its log
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        child.kill()
    return len(alive)


class RssSampler:
    """Peak RSS of the collector and of its children (the detection process), every 100 ms."""

    def __init__(self, collector: CollectorProcess) -> None:
        self.collector = collector
        self.peak = {"collector": 0, "children": 0, "total": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            collector, *children = self.collector.processes()
            now = {"collector": _rss(collector), "children": sum(map(_rss, children))}
            now["total"] = now["collector"] + now["children"]
            for key, value in now.items():
                self.peak[key] = max(self.peak[key], value)
            self._stop.wait(0.1)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mb(self, key: str) -> float:
        return self.peak[key] / MIB


def rss_mb(collector: CollectorProcess) -> float:
    return sum(_rss(p) for p in collector.processes()) / MIB


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def sql_rows(collector: CollectorProcess, query: str):
    """The rows of a query on the SQL port (TabSeparated), streamed: there may be millions."""
    url = f"http://{LOOPBACK}:{collector.ports['sql']}/"
    with requests.post(url, data=query + " FORMAT TabSeparated", stream=True, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line:
                yield line.split(b"\t")


def retry_delay_s(exc, default: float) -> float:
    """The RetryInfo delay the collector sent with a refusal, as the SDK reads it."""
    from google.rpc import error_details_pb2

    for key, value in exc.trailing_metadata() or ():
        if key == "google.rpc.retryinfo-bin":
            delay = error_details_pb2.RetryInfo.FromString(value).retry_delay
            return delay.seconds + delay.nanos / 1e9
    return default


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- 1. kill -9 under load ----------------------------------------------------------------------


def exporters_process(target, bodies, offsets, concurrency, timeout, stop, give_up, pipe):
    """Entry point of the exporters' process (spawned: no gRPC state crosses a fork)."""
    asyncio.run(_exporters(target, bodies, offsets, concurrency, timeout, stop, give_up, pipe))


async def _exporters(target, bodies, offsets, concurrency, timeout, stop, give_up, pipe):
    """``concurrency`` exporters, one request in flight each, until ``stop``. A request refused or
    failed with a code the SDK retries is sent again with the same bytes (the SDK's backoff, capped
    at 4 s) until it is acknowledged or ``give_up`` is set. Reports each acknowledged request as
    (pass, request index, attempts)."""
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    acked, errors, counts = [], Counter(), Counter()  # counts: gave_up, rejected spans
    sequence = itertools.count()
    async with grpc.aio.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        export = channel.unary_unary(EXPORT_METHOD, request_serializer=None)
        await asyncio.wait_for(channel.channel_ready(), 30)
        pipe.send("ready")

        async def exporter() -> None:
            while not stop.is_set():
                round_, i = divmod(next(sequence), len(bodies))
                trace_offsets, session_offsets = offsets[i]
                body = with_fresh_trace_ids(bodies[i], trace_offsets, round_, session_offsets)
                for attempt in itertools.count(1):
                    try:
                        response = await export(body, timeout=timeout)
                    except grpc.aio.AioRpcError as exc:
                        errors[exc.code().name] += 1
                        if exc.code().name not in SDK_RETRYABLE or give_up.is_set():
                            counts["gave_up"] += 1
                            break
                        backoff = min(4.0, 2 ** (attempt - 1) * random.uniform(0.8, 1.2))
                        await asyncio.sleep(retry_delay_s(exc, backoff))
                        continue
                    answer = ExportTraceServiceResponse.FromString(response)
                    counts["rejected"] += answer.partial_success.rejected_spans
                    acked.append((round_, i, attempt))
                    break

        await asyncio.gather(*(exporter() for _ in range(concurrency)))
    pipe.send({"acked": acked, "errors": dict(errors), **counts})


def span_keys(body: bytes) -> list[tuple[bytes, bytes]]:
    """(trace id, span id) of every span of a request."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest.FromString(body)
    return [
        (s.trace_id, s.span_id)
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]


def stamped_trace(trace_id: bytes, round_: int) -> bytes:
    """The trace id as ``with_fresh_trace_ids`` sends it on pass ``round_``."""
    return trace_id if round_ == 0 else round_.to_bytes(4, "big") + trace_id[4:]


def scenario_kill9(args: argparse.Namespace, run: Run) -> Result:
    """Kill -9 under load: does every acknowledged span survive, and how many are stored twice?"""
    promise = "every span acknowledged to an exporter is stored, through kill -9 and restart"
    rnd = random.Random(args.seed)
    workload = build_workload(args.kill_distinct_requests, 512, span_bytes=0)
    keys = [span_keys(body) for body in workload.requests]
    offsets = list(zip(workload.trace_id_offsets, workload.session_offsets, strict=True))
    # the check below reads every stored (TraceId, SpanId): let that result be large
    settings = {"sql_max_result_mib": 2048, "sql_max_memory_usage_mib": 4096}
    collector = run.start("kill9", settings)
    ports = collector.ports
    ctx = mp.get_context("spawn")
    stop, give_up = ctx.Event(), ctx.Event()
    parent_end, child_end = ctx.Pipe()
    load = ctx.Process(
        target=exporters_process,
        args=(
            collector.grpc_target,
            workload.requests,
            offsets,
            args.kill_concurrency,
            args.kill_timeout,
            stop,
            give_up,
            child_end,
        ),
        name="exporters",
    )
    load.start()
    lingering, downtime = 0, []
    try:
        if not parent_end.poll(60) or parent_end.recv() != "ready":
            raise RuntimeError("the exporters did not connect")
        for round_ in range(1, args.kill_rounds + 1):
            time.sleep(rnd.uniform(args.kill_after_s / 2, args.kill_after_s))
            stored = collector.span_count()
            killed_at = time.monotonic()
            lingering += kill9(collector)
            time.sleep(0.5)  # exporters meet refused connections meanwhile
            collector = run.start("kill9", settings, ports)
            downtime.append(time.monotonic() - killed_at)
            print(
                f"  kill {round_}: SIGKILL with {stored:,} spans stored,"
                f" healthy again after {downtime[-1]:.1f} s",
                flush=True,
            )
        time.sleep(args.kill_after_s)
        stop.set()  # no new requests; the ones in flight are retried until acknowledged
        if not parent_end.poll(args.kill_drain_s):
            give_up.set()
        if not parent_end.poll(args.kill_timeout + 30):
            raise RuntimeError("the exporters did not report")
        stats = parent_end.recv()
        load.join(30)

        acked, by_trace = set(), {}
        for round_, i, attempts in stats["acked"]:
            for trace_id, span_id in keys[i]:
                trace = stamped_trace(trace_id, round_).hex().encode()
                acked.add(trace + span_id.hex().encode())
                by_trace[trace] = attempts
        acked_spans = len(acked)
        check_started = time.monotonic()
        rows = sql_rows(
            collector, "SELECT TraceId, SpanId, count() FROM otel_traces GROUP BY TraceId, SpanId"
        )
        duplicates = unacked_stored = stored_rows = 0
        duplicate_attempts = Counter()  # attempts of the requests whose spans were stored twice
        for trace, span, count in rows:
            n = int(count)
            stored_rows += n
            key = trace + span
            if key in acked:
                acked.discard(key)
            else:
                unacked_stored += 1
            if n > 1:
                duplicates += n - 1
                duplicate_attempts[by_trace.get(trace, 0)] += n - 1
        lost, check_s = len(acked), time.monotonic() - check_started
    finally:
        stop.set()
        give_up.set()
        if load.is_alive():
            load.terminate()
        collector.stop()

    explained = all(attempts > 1 for attempts in duplicate_attempts)
    errors = ", ".join(f"{k} {v}" for k, v in sorted(stats["errors"].items())) or "none"
    figures = [
        f"{args.kill_rounds} kills under {args.kill_concurrency} requests in flight; down"
        f" {min(downtime):.1f}-{max(downtime):.1f} s each (kill to healthy after the restart)",
        f"{acked_spans:,} spans acknowledged ({len(stats['acked']):,} requests), {lost:,} of them"
        f" not stored (lost); {stored_rows:,} rows stored",
        f"{duplicates:,} spans stored twice, "
        + (
            "all from requests retried after a failed attempt (an acknowledgement lost in a kill)"
            if explained
            else f"some from requests never retried: {dict(duplicate_attempts)} (a bug)"
        ),
        f"{unacked_stored:,} spans stored but never acknowledged (their exporter gave up);"
        f" {stats.get('gave_up', 0)} requests given up; failed attempts by status: {errors}",
        f"partial-success rejections {stats.get('rejected', 0)}; detection processes outliving"
        f" the kill {lingering}; acknowledged vs stored compared in {check_s:.1f} s",
    ]
    passed = lost == 0 and explained and not stats.get("rejected") and acked_spans > 0
    return Result("kill9", promise, passed, figures)


# --- 2. huge concurrent requests against an RSS ceiling -----------------------------------------

STAMP = b"000-00000000"  # a resource attribute that makes every sending distinct


def huge_request(spans: int) -> bytes:
    """One request of ``spans`` minimal spans (~55 B each on the wire, 100 per trace)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(
        [_kv("service.name", "adversarial-huge"), _kv("bench.request", STAMP.decode())]
    )
    out = rs.scope_spans.add().spans
    now = time.time_ns()
    trace_id = b""
    for n in range(spans):
        if n % 100 == 0:
            trace_id = os.urandom(16)
        out.add(
            trace_id=trace_id,
            span_id=os.urandom(8),
            name="step",
            start_time_unix_nano=now + n * 1000,
            end_time_unix_nano=now + n * 1000 + 500,
        )
    return request.SerializeToString()


def huge_clients_process(target, clients, spans, duration_s, timeout, pipe):
    asyncio.run(_huge_clients(target, clients, spans, duration_s, timeout, pipe))


async def _huge_clients(target, clients, spans, duration_s, timeout, pipe):
    """``clients`` exporters, each with its own connection and one huge request in flight, for
    ``duration_s``. A refused request is sent again (same bytes) after the RetryInfo delay."""
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    template = huge_request(spans)
    at = template.index(STAMP)
    stats = {"bytes": len(template), "acked": 0, "acked_spans": 0, "refused": 0}
    errors = Counter()
    pipe.send("ready")
    pipe.recv()  # go
    stop_at = time.monotonic() + duration_s

    async def client(number: int) -> None:
        async with grpc.aio.insecure_channel(target, options=GRPC_OPTIONS) as channel:
            export = channel.unary_unary(EXPORT_METHOD, request_serializer=None)
            for sequence in itertools.count():
                stamp = f"{number:03d}-{sequence:08d}".encode()
                body = template[:at] + stamp + template[at + len(stamp) :]
                while time.monotonic() < stop_at:
                    try:
                        response = await export(body, timeout=timeout)
                    except grpc.aio.AioRpcError as exc:
                        name = exc.code().name
                        if name in REFUSED_CODES:
                            stats["refused"] += 1
                        else:
                            errors[name] += 1
                        await asyncio.sleep(retry_delay_s(exc, 1.0))
                        continue
                    rejected = ExportTraceServiceResponse.FromString(response).partial_success
                    stats["acked"] += 1
                    stats["acked_spans"] += spans - rejected.rejected_spans
                    break
                if time.monotonic() >= stop_at:
                    return

    await asyncio.gather(*(client(n) for n in range(clients)))
    pipe.send({**stats, "errors": dict(errors)})


def scenario_huge(args: argparse.Namespace, run: Run) -> Result:
    """12 exporters × requests at the size limit at once: memory must stay bounded by what is accepted."""
    promise = (
        f"collector + detection process RSS <= {args.rss_ceiling_mb} MB under huge concurrent"
        " requests; excess refused with a retryable status; committed == acknowledged"
    )
    overrides = {}
    if args.huge_max_recv_mib is not None:
        overrides["max_recv_msg_size_mib"] = args.huge_max_recv_mib
    collector = run.start("huge", overrides)
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    clients = ctx.Process(
        target=huge_clients_process,
        args=(
            collector.grpc_target,
            args.huge_clients,
            args.huge_spans,
            args.huge_duration_s,
            args.huge_timeout,
            child_end,
        ),
        name="huge-clients",
    )
    clients.start()
    try:
        if not parent_end.poll(120) or parent_end.recv() != "ready":
            raise RuntimeError("the clients did not start")
        idle = rss_mb(collector)
        with RssSampler(collector) as rss:
            parent_end.send("go")
            if not parent_end.poll(args.huge_duration_s + args.huge_timeout + 60):
                raise RuntimeError("the clients did not report")
            stats = parent_end.recv()
        clients.join(30)
        alive = collector.popen.poll() is None
        committed = collector.span_count() if alive else -1
        vmhwm = collector.memory_status().get("VmHWM", 0.0) if alive else 0.0
    finally:
        if clients.is_alive():
            clients.terminate()
        collector.stop()

    peak = rss.mb("total")
    errors = ", ".join(f"{k} {v}" for k, v in sorted(stats["errors"].items())) or "none"
    figures = [
        f"{args.huge_clients} clients x {stats['bytes'] / MIB:.1f} MiB requests of"
        f" {args.huge_spans:,} spans for {args.huge_duration_s:g} s",
        f"peak RSS {peak:.0f} MB (collector {rss.mb('collector'):.0f} MB, VmHWM {vmhwm:.0f} MB;"
        f" detection process {rss.mb('children'):.0f} MB); idle before {idle:.0f} MB;"
        f" ceiling {args.rss_ceiling_mb} MB",
        f"requests acknowledged {stats['acked']}, refused with UNAVAILABLE/RESOURCE_EXHAUSTED"
        f" {stats['refused']}, other errors: {errors}",
        f"spans committed {committed:,} vs acknowledged {stats['acked_spans']:,}",
    ]
    passed = (
        alive
        and peak <= args.rss_ceiling_mb
        and committed == stats["acked_spans"]
        and stats["acked"] > 0
        and not stats["errors"]
    )
    return Result("huge", promise, passed, figures)


# --- 3. compression bombs and garbage at the OTLP ports -------------------------------------------


def compressed_zeros(mib: int, wbits: int) -> bytes:
    """``mib`` MiB of zeros, compressed: gzip (``wbits`` 31) or zlib/deflate (15); ~1000:1."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    chunk = bytes(MIB)
    return b"".join([compressor.compress(chunk) for _ in range(mib)] + [compressor.flush()])


def garbage_requests(count: int, seed: int) -> list[tuple[str, str, dict, bytes]]:
    """``count`` malformed OTLP/HTTP requests: (kind, content type, extra headers, body)."""
    rnd = random.Random(seed)
    valid = make_request(64, seed=seed).SerializeToString()
    json_type = "application/json"

    def truncated_gzip() -> bytes:
        gzipped = zlib.compressobj(6, zlib.DEFLATED, 31)
        whole = gzipped.compress(valid) + gzipped.flush()
        return whole[: rnd.randrange(10, len(whole) - 8)]  # cut before the gzip trailer

    def flipped() -> bytes:
        body = bytearray(valid)
        for _ in range(rnd.randint(1, 20)):
            body[rnd.randrange(len(body))] = rnd.randrange(256)
        return bytes(body)

    makers = [
        ("random bytes", PROTOBUF, {}, lambda: rnd.randbytes(rnd.randint(1, 4096))),
        ("truncated protobuf", PROTOBUF, {}, lambda: valid[: rnd.randrange(1, len(valid))]),
        ("flipped bytes", PROTOBUF, {}, flipped),
        ("varint overflow", PROTOBUF, {}, lambda: b"\x0a" + b"\xff" * rnd.randint(10, 64)),
        ("length past end", PROTOBUF, {}, lambda: b"\x0a\xff\xff\xff\x7f" + b"x" * 10),
        ("random JSON bytes", json_type, {}, lambda: rnd.randbytes(rnd.randint(1, 4096))),
        ("not JSON", json_type, {}, lambda: b'{"resourceSpans": [ {,,, ]'),
        ("wrong JSON shape", json_type, {}, lambda: b'{"resourceSpans": ["x", 1, null]}'),
        ("deep JSON", json_type, {}, lambda: b"[" * 100_000 + b"]" * 100_000),
        ("lone surrogate", json_type, {}, lambda: b'{"resourceSpans": [{"x": "\\ud800"}]}'),
        ("huge JSON number", json_type, {}, lambda: b'{"resourceSpans": 1' + b"0" * 100_000 + b"}"),
        ("not gzip", PROTOBUF, {"Content-Encoding": "gzip"}, lambda: rnd.randbytes(512)),
        ("truncated gzip", PROTOBUF, {"Content-Encoding": "gzip"}, truncated_gzip),
        ("unknown encoding", PROTOBUF, {"Content-Encoding": "br-x"}, lambda: valid),
        ("wrong content type", "text/plain", {}, lambda: valid),
        ("empty body", PROTOBUF, {}, lambda: b""),
    ]
    out = []
    for n in range(count):
        kind, content_type, headers, make = makers[n % len(makers)]
        out.append((kind, content_type, headers, make()))
    return out


def raw_socket_garbage(port: int, seed: int) -> None:
    """Junk that is not HTTP, or HTTP that lies, on a TCP port. The collector may answer or hang
    up; what counts is that it stays up (checked after)."""
    rnd = random.Random(seed)
    payloads = [
        rnd.randbytes(4096),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rnd.randbytes(256),  # HTTP/2 preface, then junk
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: 1000000\r\n\r\nshort",  # a body shorter than announced, then close
        b"GET / HTTP/1.1\r\nHost: " + b"x" * 70_000 + b"\r\n\r\n",  # an over-long header
        b"\x00" * 64,
    ]
    for payload in payloads:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=5) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
        except OSError:
            pass  # hung up on, reset or timed out: fine as long as it stays up


def valid_body(seed: int, spans: int = 16) -> bytes:
    """A valid request whose spans are counted apart (service ``valid``)."""
    request = make_request(spans, seed=seed, services=1)
    request.resource_spans[0].resource.attributes[0].value.string_value = "valid"
    return request.SerializeToString()


def scenario_bomb(args: argparse.Namespace, run: Run) -> Result:
    """Compression bombs and garbage at the OTLP ports: bounded memory, never a 5xx, still up."""
    promise = (
        "a body expanding past max_recv_msg_size_mib (16) is refused with 413 without the memory;"
        " malformed requests never get a 5xx or no answer; valid ones are still stored"
    )
    collector = run.start("bomb", {"max_recv_msg_size_mib": 16})  # above the default 4: harsher
    url = f"http://{LOOPBACK}:{collector.ports['otlp_http']}/v1/traces"
    gzip, deflate = compressed_zeros(args.bomb_mib, 31), compressed_zeros(args.bomb_mib, 15)
    bombs = [
        (PROTOBUF, "gzip", gzip),
        ("application/json", "gzip", gzip),
        (PROTOBUF, "deflate", deflate),
    ]
    valid_acked, valid_failed, latencies = 0, Counter(), []

    def send_valid(seed: int) -> None:
        nonlocal valid_acked
        started = time.monotonic()
        status = _post(url, valid_body(seed), {"Content-Type": PROTOBUF})
        latencies.append(time.monotonic() - started)
        if status == 200:
            valid_acked += 16
        else:
            valid_failed[status] += 1

    try:
        time.sleep(1)
        before = rss_mb(collector)
        bombs_done = threading.Event()

        def send_bomb(n: int) -> int | str:
            content_type, encoding, body = bombs[n % len(bombs)]
            headers = {"Content-Type": content_type, "Content-Encoding": encoding}
            return _post(url, body, headers, timeout=120)

        def valid_meanwhile() -> None:  # how long a valid export waits behind the bombs
            for seed in itertools.count(1):
                if bombs_done.wait(0.2):
                    return
                send_valid(seed)

        with RssSampler(collector) as rss, ThreadPoolExecutor(args.bomb_concurrency + 1) as pool:
            meanwhile = pool.submit(valid_meanwhile)
            bomb_answers = Counter(pool.map(send_bomb, range(args.bomb_count)))
            bombs_done.set()
            meanwhile.result()
        growth = rss.mb("total") - before
        worst_latency = max(latencies, default=float("nan"))

        answers: dict[str, Counter] = {}  # kind -> answers; each on a new connection
        for n, (kind, content_type, headers, body) in enumerate(
            garbage_requests(args.garbage_count, args.seed)
        ):
            status = _post(url, body, {"Content-Type": content_type, **headers})
            answers.setdefault(kind, Counter())[status] += 1
            if n % 10 == 9:
                send_valid(10_000 + n)
        problems = _grpc_garbage(collector, args.seed)
        raw_socket_garbage(collector.ports["otlp_http"], args.seed)
        raw_socket_garbage(collector.ports["otlp_grpc"], args.seed)
        healthy = (
            collector.popen.poll() is None
            and requests.get(collector.api_url + "/healthz", timeout=5).ok
        )
        valid_stored = int(
            collector.sql("SELECT count() AS n FROM otel_traces WHERE ServiceName = 'valid'")[0][
                "n"
            ]
        )
    finally:
        collector.stop()

    bad = {k: dict(c) for k, c in answers.items() if any(not _is_4xx_or_ok(s) for s in c)}
    bar_mb = args.bomb_concurrency * 2 * 16 + 64  # two copies of a 16 MiB body each, and slack
    by_kind = "; ".join(
        f"{kind} " + "/".join(f"{s}x{n}" for s, n in sorted(c.items(), key=str))
        for kind, c in answers.items()
    )
    figures = [
        f"{args.bomb_count} bombs ({len(gzip) // 1024} KiB expanding to {args.bomb_mib} MiB; gzip"
        f" and deflate, protobuf and JSON), {args.bomb_concurrency} at once: answers"
        f" {dict(bomb_answers)}; RSS growth {growth:.0f} MB (bar {bar_mb} MB);"
        f" a valid export meanwhile waited up to {worst_latency:.1f} s",
        f"{args.garbage_count} malformed OTLP/HTTP requests, answers by kind: {by_kind}",
        f"5xx or no answer: {bad or 'none'}; 20 random gRPC Export bodies: answers other than"
        f" INVALID_ARGUMENT {problems or 'none'}; then raw TCP junk on both OTLP ports",
        f"valid requests: {valid_stored} spans stored of {valid_acked} acknowledged, failed:"
        f" {dict(valid_failed) or 'none'}; collector {'up and healthy' if healthy else 'DOWN'}",
    ]
    passed = (
        set(bomb_answers) == {413}
        and growth <= bar_mb
        and not bad
        and not problems
        and healthy
        and not valid_failed
        and valid_stored == valid_acked > 0
    )
    return Result("bomb", promise, passed, figures)


def _is_4xx_or_ok(status: int | str) -> bool:
    return isinstance(status, int) and status < 500


def _post(url: str, body: bytes, headers: dict, timeout: float = 30) -> int | str:
    """The HTTP status (on a new connection), or the client's error when no answer came."""
    try:
        return requests.post(url, data=body, headers=headers, timeout=timeout).status_code
    except requests.RequestException as exc:
        return type(exc).__name__


def _grpc_garbage(collector: CollectorProcess, seed: int) -> list[str]:
    """Random bytes as Export requests: INVALID_ARGUMENT is the only right answer."""
    import grpc

    rnd = random.Random(seed)
    problems = []
    with grpc.insecure_channel(collector.grpc_target) as channel:
        export = channel.unary_unary(EXPORT_METHOD)
        for _ in range(20):
            try:
                export(rnd.randbytes(rnd.randint(1, 2048)), timeout=10)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    problems.append(exc.code().name)
    return problems


# --- 4. pager outage, and a crash while pages are in flight ------------------------------------


class HoldingReceiver(FakeReceiver):
    """The tests' webhook receiver (``tests/fake_pagers.py``); while ``hold`` is set it takes
    each request in and never answers: the send is in flight."""

    def __init__(self) -> None:
        self.hold = False
        self.held: list[dict] = []
        super().__init__()

    async def _handle(self, request: web.Request) -> web.Response:
        if self.hold:
            key = request.headers.get("Idempotency-Key")
            self.held.append({"key": key, "body": await request.json()})
            while self.hold:
                await asyncio.sleep(0.05)
            return web.Response(status=503)  # to a collector that is gone by now
        return await super()._handle(request)


def scenario_pager(args: argparse.Namespace, run: Run) -> Result:
    """A webhook down for a while, then a kill -9 while its pages are in flight."""
    promise = (
        "every incident is paged after a pager outage and a kill -9 mid-send; a repeat carries"
        " the lost attempt's Idempotency-Key"
    )
    hook = HoldingReceiver()
    hook.stop()  # down: connection refused
    settings = {
        "paging": {
            "receivers": [
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": hook.url + "/agentwatch",
                    "timeout_s": 60,
                }
            ],
            "route": {"receiver": "hook", "group_wait_s": 0},
            "retry_initial_s": 0.5,
            "retry_max_s": args.pager_retry_max_s,
        }
    }
    collector = run.start("pager", settings)
    ports = collector.ports
    agents = [f"adversarial-{n}" for n in range(args.pager_incidents)]
    delivered_s = float("nan")
    try:
        import grpc

        with grpc.insecure_channel(collector.grpc_target) as channel:
            export = channel.unary_unary(EXPORT_METHOD)
            for agent in agents:
                export(probe_request(agent), timeout=30)  # a tool called 5 times: a loop
        down_at = time.monotonic()
        incidents = _wait(lambda: _incidents(collector, agents), 30)
        if not incidents:
            raise RuntimeError("the loop incidents did not open")
        time.sleep(max(0.0, args.pager_outage_s - (time.monotonic() - down_at)))
        attempts_down = max(
            (r["attempts"] for r in _outbox(collector) if r["status"] == "pending"), default=0
        )

        hook.hold = True  # up again, but every request is held without an answer ...
        hook.start()
        _wait(lambda: hook.held or None, args.pager_retry_max_s + 15)
        time.sleep(0.5)
        held = list(hook.held)
        kill9(collector)  # ... while the collector dies
        hook.hold = False
        killed_at = time.monotonic()
        collector = run.start("pager", settings, ports)

        def every_trigger():
            triggered = {
                b["incident"]["incident_id"] for b in hook.bodies() if b["action"] == "trigger"
            }
            return triggered >= set(incidents) or None

        delivered = _wait(every_trigger, 60)
        delivered_s = time.monotonic() - killed_at
        unsettled = _wait(lambda: _outbox(collector, "unsettled") == [] or None, 30) is None
    finally:
        collector.stop()
        hook.hold = False
        hook.close()

    # what the receiver got, the held (lost) attempts included, and what it keeps by key
    seen = [h["key"] for h in held] + [a["headers"].get("Idempotency-Key") for a in hook.accepted]
    kept = len(set(seen))
    repeats_keyed = sum(1 for h in held if h["key"] and seen.count(h["key"]) > 1)
    figures = [
        f"{len(incidents)} incidents opened while the webhook was down for {args.pager_outage_s:g} s"
        f" (up to {attempts_down} attempts per page meanwhile; retry_max_s"
        f" {args.pager_retry_max_s:g})",
        f"{len(held)} page(s) in flight when the collector was killed; after the restart every"
        f" incident paged: {'yes' if delivered else 'NO'}, {delivered_s:.1f} s after the kill;"
        f" outbox settled: {'yes' if not unsettled else 'NO'}",
        f"the receiver got {len(seen)} requests; {repeats_keyed} of {len(held)} lost sends repeated"
        f" with the same Idempotency-Key; {kept} distinct keys kept for {len(incidents)} incidents",
    ]
    passed = (
        bool(delivered)
        and not unsettled
        and len(held) > 0
        and repeats_keyed == len(held)
        and kept == len(incidents)
    )
    return Result("pager", promise, passed, figures)


def _wait(check, timeout_s: float):
    """``check()`` every 0.2 s until it is not None, or None at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        time.sleep(0.2)
    return None


def _incidents(collector: CollectorProcess, agents: list[str]) -> list[str] | None:
    """The incident ids of ``agents``, once each has one."""
    names = ", ".join(f"'{a}'" for a in agents)
    rows = collector.sql(f"SELECT incident_id FROM incidents_current WHERE agent IN ({names})")
    return [r["incident_id"] for r in rows] if len(rows) == len(agents) else None


def _outbox(collector: CollectorProcess, status: str = "all") -> list[dict]:
    response = requests.get(
        collector.api_url + "/v1/alerts/outbox", params={"status": status}, timeout=30
    )
    response.raise_for_status()
    return response.json()


# --- the run ------------------------------------------------------------------------------------

RUNNERS = {
    "kill9": scenario_kill9,
    "huge": scenario_huge,
    "bomb": scenario_bomb,
    "pager": scenario_pager,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.adversarial",
        description="Adversarial runs against `agentwatch serve` (kill -9 under load, huge"
        " concurrent requests vs an RSS ceiling, compression bombs and garbage, pager outage and"
        " crash). Loopback only.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)}",
    )
    add("--seed", type=int, default=11, help="kill times, garbage bytes")
    add("--kill-rounds", type=int, default=3, help="kill9: SIGKILLs (each followed by a restart)")
    add("--kill-after-s", type=float, default=8.0, help="kill9: load before each kill (up to)")
    add("--kill-concurrency", type=int, default=32, help="kill9: requests in flight")
    add("--kill-distinct-requests", type=int, default=64, help="kill9: 512-span requests, in turn")
    add("--kill-timeout", type=float, default=10.0, help="kill9: deadline of one Export (SDK: 10)")
    add("--kill-drain-s", type=float, default=60.0, help="kill9: retries after the load stops")
    add("--huge-clients", type=int, default=12, help="huge: exporters, one connection each")
    add(
        "--huge-spans",
        type=int,
        default=75_000,
        help="huge: spans per request (~55 B each; 75,000 is just under the default 4 MiB limit)",
    )
    add(
        "--huge-max-recv-mib",
        type=int,
        default=None,
        help="huge: the collector's max_recv_msg_size_mib (default: the collector's own, 4)",
    )
    add("--huge-duration-s", type=float, default=20.0, help="huge: seconds of sending")
    add("--huge-timeout", type=float, default=120.0, help="huge: deadline of one Export")
    add("--rss-ceiling-mb", type=int, default=1500, help="huge: collector + detection process")
    add("--bomb-mib", type=int, default=256, help="bomb: MiB each compressed body expands to")
    add("--bomb-count", type=int, default=12, help="bomb: compressed bodies sent")
    add("--bomb-concurrency", type=int, default=4, help="bomb: bodies in flight at once")
    add("--garbage-count", type=int, default=320, help="bomb: malformed OTLP/HTTP requests")
    add("--pager-incidents", type=int, default=3, help="pager: loop incidents opened")
    add("--pager-outage-s", type=float, default=30.0, help="pager: seconds the webhook is down")
    add(
        "--pager-retry-max-s",
        type=float,
        default=4.0,
        help="pager: paging.retry_max_s of the run (the collector default is 300)",
    )
    add("--startup-timeout", type=float, default=120.0, help="seconds to wait for /healthz")
    add("--results-dir", default="bench/results/adversarial", help="collector logs")
    add("--keep-data", action="store_true", help="keep the collectors' data directories")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the collectors are stopped and their data removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f"agentwatch at {code_revision()}; scenarios {', '.join(args.scenarios)}", flush=True)
    run = Run(args)
    results = []
    try:
        for name in args.scenarios:
            print(f"\n== {name}", flush=True)
            started = time.monotonic()
            try:
                result = RUNNERS[name](args, run)
            except Exception as exc:  # a scenario that cannot finish has failed its promise
                result = Result(name, "(did not finish)", False, [f"{type(exc).__name__}: {exc}"])
            for line in result.figures:
                print(f"  {line}")
            print(
                f"{verdict(result.passed)} {name}: {result.promise}"
                f" ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
            results.append(result)
    finally:
        run.close(args.keep_data)
    print("\nsummary: " + ", ".join(f"{r.scenario} {verdict(r.passed)}" for r in results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
