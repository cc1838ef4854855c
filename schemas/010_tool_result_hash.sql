-- ToolResultHash: a stable 64-bit hash of a tool call's outcome (its result, or for a failed call
-- its error), beside ToolArgsHash, so "the same call with the same result" (no progress: the loop
-- detector) and a tool's blast radius can be queried. 0 on non-tool spans and on tool calls that
-- record neither a result nor an error (collector/normalize.py, result_hash_of).
ALTER TABLE otel_traces ADD COLUMN IF NOT EXISTS ToolResultHash UInt64 CODEC(LZ4) AFTER ToolArgsHash;

-- The ingest table first, then the view that copies it into otel_traces.
ALTER TABLE otel_traces_ingest ADD COLUMN IF NOT EXISTS ToolResultHash UInt64 AFTER ToolArgsHash;

ALTER TABLE otel_traces_ingest_mv MODIFY QUERY
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
    ToolResultHash, InputTokens, OutputTokens, CacheReadTokens, CacheWriteTokens, ReasoningTokens,
    FinishReason, ErrorType, HttpStatus, CostUsd, Convention
FROM otel_traces_ingest;

-- agent_spans (002) selects s.*, which ClickHouse expands when the view is created: the same view
-- again, so it carries the new column.
CREATE OR REPLACE VIEW agent_spans AS
SELECT s.* REPLACE (
           if(s.SessionId != '', s.SessionId, m.SessionId) AS SessionId,
           if(s.UserId != '', s.UserId, m.UserId) AS UserId
       )
FROM otel_traces AS s
LEFT JOIN
(
    SELECT Tenant, TraceId, any(SessionId) AS SessionId, max(UserId) AS UserId
    FROM session_traces
    GROUP BY Tenant, TraceId
) AS m ON s.Tenant = m.Tenant AND s.TraceId = m.TraceId
SETTINGS join_use_nulls = 0;
