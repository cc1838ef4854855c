-- Regression cases (issue 14, point 3): what on-call captured from an incident so the failure can
-- be replayed by an eval before the fix ships. One case per incident: capturing again replaces it
-- (ReplacingMergeTree on captured_at; read with FINAL). Written by `agentwatch incidents capture`,
-- POST /v1/incidents/{id}/case and the console's incident page (analyzer/incidents/cases.py).
CREATE TABLE IF NOT EXISTS regression_cases
(
    incident_id String,
    tenant LowCardinality(String),
    service LowCardinality(String),
    agent LowCardinality(String),
    detector LowCardinality(String),
    kind LowCardinality(String),
    session_id String,
    trace_id String,
    -- the triggering input: the root input or the first user message, and the attribute it came
    -- from (input.value, traceloop.entity.input, gen_ai.input.messages, llm.input_messages ...)
    input String,
    input_source LowCardinality(String),
    input_span_id String,
    -- the off-rails step: the incident's span
    step_span_id String,
    step_tool String,
    step_arguments String,
    step_result String,
    step_error String,
    -- what the agent should have done, in on-call's words
    expected String,
    captured_by String,
    captured_at DateTime64(9, 'UTC'),
    -- the steps up to the off-rails step (and a few after), as a JSON array, bounded
    trajectory String,
    trajectory_steps UInt32
)
ENGINE = ReplacingMergeTree(captured_at)
ORDER BY (tenant, incident_id);
