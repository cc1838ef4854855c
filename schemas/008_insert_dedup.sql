-- Idempotent span inserts. Every group commit carries an insert_deduplication_token, and an
-- insert whose outcome is unknown (a timeout, a lost connection) is sent again with the same
-- token (collector/writer.py): ClickHouse keeps the first copy that arrives and drops the others.
-- A plain MergeTree remembers tokens only with this window (the last N inserted blocks; a
-- replicated table uses replicated_deduplication_window instead). An INSERT without a token
-- into otel_traces is then deduplicated by its data's hash, as on a replicated table.
ALTER TABLE otel_traces MODIFY SETTING non_replicated_deduplication_window = 10000;
