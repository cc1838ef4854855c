-- Retention of the paging outbox: a notification's rows go 30 days after it was created. Nothing
-- pending lives that long (give_up_after_s is at most 7 days), and an Alertmanager receiver's
-- re-sends (one row a minute per firing incident) no longer pile up without end.
ALTER TABLE page_outbox MODIFY TTL toDateTime(created_at) + INTERVAL 30 DAY;
