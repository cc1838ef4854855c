-- One problem, one page (analyzer/paging/grouping.py): an incident of a run that already has a live
-- page on a (route, receiver) is folded into it. Its outbox rows then have status 'folded' (nothing
-- is sent) and page_of names the incident whose page carries it; '' on every other row. So each
-- finding stays queryable: SELECT incident_id, page_of FROM page_outbox FINAL WHERE status = 'folded'.
ALTER TABLE page_outbox ADD COLUMN IF NOT EXISTS page_of String DEFAULT '' AFTER incident_id;
