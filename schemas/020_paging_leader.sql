-- Several collectors, one pager (analyzer/paging/leader.py): the collector holding the 'paging'
-- lease reads every collector's incident events by time each second; incident_events is ordered
-- by incident, so a min-max index on `at` lets that read skip all but the newest granules.
ALTER TABLE incident_events ADD INDEX IF NOT EXISTS at_minmax at TYPE minmax GRANULARITY 1;
