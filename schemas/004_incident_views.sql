-- Views on-call reaches for first (README "Incidents"). Built on incidents_current, so they show
-- each incident's newest version.

-- Incidents not yet resolved (open or acknowledged): worst severity first, then most recently seen.
CREATE VIEW IF NOT EXISTS open_incidents AS
SELECT *
FROM incidents_current
WHERE status IN ('open', 'acknowledged')
ORDER BY severity ASC, last_seen DESC, incident_id ASC;

-- The same problem again and again: one row per fingerprint (tenant, service, agent, detector,
-- kind, signature), with how many incidents it opened and how often it was seen in all.
CREATE VIEW IF NOT EXISTS incident_recurrence AS
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
FROM (SELECT *, first_seen AS opened_at FROM incidents_current)
GROUP BY fingerprint, tenant, service, agent, detector, kind
ORDER BY incidents DESC, last_seen DESC;

-- Time to resolve, by class and severity: minutes from an incident's first_seen to its (first)
-- resolved event. auto_resolved counts those the quiet-period timer resolved (actor agentwatch).
CREATE VIEW IF NOT EXISTS incident_mttr AS
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
    WHERE i.status = 'resolved'
)
GROUP BY class, severity
ORDER BY class ASC, severity ASC;
