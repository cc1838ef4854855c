-- Collectors sharing this store (issue 16, point 3: the kill-switch drill checks every one; the
-- drill itself is recorded in gamedays, 021).
--
-- Each collector inserts a heartbeat row every 10 s (collector/store/registry.py); a collector is
-- live while its newest row is state 'up' and at most 30 s old. `at` is the ClickHouse server's
-- clock (DEFAULT now64), as for leases, so the collectors' clocks do not matter. A clean stop
-- writes state 'stopped', so a drill right after it does not wait for a collector that is gone.
CREATE TABLE IF NOT EXISTS collectors
(
    collector_id String,              -- host:pid:random, as in leases (collector.store.lease)
    api_url String,                   -- where others reach its API: public_url, else http://<listen>:<api port>
    version LowCardinality(String),
    started_at DateTime64(3, 'UTC'),
    state LowCardinality(String),     -- up | stopped
    at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(at)
ORDER BY collector_id
TTL toDateTime(at) + INTERVAL 1 DAY;
