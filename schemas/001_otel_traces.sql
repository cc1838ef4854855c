-- Spans. A superset of the OpenTelemetry Collector ClickHouse exporter's otel_traces (its 22
-- columns and types come first, so Grafana's ClickHouse trace view and existing queries work),
-- plus the normalised agent columns. Ordered by trace so a trace is one contiguous range;
-- sessions are found through session_traces (002).
-- Insert and merge cost bound ingest, so this table carries only a minmax index and uses LZ4
-- (ClickHouse's default) rather than the exporter's ZSTD(1) and bloom filters; TraceId is in the
-- primary key instead. bench/ddl_variants.py measures the difference.
CREATE TABLE IF NOT EXISTS otel_traces
(
    Timestamp DateTime64(9) CODEC(Delta, LZ4),
    TraceId String CODEC(LZ4),
    SpanId String CODEC(LZ4),
    ParentSpanId String CODEC(LZ4),
    TraceState String CODEC(LZ4),
    SpanName LowCardinality(String) CODEC(LZ4),
    SpanKind LowCardinality(String) CODEC(LZ4),
    ServiceName LowCardinality(String) CODEC(LZ4),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(LZ4),
    ScopeName String CODEC(LZ4),
    ScopeVersion String CODEC(LZ4),
    SpanAttributes Map(LowCardinality(String), String) CODEC(LZ4),
    Duration UInt64 CODEC(LZ4),
    StatusCode LowCardinality(String) CODEC(LZ4),
    StatusMessage String CODEC(LZ4),
    Events Nested
    (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String)
    ) CODEC(LZ4),
    Links Nested
    (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String)
    ) CODEC(LZ4),
    -- agentwatch's normalised agent columns (DESIGN.md §3)
    Tenant LowCardinality(String) CODEC(LZ4),
    SessionId String CODEC(LZ4),
    UserId String CODEC(LZ4),
    AgentName LowCardinality(String) CODEC(LZ4),
    StepKind LowCardinality(String) CODEC(LZ4),
    Model LowCardinality(String) CODEC(LZ4),
    Provider LowCardinality(String) CODEC(LZ4),
    ToolName LowCardinality(String) CODEC(LZ4),
    ToolArgs String CODEC(LZ4),
    ToolArgsHash UInt64 CODEC(LZ4),
    InputTokens UInt64 CODEC(T64, LZ4),
    OutputTokens UInt64 CODEC(T64, LZ4),
    CacheReadTokens UInt64 CODEC(T64, LZ4),
    CacheWriteTokens UInt64 CODEC(T64, LZ4),
    ReasoningTokens UInt64 CODEC(T64, LZ4),
    FinishReason LowCardinality(String) CODEC(LZ4),
    ErrorType LowCardinality(String) CODEC(LZ4),
    HttpStatus UInt16 CODEC(LZ4),
    CostUsd Float64 CODEC(LZ4),
    Convention LowCardinality(String) CODEC(LZ4),
    IngestedAt DateTime64(3) DEFAULT now64(3) CODEC(Delta, LZ4),
    INDEX idx_ts Timestamp TYPE minmax GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (Tenant, TraceId, Timestamp)
-- Background merges, not inserts, cost most of ingest's CPU and memory on a small machine
-- (bench/ddl_variants.py): merge many parts at once and rarely (merge_selector_base), one column
-- at a time (vertical merges), so rows are rewritten fewer times and a merge holds one column.
SETTINGS index_granularity = 8192,
    merge_selector_base = 20,
    max_parts_to_merge_at_once = 10,
    vertical_merge_algorithm_min_rows_to_activate = 1,
    vertical_merge_algorithm_min_columns_to_activate = 1,
    max_compress_block_size = 131072;

-- The collector inserts here (a Null table: nothing is kept). Timestamps arrive as integer
-- nanoseconds and nested events/links as parallel arrays; the view below writes otel_traces rows
-- in the same INSERT, so an acknowledged insert is a committed one.
CREATE TABLE IF NOT EXISTS otel_traces_ingest
(
    TimestampNs UInt64,
    TraceId String,
    SpanId String,
    ParentSpanId String,
    TraceState String,
    SpanName String,
    SpanKind String,
    ServiceName String,
    ResourceAttributes Map(String, String),
    ScopeName String,
    ScopeVersion String,
    SpanAttributes Map(String, String),
    Duration UInt64,
    StatusCode String,
    StatusMessage String,
    EventsTimestampNs Array(UInt64),
    EventsName Array(String),
    EventsAttributes Array(Map(String, String)),
    LinksTraceId Array(String),
    LinksSpanId Array(String),
    LinksTraceState Array(String),
    LinksAttributes Array(Map(String, String)),
    Tenant String,
    SessionId String,
    UserId String,
    AgentName String,
    StepKind String,
    Model String,
    Provider String,
    ToolName String,
    ToolArgs String,
    ToolArgsHash UInt64,
    InputTokens UInt64,
    OutputTokens UInt64,
    CacheReadTokens UInt64,
    CacheWriteTokens UInt64,
    ReasoningTokens UInt64,
    FinishReason String,
    ErrorType String,
    HttpStatus UInt16,
    CostUsd Float64,
    Convention String
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS otel_traces_ingest_mv TO otel_traces AS
SELECT
    fromUnixTimestamp64Nano(toInt64(TimestampNs)) AS Timestamp,
    TraceId, SpanId, ParentSpanId, TraceState, SpanName, SpanKind, ServiceName,
    ResourceAttributes, ScopeName, ScopeVersion, SpanAttributes, Duration, StatusCode, StatusMessage,
    arrayMap(t -> fromUnixTimestamp64Nano(toInt64(t)), EventsTimestampNs) AS `Events.Timestamp`,
    EventsName AS `Events.Name`,
    EventsAttributes AS `Events.Attributes`,
    LinksTraceId AS `Links.TraceId`,
    LinksSpanId AS `Links.SpanId`,
    LinksTraceState AS `Links.TraceState`,
    LinksAttributes AS `Links.Attributes`,
    Tenant, SessionId, UserId, AgentName, StepKind, Model, Provider, ToolName, ToolArgs, ToolArgsHash,
    InputTokens, OutputTokens, CacheReadTokens, CacheWriteTokens, ReasoningTokens,
    FinishReason, ErrorType, HttpStatus, CostUsd, Convention
FROM otel_traces_ingest;
