-- The core schema: projects and their API keys, webhooks, and one FIFO queue of messages
-- per webhook. Constraint names are referenced by the store's error mapping.

CREATE TABLE projects (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CONSTRAINT projects_name_key UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id   bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    -- Public, looked up by; the secret part exists only as the argon2id hash.
    prefix       text NOT NULL CONSTRAINT api_keys_prefix_key UNIQUE,
    hash         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE webhooks (
    id                   uuid PRIMARY KEY,
    project_id           bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name                 text NOT NULL,
    lock_timeout_seconds integer NOT NULL
        CONSTRAINT webhooks_lock_timeout_range CHECK (lock_timeout_seconds BETWEEN 1 AND 43200),
    max_retries          integer NOT NULL
        CONSTRAINT webhooks_max_retries_range CHECK (max_retries BETWEEN 1 AND 100),
    ttl_days             integer NOT NULL
        CONSTRAINT webhooks_ttl_days_range CHECK (ttl_days BETWEEN 1 AND 365),
    -- The strict-FIFO lock: at most one message of a webhook is locked, so the lock lives
    -- here. None of these columns is indexed, so taking or releasing a lock is a HOT update
    -- and the message row is not written until commit or error.
    locked_seq           bigint,
    lock_token           uuid,
    lock_expires_at      timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhooks_lock_complete
        CHECK ((locked_seq IS NULL) = (lock_token IS NULL) AND (locked_seq IS NULL) = (lock_expires_at IS NULL))
);
CREATE INDEX webhooks_project_order_idx ON webhooks (project_id, created_at, id);

-- The per-webhook sequence counter lives apart from the webhook row, so ingestion (which
-- updates the counter) and dequeue (which locks the webhook row) never wait on each other.
CREATE TABLE webhook_sequences (
    webhook_id uuid PRIMARY KEY REFERENCES webhooks (id) ON DELETE CASCADE,
    last_seq   bigint NOT NULL DEFAULT 0
);

-- 'locked' is not stored: a message is locked while its webhook's locked_seq points at it.
CREATE TYPE message_state AS ENUM ('queued', 'committed', 'dead');

CREATE TABLE messages (
    webhook_id      uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    seq             bigint NOT NULL,
    id              uuid NOT NULL,
    state           message_state NOT NULL DEFAULT 'queued',
    retry_count     integer NOT NULL DEFAULT 0,
    last_error      text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    committed_at    timestamptz,
    dead_at         timestamptz,
    -- AES-256-GCM envelope of headers + body (see src/crypto.rs).
    key_id          integer NOT NULL,
    nonce           bytea NOT NULL,
    ciphertext      bytea NOT NULL,
    CONSTRAINT messages_pkey PRIMARY KEY (webhook_id, seq),
    CONSTRAINT messages_id_key UNIQUE (id),
    CONSTRAINT messages_committed_has_time CHECK ((state = 'committed') = (committed_at IS NOT NULL)),
    CONSTRAINT messages_dead_has_time CHECK ((state = 'dead') = (dead_at IS NOT NULL)),
    CONSTRAINT messages_retry_count_nonnegative CHECK (retry_count >= 0)
);
-- The head lookup: committed and dead rows never enter this index, so a queue with
-- millions of retained rows finds its head as fast as an empty one.
CREATE INDEX messages_queued_idx ON messages (webhook_id, seq) WHERE state = 'queued';
CREATE INDEX messages_dead_idx ON messages (webhook_id, seq) WHERE state = 'dead';
CREATE INDEX messages_expires_idx ON messages (expires_at);

-- A failed attempt on the locked message of a webhook (error, or lock expiry): back to its
-- position with retry_count + 1, or dead at max_retries; the webhook's lock is released.
-- The caller holds the webhook row lock. Returns the message's new state and retry count.
CREATE FUNCTION hookline_fail_attempt(hook webhooks, p_reason text,
                                      OUT new_state message_state, OUT new_retry_count integer)
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE messages m
    SET state = CASE WHEN m.retry_count + 1 >= hook.max_retries
                     THEN 'dead'::message_state ELSE 'queued'::message_state END,
        dead_at = CASE WHEN m.retry_count + 1 >= hook.max_retries THEN now() END,
        retry_count = m.retry_count + 1,
        last_error = p_reason
    WHERE m.webhook_id = hook.id AND m.seq = hook.locked_seq AND m.state = 'queued'
    RETURNING m.state, m.retry_count INTO new_state, new_retry_count;
    UPDATE webhooks SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL WHERE id = hook.id;
END
$$;

-- The reaper: releases up to p_limit expired locks, each a failed attempt.
CREATE FUNCTION hookline_release_expired_locks(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE;
    released integer := 0;
BEGIN
    FOR hook IN
        SELECT * FROM webhooks
        WHERE locked_seq IS NOT NULL AND lock_expires_at <= now()
        ORDER BY lock_expires_at LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM hookline_fail_attempt(hook, 'lock expired');
        released := released + 1;
    END LOOP;
    RETURN released;
END
$$;

-- What dequeue hands back: a locked message, still sealed.
CREATE TYPE locked_message AS (
    id uuid, seq bigint, retry_count integer, max_retries integer, lock_token uuid,
    lock_expires_at timestamptz, received_at timestamptz, key_id integer, nonce bytea, ciphertext bytea
);

-- Locks the head of a strict-FIFO queue whose webhook row the caller has locked: the lowest
-- queued seq, unless the webhook holds an unexpired lock (head-of-line blocking). An expired
-- lock is a failed attempt, released first, so a crashed consumer costs only its timeout.
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

    SELECT * INTO head FROM messages m
    WHERE m.webhook_id = hook.id AND m.state = 'queued' AND m.expires_at > now()
    ORDER BY m.seq LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    UPDATE webhooks SET locked_seq = head.seq, lock_token = token, lock_expires_at = expires WHERE id = hook.id;
    RETURN NEXT (head.id, head.seq, head.retry_count, hook.max_retries, token, expires, head.received_at,
                 head.key_id, head.nonce, head.ciphertext)::locked_message;
END
$$;

-- The project's webhook row, locked: this serializes dequeue, commit and error of one
-- webhook across every broker replica. Raises no_data_found for an unknown webhook.
CREATE FUNCTION hookline_lock_webhook(p_webhook uuid, p_project bigint)
RETURNS webhooks LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE;
BEGIN
    SELECT * INTO hook FROM webhooks w WHERE w.id = p_webhook AND w.project_id = p_project FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook not found' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN hook;
END
$$;

-- Strict-FIFO dequeue in one round trip.
CREATE FUNCTION hookline_dequeue(p_webhook uuid, p_project bigint)
RETURNS SETOF locked_message LANGUAGE sql AS $$
    SELECT * FROM hookline_lock_head(hookline_lock_webhook(p_webhook, p_project))
$$;

-- The webhook row, locked, if `p_message` holds its lock under `p_token` (any token when
-- null). A lock that expired but was not handed out again still counts: the consumer was
-- late, not wrong. Raises HL409 when the message does not hold the lock.
CREATE FUNCTION hookline_lock_holder(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid)
RETURNS webhooks LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_lock_webhook(p_webhook, p_project);
BEGIN
    IF hook.locked_seq IS NULL OR (p_token IS NOT NULL AND hook.lock_token <> p_token)
       OR NOT EXISTS (SELECT 1 FROM messages m WHERE m.webhook_id = p_webhook AND m.seq = hook.locked_seq
                      AND m.id = p_message) THEN
        RAISE EXCEPTION 'message does not hold the lock' USING ERRCODE = 'HL409';
    END IF;
    RETURN hook;
END
$$;

-- locked -> committed, releasing the webhook's lock.
CREATE FUNCTION hookline_commit(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid)
RETURNS webhooks LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_lock_holder(p_webhook, p_project, p_message, p_token);
BEGIN
    UPDATE messages SET state = 'committed', committed_at = now()
    WHERE webhook_id = p_webhook AND seq = hook.locked_seq;
    UPDATE webhooks SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL WHERE id = p_webhook;
    hook.locked_seq := NULL;
    hook.lock_token := NULL;
    hook.lock_expires_at := NULL;
    RETURN hook;
END
$$;

-- Commit one message and lock the next in one transaction, for busy strict-FIFO consumers:
-- one round trip and one durable commit per message.
CREATE FUNCTION hookline_commit_next(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM hookline_lock_head(hookline_commit(p_webhook, p_project, p_message, p_token));
END
$$;

-- locked -> queued at the same position, or dead at max_retries.
CREATE FUNCTION hookline_error(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_reason text,
                               OUT new_state message_state, OUT new_retry_count integer, OUT max_retries integer)
LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_lock_holder(p_webhook, p_project, p_message, p_token);
BEGIN
    SELECT * INTO new_state, new_retry_count FROM hookline_fail_attempt(hook, p_reason);
    max_retries := hook.max_retries;
END
$$;
