-- Deduplication of ingested webhooks becomes opt-in. Every ingestion POST is a new message
-- unless its webhook sets `dedup_key`: the header (`header:<name>`) or the JSON pointer into
-- the body (`/id`) where the sender puts its event id; a repeat within
-- `dedup_window_seconds` answers the original. (Before, an `Idempotency-Key` header always
-- collapsed ingests, so a sender that happened to set it lost deliveries.) Keys still live in
-- idempotency_keys, purged after 24 hours, so no window is longer.
SET LOCAL lock_timeout = '5s';

ALTER TABLE webhooks ADD COLUMN dedup_key text
    CONSTRAINT webhooks_dedup_key_form
    CHECK (dedup_key ~ '^(header:[a-z0-9!#$%&''*+.^_`|~-]{1,100}|/.{0,199})$');
ALTER TABLE webhooks ADD COLUMN dedup_window_seconds integer NOT NULL DEFAULT 86400
    CONSTRAINT webhooks_dedup_window_range CHECK (dedup_window_seconds BETWEEN 1 AND 86400);

-- Webhooks that used the Standard Webhooks id keep it (the webhooks table is small: one
-- statement). The old column stays for the previous release, written alongside.
UPDATE webhooks SET dedup_key = 'header:webhook-id' WHERE idempotency_from_webhook_id;

-- The window of the claim that wrote the row (NULL: 24 hours, as the previous release
-- claims). ON CONFLICT can compare only columns, so a new claim brings its window here and
-- takes over a row older than it.
ALTER TABLE idempotency_keys ADD COLUMN window_seconds integer;

-- As the baseline's claim, each key with its own window: a claim older than its window is
-- taken over by the new message.
CREATE FUNCTION hookline_claim_idempotency_keys(p_webhooks uuid[], p_keys text[], p_messages uuid[],
                                                p_windows integer[])
RETURNS SETOF uuid LANGUAGE plpgsql SET lock_timeout = '1s' AS $$
BEGIN
    RETURN QUERY
    INSERT INTO idempotency_keys AS k (webhook_id, key, message_id, window_seconds)
    SELECT c.webhook_id, c.key, c.message_id, c.window_seconds
    FROM unnest(p_webhooks, p_keys, p_messages, p_windows) WITH ORDINALITY AS c(webhook_id, key, message_id, window_seconds, ord)
    WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = c.webhook_id)
    ORDER BY c.ord
    ON CONFLICT (webhook_id, key) DO UPDATE
        SET message_id = EXCLUDED.message_id, seq = NULL, created_at = now(), window_seconds = EXCLUDED.window_seconds
        WHERE k.created_at <= now() - make_interval(secs => coalesce(EXCLUDED.window_seconds, 86400))
    RETURNING k.message_id;
END
$$;
