-- Paging: the durable outbox and the silences (README "Paging"). Both keep one row per version
-- (ReplacingMergeTree(version)); read them with FINAL, as incidents_current reads incidents.

-- One row per version of a notification: recorded 'pending' before it is sent, then 'sent',
-- 'failed' (permanent error or gave up), 'superseded' (resolved within group_wait, never sent) or
-- 'skipped' (the receiver's API has no such action, e.g. acknowledge on Alertmanager).
CREATE TABLE IF NOT EXISTS page_outbox
(
    notification_id String,
    version UInt64,
    created_at DateTime64(9, 'UTC'),
    route String,
    receiver String,
    receiver_type LowCardinality(String),
    action LowCardinality(String),
    reason LowCardinality(String),
    incident_id String,
    fingerprint String,
    severity LowCardinality(String),
    incident String,
    note String,
    status LowCardinality(String),
    attempts UInt32,
    next_attempt_at DateTime64(9, 'UTC'),
    sent_at DateTime64(9, 'UTC'),
    last_error String,
    updated_at DateTime64(3) DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY notification_id;

-- Silences: matchers (JSON list of "name=value" texts) muting pages until ends_at. Expiring one
-- writes a new version whose ends_at is now.
CREATE TABLE IF NOT EXISTS silences
(
    silence_id String,
    version UInt64,
    matchers String,
    starts_at DateTime64(9, 'UTC'),
    ends_at DateTime64(9, 'UTC'),
    created_by String,
    comment String,
    updated_at DateTime64(3) DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY silence_id;
