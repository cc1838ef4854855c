-- How an incident was resolved (issue 13: field precision from on-call's verdicts). '' while it is
-- not resolved and on rows written before this column; then one of (analyzer/incidents/model.py,
-- RESOLUTIONS):
--   fixed        a person resolved it as a real problem (`agentwatch incidents resolve ID`)
--   false_alarm  a person said it should not have fired (`... resolve ID --false-alarm`)
--   quiet        the quiet-period timer resolved it (nobody judged it)
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS resolution LowCardinality(String) DEFAULT '' AFTER link;

-- Views that select * are expanded when created: the same views again, so they carry the column.
CREATE OR REPLACE VIEW incidents_current AS
SELECT * EXCEPT (version) FROM incidents FINAL;

CREATE OR REPLACE VIEW open_incidents AS
SELECT *
FROM incidents_current
WHERE status IN ('open', 'acknowledged')
ORDER BY severity ASC, last_seen DESC, incident_id ASC;

-- Each detector's field precision, from the incidents people resolved: 1 - false alarms /
-- resolved by people, per tenant, detector and kind (NULL until someone resolved one). Incidents
-- the timer resolved (resolved_quietly) or resolved before this column (resolved - the other
-- two) were judged by nobody and do not count.
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
WHERE status = 'resolved'
GROUP BY tenant, detector, kind
ORDER BY tenant ASC, detector ASC, kind ASC;
