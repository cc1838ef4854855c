-- Deploy markers (issue 16, point 5): when a service, or one agent of it, was deployed, which
-- version, by whom. `agentwatch deploy mark|list`, POST/GET /v1/deploys; the release gate reads
-- them (`agentwatch recurrence check --since deploy` or `--since deploy:VERSION`), and on-call's
-- "what changed?" is the list. One row per deploy, never updated: marking a version again is
-- another deploy (a rollback is one). `at` is the collector's clock when the marker was recorded.
CREATE TABLE IF NOT EXISTS deploys
(
    tenant LowCardinality(String),
    service LowCardinality(String),
    agent String,                     -- '' for the whole service
    version String,                   -- '' when none was given
    at DateTime64(9, 'UTC'),
    actor String,
    note String
)
ENGINE = MergeTree
ORDER BY (tenant, service, at);
