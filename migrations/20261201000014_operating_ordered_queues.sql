-- Operating an ordered queue: what an operator needs to see why a webhook is blocked and to
-- act without breaking order or losing a message.
--
-- * Attempts by cause: a message counts its errors and its lock expiries apart (retry_count
--   stays their sum, from this release on), and when it last failed.
-- * The lock's history: when it was taken and how often it was extended (a trigger sets
--   the first whenever a new lock token is written, so every path that leases keeps it).
-- * Skip: an operator moves the head to the dead-letter queue, recording who and why; the
--   lock it held is fenced (`superseded_tokens`, the last 16 fenced): its consumer's later
--   calls are refused with `lock_superseded`, not an ambiguous mismatch.
-- * Pause and hold: a paused webhook (an operator's) or a held one (a consumer's, for a
--   downstream outage, until `held_until`) delivers nothing; ingestion goes on, and an
--   in-flight lock may still be committed. Every lease goes through hookline_lock_next or
--   hookline_commit_heads, and both check it.
SET LOCAL lock_timeout = '5s';

CREATE TYPE attempt_cause AS ENUM ('error', 'lock_expired');

ALTER TABLE messages ADD COLUMN error_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN expiry_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN last_error_at timestamptz;
-- The API key that skipped the message to the dead-letter queue (its reason is last_error).
ALTER TABLE messages ADD COLUMN skipped_by text;

-- Like the rest of the lock, none of these is indexed: writing them stays a HOT update.
ALTER TABLE webhooks ADD COLUMN lock_acquired_at timestamptz;
ALTER TABLE webhooks ADD COLUMN lock_extensions integer NOT NULL DEFAULT 0;
ALTER TABLE webhooks ADD COLUMN superseded_tokens uuid[];
ALTER TABLE webhooks ADD COLUMN paused_at timestamptz;
ALTER TABLE webhooks ADD COLUMN held_until timestamptz;

ALTER TYPE lock_refusal ADD VALUE 'lock_superseded';

-- A new lock (a new token) starts its history.
CREATE FUNCTION hookline_lock_taken() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.lock_acquired_at := now();
    NEW.lock_extensions := 0;
    RETURN NEW;
END
$$;

CREATE TRIGGER webhooks_lock_taken BEFORE UPDATE OF lock_token ON webhooks
    FOR EACH ROW WHEN (NEW.lock_token IS NOT NULL AND NEW.lock_token IS DISTINCT FROM OLD.lock_token)
    EXECUTE FUNCTION hookline_lock_taken();

-- Whether the webhook delivers nothing now: paused by an operator, or held by a consumer.
CREATE FUNCTION hookline_withheld(hook webhooks) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT hook.paused_at IS NOT NULL OR coalesce(hook.held_until > now(), false)
$$;

-- As before (migration 0012), with a fenced token named as such: a consumer whose lock an
-- operator skipped learns that, not that its lock was handed to someone else.
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
    ELSIF p_token = ANY (hook.superseded_tokens) AND holder IS DISTINCT FROM p_token THEN
        RETURN (found_seq, 'lock_superseded', found_state)::held_lock;
    ELSIF found_state <> 'queued' OR holder IS NULL THEN
        RETURN (found_seq, 'not_locked', found_state)::held_lock;
    ELSIF p_token IS NOT NULL AND holder <> p_token THEN
        RETURN (found_seq, 'lock_mismatch', found_state)::held_lock;
    END IF;
    RETURN (found_seq, NULL, found_state)::held_lock;
END
$$;

-- As before (baseline section 5), with the cause counted: failed attempts on locked
-- messages of one webhook, each back to its position with retry_count + 1, or dead at
-- max_retries or without requeue; their locks released. The one place this rule is written.
CREATE FUNCTION hookline_fail_attempts(p_webhook uuid, p_seqs bigint[], p_max_retries integer, p_reason text,
                                       p_cause attempt_cause, p_requeue boolean DEFAULT true)
RETURNS TABLE (failed_seq bigint, new_state message_state, new_retry_count integer) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    UPDATE messages m
    SET state = CASE WHEN NOT p_requeue OR m.retry_count + 1 >= p_max_retries
                     THEN 'dead'::message_state ELSE 'queued'::message_state END,
        dead_at = CASE WHEN NOT p_requeue OR m.retry_count + 1 >= p_max_retries THEN now() END,
        retry_count = m.retry_count + 1,
        error_attempts = m.error_attempts + (p_cause = 'error')::int,
        expiry_attempts = m.expiry_attempts + (p_cause = 'lock_expired')::int,
        last_error = p_reason,
        last_error_at = now(),
        lock_token = NULL,
        lock_expires_at = NULL
    WHERE m.webhook_id = p_webhook AND m.seq = ANY (p_seqs) AND m.state = 'queued'
    RETURNING m.seq, m.state, m.retry_count;
    -- FIFO: the webhook's lock (no row matches in standard mode).
    UPDATE webhooks SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
    WHERE id = p_webhook AND locked_seq = ANY (p_seqs);
END
$$;

-- As before (migration 0012), the expiry counted as one.
CREATE OR REPLACE FUNCTION hookline_lock_window(hook webhooks, p_max integer)
RETURNS SETOF locked_message LANGUAGE plpgsql SET enable_sort = off AS $$
DECLARE
    token uuid := gen_random_uuid();
    expires timestamptz := now() + make_interval(secs => hook.lock_timeout_seconds);
    leased locked_message[];
BEGIN
    IF hook.locked_seq IS NOT NULL THEN
        IF hook.lock_expires_at > now() THEN
            RETURN;
        END IF;
        PERFORM hookline_fail_attempts(hook.id, ARRAY[hook.locked_seq], hook.max_retries, 'lock expired',
                                       'lock_expired');
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

-- As before (migration 0012), leasing nothing while the webhook is paused or held.
CREATE OR REPLACE FUNCTION hookline_lock_next(hook webhooks, p_max integer)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
BEGIN
    IF hookline_withheld(hook) THEN
        RETURN;
    ELSIF hook.mode = 'fifo' THEN
        RETURN QUERY SELECT * FROM hookline_lock_window(hook, p_max);
    ELSE
        RETURN QUERY SELECT * FROM hookline_lock_available(hook, p_max);
    END IF;
END
$$;

-- An error (NACK) in either mode, as hookline_error (migration 0012) did; with p_hold (seconds),
-- the downstream is down, not the message: it returns to its position with no attempt
-- counted (its reason kept), and the webhook is held, delivering nothing, until then.
CREATE FUNCTION hookline_nack(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_reason text,
                              p_requeue boolean, p_hold integer,
                              OUT refusal lock_refusal, OUT state message_state, OUT retry_count integer,
                              OUT max_retries integer, OUT held_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_delivery_webhook(p_webhook, p_project);
    held held_lock := hookline_held_lock(hook, p_message, p_token);
BEGIN
    refusal := held.refusal;
    state := held.state;
    max_retries := hook.max_retries;
    IF held.refusal IS NOT NULL THEN
        RETURN;
    END IF;
    IF hook.mode = 'fifo' THEN
        PERFORM hookline_shrink_window(hook.id, hook.lock_token, held.seq);
    END IF;
    IF p_hold IS NULL THEN
        SELECT f.new_state, f.new_retry_count INTO state, retry_count
        FROM hookline_fail_attempts(hook.id, ARRAY[held.seq], hook.max_retries, p_reason, 'error', p_requeue) f;
    ELSE
        UPDATE messages m SET lock_token = NULL, lock_expires_at = NULL, last_error = p_reason, last_error_at = now()
        WHERE m.webhook_id = hook.id AND m.seq = held.seq AND m.state = 'queued'
        RETURNING m.state, m.retry_count INTO state, retry_count;
    END IF;
    -- The row went (purged, expired) after the check: nothing was errored.
    IF NOT FOUND THEN
        refusal := 'no_message';
    ELSIF p_hold IS NOT NULL THEN
        UPDATE webhooks w SET held_until = greatest(w.held_until, now() + make_interval(secs => p_hold))
        WHERE w.id = hook.id
        RETURNING w.held_until INTO hookline_nack.held_until;
    END IF;
END
$$;

-- The previous release's error: no hold.
CREATE OR REPLACE FUNCTION hookline_error(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid,
                                          p_reason text, p_requeue boolean,
                                          OUT refusal lock_refusal, OUT state message_state, OUT retry_count integer,
                                          OUT max_retries integer)
LANGUAGE sql AS $$
    SELECT n.refusal, n.state, n.retry_count, n.max_retries
    FROM hookline_nack(p_webhook, p_project, p_message, p_token, p_reason, p_requeue, NULL) n
$$;

-- As before (baseline section 5), counting the extension.
CREATE OR REPLACE FUNCTION hookline_extend(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid,
                                           p_seconds integer, OUT refusal lock_refusal, OUT state message_state,
                                           OUT lock_expires_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_delivery_webhook(p_webhook, p_project);
    held held_lock := hookline_held_lock(hook, p_message, p_token);
BEGIN
    refusal := held.refusal;
    state := held.state;
    IF held.refusal IS NOT NULL THEN
        RETURN;
    END IF;
    lock_expires_at := now() + make_interval(secs => p_seconds);
    IF hook.mode = 'fifo' THEN
        UPDATE webhooks w SET lock_expires_at = hookline_extend.lock_expires_at, lock_extensions = w.lock_extensions + 1
        WHERE w.id = hook.id;
    ELSE
        UPDATE messages m SET lock_expires_at = hookline_extend.lock_expires_at
        WHERE m.webhook_id = hook.id AND m.seq = held.seq;
    END IF;
END
$$;

-- As before (baseline section 5), each expiry counted as one.
CREATE OR REPLACE FUNCTION hookline_expire_webhook_locks(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE;
    released integer := 0;
BEGIN
    FOR hook IN
        SELECT * FROM webhooks
        WHERE locked_seq IS NOT NULL AND lock_expires_at <= now()
        ORDER BY lock_expires_at LIMIT p_limit
        FOR NO KEY UPDATE SKIP LOCKED
    LOOP
        PERFORM hookline_fail_attempts(hook.id, ARRAY[hook.locked_seq], hook.max_retries, 'lock expired',
                                       'lock_expired');
        released := released + 1;
    END LOOP;
    RETURN released;
END
$$;

CREATE OR REPLACE FUNCTION hookline_expire_message_locks(p_webhook uuid, p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    expired record;
    released integer := 0;
BEGIN
    FOR expired IN
        WITH picked AS (
            SELECT m.webhook_id, m.seq FROM messages m
            WHERE m.lock_token IS NOT NULL AND m.lock_expires_at <= now()
              AND (p_webhook IS NULL OR m.webhook_id = p_webhook)
            ORDER BY m.lock_expires_at LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        )
        SELECT p.webhook_id, array_agg(p.seq) AS seqs,
               (SELECT w.max_retries FROM webhooks w WHERE w.id = p.webhook_id) AS max_retries
        FROM picked p GROUP BY p.webhook_id
    LOOP
        released := released + (SELECT count(*) FROM hookline_fail_attempts(expired.webhook_id, expired.seqs,
                                                                             expired.max_retries, 'lock expired',
                                                                             'lock_expired'));
    END LOOP;
    RETURN released;
END
$$;

-- Every caller of the old signature is replaced above.
DROP FUNCTION hookline_fail_attempts(uuid, bigint[], integer, text, boolean);

-- As before (baseline section 6); a retried message starts its attempts again.
CREATE OR REPLACE FUNCTION hookline_redrive(p_webhook uuid, p_seqs bigint[], p_discard boolean)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    acted integer;
BEGIN
    IF p_discard THEN
        DELETE FROM messages WHERE webhook_id = p_webhook AND seq = ANY (p_seqs) AND state = 'dead';
    ELSE
        UPDATE messages
        SET state = 'queued', retry_count = 0, error_attempts = 0, expiry_attempts = 0, dead_at = NULL,
            skipped_by = NULL
        WHERE webhook_id = p_webhook AND seq = ANY (p_seqs) AND state = 'dead';
    END IF;
    GET DIAGNOSTICS acted = ROW_COUNT;
    RETURN acted;
END
$$;

-- As before (baseline section 4): when something may become deliverable with no write to
-- wake anyone, now also a hold running out.
CREATE OR REPLACE FUNCTION hookline_next_due(p_webhook uuid)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT least(
        (SELECT min(deliver_at) FROM messages WHERE webhook_id = p_webhook AND state = 'queued' AND deliver_at > now()),
        (SELECT min(lock_expires_at) FROM messages WHERE webhook_id = p_webhook AND lock_token IS NOT NULL),
        (SELECT least(lock_expires_at, CASE WHEN held_until > now() THEN held_until END)
         FROM webhooks WHERE id = p_webhook))
$$;

-- Why a skip changed nothing.
CREATE TYPE skip_refusal AS ENUM ('no_webhook', 'not_fifo', 'no_head', 'head_moved');

-- Moves a FIFO webhook's head (the locked message, else the first in line) to the
-- dead-letter queue, locked or not, recording who and why; a lock it held is released
-- (its window's rest return uncounted) and its token fenced. With p_expect_seq, only if
-- that is still the head. The head's seq comes back with a head_moved refusal.
CREATE FUNCTION hookline_skip_head(p_webhook uuid, p_project bigint, p_expect_seq bigint, p_reason text,
                                   p_actor text,
                                   OUT refusal skip_refusal, OUT id uuid, OUT seq bigint, OUT superseded boolean)
LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE;
BEGIN
    SELECT * INTO hook FROM webhooks w WHERE w.id = p_webhook AND w.project_id = p_project FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        refusal := 'no_webhook';
        RETURN;
    ELSIF hook.mode <> 'fifo' THEN
        refusal := 'not_fifo';
        RETURN;
    END IF;
    PERFORM hookline_promote_due(hook.id);
    seq := coalesce(hook.locked_seq, (
        SELECT m.seq FROM messages m
        WHERE m.webhook_id = hook.id AND m.state = 'queued' AND m.deliver_at IS NULL AND m.lock_token IS NULL
          AND m.expires_at > now()
        ORDER BY m.priority DESC, m.seq LIMIT 1));
    IF seq IS NULL THEN
        refusal := 'no_head';
        RETURN;
    ELSIF p_expect_seq IS NOT NULL AND p_expect_seq <> seq THEN
        refusal := 'head_moved';
        RETURN;
    END IF;
    superseded := hook.locked_seq IS NOT NULL;
    IF superseded THEN
        UPDATE webhooks w
        SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL,
            superseded_tokens = (hook.lock_token || coalesce(w.superseded_tokens, '{}'))[1:16]
        WHERE w.id = hook.id;
    END IF;
    UPDATE messages m
    SET state = 'dead', dead_at = now(), last_error = p_reason, last_error_at = now(), skipped_by = p_actor
    WHERE m.webhook_id = hook.id AND m.seq = hookline_skip_head.seq AND m.state = 'queued'
    RETURNING m.id INTO id;
    -- A lock on a message that is gone (purged): released above, nothing to skip.
    IF id IS NULL THEN
        refusal := 'no_head';
    END IF;
    -- Long-polls wake for the new head (a released lock wakes them too).
    PERFORM hookline_wake(hook.id);
END
$$;

ALTER FUNCTION hookline_skip_head(uuid, bigint, bigint, text, text) SET enable_sort = off;

-- As before (migration 0013), leasing nothing next for a paused or held webhook (its lock is
-- released instead).
CREATE OR REPLACE FUNCTION hookline_commit_heads(p_webhooks uuid[], p_projects bigint[], p_messages uuid[], p_tokens uuid[],
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
        WHERE w.id = ANY (wants) AND NOT hookline_withheld(w)
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

ALTER FUNCTION hookline_commit_heads(uuid[], bigint[], uuid[], uuid[], integer[]) SET enable_sort = off;
ALTER FUNCTION hookline_commit_heads(uuid[], bigint[], uuid[], uuid[], integer[]) SET jit = off;
