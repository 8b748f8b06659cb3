-- Two orderings. The TTL purger deleted (row-locked) messages and then waited for their
-- webhook rows, while a dequeue, commit or error holds the webhook row and then updates the
-- message: the two could deadlock. It now locks the webhook rows first (skipping busy ones,
-- which the next run takes), as a webhook's purge does. And a standard-mode message
-- released because its key is missing here steps aside for a few seconds (FIFO keeps it at
-- the head: order comes first there), so it does not answer every plain dequeue with 503.
SET LOCAL lock_timeout = '5s';

CREATE OR REPLACE FUNCTION hookline_purge_expired(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    webhook_ids uuid[];
    seqs bigint[];
    free uuid[];
    hook record;
BEGIN
    SELECT coalesce(array_agg(webhook_id), '{}'), coalesce(array_agg(seq), '{}') INTO webhook_ids, seqs
    FROM (SELECT webhook_id, seq FROM messages WHERE expires_at <= now() ORDER BY expires_at LIMIT p_limit) c;
    SELECT coalesce(array_agg(id), '{}') INTO free
    FROM (SELECT id FROM webhooks WHERE id = ANY (webhook_ids) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED) w;
    WITH doomed AS (
        SELECT m.ctid AS row_id
        FROM unnest(webhook_ids, seqs) AS c(webhook_id, seq)
        CROSS JOIN LATERAL (
            SELECT ctid FROM messages
            WHERE webhook_id = c.webhook_id AND seq = c.seq AND expires_at <= now()
            FOR UPDATE SKIP LOCKED
        ) m
        WHERE c.webhook_id = ANY (free)
    ), deleted AS (
        DELETE FROM messages WHERE ctid = ANY (ARRAY(SELECT row_id FROM doomed)) RETURNING webhook_id, seq
    )
    SELECT coalesce(array_agg(webhook_id), '{}'), coalesce(array_agg(seq), '{}') INTO webhook_ids, seqs FROM deleted;
    FOR hook IN
        SELECT d.webhook_id, array_agg(d.seq) AS seqs FROM unnest(webhook_ids, seqs) AS d(webhook_id, seq)
        GROUP BY d.webhook_id ORDER BY d.webhook_id
    LOOP
        PERFORM hookline_release_purged_lock(hook.webhook_id, hook.seqs);
    END LOOP;
    RETURN cardinality(seqs);
END
$$;

CREATE OR REPLACE FUNCTION hookline_release_lock(p_webhook uuid, p_message uuid, p_token uuid)
RETURNS void LANGUAGE sql AS $$
    WITH fifo AS (
        UPDATE webhooks SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
        WHERE id = p_webhook AND lock_token = p_token
        RETURNING id
    )
    UPDATE messages SET lock_token = NULL, lock_expires_at = NULL, deliver_at = now() + interval '5 seconds'
    WHERE webhook_id = p_webhook AND id = p_message AND lock_token = p_token
      AND NOT EXISTS (SELECT 1 FROM fifo)
$$;
