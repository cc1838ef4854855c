-- Gamedays (issue 16): a drill sends a failure's spans through the collector, marked by the
-- resource attribute agentwatch.drill = true (`agentwatch gameday run`). The spans carry it as
-- the column Drill, their incidents as `drill`; production views leave both out, so a drill
-- never counts in open incidents, recurrence, MTTR or precision (the *_with_drills views and
-- incidents_current show them). A drill's fingerprint differs from production's
-- (analyzer/incidents/lifecycle.py), so a drill never updates or resolves a real incident.
ALTER TABLE otel_traces ADD COLUMN IF NOT EXISTS Drill Bool DEFAULT false CODEC(LZ4) AFTER OutputToolCalls;

-- The ingest table first, then the view that copies it into otel_traces.
ALTER TABLE otel_traces_ingest ADD COLUMN IF NOT EXISTS Drill Bool DEFAULT false AFTER OutputToolCalls;

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
    FinishReason, ErrorType, HttpStatus, CostUsd, Convention, OutputToolCalls, Drill
FROM otel_traces_ingest;

-- agent_spans (002) selects s.*, expanded when the view is created: the same view again, so it
-- carries the new column.
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

-- An incident opened by a drill's spans (shown as [DRILL], paged with the label drill=true), and
-- the off-rails step a person named (`agentwatch incidents set-step ID SPAN`; '' until then).
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS drill Bool DEFAULT false AFTER resolution;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS off_rails_span_id String DEFAULT '' AFTER drill;

-- Views that select * are expanded when created: the same views again, so they carry the columns.
-- incidents_current keeps every incident, drills included (the incident pages read it).
CREATE OR REPLACE VIEW incidents_current AS
SELECT * EXCEPT (version) FROM incidents FINAL;

-- Production: drills left out.
CREATE OR REPLACE VIEW open_incidents AS
SELECT *
FROM incidents_current
WHERE status IN ('open', 'acknowledged') AND NOT drill
ORDER BY severity ASC, last_seen DESC, incident_id ASC;

-- The drills in progress, for whoever runs the gameday.
CREATE OR REPLACE VIEW open_incidents_with_drills AS
SELECT *
FROM incidents_current
WHERE status IN ('open', 'acknowledged')
ORDER BY severity ASC, last_seen DESC, incident_id ASC;

CREATE OR REPLACE VIEW incident_recurrence AS
SELECT
    fingerprint,
    tenant,
    service,
    agent,
    detector,
    kind,
    any(class) AS class,
    min(severity) AS worst_severity,
    count() AS incidents,
    countIf(status != 'resolved') AS unresolved,
    sum(occurrences) AS total_occurrences,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen,
    argMax(incident_id, opened_at) AS latest_incident_id,
    argMax(title, opened_at) AS latest_title
FROM (SELECT *, first_seen AS opened_at FROM incidents_current WHERE NOT drill)
GROUP BY fingerprint, tenant, service, agent, detector, kind
ORDER BY incidents DESC, last_seen DESC;

CREATE OR REPLACE VIEW incident_mttr AS
SELECT
    class,
    severity,
    count() AS resolved,
    countIf(resolved_by = 'agentwatch') AS auto_resolved,
    round(avg(minutes), 2) AS avg_minutes_to_resolve,
    round(medianExact(minutes), 2) AS median_minutes_to_resolve
FROM
(
    SELECT
        i.class AS class,
        i.severity AS severity,
        e.resolved_by AS resolved_by,
        (toUnixTimestamp64Milli(e.resolved_at) - toUnixTimestamp64Milli(i.first_seen)) / 60000.0
            AS minutes
    FROM incidents_current AS i
    INNER JOIN
    (
        SELECT incident_id, min(at) AS resolved_at, argMin(actor, at) AS resolved_by
        FROM incident_events
        WHERE event = 'resolved'
        GROUP BY incident_id
    ) AS e ON i.incident_id = e.incident_id
    WHERE i.status = 'resolved' AND NOT i.drill
)
GROUP BY class, severity
ORDER BY class ASC, severity ASC;

-- A drill's verdicts are rehearsals, not field precision.
CREATE OR REPLACE VIEW detector_precision AS
SELECT
    tenant,
    detector,
    kind,
    count() AS resolved,
    countIf(resolution IN ('fixed', 'false_alarm')) AS resolved_by_people,
    countIf(resolution = 'false_alarm') AS false_alarms,
    countIf(resolution = 'quiet') AS resolved_quietly,
    if(resolved_by_people = 0, NULL, round(1 - false_alarms / resolved_by_people, 4))
        AS field_precision
FROM incidents_current
WHERE status = 'resolved' AND NOT drill
GROUP BY tenant, detector, kind
ORDER BY tenant ASC, detector ASC, kind ASC;

-- One row per drill, one version per change (ReplacingMergeTree on version: read with FINAL).
-- Started by `agentwatch gameday run`; the times are filled in as the drill goes (the containment
-- watcher writes contained_at) and all of them when its incident is resolved
-- (`agentwatch gameday report`, analyzer/gameday/score.py). Each *_s is seconds from started_at
-- (the first span sent), NULL while that step has not happened.
CREATE TABLE IF NOT EXISTS gamedays
(
    drill_id String,
    version UInt64,
    tenant LowCardinality(String),
    scenario LowCardinality(String),
    service LowCardinality(String),
    agent String,
    session_id String,
    started_by String,
    started_at DateTime64(9, 'UTC'),
    status LowCardinality(String),        -- running | done | abandoned
    incident_id String,
    contained_at Nullable(DateTime64(9, 'UTC')),  -- the OFREP flag first answered "stopped"
    contained_state LowCardinality(String),       -- agent.state then (paused, killed …)
    incident_s Nullable(Float64),
    paged_s Nullable(Float64),
    acknowledged_s Nullable(Float64),
    contained_s Nullable(Float64),
    step_named_s Nullable(Float64),
    case_captured_s Nullable(Float64),
    resolved_s Nullable(Float64),
    updated_at DateTime64(3) DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, drill_id);
