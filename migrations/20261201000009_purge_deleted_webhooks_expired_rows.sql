-- The TTL purger took the oldest expired messages, then kept only those whose webhook row
-- it could lock. Expired messages of a deleted webhook (its rows wait for the webhook
-- sweeper, migration 0007) have no webhook row: they filled the batch, were never deleted,
-- and the purger, seeing a short batch, stopped, so live webhooks' expired messages waited
-- until the sweeper was done. They are now purged like the rest.
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
    -- A deleted webhook's rows need no webhook lock (nothing can lock them any more).
    free := free || ARRAY(SELECT DISTINCT d.id FROM unnest(webhook_ids) AS d(id)
                          WHERE NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.id));
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
