-- A purge releases only the FIFO locks of the messages it deleted itself, decided under the
-- webhook row lock (a webhook's purge takes it before deleting, as a dequeue does). hookline_release_orphaned_locks decided by `NOT EXISTS (messages)` in its
-- statement's snapshot: when it waited behind a dequeue that had just locked a newer head
-- (ingested after that snapshot), the re-check saw no such message and cleared a live lock,
-- so a second consumer got the same message.
SET LOCAL lock_timeout = '5s';

-- Releases the webhook's FIFO lock if it is on one of `p_seqs` (messages the caller deleted).
-- The UPDATE waits for the row lock and re-checks `locked_seq` on the current row, so a lock
-- taken meanwhile on another message stays.
CREATE FUNCTION hookline_release_purged_lock(p_webhook uuid, p_seqs bigint[])
RETURNS void LANGUAGE sql AS $$
    UPDATE webhooks SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
    WHERE id = p_webhook AND locked_seq = ANY (p_seqs)
$$;

-- Up to p_limit live messages (queued, delayed or in flight) of the webhook, deleted
-- through the partial index of each kind in turn, then the lock one of them held. All of it
-- under the webhook row lock, taken first as a dequeue takes it (so the two never deadlock,
-- and no dequeue locks a message between the delete and the release). Returns how many.
CREATE OR REPLACE FUNCTION hookline_purge_live(p_webhook uuid, p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    gone bigint[];
    step bigint[];
BEGIN
    PERFORM 1 FROM webhooks WHERE id = p_webhook FOR NO KEY UPDATE;
    WITH doomed AS (
        SELECT ctid AS row_id FROM messages
        WHERE webhook_id = p_webhook AND state = 'queued' AND deliver_at IS NULL AND lock_token IS NULL
        LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), deleted AS (
        DELETE FROM messages WHERE ctid = ANY (ARRAY(SELECT row_id FROM doomed)) RETURNING seq
    )
    SELECT coalesce(array_agg(seq), '{}') INTO gone FROM deleted;
    IF cardinality(gone) < p_limit THEN
        WITH doomed AS (
            SELECT ctid AS row_id FROM messages
            WHERE webhook_id = p_webhook AND state = 'queued' AND deliver_at IS NOT NULL
            LIMIT p_limit - cardinality(gone) FOR UPDATE SKIP LOCKED
        ), deleted AS (
            DELETE FROM messages WHERE ctid = ANY (ARRAY(SELECT row_id FROM doomed)) RETURNING seq
        )
        SELECT coalesce(array_agg(seq), '{}') INTO step FROM deleted;
        gone := gone || step;
    END IF;
    IF cardinality(gone) < p_limit THEN
        WITH doomed AS (
            SELECT ctid AS row_id FROM messages
            WHERE webhook_id = p_webhook AND lock_token IS NOT NULL
            LIMIT p_limit - cardinality(gone) FOR UPDATE SKIP LOCKED
        ), deleted AS (
            DELETE FROM messages WHERE ctid = ANY (ARRAY(SELECT row_id FROM doomed)) RETURNING seq
        )
        SELECT coalesce(array_agg(seq), '{}') INTO step FROM deleted;
        gone := gone || step;
    END IF;
    PERFORM hookline_release_purged_lock(p_webhook, gone);
    RETURN cardinality(gone);
END
$$;

-- The TTL purger's step: up to p_limit messages past their TTL, in any state, then the FIFO
-- locks they held (webhook rows in id order). Returns how many messages.
CREATE OR REPLACE FUNCTION hookline_purge_expired(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    webhook_ids uuid[];
    seqs bigint[];
    hook record;
BEGIN
    WITH deleted AS (
        DELETE FROM messages m USING (
            SELECT webhook_id, seq FROM messages WHERE expires_at <= now()
            ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
        ) expired
        WHERE m.webhook_id = expired.webhook_id AND m.seq = expired.seq
        RETURNING m.webhook_id, m.seq
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

-- hookline_release_orphaned_locks is no longer called; the previous release's purge calls
-- it, so it stays until the release after this one.
