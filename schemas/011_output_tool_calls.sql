-- OutputToolCalls: the tool calls an LLM span's output asked for, as JSON text
-- ([{"name", "arguments", "args_hash"}, ...], arguments canonical as in ToolArgs and cut at 4096
-- characters, args_hash as ToolArgsHash over all of them), read from gen_ai.output.messages,
-- OpenInference's llm.output_messages.N.message.tool_calls.M.* or OpenLLMetry's
-- gen_ai.completion.N.tool_calls.M.* (collector/normalize.py, output_tool_calls). '' on every other
-- span. Stored so the restart replay (analyzer/restore.py) sees the calls of frameworks that send
-- no tool spans, and so they can be queried without parsing three conventions.
ALTER TABLE otel_traces
    ADD COLUMN IF NOT EXISTS OutputToolCalls String CODEC(LZ4) AFTER Convention;

-- The ingest table first, then the view that copies it into otel_traces.
ALTER TABLE otel_traces_ingest ADD COLUMN IF NOT EXISTS OutputToolCalls String AFTER Convention;

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
    FinishReason, ErrorType, HttpStatus, CostUsd, Convention, OutputToolCalls
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
