-- Which traces belong to which session. A session spans several traces and its id is often only
-- on the root span, so this maps every trace that carried a session id to it; lookups by session
-- read this table first and then otel_traces by TraceId (its primary key).
CREATE TABLE IF NOT EXISTS session_traces
(
    Tenant LowCardinality(String),
    SessionId String,
    TraceId String,
    UserId SimpleAggregateFunction(max, String),
    ServiceName SimpleAggregateFunction(max, LowCardinality(String)),
    AgentName SimpleAggregateFunction(max, LowCardinality(String)),
    FirstSeen SimpleAggregateFunction(min, DateTime64(9)),
    LastSeen SimpleAggregateFunction(max, DateTime64(9))
)
ENGINE = AggregatingMergeTree
ORDER BY (Tenant, SessionId, TraceId)
SETTINGS merge_selector_base = 20, max_parts_to_merge_at_once = 10;

CREATE MATERIALIZED VIEW IF NOT EXISTS session_traces_mv TO session_traces AS
SELECT Tenant, SessionId, TraceId, max(UserId) AS UserId, max(ServiceName) AS ServiceName,
       max(AgentName) AS AgentName, min(Timestamp) AS FirstSeen,
       max(Timestamp + toIntervalNanosecond(Duration)) AS LastSeen
FROM otel_traces
WHERE SessionId != ''
GROUP BY Tenant, SessionId, TraceId;

-- Spans with the session and user resolved along their trace: children that arrived before (or
-- without) the root span that carried the session id get it here, at query time.
CREATE VIEW IF NOT EXISTS agent_spans AS
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
