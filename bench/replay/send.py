"""Replay converted sessions to a collector over OTLP/gRPC, keeping their timing (scaled)."""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from bench.replay.convert import NS, SCOPES, convert
from bench.replay.model import Run

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass
class Scheduled:
    at_s: float  # event time (seconds after the replay's start) when the span is exported
    service: str
    convention: str
    span: object


@dataclass
class Plan:
    runs: list[Run]
    conventions: dict[str, str]  # session -> convention
    arrivals: dict[str, float]  # session -> event-time start (s after the replay start)
    trace_ids: dict[str, str]  # trace id hex -> session
    events: list[Scheduled]

    @property
    def event_span_s(self) -> float:
        return max((e.at_s for e in self.events), default=0.0)


def plan(
    runs: list[Run],
    conventions: list[str],
    base_ns: int,
    mean_gap_s: float,
    seed: int = 0,
    time_scale: float = 1.0,
    salt: str = "",
) -> Plan:
    """Sessions arrive as a Poisson process (mean gap ``mean_gap_s`` of event time); session i is
    converted in ``conventions[i % len]``. ``time_scale`` < 1 compresses every duration (the
    ``--compress-timestamps`` mode: event time then equals arrival time at the speed-up)."""
    rnd = random.Random(seed)
    t = 0.0
    conv, arrivals, trace_ids, events = {}, {}, {}, []
    for i, run in enumerate(runs):
        if time_scale != 1.0:
            run = dataclasses.replace(
                run,
                steps=[
                    dataclasses.replace(
                        s, start_s=s.start_s * time_scale, end_s=s.end_s * time_scale
                    )
                    for s in run.steps
                ],
            )
        convention = conventions[i % len(conventions)]
        conv[run.session_id] = convention
        arrivals[run.session_id] = t
        start_ns = base_ns + int(t * time_scale * NS)
        emitted = convert(run, convention, start_ns, salt=salt)
        trace_ids[emitted[0].span.trace_id.hex()] = run.session_id
        events.extend(
            Scheduled(t + e.emit_s / time_scale, run.service, convention, e.span) for e in emitted
        )
        t += rnd.expovariate(1.0 / mean_gap_s) if mean_gap_s > 0 else 0.0
    events.sort(key=lambda e: e.at_s)
    return Plan(runs, conv, arrivals, trace_ids, events)


def _request(batch: list[Scheduled]) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    groups: dict[tuple[str, str], object] = {}
    for item in batch:
        key = (item.service, item.convention)
        if key not in groups:
            rs = req.resource_spans.add()
            rs.resource.attributes.extend(
                [
                    KeyValue(key="service.name", value=AnyValue(string_value=item.service)),
                    KeyValue(key="telemetry.sdk.language", value=AnyValue(string_value="python")),
                    KeyValue(key="agentwatch.bench", value=AnyValue(string_value="replay")),
                ]
            )
            ss = rs.scope_spans.add()
            ss.scope.name, ss.scope.version = SCOPES[item.convention]
            groups[key] = ss
        groups[key].spans.append(item.span)
    return req


def replay(target: str, p: Plan, speedup: float, batch_s: float = 0.5, log=print) -> dict:
    """Send every span when its (scaled) export time comes, in batches every ``batch_s`` wall
    seconds as a BatchSpanProcessor would; retry refusals with the same request."""
    channel = grpc.insecure_channel(target)
    stub = TraceServiceStub(channel)
    started = time.monotonic()
    i, sent, requests, retries, late = 0, 0, 0, 0, 0.0
    next_log = 30.0
    while i < len(p.events):
        elapsed = time.monotonic() - started
        due = p.events[i].at_s / speedup
        if due > elapsed:
            time.sleep(min(batch_s, due - elapsed))
            continue
        j = i
        while j < len(p.events) and p.events[j].at_s / speedup <= elapsed:
            j += 1
        late = max(late, elapsed - due)
        batch = p.events[i:j]
        request = _request(batch)
        for attempt in range(30):
            try:
                stub.Export(request, timeout=30)
                break
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt == 29:
                    raise
                retries += 1
                time.sleep(min(2.0, 0.1 * 2**attempt))
        sent += len(batch)
        requests += 1
        i = j
        if elapsed > next_log:
            log(
                f"  replay: {sent}/{len(p.events)} spans, {elapsed:.0f} s wall, "
                f"event time {p.events[i - 1].at_s:.0f} s"
            )
            next_log += 30.0
        time.sleep(batch_s)
    channel.close()
    return {
        "spans": sent,
        "requests": requests,
        "retries": retries,
        "wall_s": time.monotonic() - started,
        "max_send_lag_s": late,
    }
