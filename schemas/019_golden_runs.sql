-- Golden runs (issue 14, point 4): the session on-call marked as the known-good run of an input
-- class, an agent and a label ("refund", "order status"). One per (tenant, agent, label): marking
-- another session for the same class replaces it (the newest marked_at wins), so the incident
-- page always diffs against one run. `agentwatch golden mark|list`, POST/GET /v1/golden.
CREATE TABLE IF NOT EXISTS golden_runs
(
    tenant LowCardinality(String),
    agent LowCardinality(String),
    label String,
    session_id String,
    service LowCardinality(String),
    marked_at DateTime64(9, 'UTC'),
    marked_by String,
    note String
)
ENGINE = ReplacingMergeTree(marked_at)
ORDER BY (tenant, agent, label);
