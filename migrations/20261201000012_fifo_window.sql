-- An ordered in-flight window: a FIFO webhook may lease up to `fifo_window` messages from
-- its head, in delivery order, to one consumer under one lock token. The lock stays on the
-- webhook row: `locked_seq` is the window's head (the only message that may be committed
-- next) and `window_rest` the rest, in order. A window of one is today's lock, so every
-- function keeps its meaning for webhooks that do not opt in.
--
-- Replaced here, each for the window (the previous release's callers keep their
-- signatures): hookline_held_lock (a window's messages hold its lock), hookline_lock_next
-- (leases a window; hookline_lock_head is gone), hookline_commit (a wrapper of the new
-- hookline_commit_next, which commits in order and leases a next window of any size),
-- hookline_error, hookline_release_lock and hookline_bury (a window loses the message and
-- what follows it), hookline_release_purged_lock (a purged member releases its window) and
-- hookline_lock_message (reports window members locked).
SET LOCAL lock_timeout = '5s';

ALTER TABLE webhooks ADD COLUMN fifo_window integer NOT NULL DEFAULT 1
    CONSTRAINT webhooks_fifo_window_range CHECK (fifo_window BETWEEN 1 AND 100);
-- Not indexed, like the rest of the lock: moving a window's head is a HOT update.
-- (The new column is NULL everywhere, so its constraint is checked at once.)
ALTER TABLE webhooks ADD COLUMN window_rest bigint[]
    CONSTRAINT webhooks_window_locked
    CHECK (window_rest IS NULL OR (locked_seq IS NOT NULL AND cardinality(window_rest) > 0));

ALTER TYPE lock_refusal ADD VALUE 'out_of_order';

-- Every release of a FIFO lock (commit, error, expiry, purge, a key this replica lacks)
-- releases the window it heads: the rest return to the queue at their positions, with no
-- attempt counted. One rule, whichever function clears the lock.
CREATE FUNCTION hookline_release_window() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.window_rest := NULL;
    RETURN NEW;
END
$$;

CREATE TRIGGER webhooks_window_released BEFORE UPDATE OF locked_seq ON webhooks
    FOR EACH ROW WHEN (NEW.locked_seq IS NULL AND NEW.window_rest IS NOT NULL)
    EXECUTE FUNCTION hookline_release_window();

-- As before (migration 0005), with a window: each of its messages holds the lock.
CREATE OR REPLACE FUNCTION hookline_held_lock(hook webhooks, p_message uuid, p_token uuid)
RETURNS held_lock LANGUAGE plpgsql AS $$
DECLARE
    found_seq bigint;
    found_state message_state;
    holder uuid;
BEGIN
    IF p_token IS NULL AND hook.require_lock_token THEN
        RETURN (NULL, 'token_required', NULL)::held_lock;
    END IF;
    IF hook.mode = 'fifo' THEN
        SELECT m.seq, m.state,
               CASE WHEN m.seq = hook.locked_seq OR m.seq = ANY (hook.window_rest) THEN hook.lock_token END
        INTO found_seq, found_state, holder
        FROM messages m WHERE m.webhook_id = hook.id AND m.id = p_message;
    ELSE
        SELECT m.seq, m.state, m.lock_token INTO found_seq, found_state, holder
        FROM messages m WHERE m.webhook_id = hook.id AND m.id = p_message FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RETURN (NULL, 'no_message', NULL)::held_lock;
    ELSIF found_state <> 'queued' OR holder IS NULL THEN
        RETURN (found_seq, 'not_locked', found_state)::held_lock;
    ELSIF p_token IS NOT NULL AND holder <> p_token THEN
        RETURN (found_seq, 'lock_mismatch', found_state)::held_lock;
    END IF;
    RETURN (found_seq, NULL, found_state)::held_lock;
END
$$;

-- FIFO: leases up to p_max (at most the webhook's fifo_window) messages from the head, in
-- delivery order (highest priority, lowest seq; due, unexpired), unless the webhook holds an
-- unexpired lock (head-of-line blocking). An expired lock is a failed attempt of its head
-- only, released first (the rest of its window return uncounted), so a crashed consumer
-- costs only its timeout. (A consumer that crashes on a later message of its window thus
-- spends the head's retries: the window is one consumer's lease, and its head is what it
-- owed first.) The caller holds the webhook row lock.
CREATE FUNCTION hookline_lock_window(hook webhooks, p_max integer)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
DECLARE
    token uuid := gen_random_uuid();
    expires timestamptz := now() + make_interval(secs => hook.lock_timeout_seconds);
    leased locked_message[];
BEGIN
    IF hook.locked_seq IS NOT NULL THEN
        IF hook.lock_expires_at > now() THEN
            RETURN;
        END IF;
        PERFORM hookline_fail_attempts(hook.id, ARRAY[hook.locked_seq], hook.max_retries, 'lock expired');
    END IF;

    PERFORM hookline_promote_due(hook.id);
    leased := ARRAY(
        SELECT (m.id, m.seq, m.retry_count, hook.max_retries, token, expires, m.received_at,
                m.key_id, m.nonce, m.ciphertext, m.priority)::locked_message
        FROM messages m
        WHERE m.webhook_id = hook.id AND m.state = 'queued' AND m.deliver_at IS NULL AND m.lock_token IS NULL
          AND m.expires_at > now()
        ORDER BY m.priority DESC, m.seq LIMIT least(p_max, hook.fifo_window));
    IF cardinality(leased) = 0 THEN
        RETURN;
    END IF;

    UPDATE webhooks
    SET locked_seq = leased[1].seq, lock_token = token, lock_expires_at = expires,
        window_rest = nullif(ARRAY(SELECT l.seq FROM unnest(leased[2:]) l), '{}')
    WHERE id = hook.id;
    RETURN QUERY SELECT * FROM unnest(leased);
END
$$;

-- See the baseline: finding a head must always be the ordered index scan.
ALTER FUNCTION hookline_lock_window(webhooks, integer) SET enable_sort = off;

-- As before (baseline section 4), with FIFO leasing a window of up to p_max.
CREATE OR REPLACE FUNCTION hookline_lock_next(hook webhooks, p_max integer)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
BEGIN
    IF hook.mode = 'fifo' THEN
        RETURN QUERY SELECT * FROM hookline_lock_window(hook, p_max);
    ELSE
        RETURN QUERY SELECT * FROM hookline_lock_available(hook, p_max);
    END IF;
END
$$;

DROP FUNCTION hookline_lock_head(webhooks);

-- The FIFO lock `p_token` holds loses `p_seq` and every message after it in its window:
-- they return to the queue at their positions, uncounted; losing the head releases the
-- lock. Whether the lock held `p_seq`. The caller holds the webhook row lock.
CREATE FUNCTION hookline_shrink_window(p_webhook uuid, p_token uuid, p_seq bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE webhooks w
    SET locked_seq = CASE WHEN w.locked_seq = p_seq THEN NULL ELSE w.locked_seq END,
        lock_token = CASE WHEN w.locked_seq = p_seq THEN NULL ELSE w.lock_token END,
        lock_expires_at = CASE WHEN w.locked_seq = p_seq THEN NULL ELSE w.lock_expires_at END,
        window_rest = CASE WHEN w.locked_seq = p_seq THEN NULL
                           ELSE nullif(w.window_rest[:array_position(w.window_rest, p_seq) - 1], '{}') END
    WHERE w.id = p_webhook AND w.lock_token = p_token AND (w.locked_seq = p_seq OR p_seq = ANY (w.window_rest));
    RETURN FOUND;
END
$$;

-- locked -> committed in either mode; then, with p_next > 0, lease up to p_next messages
-- (FIFO: at most fifo_window) and return them. A window is committed in the order it was
-- leased: committing any message but its head is refused (out_of_order); the head's commit
-- makes the next message the head, and only the last one's releases the lock (so p_next
-- leases nothing while the window holds more). One row without message columns for a
-- refusal or a commit with nothing next, else a row per message leased.
CREATE FUNCTION hookline_commit_next(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_next integer)
RETURNS TABLE (refusal lock_refusal, state message_state, id uuid, seq bigint, retry_count integer,
               max_retries integer, lock_token uuid, lock_expires_at timestamptz, received_at timestamptz,
               key_id integer, nonce bytea, ciphertext bytea, priority smallint)
LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_delivery_webhook(p_webhook, p_project);
    held held_lock := hookline_held_lock(hook, p_message, p_token);
BEGIN
    IF held.refusal IS NULL AND hook.mode = 'fifo' AND held.seq <> hook.locked_seq THEN
        held.refusal := 'out_of_order';
    END IF;
    IF held.refusal IS NULL THEN
        UPDATE messages m SET state = 'committed', committed_at = now(), lock_token = NULL, lock_expires_at = NULL
        WHERE m.webhook_id = hook.id AND m.seq = held.seq;
        held.state := 'committed';
        IF hook.mode = 'fifo' THEN
            UPDATE webhooks w
            SET locked_seq = w.window_rest[1],
                lock_token = CASE WHEN w.window_rest IS NOT NULL THEN w.lock_token END,
                lock_expires_at = CASE WHEN w.window_rest IS NOT NULL THEN w.lock_expires_at END,
                window_rest = nullif(w.window_rest[2:], '{}')
            WHERE w.id = hook.id
            RETURNING w.* INTO hook;
        END IF;
        IF p_next > 0 AND hook.locked_seq IS NULL THEN
            RETURN QUERY SELECT NULL::lock_refusal, held.state, n.* FROM hookline_lock_next(hook, p_next) n;
            IF FOUND THEN
                RETURN;
            END IF;
        END IF;
    END IF;
    -- A refusal, or a commit with nothing next: no message columns.
    RETURN QUERY SELECT held.refusal, held.state, (NULL::locked_message).*;
END
$$;

-- The previous release's commit: next is one message.
CREATE OR REPLACE FUNCTION hookline_commit(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_next boolean)
RETURNS TABLE (refusal lock_refusal, state message_state, id uuid, seq bigint, retry_count integer,
               max_retries integer, lock_token uuid, lock_expires_at timestamptz, received_at timestamptz,
               key_id integer, nonce bytea, ciphertext bytea, priority smallint)
LANGUAGE sql AS $$
    SELECT * FROM hookline_commit_next(p_webhook, p_project, p_message, p_token, CASE WHEN p_next THEN 1 ELSE 0 END)
$$;

-- As before (baseline section 5); in a window, the messages after the errored one return to
-- the queue with it, uncounted, and those before it stay leased.
CREATE OR REPLACE FUNCTION hookline_error(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid,
                                          p_reason text, p_requeue boolean,
                                          OUT refusal lock_refusal, OUT state message_state, OUT retry_count integer,
                                          OUT max_retries integer)
LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_delivery_webhook(p_webhook, p_project);
    held held_lock := hookline_held_lock(hook, p_message, p_token);
BEGIN
    refusal := held.refusal;
    state := held.state;
    max_retries := hook.max_retries;
    IF held.refusal IS NULL THEN
        IF hook.mode = 'fifo' THEN
            PERFORM hookline_shrink_window(hook.id, hook.lock_token, held.seq);
        END IF;
        SELECT f.new_state, f.new_retry_count INTO state, retry_count
        FROM hookline_fail_attempts(hook.id, ARRAY[held.seq], hook.max_retries, p_reason, p_requeue) f;
        -- The row went (purged, expired) after the check: nothing was errored.
        IF NOT FOUND THEN
            refusal := 'no_message';
        END IF;
    END IF;
END
$$;

-- As before (migration 0006: a standard-mode message waits 5 s, so a replica that has the
-- key gets it first); in a FIFO window, the message and those after it return.
CREATE OR REPLACE FUNCTION hookline_release_lock(p_webhook uuid, p_message uuid, p_token uuid)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT hookline_shrink_window(p_webhook, p_token,
                                  (SELECT seq FROM messages WHERE webhook_id = p_webhook AND id = p_message)) THEN
        UPDATE messages SET lock_token = NULL, lock_expires_at = NULL, deliver_at = now() + interval '5 seconds'
        WHERE webhook_id = p_webhook AND id = p_message AND lock_token = p_token;
    END IF;
END
$$;

-- As before (baseline section 5); in a FIFO window, the messages after it return.
CREATE OR REPLACE FUNCTION hookline_bury(p_webhook uuid, p_message uuid, p_token uuid, p_reason text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    fifo boolean := hookline_shrink_window(p_webhook, p_token,
                                           (SELECT seq FROM messages WHERE webhook_id = p_webhook AND id = p_message));
BEGIN
    UPDATE messages m
    SET state = 'dead', dead_at = now(), last_error = p_reason, lock_token = NULL, lock_expires_at = NULL
    WHERE m.webhook_id = p_webhook AND m.id = p_message AND m.state = 'queued'
      AND (m.lock_token = p_token OR fifo);
END
$$;

-- As before (migration 0002), for a window's members too: the window loses its first
-- purged member and what follows it (released whole when that is the head); the messages
-- before it stay with their consumer.
CREATE OR REPLACE FUNCTION hookline_release_purged_lock(p_webhook uuid, p_seqs bigint[])
RETURNS void LANGUAGE sql AS $$
    SELECT hookline_shrink_window(w.id, w.lock_token, CASE WHEN w.locked_seq = ANY (p_seqs) THEN w.locked_seq ELSE
               (SELECT r.seq FROM unnest(w.window_rest) WITH ORDINALITY AS r(seq, k)
                WHERE r.seq = ANY (p_seqs) ORDER BY r.k LIMIT 1) END)
    FROM webhooks w
    WHERE w.id = p_webhook AND (w.locked_seq = ANY (p_seqs) OR w.window_rest && p_seqs)
$$;

-- As before (baseline section 6), a window's members reported locked.
CREATE OR REPLACE FUNCTION hookline_lock_message(p_webhook uuid, p_project bigint, p_message uuid,
                                                 OUT seq bigint, OUT state message_state, OUT locked boolean)
RETURNS SETOF record LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM webhooks w WHERE w.id = p_webhook AND w.project_id = p_project;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook not found' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY
    SELECT m.seq, m.state, coalesce(w.locked_seq = m.seq OR m.seq = ANY (w.window_rest), false) OR m.lock_token IS NOT NULL
    FROM messages m JOIN webhooks w ON w.id = m.webhook_id
    WHERE m.webhook_id = p_webhook AND m.id = p_message
    FOR UPDATE OF m;
END
$$;
