"""Insert cost of the spans schema, against the OpenTelemetry Collector exporter's choices.

Inserting is the ingest bottleneck, so the schema's codecs, skip indexes and materialized views
are chosen by measurement. This inserts the same normalised workload (groups of 6 requests of
512 spans, as group commit does under load) into fresh chDB stores built from ``schemas/`` and
from variants of it, and prints wall time per span (best of 3):

    python -m bench.ddl_variants
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

from bench.workload import make_requests
from collector.consumer import Rejections
from collector.decode import decode_protobuf
from collector.normalize import Normalizer
from collector.store.embedded import EmbeddedStore
from collector.store.migrations import SCHEMAS_DIR, statements

EXPORTER_INDEXES = """,
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_session SessionId TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1"""


def as_is(sql: str) -> str:
    return sql


def exporter_codecs(sql: str) -> str:
    return sql.replace("CODEC(LZ4)", "CODEC(ZSTD(1))").replace("Delta, LZ4", "Delta, ZSTD(1)")


def exporter_indexes(sql: str) -> str:
    return sql.replace(
        "INDEX idx_ts Timestamp TYPE minmax GRANULARITY 1",
        "INDEX idx_ts Timestamp TYPE minmax GRANULARITY 1" + EXPORTER_INDEXES,
    )


def session_view_per_row(sql: str) -> str:
    return re.sub(
        r"SELECT Tenant, SessionId, TraceId, max\(UserId\).*?GROUP BY Tenant, SessionId, TraceId;",
        "SELECT Tenant, SessionId, TraceId, UserId, ServiceName, AgentName, Timestamp AS FirstSeen, "
        "Timestamp AS LastSeen FROM otel_traces WHERE SessionId != '';",
        sql,
        flags=re.S,
    )


def all_exporter_choices(sql: str) -> str:
    return session_view_per_row(exporter_indexes(exporter_codecs(sql)))


VARIANTS = [as_is, exporter_codecs, exporter_indexes, session_view_per_row, all_exporter_choices]


def measure(transform, blocks: list[bytes], root: Path) -> float:
    store = EmbeddedStore(root / transform.__name__)
    for path in sorted(SCHEMAS_DIR.glob("*.sql")):
        for statement in statements(transform(path.read_text())):
            store.command(statement)
    store.insert_blocks("otel_traces_ingest", "JSONColumns", blocks[:1])  # warm up
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for i in range(0, len(blocks), 6):
            store.insert_blocks("otel_traces_ingest", "JSONColumns", blocks[i : i + 6])
        best = min(best, time.perf_counter() - started)
    store.close()
    return best


def main() -> None:
    normalizer = Normalizer()
    blocks = [
        normalizer.normalize(decode_protobuf(b, Rejections()))[0].to_json()
        for b in make_requests(24)
    ]
    spans = len(blocks) * 512
    root = Path(tempfile.mkdtemp(prefix="agentwatch-ddl-"))
    try:
        print(f"{'schema variant':28s} {'spans/s':>10s} {'us/span':>8s}")
        for transform in VARIANTS:
            seconds = measure(transform, blocks, root)
            print(f"{transform.__name__:28s} {spans / seconds:10.0f} {seconds / spans * 1e6:8.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
