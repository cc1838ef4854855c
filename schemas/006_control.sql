-- Containment: what agents may do, by scope. One row per version of a control (ReplacingMergeTree
-- keeps the newest per key); `mode = 'enabled'` is a lifted control. The collector serves these
-- from memory (analyzer/containment/control.py) and re-reads them every second, so a row written by another
-- collector on the same ClickHouse server is in force everywhere within a second.
--
-- A control's scope is the set of non-empty fields among service, agent, session_id, user_id and
-- tool (all empty: global); it applies to a check whose context has the same values in them.
-- key is those fields in canonical text form ("agent=support;session=s1"), "global" for none.
CREATE TABLE IF NOT EXISTS control_state
(
    key String,
    service String,
    agent String,
    session_id String,
    user_id String,
    tool String,
    mode LowCardinality(String),      -- killed, paused, quarantined, budget_frozen, circuit_open, enabled
    actor String,                     -- who: a person (CLI/API) or "policy"
    source LowCardinality(String),    -- person | policy
    reason String,
    incident_id String,               -- the incident a policy action answered, if any
    at DateTime64(9, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key;

-- The audit trail: every change, never rewritten.
CREATE TABLE IF NOT EXISTS control_audit
(
    at DateTime64(9, 'UTC'),
    key String,
    service String,
    agent String,
    session_id String,
    user_id String,
    tool String,
    mode LowCardinality(String),
    previous_mode LowCardinality(String),
    actor String,
    source LowCardinality(String),
    reason String,
    incident_id String
)
ENGINE = MergeTree
ORDER BY at;

-- What is in force now (the CLI's `agentwatch control list` reads the same through the API).
CREATE VIEW IF NOT EXISTS controls_in_force AS
SELECT * EXCEPT (version) FROM control_state FINAL WHERE mode != 'enabled';

-- The tool a finding was about (policy action open_tool_circuit and the tool circuit breaker).
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS tool String DEFAULT '' AFTER span_id;

-- The session, user and trace of the finding behind an event (a repeat may come from another
-- session): escalation counts how far a fingerprint has spread from these, across collectors.
ALTER TABLE incident_events ADD COLUMN IF NOT EXISTS session_id String DEFAULT '';
ALTER TABLE incident_events ADD COLUMN IF NOT EXISTS user_id String DEFAULT '';
ALTER TABLE incident_events ADD COLUMN IF NOT EXISTS trace_id String DEFAULT '';
