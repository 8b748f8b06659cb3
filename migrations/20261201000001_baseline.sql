-- The baseline schema: every table, index, type, function and trigger of hookline, each
-- defined once. Sections follow a message's life: tables; notifications; ingest; dequeue
-- and locks; commit, error and expiry; dead letters; purge; counters. Constraint names are
-- referenced by the store. Later changes are new migrations (see migrations/README.md);
-- `schema.sql` at the repository root is the migrated result, normalised.

---------------------------------------------------------------------------------------------
-- 1. Tables and constraints
---------------------------------------------------------------------------------------------

CREATE TYPE plan AS ENUM ('free', 'pro', 'enterprise', 'unlimited');
CREATE TYPE delivery_mode AS ENUM ('fifo', 'standard');
-- 'locked' is not stored: a FIFO message is locked while its webhook's locked_seq points at
-- it, a standard-mode one while it holds a lock_token.
CREATE TYPE message_state AS ENUM ('queued', 'committed', 'dead');
CREATE TYPE member_role AS ENUM ('owner', 'member');

-- Tenants, each on a plan whose limits an operator may override (NULL keeps the plan's).
CREATE TABLE projects (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               text NOT NULL CONSTRAINT projects_name_key UNIQUE,
    created_at         timestamptz NOT NULL DEFAULT now(),
    plan               plan NOT NULL DEFAULT 'unlimited',
    ingest_per_second  integer CONSTRAINT projects_ingest_per_second_positive CHECK (ingest_per_second > 0),
    dequeue_per_second integer CONSTRAINT projects_dequeue_per_second_positive CHECK (dequeue_per_second > 0),
    ack_per_second     integer CONSTRAINT projects_ack_per_second_positive CHECK (ack_per_second > 0),
    max_webhooks       integer CONSTRAINT projects_max_webhooks_positive CHECK (max_webhooks > 0),
    max_body_bytes     integer CONSTRAINT projects_max_body_bytes_positive CHECK (max_body_bytes > 0)
);

CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id   bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    -- Public, looked up by; the secret part exists only as the argon2id hash.
    prefix       text NOT NULL CONSTRAINT api_keys_prefix_key UNIQUE,
    hash         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    name         text,
    scopes       text[] NOT NULL DEFAULT '{manage,consume,publish}'
        CONSTRAINT api_keys_scopes_known
        CHECK (cardinality(scopes) > 0 AND scopes <@ '{manage,consume,publish}'::text[]),
    -- NULL: every webhook of the project.
    webhook_ids  uuid[]
);

CREATE TABLE webhooks (
    id                          uuid PRIMARY KEY,
    project_id                  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name                        text NOT NULL,
    lock_timeout_seconds        integer NOT NULL
        CONSTRAINT webhooks_lock_timeout_range CHECK (lock_timeout_seconds BETWEEN 1 AND 43200),
    max_retries                 integer NOT NULL
        CONSTRAINT webhooks_max_retries_range CHECK (max_retries BETWEEN 1 AND 100),
    ttl_days                    integer NOT NULL
        CONSTRAINT webhooks_ttl_days_range CHECK (ttl_days BETWEEN 1 AND 365),
    -- The strict-FIFO lock: at most one message of a webhook is locked, so the lock lives
    -- here. None of these columns is indexed, so taking or releasing a lock is a HOT update
    -- and the message row is not written until commit or error.
    locked_seq                  bigint,
    lock_token                  uuid,
    lock_expires_at             timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    -- Signed ingestion: the shared secret is sealed like payloads (see src/crypto/).
    signature_scheme            text
        CONSTRAINT webhooks_signature_scheme_known
        CHECK (signature_scheme IN ('standard-webhooks', 'stripe', 'github')),
    signature_tolerance_seconds integer NOT NULL DEFAULT 300
        CONSTRAINT webhooks_signature_tolerance_range CHECK (signature_tolerance_seconds BETWEEN 1 AND 86400),
    signature_key_id            integer,
    signature_nonce             bytea,
    signature_secret            bytea,
    mode                        delivery_mode NOT NULL DEFAULT 'fifo',
    priorities                  boolean NOT NULL DEFAULT false,
    -- Standard Webhooks senders send a unique `webhook-id` per event: use it as the key.
    idempotency_from_webhook_id boolean NOT NULL DEFAULT false,
    CONSTRAINT webhooks_lock_complete
        CHECK ((locked_seq IS NULL) = (lock_token IS NULL) AND (locked_seq IS NULL) = (lock_expires_at IS NULL)),
    CONSTRAINT webhooks_signature_complete CHECK (
        (signature_scheme IS NULL) = (signature_secret IS NULL)
        AND (signature_secret IS NULL) = (signature_nonce IS NULL)
        AND (signature_secret IS NULL) = (signature_key_id IS NULL))
);
CREATE INDEX webhooks_project_order_idx ON webhooks (project_id, created_at, id);

-- The per-webhook sequence counter lives apart from the webhook row, so ingestion (which
-- updates the counter) and dequeue (which locks the webhook row) never wait on each other.
CREATE TABLE webhook_sequences (
    webhook_id uuid PRIMARY KEY REFERENCES webhooks (id) ON DELETE CASCADE,
    last_seq   bigint NOT NULL DEFAULT 0
);

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
    -- AES-256-GCM envelope of headers + body (see src/crypto/).
    key_id          integer NOT NULL,
    nonce           bytea NOT NULL,
    ciphertext      bytea NOT NULL,
    priority        smallint NOT NULL DEFAULT 0 CONSTRAINT messages_priority_range CHECK (priority BETWEEN 0 AND 10),
    -- A delayed message is not in line before this time; NULL: at once.
    deliver_at      timestamptz,
    -- Standard mode: each message in flight holds its own lock (FIFO keeps its single lock
    -- on the webhook row).
    lock_token      uuid,
    lock_expires_at timestamptz,
    CONSTRAINT messages_pkey PRIMARY KEY (webhook_id, seq),
    CONSTRAINT messages_id_key UNIQUE (id),
    CONSTRAINT messages_committed_has_time CHECK ((state = 'committed') = (committed_at IS NOT NULL)),
    CONSTRAINT messages_dead_has_time CHECK ((state = 'dead') = (dead_at IS NOT NULL)),
    CONSTRAINT messages_retry_count_nonnegative CHECK (retry_count >= 0),
    CONSTRAINT messages_lock_complete CHECK ((lock_token IS NULL) = (lock_expires_at IS NULL))
);
-- The ready index: queued, not delayed, not locked in standard mode, in priority-then-seq
-- order, so a head lookup never reads past delayed, in-flight, committed or dead rows. (A
-- FIFO head stays in it while locked: that lock lives on the webhook row.)
CREATE INDEX messages_ready_idx ON messages (webhook_id, priority DESC, seq)
    WHERE state = 'queued' AND deliver_at IS NULL AND lock_token IS NULL;
CREATE INDEX messages_delayed_idx ON messages (webhook_id, deliver_at) WHERE state = 'queued' AND deliver_at IS NOT NULL;
CREATE INDEX messages_in_flight_idx ON messages (webhook_id, lock_expires_at) WHERE lock_token IS NOT NULL;
CREATE INDEX messages_dead_idx ON messages (webhook_id, seq) WHERE state = 'dead';
CREATE INDEX messages_expires_idx ON messages (expires_at);

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
-- per webhook (section 8); the count folder merges old rows (minute buckets for the last
-- hour, one base row before that). Stats sum a webhook's few rows.
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

-- Dashboard users (argon2id passwords), their project memberships, and login sessions (only
-- a hash of each session token is kept).
CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Stored lowercased and trimmed.
    email         text NOT NULL CONSTRAINT users_email_key UNIQUE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    project_id bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    role       member_role NOT NULL,
    CONSTRAINT memberships_pkey PRIMARY KEY (user_id, project_id)
);

CREATE TABLE sessions (
    token_hash bytea PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

---------------------------------------------------------------------------------------------
-- 2. Notifications: whenever a webhook's queue may have become deliverable (a message
-- arrived, a lock was released, a dead letter came back), `hookline_queue` is notified with
-- the webhook id; long-poll dequeues wait on it. NOTIFY is transactional: listeners hear it
-- after the commit. (Key revocations use `hookline_key_revoked`, sent by the store.)
---------------------------------------------------------------------------------------------

CREATE FUNCTION hookline_wake(p_webhook uuid) RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('hookline_queue', p_webhook::text)
$$;

CREATE FUNCTION hookline_wake_on_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM hookline_wake(NEW.id);
    RETURN NULL;
END
$$;

-- A released FIFO lock (commit, error, expiry) lets the next message through.
CREATE TRIGGER webhooks_lock_released AFTER UPDATE OF locked_seq ON webhooks
    FOR EACH ROW WHEN (OLD.locked_seq IS NOT NULL AND NEW.locked_seq IS NULL)
    EXECUTE FUNCTION hookline_wake_on_release();

CREATE FUNCTION hookline_wake_on_requeue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM hookline_wake(NEW.webhook_id);
    RETURN NULL;
END
$$;

-- A dead letter retried is deliverable again.
CREATE TRIGGER messages_requeued AFTER UPDATE OF state ON messages
    FOR EACH ROW WHEN (OLD.state = 'dead' AND NEW.state = 'queued')
    EXECUTE FUNCTION hookline_wake_on_requeue();

-- A standard-mode lock released back to the queue (error, expiry) lets that message through.
CREATE TRIGGER messages_lock_released AFTER UPDATE OF lock_token ON messages
    FOR EACH ROW WHEN (OLD.lock_token IS NOT NULL AND NEW.lock_token IS NULL AND NEW.state = 'queued')
    EXECUTE FUNCTION hookline_wake_on_requeue();

---------------------------------------------------------------------------------------------
-- 3. Ingest: messages for many webhooks in one statement, each webhook's in input order.
---------------------------------------------------------------------------------------------

-- Seq ranges come from the webhooks' counter rows, locked in webhook-id order before any is
-- updated (the aggregate over `locked` consumes it whole first), so two concurrent batches
-- never deadlock. Items of unknown webhooks are left out. Returns id and seq of each row.
-- (plpgsql, not sql: its statement plan is cached instead of made on every batch.)
CREATE FUNCTION hookline_ingest(p_webhooks uuid[], p_ids uuid[], p_key_ids integer[], p_nonces bytea[],
                                p_ciphertexts bytea[], p_priorities smallint[], p_delays integer[],
                                p_ttls integer[])
RETURNS TABLE (message_id uuid, message_seq bigint) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH item AS (
        SELECT * FROM unnest(p_webhooks, p_ids, p_key_ids, p_nonces, p_ciphertexts, p_priorities, p_delays, p_ttls)
            WITH ORDINALITY AS i(webhook_id, id, key_id, nonce, ciphertext, priority, delay, ttl, ord)
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
    INSERT INTO messages (webhook_id, seq, id, expires_at, key_id, nonce, ciphertext, priority, deliver_at)
    SELECT item.webhook_id,
           counter.base + row_number() OVER (PARTITION BY item.webhook_id ORDER BY item.ord),
           item.id,
           -- A message's own TTL can shorten, never lengthen, its webhook's.
           now() + CASE WHEN item.ttl IS NULL THEN make_interval(days => w.ttl_days)
                        ELSE least(make_interval(days => w.ttl_days), make_interval(secs => item.ttl)) END,
           item.key_id, item.nonce, item.ciphertext, item.priority,
           CASE WHEN item.delay > 0 THEN now() + make_interval(secs => item.delay) END
    FROM item
    JOIN counter ON counter.webhook_id = item.webhook_id
    JOIN webhooks w ON w.id = item.webhook_id
    RETURNING messages.id, messages.seq;
END
$$;

-- Claims idempotency keys for the messages that bring them, in key order so concurrent
-- claimants cannot deadlock: a repeated key waits for the first claim to commit or roll
-- back, then sees it. A key over 24 hours old is free to claim again. Returns the message
-- ids whose claim won.
CREATE FUNCTION hookline_claim_idempotency_keys(p_webhooks uuid[], p_keys text[], p_messages uuid[])
RETURNS SETOF uuid LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    INSERT INTO idempotency_keys AS k (webhook_id, key, message_id)
    SELECT c.webhook_id, c.key, c.message_id
    FROM unnest(p_webhooks, p_keys, p_messages) WITH ORDINALITY AS c(webhook_id, key, message_id, ord)
    WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = c.webhook_id)
    ORDER BY c.ord
    ON CONFLICT (webhook_id, key) DO UPDATE SET message_id = EXCLUDED.message_id, seq = NULL, created_at = now()
        WHERE k.created_at <= now() - interval '24 hours'
    RETURNING k.message_id;
END
$$;

---------------------------------------------------------------------------------------------
-- 4. Dequeue and locks
---------------------------------------------------------------------------------------------

-- What dequeue hands back: a locked message, still sealed.
CREATE TYPE locked_message AS (
    id uuid, seq bigint, retry_count integer, max_retries integer, lock_token uuid,
    lock_expires_at timestamptz, received_at timestamptz, key_id integer, nonce bytea, ciphertext bytea,
    priority smallint
);

-- The project's webhook as delivery needs it: a FIFO webhook's row locked, which serializes
-- its dequeue, commit and error across every broker replica (FOR NO KEY UPDATE, so the
-- foreign-key checks of concurrent ingestion do not wait); a standard one unlocked, since
-- its messages carry their own locks. Raises no_data_found for an unknown webhook.
CREATE FUNCTION hookline_delivery_webhook(p_webhook uuid, p_project bigint)
RETURNS webhooks LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE;
BEGIN
    SELECT * INTO hook FROM webhooks w WHERE w.id = p_webhook AND w.project_id = p_project;
    IF FOUND AND hook.mode = 'fifo' THEN
        SELECT * INTO hook FROM webhooks w WHERE w.id = p_webhook FOR NO KEY UPDATE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook not found' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN hook;
END
$$;

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
-- holds an unexpired lock (head-of-line blocking). An expired lock is a failed attempt,
-- released first, so a crashed consumer costs only its timeout. The caller holds the
-- webhook row lock.
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
        PERFORM hookline_fail_attempts(hook.id, ARRAY[hook.locked_seq], hook.max_retries, 'lock expired');
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

-- Standard mode: locks up to p_max due messages in priority-then-seq order, each under its
-- own token, after releasing the webhook's expired locks. SKIP LOCKED: concurrent
-- consumers take different messages and never wait.
CREATE FUNCTION hookline_lock_available(hook webhooks, p_max integer)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
DECLARE
    expires timestamptz := now() + make_interval(secs => hook.lock_timeout_seconds);
BEGIN
    PERFORM hookline_expire_message_locks(hook.id, 100);
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

-- A backlog that grew since the last ANALYZE looks tiny to the planner, which may then
-- prefer a bitmap scan and a sort of the whole backlog to reading the ready index in order.
-- Finding a head must always be the ordered index scan.
ALTER FUNCTION hookline_lock_head(webhooks) SET enable_sort = off;
ALTER FUNCTION hookline_lock_available(webhooks, integer) SET enable_sort = off;

-- What the webhook can deliver now, in either mode: FIFO hands out its head at most,
-- standard up to p_max.
CREATE FUNCTION hookline_lock_next(hook webhooks, p_max integer)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
BEGIN
    IF hook.mode = 'fifo' THEN
        RETURN QUERY SELECT * FROM hookline_lock_head(hook);
    ELSE
        RETURN QUERY SELECT * FROM hookline_lock_available(hook, p_max);
    END IF;
END
$$;

-- Dequeue in either mode, in one round trip. p_visibility (seconds) replaces the webhook's
-- lock timeout for these locks.
CREATE FUNCTION hookline_dequeue(p_webhook uuid, p_project bigint, p_max integer, p_visibility integer)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_delivery_webhook(p_webhook, p_project);
BEGIN
    hook.lock_timeout_seconds := coalesce(p_visibility, hook.lock_timeout_seconds);
    RETURN QUERY SELECT * FROM hookline_lock_next(hook, p_max);
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

---------------------------------------------------------------------------------------------
-- 5. Commit, error and expiry of a locked message. Each transition first checks, under the
-- delivery lock, that the message holds its lock; a refusal is answered as data (which one,
-- and the message's state), never as an error to be explained by a second read.
---------------------------------------------------------------------------------------------

-- Why a transition on a locked message changed nothing.
CREATE TYPE lock_refusal AS ENUM ('no_message', 'not_locked', 'lock_mismatch');

-- The message's lock as a transition sees it: its seq, or why it may not proceed, and its
-- state (as stored: a locked message reads 'queued').
CREATE TYPE held_lock AS (seq bigint, refusal lock_refusal, state message_state);

-- Whether `p_message` holds its lock under `p_token` (any token when null). A lock that
-- expired but was not handed out again still counts: the consumer was late, not wrong.
-- `hook` comes from hookline_delivery_webhook; standard mode locks the message row here.
CREATE FUNCTION hookline_held_lock(hook webhooks, p_message uuid, p_token uuid)
RETURNS held_lock LANGUAGE plpgsql AS $$
DECLARE
    found_seq bigint;
    found_state message_state;
    holder uuid;
BEGIN
    IF hook.mode = 'fifo' THEN
        SELECT m.seq, m.state, CASE WHEN m.seq = hook.locked_seq THEN hook.lock_token END
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

-- Failed attempts on locked messages of one webhook, in either mode (an error, or locks that
-- expired): each back to its position with retry_count + 1, or dead when that reaches
-- max_retries or when `p_requeue` is false; their locks are released. The one place this
-- rule is written. Returns the messages changed.
CREATE FUNCTION hookline_fail_attempts(p_webhook uuid, p_seqs bigint[], p_max_retries integer, p_reason text,
                                       p_requeue boolean DEFAULT true)
RETURNS TABLE (failed_seq bigint, new_state message_state, new_retry_count integer) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    UPDATE messages m
    SET state = CASE WHEN NOT p_requeue OR m.retry_count + 1 >= p_max_retries
                     THEN 'dead'::message_state ELSE 'queued'::message_state END,
        dead_at = CASE WHEN NOT p_requeue OR m.retry_count + 1 >= p_max_retries THEN now() END,
        retry_count = m.retry_count + 1,
        last_error = p_reason,
        lock_token = NULL,
        lock_expires_at = NULL
    WHERE m.webhook_id = p_webhook AND m.seq = ANY (p_seqs) AND m.state = 'queued'
    RETURNING m.seq, m.state, m.retry_count;
    -- FIFO: the webhook's lock (no row matches in standard mode).
    UPDATE webhooks SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
    WHERE id = p_webhook AND locked_seq = ANY (p_seqs);
END
$$;

-- locked -> committed in either mode; with p_next, also lock the next message and return it
-- (one round trip and one durable commit per message for a busy consumer). One row: the
-- refusal (null when committed), the state, and the next message's columns (null when none).
CREATE FUNCTION hookline_commit(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_next boolean)
RETURNS TABLE (refusal lock_refusal, state message_state, id uuid, seq bigint, retry_count integer,
               max_retries integer, lock_token uuid, lock_expires_at timestamptz, received_at timestamptz,
               key_id integer, nonce bytea, ciphertext bytea, priority smallint)
LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_delivery_webhook(p_webhook, p_project);
    held held_lock := hookline_held_lock(hook, p_message, p_token);
BEGIN
    IF held.refusal IS NULL THEN
        UPDATE messages m SET state = 'committed', committed_at = now(), lock_token = NULL, lock_expires_at = NULL
        WHERE m.webhook_id = hook.id AND m.seq = held.seq;
        held.state := 'committed';
        IF hook.mode = 'fifo' THEN
            UPDATE webhooks w SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL WHERE w.id = hook.id;
            hook.locked_seq := NULL;
            hook.lock_token := NULL;
            hook.lock_expires_at := NULL;
        END IF;
        IF p_next THEN
            RETURN QUERY SELECT NULL::lock_refusal, held.state, n.* FROM hookline_lock_next(hook, 1) n;
            IF FOUND THEN
                RETURN;
            END IF;
        END IF;
    END IF;
    -- A refusal, or a commit with nothing next: no message columns.
    RETURN QUERY SELECT held.refusal, held.state, (NULL::locked_message).*;
END
$$;

-- locked -> queued at the same position, or dead at max_retries (or at once without
-- requeue). `state` is the new state, or with a refusal the message's current one.
CREATE FUNCTION hookline_error(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_reason text,
                               p_requeue boolean,
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
        SELECT f.new_state, f.new_retry_count INTO state, retry_count
        FROM hookline_fail_attempts(hook.id, ARRAY[held.seq], hook.max_retries, p_reason, p_requeue) f;
        -- The row went (purged, expired) after the check: nothing was errored.
        IF NOT FOUND THEN
            refusal := 'no_message';
        END IF;
    END IF;
END
$$;

-- Renews the lock `p_message` holds, in either mode: it now expires `p_seconds` from now.
CREATE FUNCTION hookline_extend(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_seconds integer,
                                OUT refusal lock_refusal, OUT state message_state, OUT lock_expires_at timestamptz)
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
        UPDATE webhooks w SET lock_expires_at = hookline_extend.lock_expires_at WHERE w.id = hook.id;
    ELSE
        UPDATE messages m SET lock_expires_at = hookline_extend.lock_expires_at
        WHERE m.webhook_id = hook.id AND m.seq = held.seq;
    END IF;
END
$$;

-- locked -> dead at once, for a message whose payload cannot be opened: it would fail every
-- retry, and must not block the queue behind it. Not an attempt: retry_count stays.
CREATE FUNCTION hookline_bury(p_webhook uuid, p_message uuid, p_token uuid, p_reason text)
RETURNS void LANGUAGE sql AS $$
    WITH released AS (
        UPDATE webhooks SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
        WHERE id = p_webhook AND lock_token = p_token
        RETURNING id
    )
    UPDATE messages m
    SET state = 'dead', dead_at = now(), last_error = p_reason, lock_token = NULL, lock_expires_at = NULL
    WHERE m.webhook_id = p_webhook AND m.id = p_message AND m.state = 'queued'
      AND (m.lock_token = p_token OR EXISTS (SELECT 1 FROM released))
$$;

-- FIFO locks past their expiry (up to p_limit webhooks), each a failed attempt.
CREATE FUNCTION hookline_expire_webhook_locks(p_limit integer)
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
        PERFORM hookline_fail_attempts(hook.id, ARRAY[hook.locked_seq], hook.max_retries, 'lock expired');
        released := released + 1;
    END LOOP;
    RETURN released;
END
$$;

-- Standard-mode locks past their expiry (of one webhook, or all when NULL; up to p_limit),
-- each a failed attempt: one statement per webhook.
CREATE FUNCTION hookline_expire_message_locks(p_webhook uuid, p_limit integer)
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
                                                                             expired.max_retries, 'lock expired'));
    END LOOP;
    RETURN released;
END
$$;

-- The lock reaper's step: expired locks of both kinds, up to p_limit of each.
CREATE FUNCTION hookline_release_expired_locks(p_limit integer)
RETURNS integer LANGUAGE sql AS $$
    SELECT hookline_expire_webhook_locks(p_limit) + hookline_expire_message_locks(NULL, p_limit)
$$;

---------------------------------------------------------------------------------------------
-- 6. Dead letters: a dead message keeps its seq, so a retried one returns to its place.
---------------------------------------------------------------------------------------------

-- Whether a dead letter is covered by a listing's or bulk action's filter: died in [since,
-- until), last error containing `p_error` case-insensitively; NULL filters match all.
-- (A plain sql expression: inlined into the statement that uses it.)
CREATE FUNCTION hookline_dead_letter_matches(p_dead_at timestamptz, p_last_error text, p_since timestamptz,
                                             p_until timestamptz, p_error text)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT (p_since IS NULL OR p_dead_at >= p_since) AND (p_until IS NULL OR p_dead_at < p_until)
       AND (p_error IS NULL OR strpos(lower(p_last_error), lower(p_error)) > 0)
$$;

-- dead -> queued with the retry counter reset, at the original seq (retry), or dead -> gone
-- (discard), for the given dead letters of one webhook; others are left alone. The one
-- place this rule is written. Returns how many.
CREATE FUNCTION hookline_redrive(p_webhook uuid, p_seqs bigint[], p_discard boolean)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    acted integer;
BEGIN
    IF p_discard THEN
        DELETE FROM messages WHERE webhook_id = p_webhook AND seq = ANY (p_seqs) AND state = 'dead';
    ELSE
        UPDATE messages SET state = 'queued', retry_count = 0, dead_at = NULL
        WHERE webhook_id = p_webhook AND seq = ANY (p_seqs) AND state = 'dead';
    END IF;
    GET DIAGNOSTICS acted = ROW_COUNT;
    RETURN acted;
END
$$;

-- A message of the project's webhook, row-locked for a dead-letter action, with its state
-- as a client sees it (`locked` is not stored). No row: no such message. Raises
-- no_data_found for an unknown webhook.
CREATE FUNCTION hookline_lock_message(p_webhook uuid, p_project bigint, p_message uuid,
                                      OUT seq bigint, OUT state message_state, OUT locked boolean)
RETURNS SETOF record LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM webhooks w WHERE w.id = p_webhook AND w.project_id = p_project;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'webhook not found' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY
    SELECT m.seq, m.state, coalesce(w.locked_seq = m.seq, false) OR m.lock_token IS NOT NULL
    FROM messages m JOIN webhooks w ON w.id = m.webhook_id
    WHERE m.webhook_id = p_webhook AND m.id = p_message
    FOR UPDATE OF m;
END
$$;

-- Retry or discard one dead letter. Returns the state the message was in (dead: the action
-- was taken); no row: no such message.
CREATE FUNCTION hookline_act_on_dead(p_webhook uuid, p_project bigint, p_message uuid, p_discard boolean,
                                     OUT state message_state, OUT locked boolean)
RETURNS SETOF record LANGUAGE plpgsql AS $$
DECLARE
    target record;
BEGIN
    FOR target IN SELECT * FROM hookline_lock_message(p_webhook, p_project, p_message) LOOP
        PERFORM hookline_redrive(p_webhook, ARRAY[target.seq], p_discard);
        state := target.state;
        locked := target.locked;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Retry or discard every dead letter of the webhook that the filter covers. Returns how many.
CREATE FUNCTION hookline_act_on_dead_letters(p_webhook uuid, p_since timestamptz, p_until timestamptz,
                                             p_error text, p_discard boolean)
RETURNS integer LANGUAGE sql AS $$
    SELECT hookline_redrive(p_webhook, ARRAY(
        SELECT seq FROM messages
        WHERE webhook_id = p_webhook AND state = 'dead'
          AND hookline_dead_letter_matches(dead_at, last_error, p_since, p_until, p_error)), p_discard)
$$;

---------------------------------------------------------------------------------------------
-- 7. Purge: deletes in bounded batches that skip rows a consumer is changing this instant
-- (the consumer wins), so a purge never waits on, or deadlocks with, consumers.
---------------------------------------------------------------------------------------------

-- A FIFO lock whose message is gone (purged, expired) must not block what comes next:
-- release it (of one webhook, or of all when NULL).
CREATE FUNCTION hookline_release_orphaned_locks(p_webhook uuid)
RETURNS void LANGUAGE sql AS $$
    UPDATE webhooks w SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
    WHERE (p_webhook IS NULL OR w.id = p_webhook) AND w.locked_seq IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.webhook_id = w.id AND m.seq = w.locked_seq)
$$;

-- Up to p_limit live messages (queued, delayed or in flight) of the webhook, deleted
-- through the partial index of each kind in turn. Returns how many.
CREATE FUNCTION hookline_purge_live(p_webhook uuid, p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    purged integer := 0;
    step integer;
BEGIN
    WITH doomed AS (
        SELECT ctid AS row_id FROM messages
        WHERE webhook_id = p_webhook AND state = 'queued' AND deliver_at IS NULL AND lock_token IS NULL
        LIMIT p_limit FOR UPDATE SKIP LOCKED
    )
    DELETE FROM messages WHERE ctid = ANY (ARRAY(SELECT row_id FROM doomed));
    GET DIAGNOSTICS purged = ROW_COUNT;
    IF purged < p_limit THEN
        WITH doomed AS (
            SELECT ctid AS row_id FROM messages
            WHERE webhook_id = p_webhook AND state = 'queued' AND deliver_at IS NOT NULL
            LIMIT p_limit - purged FOR UPDATE SKIP LOCKED
        )
        DELETE FROM messages WHERE ctid = ANY (ARRAY(SELECT row_id FROM doomed));
        GET DIAGNOSTICS step = ROW_COUNT;
        purged := purged + step;
    END IF;
    IF purged < p_limit THEN
        WITH doomed AS (
            SELECT ctid AS row_id FROM messages
            WHERE webhook_id = p_webhook AND lock_token IS NOT NULL
            LIMIT p_limit - purged FOR UPDATE SKIP LOCKED
        )
        DELETE FROM messages WHERE ctid = ANY (ARRAY(SELECT row_id FROM doomed));
        GET DIAGNOSTICS step = ROW_COUNT;
        purged := purged + step;
    END IF;
    RETURN purged;
END
$$;

-- The TTL purger's step: up to p_limit messages past their TTL, in any state, then the
-- FIFO locks they held. Returns how many messages.
CREATE FUNCTION hookline_purge_expired(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    purged integer;
BEGIN
    DELETE FROM messages m USING (
        SELECT webhook_id, seq FROM messages WHERE expires_at <= now()
        ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ) expired
    WHERE m.webhook_id = expired.webhook_id AND m.seq = expired.seq;
    GET DIAGNOSTICS purged = ROW_COUNT;
    PERFORM hookline_release_orphaned_locks(NULL);
    RETURN purged;
END
$$;

-- Up to p_limit idempotency keys past their 24 hours. Returns how many.
CREATE FUNCTION hookline_purge_idempotency_keys(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    purged integer;
BEGIN
    DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM idempotency_keys WHERE created_at <= now() - interval '24 hours' LIMIT p_limit));
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;

---------------------------------------------------------------------------------------------
-- 8. Counters: every statement that changes messages appends its net effect per webhook to
-- webhook_counts (section 1), so stats never count rows and no counter row is hot.
---------------------------------------------------------------------------------------------

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
