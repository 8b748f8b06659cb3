-- The TTL purger takes the oldest expired messages and skips webhooks whose row another
-- transaction holds. When a busy webhook's messages were the oldest, they filled the batch,
-- nothing was deleted, and the purger, seeing a short batch, stopped: every other
-- webhook's expired messages waited for the next run, and the next. The new function is
-- told which webhooks were busy earlier in the run and looks past them, and says how many
-- candidates it found, so the caller goes on while there may be more.
-- hookline_purge_expired(integer) stays for the previous release's replicas.
SET LOCAL lock_timeout = '5s';

CREATE FUNCTION hookline_purge_expired_skipping(p_limit integer, p_skip uuid[],
                                                OUT purged integer, OUT candidates integer, OUT busy uuid[])
LANGUAGE plpgsql AS $$
DECLARE
    webhook_ids uuid[];
    seqs bigint[];
    free uuid[];
    hook record;
BEGIN
    SELECT coalesce(array_agg(webhook_id), '{}'), coalesce(array_agg(seq), '{}') INTO webhook_ids, seqs
    FROM (SELECT webhook_id, seq FROM messages
          WHERE expires_at <= now() AND webhook_id <> ALL (p_skip)
          ORDER BY expires_at LIMIT p_limit) c;
    candidates := cardinality(seqs);
    SELECT coalesce(array_agg(id), '{}') INTO free
    FROM (SELECT id FROM webhooks WHERE id = ANY (webhook_ids) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED) w;
    -- A deleted webhook's rows need no webhook lock (nothing can lock them any more).
    free := free || ARRAY(SELECT DISTINCT d.id FROM unnest(webhook_ids) AS d(id)
                          WHERE NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.id));
    busy := ARRAY(SELECT DISTINCT d.id FROM unnest(webhook_ids) AS d(id) WHERE d.id <> ALL (free));
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
    purged := cardinality(seqs);
END
$$;

-- One copy of the rule: the old entry point is the new one with nothing to skip.
CREATE OR REPLACE FUNCTION hookline_purge_expired(p_limit integer)
RETURNS integer LANGUAGE sql AS $$
    SELECT purged FROM hookline_purge_expired_skipping(p_limit, '{}')
$$;
