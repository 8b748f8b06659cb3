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
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_project_order_idx ON webhooks (project_id, created_at, id);

-- The per-webhook sequence counter lives apart from the webhook row, so ingestion (which
-- updates the counter) and dequeue (which locks the webhook row) never wait on each other.
CREATE TABLE webhook_sequences (
    webhook_id uuid PRIMARY KEY REFERENCES webhooks (id) ON DELETE CASCADE,
    last_seq   bigint NOT NULL DEFAULT 0
);

CREATE TYPE message_state AS ENUM ('queued', 'locked', 'committed', 'dead');

CREATE TABLE messages (
    webhook_id      uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    seq             bigint NOT NULL,
    id              uuid NOT NULL,
    state           message_state NOT NULL DEFAULT 'queued',
    retry_count     integer NOT NULL DEFAULT 0,
    lock_token      uuid,
    lock_expires_at timestamptz,
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
    CONSTRAINT messages_locked_has_lock
        CHECK ((state = 'locked') = (lock_token IS NOT NULL AND lock_expires_at IS NOT NULL)),
    CONSTRAINT messages_committed_has_time CHECK ((state = 'committed') = (committed_at IS NOT NULL)),
    CONSTRAINT messages_dead_has_time CHECK ((state = 'dead') = (dead_at IS NOT NULL)),
    CONSTRAINT messages_retry_count_nonnegative CHECK (retry_count >= 0)
);
-- The head lookup: committed and dead rows never enter this index, so a queue with
-- millions of retained rows finds its head as fast as an empty one.
CREATE INDEX messages_queued_idx ON messages (webhook_id, seq) WHERE state = 'queued';
-- At most one per webhook in strict FIFO; the reaper scans it by expiry.
CREATE INDEX messages_locked_idx ON messages (webhook_id, lock_expires_at) WHERE state = 'locked';
CREATE INDEX messages_locked_expiry_idx ON messages (lock_expires_at) WHERE state = 'locked';
CREATE INDEX messages_dead_idx ON messages (webhook_id, seq) WHERE state = 'dead';
CREATE INDEX messages_expires_idx ON messages (expires_at);

-- An expired lock is a failed attempt: back to its position, or dead at max_retries.
-- Shared by dequeue (for its own webhook) and the reaper job (for all, in batches).
CREATE FUNCTION hookline_release_expired_locks(p_webhook uuid, p_limit integer)
RETURNS integer LANGUAGE sql AS $$
    WITH expired AS (
        SELECT m.webhook_id, m.seq, w.max_retries
        FROM messages m JOIN webhooks w ON w.id = m.webhook_id
        WHERE m.state = 'locked' AND m.lock_expires_at <= now()
          AND (p_webhook IS NULL OR m.webhook_id = p_webhook)
        ORDER BY m.lock_expires_at
        LIMIT p_limit
        FOR UPDATE OF m SKIP LOCKED
    ), released AS (
        UPDATE messages m
        SET state = CASE WHEN m.retry_count + 1 >= e.max_retries
                         THEN 'dead'::message_state ELSE 'queued'::message_state END,
            dead_at = CASE WHEN m.retry_count + 1 >= e.max_retries THEN now() END,
            retry_count = m.retry_count + 1,
            last_error = 'lock expired',
            lock_token = NULL,
            lock_expires_at = NULL
        FROM expired e
        WHERE m.webhook_id = e.webhook_id AND m.seq = e.seq AND m.state = 'locked'
        RETURNING 1
    )
    SELECT count(*)::integer FROM released
$$;

-- What dequeue hands back: a locked message, still sealed.
CREATE TYPE locked_message AS (
    id uuid, seq bigint, retry_count integer, max_retries integer, lock_token uuid,
    lock_expires_at timestamptz, received_at timestamptz, key_id integer, nonce bytea, ciphertext bytea
);

-- Locks the head of a strict-FIFO queue whose webhook row the caller has locked: the lowest
-- queued seq, unless a message holds an unexpired lock (head-of-line blocking).
CREATE FUNCTION hookline_lock_head(hook webhooks)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
BEGIN
    PERFORM hookline_release_expired_locks(hook.id, 1);
    PERFORM 1 FROM messages m WHERE m.webhook_id = hook.id AND m.state = 'locked';
    IF FOUND THEN
        RETURN;
    END IF;

    RETURN QUERY
    UPDATE messages m
    SET state = 'locked',
        lock_token = gen_random_uuid(),
        lock_expires_at = now() + make_interval(secs => hook.lock_timeout_seconds)
    WHERE m.webhook_id = hook.id
      AND m.seq = (SELECT h.seq FROM messages h
                   WHERE h.webhook_id = hook.id AND h.state = 'queued' AND h.expires_at > now()
                   ORDER BY h.seq LIMIT 1)
    RETURNING m.id, m.seq, m.retry_count, hook.max_retries, m.lock_token, m.lock_expires_at,
              m.received_at, m.key_id, m.nonce, m.ciphertext;
END
$$;

-- Strict-FIFO dequeue in one round trip. The webhook row lock serializes dequeues of one
-- webhook across every broker replica. Raises no_data_found for an unknown webhook.
CREATE FUNCTION hookline_dequeue(p_webhook uuid, p_project bigint)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE;
BEGIN
    SELECT * INTO hook FROM webhooks w WHERE w.id = p_webhook AND w.project_id = p_project FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook not found' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY SELECT * FROM hookline_lock_head(hook);
END
$$;

-- Commit one message and lock the next in one transaction, for busy strict-FIFO consumers:
-- one round trip and one durable commit per message. Raises HL409 when the message is not
-- locked under that token (nothing changes), no_data_found for an unknown webhook.
CREATE FUNCTION hookline_commit_next(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE;
BEGIN
    SELECT * INTO hook FROM webhooks w WHERE w.id = p_webhook AND w.project_id = p_project FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook not found' USING ERRCODE = 'no_data_found';
    END IF;
    UPDATE messages m
    SET state = 'committed', committed_at = now(), lock_token = NULL, lock_expires_at = NULL
    WHERE m.webhook_id = p_webhook AND m.id = p_message AND m.state = 'locked'
      AND (p_token IS NULL OR m.lock_token = p_token);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'message not locked under that token' USING ERRCODE = 'HL409';
    END IF;
    RETURN QUERY SELECT * FROM hookline_lock_head(hook);
END
$$;
