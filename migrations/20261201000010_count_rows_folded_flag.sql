-- The count folder merged every webhook's count rows older than an hour on every run,
-- base rows included: its work grew with the number of webhooks ever created, not with
-- the traffic. Rows it writes are now marked folded, so it finds the webhooks that have
-- something to fold (new rows, or minute buckets past the hour) from an index and takes
-- them in batches. Rows written by the previous release's folder read as new and are
-- folded once more, which leaves every sum unchanged.
--
-- A plain index build, not CONCURRENTLY, in the same transaction as the column: both hold
-- webhook_counts' exclusive lock until the migration commits, which stalls every statement
-- that counts (message writes, stats) for as long as the build takes. The folder keeps the
-- table to a few rows per webhook, so that is short; ingests that meet it wait up to their
-- 1 s lock timeout and answer 503 `busy`. A concurrent build would instead wait for every
-- older snapshot, among them a replica's migrator queued on sqlx's advisory lock, which
-- waits for this one (a deadlock).
SET LOCAL lock_timeout = '5s';

ALTER TABLE webhook_counts ADD COLUMN folded boolean NOT NULL DEFAULT false;
CREATE INDEX webhook_counts_fold_idx ON webhook_counts (folded, at) WHERE at > '-infinity';
