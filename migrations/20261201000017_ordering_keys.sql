-- Ordering keys: a FIFO webhook may take a key from each message (`ordering_key`: a header
-- or a JSON pointer into the body, set at creation). Messages with the same key are
-- strictly ordered; different keys are delivered in parallel, each with its own
-- head-of-line lock; messages without the key share one fallback key (''). A keyed
-- webhook's locks are its messages' own (as in standard mode), so several keys are in
-- flight at once; its dequeue, commit and error stay serialized by the webhook row, which
-- hookline_delivery_webhook locks for every FIFO webhook, so whether a message is its key's
-- head is decided with no race. Order within a key is seq order: a keyed webhook has no
-- priorities and a window of one (the constraint below; the API refuses both first).
SET LOCAL lock_timeout = '5s';

ALTER TABLE webhooks ADD COLUMN ordering_key text
    CONSTRAINT webhooks_ordering_key_form
    CHECK (ordering_key IS NULL OR (ordering_key ~ '^(header:[a-z0-9!#$%&''*+.^_`|~-]{1,100}|/.{0,199})$'
                                    AND mode = 'fifo' AND fifo_window = 1 AND NOT priorities));
-- The message's key on a keyed webhook ('' when it carried none); NULL elsewhere.
ALTER TABLE messages ADD COLUMN ordering_key text;

-- Keyed FIFO: the seqs of up to p_max keys' heads, oldest first. One pass over the ready
-- index in seq order: the first ready message of a key is its head, unless a message of
-- its key is in flight; every later one of that key waits behind it. (Delayed and expired
-- messages are not in line, so they hold no key up, as in FIFO.) No index of its own: the
-- pass reads past the messages of busy keys, as many as wait ahead of the heads it finds.
CREATE FUNCTION hookline_key_heads(hook webhooks, p_max integer)
RETURNS bigint[] LANGUAGE plpgsql STABLE SET enable_sort = off AS $$
DECLARE
    busy text[] := ARRAY(SELECT DISTINCT coalesce(m.ordering_key, '') FROM messages m
                         WHERE m.webhook_id = hook.id AND m.lock_token IS NOT NULL);
    heads bigint[] := '{}';
    candidate record;
BEGIN
    FOR candidate IN
        SELECT m.seq, coalesce(m.ordering_key, '') AS ordering_key FROM messages m
        WHERE m.webhook_id = hook.id AND m.state = 'queued' AND m.deliver_at IS NULL AND m.lock_token IS NULL
          AND m.expires_at > now()
        ORDER BY m.priority DESC, m.seq
    LOOP
        CONTINUE WHEN candidate.ordering_key = ANY (busy);
        heads := heads || candidate.seq;
        EXIT WHEN cardinality(heads) >= p_max;
        busy := busy || candidate.ordering_key;
    END LOOP;
    RETURN heads;
END
$$;

-- Keyed FIFO: leases up to p_max heads of keys with nothing in flight, oldest first, one
-- per key. Expired locks are failed attempts first, as in standard mode. The caller holds
-- the webhook row lock, so no other lease of the webhook runs meanwhile.
CREATE FUNCTION hookline_lock_keyed(hook webhooks, p_max integer)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
DECLARE
    expires timestamptz := now() + make_interval(secs => hook.lock_timeout_seconds);
    heads bigint[];
BEGIN
    PERFORM hookline_expire_message_locks(hook.id, 100);
    PERFORM hookline_promote_due(hook.id);
    -- Chosen first, so the update is one primary-key probe per head whatever the plan.
    heads := hookline_key_heads(hook, p_max);
    RETURN QUERY
    UPDATE messages m SET lock_token = gen_random_uuid(), lock_expires_at = expires
    WHERE m.webhook_id = hook.id AND m.seq = ANY (heads)
    RETURNING m.id, m.seq, m.retry_count, hook.max_retries, m.lock_token, m.lock_expires_at, m.received_at,
              m.key_id, m.nonce, m.ciphertext, m.priority;
END
$$;

-- As before (migration 0014), keyed webhooks leasing per key.
CREATE OR REPLACE FUNCTION hookline_lock_next(hook webhooks, p_max integer)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
BEGIN
    IF hookline_withheld(hook) THEN
        RETURN;
    ELSIF hook.mode = 'fifo' AND hook.ordering_key IS NOT NULL THEN
        RETURN QUERY SELECT * FROM hookline_lock_keyed(hook, p_max);
    ELSIF hook.mode = 'fifo' THEN
        RETURN QUERY SELECT * FROM hookline_lock_window(hook, p_max);
    ELSE
        RETURN QUERY SELECT * FROM hookline_lock_available(hook, p_max);
    END IF;
END
$$;

-- As before (migration 0014); a keyed webhook's messages hold their own locks.
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
    IF hook.mode = 'fifo' AND hook.ordering_key IS NULL THEN
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

-- As before (migration 0012); a keyed webhook's commit releases the message's own lock.
CREATE OR REPLACE FUNCTION hookline_commit_next(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_next integer)
RETURNS TABLE (refusal lock_refusal, state message_state, id uuid, seq bigint, retry_count integer,
               max_retries integer, lock_token uuid, lock_expires_at timestamptz, received_at timestamptz,
               key_id integer, nonce bytea, ciphertext bytea, priority smallint)
LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_delivery_webhook(p_webhook, p_project);
    held held_lock := hookline_held_lock(hook, p_message, p_token);
    windowed boolean := hook.mode = 'fifo' AND hook.ordering_key IS NULL;
BEGIN
    IF held.refusal IS NULL AND windowed AND held.seq <> hook.locked_seq THEN
        held.refusal := 'out_of_order';
    END IF;
    IF held.refusal IS NULL THEN
        UPDATE messages m SET state = 'committed', committed_at = now(), lock_token = NULL, lock_expires_at = NULL
        WHERE m.webhook_id = hook.id AND m.seq = held.seq;
        held.state := 'committed';
        IF windowed THEN
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

-- As before (migration 0014); a keyed webhook extends the message's own lock.
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
    IF hook.mode = 'fifo' AND hook.ordering_key IS NULL THEN
        UPDATE webhooks w SET lock_expires_at = hookline_extend.lock_expires_at, lock_extensions = w.lock_extensions + 1
        WHERE w.id = hook.id;
    ELSE
        UPDATE messages m SET lock_expires_at = hookline_extend.lock_expires_at
        WHERE m.webhook_id = hook.id AND m.seq = held.seq;
    END IF;
END
$$;

-- As before (migration 0012); a keyed message released stays its key's head at once (a
-- pause would let the messages behind it overtake it).
CREATE OR REPLACE FUNCTION hookline_release_lock(p_webhook uuid, p_message uuid, p_token uuid)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT hookline_shrink_window(p_webhook, p_token,
                                  (SELECT seq FROM messages WHERE webhook_id = p_webhook AND id = p_message)) THEN
        UPDATE messages
        SET lock_token = NULL, lock_expires_at = NULL,
            deliver_at = CASE WHEN ordering_key IS NULL THEN now() + interval '5 seconds' END
        WHERE webhook_id = p_webhook AND id = p_message AND lock_token = p_token;
    END IF;
END
$$;

-- A keyed message's lock released any way (commit, error, expiry, skip) lets its key's
-- next message go: long-polls wake (a FIFO webhook's own lock wakes them from its row).
CREATE TRIGGER messages_key_released AFTER UPDATE OF lock_token ON messages
    FOR EACH ROW WHEN (OLD.lock_token IS NOT NULL AND NEW.lock_token IS NULL AND NEW.ordering_key IS NOT NULL)
    EXECUTE FUNCTION hookline_wake_on_requeue();

-- The same when the message goes with its lock (a TTL or live purge): its key is free.
CREATE FUNCTION hookline_wake_on_key_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM hookline_wake(OLD.webhook_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_key_deleted AFTER DELETE ON messages
    FOR EACH ROW WHEN (OLD.lock_token IS NOT NULL AND OLD.ordering_key IS NOT NULL)
    EXECUTE FUNCTION hookline_wake_on_key_deleted();

-- As the baseline's ingestion, with each message's ordering key: on a keyed webhook a
-- message without one has the fallback key ''.
CREATE FUNCTION hookline_ingest(p_webhooks uuid[], p_ids uuid[], p_key_ids integer[], p_nonces bytea[],
                                p_ciphertexts bytea[], p_priorities smallint[], p_delays integer[], p_ttls integer[],
                                p_ordering_keys text[])
RETURNS TABLE (message_id uuid, message_seq bigint) LANGUAGE plpgsql SET lock_timeout = '1s' AS $$
BEGIN
    RETURN QUERY
    WITH item AS (
        SELECT * FROM unnest(p_webhooks, p_ids, p_key_ids, p_nonces, p_ciphertexts, p_priorities, p_delays, p_ttls,
                             p_ordering_keys)
            WITH ORDINALITY AS i(webhook_id, id, key_id, nonce, ciphertext, priority, delay, ttl, ordering_key, ord)
    ), locked AS MATERIALIZED (
        SELECT webhook_id FROM webhook_sequences WHERE webhook_id = ANY (p_webhooks)
        ORDER BY webhook_id FOR UPDATE
    ), counter AS (
        UPDATE webhook_sequences s SET last_seq = s.last_seq + n.count
        FROM (SELECT item.webhook_id, count(*) AS count
              FROM item JOIN locked ON locked.webhook_id = item.webhook_id
              GROUP BY item.webhook_id) n
        WHERE s.webhook_id = n.webhook_id
        -- Long-poll consumers of these webhooks wake once this commits.
        RETURNING s.webhook_id, s.last_seq - n.count AS base, hookline_wake(s.webhook_id)
    )
    INSERT INTO messages (webhook_id, seq, id, expires_at, key_id, nonce, ciphertext, priority, deliver_at, ordering_key)
    SELECT item.webhook_id,
           counter.base + row_number() OVER (PARTITION BY item.webhook_id ORDER BY item.ord),
           item.id,
           -- A message's own TTL can shorten, never lengthen, its webhook's.
           now() + CASE WHEN item.ttl IS NULL THEN make_interval(days => w.ttl_days)
                        ELSE least(make_interval(days => w.ttl_days), make_interval(secs => item.ttl)) END,
           item.key_id, item.nonce, item.ciphertext, item.priority,
           CASE WHEN item.delay > 0 THEN now() + make_interval(secs => item.delay) END,
           CASE WHEN w.ordering_key IS NOT NULL THEN coalesce(item.ordering_key, '') END
    FROM item
    JOIN counter ON counter.webhook_id = item.webhook_id
    JOIN webhooks w ON w.id = item.webhook_id
    RETURNING messages.id, messages.seq;
END
$$;

-- The previous release's ingestion: no keys (the fallback key on a keyed webhook).
CREATE OR REPLACE FUNCTION hookline_ingest(p_webhooks uuid[], p_ids uuid[], p_key_ids integer[], p_nonces bytea[],
                                           p_ciphertexts bytea[], p_priorities smallint[], p_delays integer[],
                                           p_ttls integer[])
RETURNS TABLE (message_id uuid, message_seq bigint) LANGUAGE sql SET lock_timeout = '1s' AS $$
    SELECT * FROM hookline_ingest(p_webhooks, p_ids, p_key_ids, p_nonces, p_ciphertexts, p_priorities, p_delays,
                                  p_ttls, NULL::text[])
$$;

-- As before (migration 0014), with a key: on a keyed webhook the head skipped is that key's
-- (its message in flight, else its first in line; p_key is required there and refused
-- elsewhere, as no_head).
ALTER TYPE skip_refusal ADD VALUE 'key_mismatch';
DROP FUNCTION hookline_skip_head(uuid, bigint, bigint, text, text);
CREATE FUNCTION hookline_skip_head(p_webhook uuid, p_project bigint, p_expect_seq bigint, p_reason text,
                                   p_actor text, p_key text,
                                   OUT refusal skip_refusal, OUT id uuid, OUT seq bigint, OUT superseded boolean)
LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE;
    token uuid;
BEGIN
    SELECT * INTO hook FROM webhooks w WHERE w.id = p_webhook AND w.project_id = p_project FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        refusal := 'no_webhook';
        RETURN;
    ELSIF hook.mode <> 'fifo' THEN
        refusal := 'not_fifo';
        RETURN;
    ELSIF (hook.ordering_key IS NULL) <> (p_key IS NULL) THEN
        refusal := 'key_mismatch';
        RETURN;
    END IF;
    PERFORM hookline_promote_due(hook.id);
    IF hook.ordering_key IS NULL THEN
        seq := coalesce(hook.locked_seq, (
            SELECT m.seq FROM messages m
            WHERE m.webhook_id = hook.id AND m.state = 'queued' AND m.deliver_at IS NULL AND m.lock_token IS NULL
              AND m.expires_at > now()
            ORDER BY m.priority DESC, m.seq LIMIT 1));
        token := hook.lock_token;
    ELSE
        -- The key's message in flight, else its first in line.
        SELECT m.seq, m.lock_token INTO seq, token FROM messages m
        WHERE m.webhook_id = hook.id AND m.lock_token IS NOT NULL AND m.ordering_key = p_key
        ORDER BY m.seq LIMIT 1;
        IF seq IS NULL THEN
            seq := (SELECT m.seq FROM messages m
                    WHERE m.webhook_id = hook.id AND m.state = 'queued' AND m.deliver_at IS NULL
                      AND m.lock_token IS NULL AND m.expires_at > now() AND m.ordering_key = p_key
                    ORDER BY m.priority DESC, m.seq LIMIT 1);
        END IF;
    END IF;
    IF seq IS NULL THEN
        refusal := 'no_head';
        RETURN;
    ELSIF p_expect_seq IS NOT NULL AND p_expect_seq <> seq THEN
        refusal := 'head_moved';
        RETURN;
    END IF;
    superseded := token IS NOT NULL;
    IF superseded THEN
        UPDATE webhooks w
        SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL,
            superseded_tokens = (token || coalesce(w.superseded_tokens, '{}'))[1:16]
        WHERE w.id = hook.id;
    END IF;
    UPDATE messages m
    SET state = 'dead', dead_at = now(), last_error = p_reason, last_error_at = now(), skipped_by = p_actor,
        lock_token = NULL, lock_expires_at = NULL
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

ALTER FUNCTION hookline_skip_head(uuid, bigint, bigint, text, text, text) SET enable_sort = off;
