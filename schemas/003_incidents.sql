-- Incidents: one row per version of an incident (ReplacingMergeTree keeps the newest). Query the
-- current state through incidents_current (FINAL), as documented in the README's SQL contract.
CREATE TABLE IF NOT EXISTS incidents
(
    incident_id String,
    fingerprint String,
    version UInt64,
    detector LowCardinality(String),
    kind LowCardinality(String),
    class LowCardinality(String),
    severity LowCardinality(String),
    status LowCardinality(String),
    title String,
    summary String,
    tenant LowCardinality(String),
    service LowCardinality(String),
    agent LowCardinality(String),
    session_id String,
    user_id String,
    trace_id String,
    span_id String,
    evidence String,
    first_seen DateTime64(9, 'UTC'),
    last_seen DateTime64(9, 'UTC'),
    occurrences UInt64,
    sessions_affected UInt64,
    users_affected UInt64,
    link String,
    updated_at DateTime64(3) DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, incident_id);

-- What happened to each incident, in order: opened, updated, escalated, acknowledged, resolved …
CREATE TABLE IF NOT EXISTS incident_events
(
    incident_id String,
    fingerprint String,
    at DateTime64(9, 'UTC'),
    event LowCardinality(String),
    actor String,
    detail String
)
ENGINE = MergeTree
ORDER BY (incident_id, at);

CREATE VIEW IF NOT EXISTS incidents_current AS
SELECT * EXCEPT (version) FROM incidents FINAL;
