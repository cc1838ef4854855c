-- Containment for the run in progress: a control may name a trace (32 lowercase hex digits, as
-- the spans store TraceId; empty: any trace). With the OTel GenAI instrumentation the session id
-- is on the root span, exported last, so an incident opened mid-run has no session yet: policy
-- actions then stop its trace, and an agent checking with its current trace id is stopped
-- (analyzer/containment/control.py, actions.py).
ALTER TABLE control_state ADD COLUMN IF NOT EXISTS trace_id String DEFAULT '' AFTER session_id;
ALTER TABLE control_audit ADD COLUMN IF NOT EXISTS trace_id String DEFAULT '' AFTER session_id;
CREATE OR REPLACE VIEW controls_in_force AS
SELECT * EXCEPT (version) FROM control_state FINAL WHERE mode != 'enabled';
