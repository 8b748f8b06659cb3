-- Deleting a webhook was one cascading DELETE of every message it ever kept: with a large
-- backlog it ran for seconds while holding row locks that ingestion batches of other
-- webhooks then waited on. Now the delete removes only the webhook row and its counter row
-- (so the webhook is gone at once: nothing finds it, and ingestion, which locks the counter
-- row, stores nothing more for it); the trigger below records it, and the webhook sweeper
-- job removes its messages and idempotency keys afterwards, in bounded batches.
SET LOCAL lock_timeout = '5s';

CREATE TABLE deleted_webhooks (
    webhook_id uuid PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE messages DROP CONSTRAINT messages_webhook_id_fkey;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_webhook_id_fkey;

CREATE FUNCTION hookline_remember_deleted_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO deleted_webhooks (webhook_id) SELECT id FROM old_rows ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
-- Every way a webhook goes (its own delete, its project's) leaves its rows to the sweeper.
CREATE TRIGGER webhooks_deleted AFTER DELETE ON webhooks REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hookline_remember_deleted_webhooks();

-- The sweeper's step: removes up to p_limit rows (messages, then idempotency keys) of
-- deleted webhooks, oldest deletion first, and forgets a webhook once nothing of it is
-- left. Returns how many rows it removed. Another sweeper's webhook is skipped.
CREATE FUNCTION hookline_sweep_deleted_webhooks(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    gone uuid;
    remaining integer := p_limit;
    n integer;
BEGIN
    FOR gone IN SELECT webhook_id FROM deleted_webhooks ORDER BY deleted_at FOR UPDATE SKIP LOCKED LOOP
        DELETE FROM messages WHERE webhook_id = gone AND seq = ANY (ARRAY(
            SELECT seq FROM messages WHERE webhook_id = gone ORDER BY seq LIMIT remaining));
        GET DIAGNOSTICS n = ROW_COUNT;
        remaining := remaining - n;
        EXIT WHEN remaining = 0;
        DELETE FROM idempotency_keys WHERE webhook_id = gone AND key = ANY (ARRAY(
            SELECT key FROM idempotency_keys WHERE webhook_id = gone LIMIT remaining));
        GET DIAGNOSTICS n = ROW_COUNT;
        remaining := remaining - n;
        EXIT WHEN remaining = 0;
        DELETE FROM webhook_counts WHERE webhook_id = gone;
        DELETE FROM deleted_webhooks WHERE webhook_id = gone;
    END LOOP;
    RETURN p_limit - remaining;
END
$$;

-- An ingestion never waits long behind another transaction holding a webhook's counter row
-- or an idempotency key: after a second it fails with lock_not_available, and the group
-- committer retries each webhook's part of the batch alone, so other webhooks' messages in
-- that batch are written and only the blocked webhook's senders are told to retry.
ALTER FUNCTION hookline_ingest(uuid[], uuid[], integer[], bytea[], bytea[], smallint[], integer[], integer[])
    SET lock_timeout = '1s';
ALTER FUNCTION hookline_claim_idempotency_keys(uuid[], text[], uuid[]) SET lock_timeout = '1s';
