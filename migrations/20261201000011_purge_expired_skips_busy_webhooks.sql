-- The TTL purger takes the oldest expired messages and skips webhooks whose row another
-- transaction holds. When a busy webhook's messages were the oldest, they filled the batch,
-- nothing was deleted, and the purger, seeing a short batch, stopped: every other
-- webhook's expired messages waited for the next run, and the next. The new function is
-- told which webhooks were busy earlier in the run (their row, or a candidate message row,
-- held by another transaction) and looks past them, from where the last batch ended (so
-- their rows are not read again batch after batch); it says how many candidates it found,
-- so the caller goes on while there may be more. At the end of the run, each busy webhook
-- is taken alone (p_only), waiting briefly for its row.
-- hookline_purge_expired(integer) stays for the previous release's replicas: drop it in
-- the release after this one.
SET LOCAL lock_timeout = '5s';

CREATE FUNCTION hookline_purge_expired_skipping(p_limit integer, p_skip uuid[], p_from timestamptz,
                                                p_only uuid, OUT purged integer, OUT candidates integer, OUT busy uuid[],
                                                OUT reached timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    cand_webhooks uuid[];
    cand_seqs bigint[];
    webhook_ids uuid[];
    seqs bigint[];
    free uuid[];
    hook record;
BEGIN
    -- Everything expired before p_from (null: the start) was taken or belongs to a busy webhook.
    SELECT coalesce(array_agg(webhook_id), '{}'), coalesce(array_agg(seq), '{}'), max(expires_at)
    INTO cand_webhooks, cand_seqs, reached
    FROM (SELECT webhook_id, seq, expires_at FROM messages
          WHERE expires_at <= now() AND expires_at >= coalesce(p_from, '-infinity')
            AND (webhook_id = p_only OR (p_only IS NULL AND webhook_id <> ALL (p_skip)))
          ORDER BY expires_at LIMIT p_limit) c;
    candidates := cardinality(cand_seqs);
    reached := coalesce(reached, p_from);
    IF p_only IS NULL THEN
        SELECT coalesce(array_agg(id), '{}') INTO free
        FROM (SELECT id FROM webhooks WHERE id = ANY (cand_webhooks) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED) w;
    ELSE
        -- One webhook found busy earlier: wait a moment for its row (a webhook its consumers
        -- lock many times a second is rarely free the instant a batch passes).
        PERFORM set_config('lock_timeout', '1s', true);
        SELECT coalesce(array_agg(id), '{}') INTO free
        FROM (SELECT id FROM webhooks WHERE id = p_only AND id = ANY (cand_webhooks) FOR NO KEY UPDATE) w;
    END IF;
    -- A deleted webhook's rows need no webhook lock (nothing can lock them any more).
    free := free || ARRAY(SELECT DISTINCT d.id FROM unnest(cand_webhooks) AS d(id)
                          WHERE NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.id));
    WITH doomed AS (
        SELECT m.ctid AS row_id
        FROM unnest(cand_webhooks, cand_seqs) AS c(webhook_id, seq)
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
    -- Busy: a candidate left behind (its webhook row or its own row held elsewhere). Each
    -- batch either purges or marks a webhook busy, so a run always ends.
    busy := ARRAY(SELECT DISTINCT c.webhook_id FROM unnest(cand_webhooks, cand_seqs) AS c(webhook_id, seq)
                  WHERE NOT EXISTS (SELECT 1 FROM unnest(webhook_ids, seqs) AS d(webhook_id, seq)
                                    WHERE d.webhook_id = c.webhook_id AND d.seq = c.seq));
    FOR hook IN
        SELECT d.webhook_id, array_agg(d.seq) AS seqs FROM unnest(webhook_ids, seqs) AS d(webhook_id, seq)
        GROUP BY d.webhook_id ORDER BY d.webhook_id
    LOOP
        PERFORM hookline_release_purged_lock(hook.webhook_id, hook.seqs);
    END LOOP;
    purged := cardinality(seqs);
END
$$;

-- One copy of the rule: the old entry point is the new one with nothing to skip.
CREATE OR REPLACE FUNCTION hookline_purge_expired(p_limit integer)
RETURNS integer LANGUAGE sql AS $$
    SELECT purged FROM hookline_purge_expired_skipping(p_limit, '{}', NULL, NULL)
$$;
