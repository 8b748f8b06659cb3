-- Replay protection held in each process's memory: a second replica, or the same one after
-- a restart, accepted a request it had already stored. A signature that passed is now
-- claimed here, in the transaction that stores its message, so every replica sees it; it
-- is forgotten once it could no longer pass (after its window), by the TTL purger.
SET LOCAL lock_timeout = '5s';

CREATE TABLE seen_signatures (
    webhook_id uuid NOT NULL,
    -- SHA-256 of the signature that passed: fixed size whatever the sender sent.
    signature  bytea NOT NULL,
    expires_at timestamptz NOT NULL,
    CONSTRAINT seen_signatures_pkey PRIMARY KEY (webhook_id, signature)
);
CREATE INDEX seen_signatures_expires_idx ON seen_signatures (expires_at);

-- Claims the signatures of the messages that bring them (each at most once per call), in
-- key order so concurrent claimants cannot deadlock: a second claim of the same signature
-- waits for the first to commit or roll back, then loses or wins. An expired claim is free
-- to take again. Returns the message ids whose claim won; the others are replays.
CREATE FUNCTION hookline_claim_signatures(p_webhooks uuid[], p_signatures bytea[], p_windows integer[],
                                          p_messages uuid[])
RETURNS SETOF uuid LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH claim AS (
        SELECT * FROM unnest(p_webhooks, p_signatures, p_windows, p_messages)
            AS c(webhook_id, signature, window_seconds, message_id)
    ), won AS (
        INSERT INTO seen_signatures AS s (webhook_id, signature, expires_at)
        SELECT c.webhook_id, c.signature, now() + make_interval(secs => c.window_seconds)
        FROM claim c ORDER BY c.webhook_id, c.signature
        ON CONFLICT (webhook_id, signature) DO UPDATE SET expires_at = EXCLUDED.expires_at
            WHERE s.expires_at <= now()
        RETURNING s.webhook_id, s.signature
    )
    SELECT claim.message_id FROM claim JOIN won USING (webhook_id, signature);
END
$$;
-- Like the rest of ingestion, it never waits long on another transaction (migration 0007).
ALTER FUNCTION hookline_claim_signatures(uuid[], bytea[], integer[], uuid[]) SET lock_timeout = '1s';

-- The TTL purger's step for claims past their window.
CREATE FUNCTION hookline_purge_seen_signatures(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    purged integer;
BEGIN
    DELETE FROM seen_signatures WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM seen_signatures WHERE expires_at <= now() ORDER BY expires_at LIMIT p_limit));
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;
