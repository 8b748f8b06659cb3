-- Delivery features: standard (many in flight) queues beside strict FIFO, priorities, delays,
-- per-message TTL, idempotency keys, and the counters behind stats.

CREATE TYPE delivery_mode AS ENUM ('fifo', 'standard');

ALTER TABLE webhooks
    ADD COLUMN mode delivery_mode NOT NULL DEFAULT 'fifo',
    ADD COLUMN priorities boolean NOT NULL DEFAULT false,
    -- Standard Webhooks senders send a unique `webhook-id` per event: use it as the key.
    ADD COLUMN idempotency_from_webhook_id boolean NOT NULL DEFAULT false;

ALTER TABLE messages
    ADD COLUMN priority smallint NOT NULL DEFAULT 0
        CONSTRAINT messages_priority_range CHECK (priority BETWEEN 0 AND 10),
    -- A delayed message is not in line before this time; NULL: at once.
    ADD COLUMN deliver_at timestamptz,
    -- Standard mode: each message in flight holds its own lock. (FIFO keeps its single lock
    -- on the webhook row.)
    ADD COLUMN lock_token uuid,
    ADD COLUMN lock_expires_at timestamptz,
    ADD CONSTRAINT messages_lock_complete CHECK ((lock_token IS NULL) = (lock_expires_at IS NULL));

-- The ready index: queued, not delayed, not locked in standard mode, in priority-then-seq
-- order, so a head lookup never reads past delayed or in-flight rows. (A FIFO head stays in
-- it while locked: that lock lives on the webhook row.)
DROP INDEX messages_queued_idx;
CREATE INDEX messages_ready_idx ON messages (webhook_id, priority DESC, seq)
    WHERE state = 'queued' AND deliver_at IS NULL AND lock_token IS NULL;
CREATE INDEX messages_delayed_idx ON messages (webhook_id, deliver_at) WHERE state = 'queued' AND deliver_at IS NOT NULL;
CREATE INDEX messages_in_flight_idx ON messages (webhook_id, lock_expires_at) WHERE lock_token IS NOT NULL;

-- A key seen on a webhook maps to the message it first created, for 24 hours.
CREATE TABLE idempotency_keys (
    webhook_id uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    key        text NOT NULL,
    message_id uuid NOT NULL,
    seq        bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (webhook_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Counters without a hot row: each statement that changes messages appends its net effect
-- per webhook; the count folder merges old rows (minute buckets for the last hour, one base
-- row before that). Stats sum a webhook's few rows.
-- No foreign key: its key-share lock on the webhook row would make a webhook's deletion and
-- a concurrent commit wait on each other. Rows of a deleted webhook are dropped by the folder.
CREATE TABLE webhook_counts (
    webhook_id uuid NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    live       bigint NOT NULL DEFAULT 0,  -- state 'queued': waiting, delayed or locked
    dead       bigint NOT NULL DEFAULT 0,
    committed  bigint NOT NULL DEFAULT 0,
    ingested   bigint NOT NULL DEFAULT 0,
    delivered  bigint NOT NULL DEFAULT 0   -- committed by a consumer
);
CREATE INDEX webhook_counts_webhook_idx ON webhook_counts (webhook_id, at);

INSERT INTO webhook_counts (webhook_id, at, live, dead, committed)
SELECT webhook_id, '-infinity', count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'dead'),
       count(*) FILTER (WHERE state = 'committed')
FROM messages GROUP BY webhook_id;

CREATE FUNCTION hookline_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Ingestion inserts queued rows; counting by state keeps bulk loads of other states exact.
    INSERT INTO webhook_counts (webhook_id, live, dead, committed, ingested)
    SELECT webhook_id, count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'dead'),
           count(*) FILTER (WHERE state = 'committed'), count(*)
    FROM new_rows GROUP BY webhook_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_count_inserted AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hookline_count_inserted();

CREATE FUNCTION hookline_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_counts (webhook_id, live, dead, committed, delivered)
    SELECT webhook_id, sum(live), sum(dead), sum(committed), sum(committed)
    FROM (SELECT webhook_id, (state = 'queued')::int AS live, (state = 'dead')::int AS dead,
                 (state = 'committed')::int AS committed FROM new_rows
          UNION ALL
          SELECT webhook_id, -(state = 'queued')::int, -(state = 'dead')::int, -(state = 'committed')::int
          FROM old_rows) d
    GROUP BY webhook_id
    HAVING sum(live) <> 0 OR sum(dead) <> 0 OR sum(committed) <> 0;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_count_updated AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hookline_count_updated();

CREATE FUNCTION hookline_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A webhook being deleted takes its counters with it: nothing to count.
    INSERT INTO webhook_counts (webhook_id, live, dead, committed)
    SELECT o.webhook_id, -count(*) FILTER (WHERE o.state = 'queued'), -count(*) FILTER (WHERE o.state = 'dead'),
           -count(*) FILTER (WHERE o.state = 'committed')
    FROM old_rows o
    WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = o.webhook_id)
    GROUP BY o.webhook_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_count_deleted AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hookline_count_deleted();

-- FOR NO KEY UPDATE, not FOR UPDATE: it still serializes a webhook's dequeue, commit and
-- error, but no longer blocks the foreign-key checks of concurrent ingestion.
CREATE OR REPLACE FUNCTION hookline_lock_webhook(p_webhook uuid, p_project bigint)
RETURNS webhooks LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE;
BEGIN
    SELECT * INTO hook FROM webhooks w WHERE w.id = p_webhook AND w.project_id = p_project FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook not found' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN hook;
END
$$;

-- The project's webhook, unlocked (standard mode never serializes on it).
CREATE FUNCTION hookline_find_webhook(p_webhook uuid, p_project bigint)
RETURNS webhooks LANGUAGE plpgsql STABLE AS $$
DECLARE
    hook webhooks%ROWTYPE;
BEGIN
    SELECT * INTO hook FROM webhooks w WHERE w.id = p_webhook AND w.project_id = p_project;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook not found' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN hook;
END
$$;

DROP FUNCTION hookline_dequeue(uuid, bigint);
DROP FUNCTION hookline_commit_next(uuid, bigint, uuid, uuid);
DROP FUNCTION hookline_lock_head(webhooks);
ALTER TYPE locked_message ADD ATTRIBUTE priority smallint;

-- Delayed messages whose time has come join the ready index (deliver_at becomes NULL).
-- Rows another dequeue is promoting right now are skipped, not waited for.
-- (plpgsql, not sql: its statement plan is cached instead of made on every dequeue.)
CREATE FUNCTION hookline_promote_due(p_webhook uuid) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    WITH due AS (
        SELECT ctid AS row_id FROM messages
        WHERE webhook_id = p_webhook AND state = 'queued' AND deliver_at <= now()
        FOR UPDATE SKIP LOCKED
    )
    UPDATE messages SET deliver_at = NULL WHERE ctid = ANY (ARRAY(SELECT row_id FROM due));
END
$$;

-- FIFO: locks the head (highest priority, lowest seq, due, unexpired) unless the webhook
-- holds an unexpired lock. An expired lock is a failed attempt, released first.
CREATE FUNCTION hookline_lock_head(hook webhooks)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
DECLARE
    head messages%ROWTYPE;
    token uuid := gen_random_uuid();
    expires timestamptz := now() + make_interval(secs => hook.lock_timeout_seconds);
BEGIN
    IF hook.locked_seq IS NOT NULL THEN
        IF hook.lock_expires_at > now() THEN
            RETURN;
        END IF;
        PERFORM hookline_fail_attempt(hook, 'lock expired');
    END IF;

    PERFORM hookline_promote_due(hook.id);
    SELECT * INTO head FROM messages m
    WHERE m.webhook_id = hook.id AND m.state = 'queued' AND m.deliver_at IS NULL AND m.lock_token IS NULL
      AND m.expires_at > now()
    ORDER BY m.priority DESC, m.seq LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    UPDATE webhooks SET locked_seq = head.seq, lock_token = token, lock_expires_at = expires WHERE id = hook.id;
    RETURN NEXT (head.id, head.seq, head.retry_count, hook.max_retries, token, expires, head.received_at,
                 head.key_id, head.nonce, head.ciphertext, head.priority)::locked_message;
END
$$;

-- Standard mode, expired message locks (of one webhook, or all when NULL): each a failed
-- attempt, back in line or dead at max_retries. Returns how many were released.
CREATE FUNCTION hookline_release_expired_message_locks(p_webhook uuid, p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    released integer;
BEGIN
    WITH expired AS (
        SELECT m.ctid AS row_id FROM messages m
        WHERE m.lock_token IS NOT NULL AND m.lock_expires_at <= now()
          AND (p_webhook IS NULL OR m.webhook_id = p_webhook)
        ORDER BY m.lock_expires_at LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    -- The rows just locked, by their physical address: no join to plan.
    UPDATE messages m
    SET lock_token = NULL, lock_expires_at = NULL, retry_count = m.retry_count + 1, last_error = 'lock expired',
        state = CASE WHEN m.retry_count + 1 >= w.max_retries THEN 'dead'::message_state ELSE 'queued'::message_state END,
        dead_at = CASE WHEN m.retry_count + 1 >= w.max_retries THEN now() END
    FROM webhooks w
    WHERE m.ctid = ANY (ARRAY(SELECT row_id FROM expired)) AND w.id = m.webhook_id AND m.state = 'queued';
    GET DIAGNOSTICS released = ROW_COUNT;
    RETURN released;
END
$$;

-- Standard mode: locks up to p_max due messages in priority-then-seq order, each under its
-- own token. SKIP LOCKED: concurrent consumers take different messages and never wait.
CREATE FUNCTION hookline_lock_available(hook webhooks, p_max integer)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
DECLARE
    expires timestamptz := now() + make_interval(secs => hook.lock_timeout_seconds);
BEGIN
    PERFORM hookline_release_expired_message_locks(hook.id, 100);
    PERFORM hookline_promote_due(hook.id);
    RETURN QUERY
    WITH picked AS (
        SELECT m.seq FROM messages m
        WHERE m.webhook_id = hook.id AND m.state = 'queued' AND m.deliver_at IS NULL AND m.lock_token IS NULL
          AND m.expires_at > now()
        ORDER BY m.priority DESC, m.seq LIMIT p_max
        FOR UPDATE SKIP LOCKED
    )
    -- `seq = ANY(array)`: one primary-key probe per picked message whatever the statistics
    -- say (a join could become a scan of the webhook's whole history).
    UPDATE messages m SET lock_token = gen_random_uuid(), lock_expires_at = expires
    WHERE m.webhook_id = hook.id AND m.seq = ANY (ARRAY(SELECT seq FROM picked))
    RETURNING m.id, m.seq, m.retry_count, hook.max_retries, m.lock_token, m.lock_expires_at, m.received_at,
              m.key_id, m.nonce, m.ciphertext, m.priority;
END
$$;

-- Dequeue in either mode, in one round trip. p_visibility (seconds) replaces the webhook's
-- lock timeout for these locks; FIFO hands out at most one message whatever p_max says.
CREATE FUNCTION hookline_dequeue(p_webhook uuid, p_project bigint, p_max integer, p_visibility integer)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_find_webhook(p_webhook, p_project);
BEGIN
    IF hook.mode = 'fifo' THEN
        hook := hookline_lock_webhook(p_webhook, p_project);
    END IF;
    hook.lock_timeout_seconds := coalesce(p_visibility, hook.lock_timeout_seconds);
    IF hook.mode = 'fifo' THEN
        RETURN QUERY SELECT * FROM hookline_lock_head(hook);
    ELSE
        RETURN QUERY SELECT * FROM hookline_lock_available(hook, p_max);
    END IF;
END
$$;

-- Standard mode: the message row, locked, if it holds its lock under `p_token` (any token
-- when null); like FIFO, an expired lock not yet released still counts. Raises HL409.
CREATE FUNCTION hookline_message_lock_holder(hook webhooks, p_message uuid, p_token uuid)
RETURNS messages LANGUAGE plpgsql AS $$
DECLARE
    held messages%ROWTYPE;
BEGIN
    SELECT * INTO held FROM messages m
    WHERE m.id = p_message AND m.webhook_id = hook.id AND m.state = 'queued' AND m.lock_token IS NOT NULL
      AND (p_token IS NULL OR m.lock_token = p_token)
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'message does not hold a lock' USING ERRCODE = 'HL409';
    END IF;
    RETURN held;
END
$$;

-- locked -> committed in either mode; with p_next, lock and return the next message too.
CREATE FUNCTION hookline_commit_message(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid,
                                        p_next boolean)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_find_webhook(p_webhook, p_project);
    held messages%ROWTYPE;
BEGIN
    IF hook.mode = 'fifo' THEN
        hook := hookline_commit(p_webhook, p_project, p_message, p_token);
        IF p_next THEN
            RETURN QUERY SELECT * FROM hookline_lock_head(hook);
        END IF;
        RETURN;
    END IF;
    held := hookline_message_lock_holder(hook, p_message, p_token);
    UPDATE messages SET state = 'committed', committed_at = now(), lock_token = NULL, lock_expires_at = NULL
    WHERE webhook_id = hook.id AND seq = held.seq;
    IF p_next THEN
        RETURN QUERY SELECT * FROM hookline_lock_available(hook, 1);
    END IF;
END
$$;

-- locked -> queued at the same position, or dead at max_retries (or at once without requeue).
DROP FUNCTION hookline_error(uuid, bigint, uuid, uuid, text, boolean);
CREATE FUNCTION hookline_error(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_reason text,
                               p_requeue boolean,
                               OUT new_state message_state, OUT new_retry_count integer, OUT max_retries integer)
LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_find_webhook(p_webhook, p_project);
    held messages%ROWTYPE;
BEGIN
    max_retries := hook.max_retries;
    IF hook.mode = 'fifo' THEN
        hook := hookline_lock_holder(p_webhook, p_project, p_message, p_token);
        SELECT * INTO new_state, new_retry_count FROM hookline_fail_attempt(hook, p_reason, p_requeue);
        RETURN;
    END IF;
    held := hookline_message_lock_holder(hook, p_message, p_token);
    UPDATE messages m
    SET state = CASE WHEN NOT p_requeue OR m.retry_count + 1 >= hook.max_retries
                     THEN 'dead'::message_state ELSE 'queued'::message_state END,
        dead_at = CASE WHEN NOT p_requeue OR m.retry_count + 1 >= hook.max_retries THEN now() END,
        retry_count = m.retry_count + 1, last_error = p_reason, lock_token = NULL, lock_expires_at = NULL
    WHERE m.webhook_id = hook.id AND m.seq = held.seq
    RETURNING m.state, m.retry_count INTO new_state, new_retry_count;
END
$$;

-- Renews the lock `p_message` holds, in either mode: it now expires `p_seconds` from now.
DROP FUNCTION hookline_extend(uuid, bigint, uuid, uuid, integer);
CREATE FUNCTION hookline_extend(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_seconds integer)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_find_webhook(p_webhook, p_project);
    held messages%ROWTYPE;
    expires timestamptz := now() + make_interval(secs => p_seconds);
BEGIN
    IF hook.mode = 'fifo' THEN
        hook := hookline_lock_holder(p_webhook, p_project, p_message, p_token);
        UPDATE webhooks SET lock_expires_at = expires WHERE id = hook.id;
    ELSE
        held := hookline_message_lock_holder(hook, p_message, p_token);
        UPDATE messages SET lock_expires_at = expires WHERE webhook_id = hook.id AND seq = held.seq;
    END IF;
    RETURN expires;
END
$$;

-- When the next message of a webhook may become deliverable without any write: a delay
-- running out or a lock expiring. Long-poll waits no longer than that.
CREATE FUNCTION hookline_next_due(p_webhook uuid)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT least(
        (SELECT min(deliver_at) FROM messages WHERE webhook_id = p_webhook AND state = 'queued' AND deliver_at > now()),
        (SELECT min(lock_expires_at) FROM messages WHERE webhook_id = p_webhook AND lock_token IS NOT NULL),
        (SELECT lock_expires_at FROM webhooks WHERE id = p_webhook))
$$;

-- A standard-mode lock released back to the queue (error, expiry) lets that message through.
CREATE TRIGGER messages_lock_released AFTER UPDATE OF lock_token ON messages
    FOR EACH ROW WHEN (OLD.lock_token IS NOT NULL AND NEW.lock_token IS NULL AND NEW.state = 'queued')
    EXECUTE FUNCTION hookline_wake_on_requeue();

-- A backlog that grew since the last ANALYZE looks tiny to the planner, which may then
-- prefer a bitmap scan and a sort of the whole backlog to reading the queued index in order.
-- Finding a head must always be the ordered index scan.
ALTER FUNCTION hookline_lock_head(webhooks) SET enable_sort = off;
ALTER FUNCTION hookline_lock_available(webhooks, integer) SET enable_sort = off;
