-- Consumer group commit, set-based for its common case. A batch of commits (and
-- commit-and-next calls) ran hookline_commit_next once per item: about ten statements
-- each (the webhook read and lock, the lock check, the commit, the release, promoting due
-- messages, the head lookup, the new lock, the counters' insert, a wake-up NOTIFY), and
-- PostgreSQL's CPU per statement bounded strict-FIFO consumption across many webhooks
-- (BENCHMARKS.md). This function takes, of a batch, every item that is the plain case (a
-- commit of the head of a one-message FIFO lock by its holder, its webhook named once in
-- the batch, with at most one message next) and does their work in a few statements for
-- all of them; the caller runs every other item through hookline_commit_next as before, so
-- refusals, windows and standard mode keep their one definition. The rules it applies
-- are hookline_held_lock's, hookline_commit_next's and hookline_lock_window's for that
-- case; tests/api/commit_heads.rs checks the two paths answer alike. (One difference: a
-- commit with a message next writes the webhook row once, so it sends no wake-up NOTIFY
-- for a lock that is taken again at once.)
SET LOCAL lock_timeout = '5s';

-- The caller holds the webhook rows (locked in id order). p_next: how many to lease after
-- the commit (0 or 1 taken here). Returns, for each item taken, its ordinal and the message
-- leased next (columns null when none was asked or there is none), in no particular order.
CREATE FUNCTION hookline_commit_heads(p_webhooks uuid[], p_projects bigint[], p_messages uuid[], p_tokens uuid[],
                                      p_next integer[])
RETURNS TABLE (i bigint, id uuid, seq bigint, retry_count integer, max_retries integer, lock_token uuid,
               lock_expires_at timestamptz, received_at timestamptz, key_id integer, nonce bytea,
               ciphertext bytea, priority smallint)
LANGUAGE plpgsql AS $$
DECLARE
    taken bigint[];
    hooks uuid[];
    seqs bigint[];
    wants uuid[];
BEGIN
    -- The plain case, decided as hookline_held_lock decides it.
    SELECT array_agg(c.i ORDER BY c.i), array_agg(w.id ORDER BY c.i), array_agg(m.seq ORDER BY c.i),
           array_agg(w.id ORDER BY c.i) FILTER (WHERE c.next = 1)
    INTO taken, hooks, seqs, wants
    FROM unnest(p_webhooks, p_projects, p_messages, p_tokens, p_next) WITH ORDINALITY
         AS c(webhook, project, message, token, next, i)
    JOIN webhooks w ON w.id = c.webhook AND w.project_id = c.project
    CROSS JOIN LATERAL (SELECT m.seq, m.state FROM messages m WHERE m.webhook_id = w.id AND m.id = c.message) m
    WHERE c.next <= 1 AND w.mode = 'fifo' AND w.window_rest IS NULL AND m.seq = w.locked_seq AND m.state = 'queued'
      AND (c.token = w.lock_token OR (c.token IS NULL AND NOT w.require_lock_token))
      AND (SELECT count(*) FROM unnest(p_webhooks) AS o(webhook) WHERE o.webhook = c.webhook) = 1;
    IF taken IS NULL THEN
        RETURN;
    END IF;

    -- One primary-key probe per head (a LATERAL with FOR UPDATE is never flattened into a
    -- join, which a generic plan could turn into a scan of the whole table).
    UPDATE messages m SET state = 'committed', committed_at = now(), lock_token = NULL, lock_expires_at = NULL
    WHERE m.ctid = ANY (ARRAY(
        SELECT x.row_id FROM unnest(hooks, seqs) AS t(webhook, seq)
        CROSS JOIN LATERAL (SELECT h.ctid AS row_id FROM messages h
                            WHERE h.webhook_id = t.webhook AND h.seq = t.seq FOR UPDATE) x));

    -- What comes next, for the items that asked: due delayed messages join the line first.
    IF wants IS NOT NULL THEN
        WITH due AS (
            SELECT ctid AS row_id FROM messages
            WHERE webhook_id = ANY (wants) AND state = 'queued' AND deliver_at <= now()
            FOR UPDATE SKIP LOCKED
        )
        UPDATE messages SET deliver_at = NULL WHERE ctid = ANY (ARRAY(SELECT row_id FROM due));
    END IF;

    RETURN QUERY
    WITH heads AS (
        SELECT w.id AS webhook, h.*, gen_random_uuid() AS token,
               now() + make_interval(secs => w.lock_timeout_seconds) AS expires, w.max_retries
        FROM webhooks w
        CROSS JOIN LATERAL (
            SELECT m.id, m.seq, m.retry_count, m.received_at, m.key_id, m.nonce, m.ciphertext, m.priority
            FROM messages m
            WHERE m.webhook_id = w.id AND m.state = 'queued' AND m.deliver_at IS NULL AND m.lock_token IS NULL
              AND m.expires_at > now()
            ORDER BY m.priority DESC, m.seq LIMIT 1) h
        WHERE w.id = ANY (wants)
    ), relocked AS (
        -- One write per webhook: the next lock, or the release (which wakes long-polls).
        UPDATE webhooks w
        SET locked_seq = heads.seq, lock_token = heads.token, lock_expires_at = heads.expires
        FROM unnest(hooks) AS t(webhook) LEFT JOIN heads ON heads.webhook = t.webhook
        WHERE w.id = t.webhook
        RETURNING w.id
    )
    SELECT c.i, heads.id, heads.seq, heads.retry_count, heads.max_retries, heads.token, heads.expires,
           heads.received_at, heads.key_id, heads.nonce, heads.ciphertext, heads.priority
    FROM unnest(taken, hooks) AS c(i, webhook)
    LEFT JOIN heads ON heads.webhook = c.webhook
    WHERE (SELECT count(*) FROM relocked) >= 0;
END
$$;

-- As the baseline's head lookups: always the ordered scan of the ready index. Nothing here
-- sorts (a sort priced as disabled once made the plan look costly enough to JIT-compile,
-- 400 ms per call), and JIT never pays for statements this small.
ALTER FUNCTION hookline_commit_heads(uuid[], bigint[], uuid[], uuid[], integer[]) SET enable_sort = off;
ALTER FUNCTION hookline_commit_heads(uuid[], bigint[], uuid[], uuid[], integer[]) SET jit = off;
