-- hookline's schema as the migrations leave it: generated, do not edit.
-- Regenerate: HOOKLINE_WRITE_SCHEMA=1 cargo test --test api schema_sql
-- Dumped by pg_dump 15.
CREATE TYPE public.attempt_cause AS ENUM (
    'error',
    'lock_expired'
);

CREATE TYPE public.delivery_mode AS ENUM (
    'fifo',
    'standard'
);

CREATE TYPE public.lock_refusal AS ENUM (
    'no_message',
    'not_locked',
    'lock_mismatch',
    'token_required',
    'out_of_order',
    'lock_superseded'
);

CREATE TYPE public.message_state AS ENUM (
    'queued',
    'committed',
    'dead'
);

CREATE TYPE public.held_lock AS (
	seq bigint,
	refusal public.lock_refusal,
	state public.message_state
);

CREATE TYPE public.locked_message AS (
	id uuid,
	seq bigint,
	retry_count integer,
	max_retries integer,
	lock_token uuid,
	lock_expires_at timestamp with time zone,
	received_at timestamp with time zone,
	key_id integer,
	nonce bytea,
	ciphertext bytea,
	priority smallint
);

CREATE TYPE public.member_role AS ENUM (
    'owner',
    'member'
);

CREATE TYPE public.plan AS ENUM (
    'free',
    'pro',
    'enterprise',
    'unlimited'
);

CREATE TYPE public.skip_refusal AS ENUM (
    'no_webhook',
    'not_fifo',
    'no_head',
    'head_moved',
    'key_mismatch'
);

CREATE FUNCTION public.hookline_act_on_dead(p_webhook uuid, p_project bigint, p_message uuid, p_discard boolean, OUT state public.message_state, OUT locked boolean) RETURNS SETOF record
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_act_on_dead_letters(p_webhook uuid, p_since timestamp with time zone, p_until timestamp with time zone, p_error text, p_discard boolean) RETURNS integer
    LANGUAGE sql
    AS $$
    SELECT hookline_redrive(p_webhook, ARRAY(
        SELECT seq FROM messages
        WHERE webhook_id = p_webhook AND state = 'dead'
          AND hookline_dead_letter_matches(dead_at, last_error, p_since, p_until, p_error)), p_discard)
$$;

CREATE FUNCTION public.hookline_bury(p_webhook uuid, p_message uuid, p_token uuid, p_reason text) RETURNS void
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_claim_idempotency_keys(p_webhooks uuid[], p_keys text[], p_messages uuid[]) RETURNS SETOF uuid
    LANGUAGE plpgsql
    SET lock_timeout TO '1s'
    AS $$
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

CREATE FUNCTION public.hookline_claim_idempotency_keys(p_webhooks uuid[], p_keys text[], p_messages uuid[], p_windows integer[]) RETURNS SETOF uuid
    LANGUAGE plpgsql
    SET lock_timeout TO '1s'
    AS $$
BEGIN
    RETURN QUERY
    INSERT INTO idempotency_keys AS k (webhook_id, key, message_id, window_seconds)
    SELECT c.webhook_id, c.key, c.message_id, c.window_seconds
    FROM unnest(p_webhooks, p_keys, p_messages, p_windows) WITH ORDINALITY AS c(webhook_id, key, message_id, window_seconds, ord)
    WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = c.webhook_id)
    ORDER BY c.ord
    ON CONFLICT (webhook_id, key) DO UPDATE
        SET message_id = EXCLUDED.message_id, seq = NULL, created_at = now(), window_seconds = EXCLUDED.window_seconds
        WHERE k.created_at <= now() - make_interval(secs => coalesce(EXCLUDED.window_seconds, 86400))
    RETURNING k.message_id;
END
$$;

CREATE FUNCTION public.hookline_claim_signatures(p_webhooks uuid[], p_signatures bytea[], p_windows integer[], p_messages uuid[]) RETURNS SETOF uuid
    LANGUAGE plpgsql
    SET lock_timeout TO '1s'
    AS $$
BEGIN
    RETURN QUERY
    WITH claim AS (
        SELECT * FROM unnest(p_webhooks, p_signatures, p_windows, p_messages)
            AS c(webhook_id, signature, window_seconds, message_id)
    ), won AS (
        INSERT INTO seen_signatures AS s (webhook_id, signature, expires_at)
        SELECT c.webhook_id, c.signature, now() + make_interval(secs => c.window_seconds)
        FROM claim c ORDER BY c.webhook_id, c.signature
        ON CONFLICT (webhook_id, signature) DO UPDATE SET expires_at = EXCLUDED.expires_at
            WHERE s.expires_at <= now()
        RETURNING s.webhook_id, s.signature
    )
    SELECT claim.message_id FROM claim JOIN won USING (webhook_id, signature);
END
$$;

CREATE FUNCTION public.hookline_commit(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_next boolean) RETURNS TABLE(refusal public.lock_refusal, state public.message_state, id uuid, seq bigint, retry_count integer, max_retries integer, lock_token uuid, lock_expires_at timestamp with time zone, received_at timestamp with time zone, key_id integer, nonce bytea, ciphertext bytea, priority smallint)
    LANGUAGE sql
    AS $$
    SELECT * FROM hookline_commit_next(p_webhook, p_project, p_message, p_token, CASE WHEN p_next THEN 1 ELSE 0 END)
$$;

CREATE FUNCTION public.hookline_commit_heads(p_webhooks uuid[], p_projects bigint[], p_messages uuid[], p_tokens uuid[], p_next integer[]) RETURNS TABLE(i bigint, id uuid, seq bigint, retry_count integer, max_retries integer, lock_token uuid, lock_expires_at timestamp with time zone, received_at timestamp with time zone, key_id integer, nonce bytea, ciphertext bytea, priority smallint)
    LANGUAGE plpgsql
    SET enable_sort TO 'off'
    SET jit TO 'off'
    AS $$
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

CREATE FUNCTION public.hookline_commit_next(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_next integer) RETURNS TABLE(refusal public.lock_refusal, state public.message_state, id uuid, seq bigint, retry_count integer, max_retries integer, lock_token uuid, lock_expires_at timestamp with time zone, received_at timestamp with time zone, key_id integer, nonce bytea, ciphertext bytea, priority smallint)
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_count_deleted() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_count_inserted() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- Ingestion inserts queued rows; counting by state keeps bulk loads of other states exact.
    INSERT INTO webhook_counts (webhook_id, live, dead, committed, ingested)
    SELECT webhook_id, count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'dead'),
           count(*) FILTER (WHERE state = 'committed'), count(*)
    FROM new_rows GROUP BY webhook_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION public.hookline_count_updated() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO webhook_counts (webhook_id, live, dead, committed, delivered)
    SELECT webhook_id, sum(live), sum(dead), sum(committed), greatest(sum(committed), 0)
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

CREATE FUNCTION public.hookline_dead_letter_matches(p_dead_at timestamp with time zone, p_last_error text, p_since timestamp with time zone, p_until timestamp with time zone, p_error text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT (p_since IS NULL OR p_dead_at >= p_since) AND (p_until IS NULL OR p_dead_at < p_until)
       AND (p_error IS NULL OR strpos(lower(p_last_error), lower(p_error)) > 0)
$$;

CREATE TABLE public.webhooks (
    id uuid NOT NULL,
    project_id bigint NOT NULL,
    name text NOT NULL,
    lock_timeout_seconds integer NOT NULL,
    max_retries integer NOT NULL,
    ttl_days integer NOT NULL,
    locked_seq bigint,
    lock_token uuid,
    lock_expires_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    signature_scheme text,
    signature_tolerance_seconds integer DEFAULT 300 NOT NULL,
    signature_key_id integer,
    signature_nonce bytea,
    signature_secret bytea,
    mode public.delivery_mode DEFAULT 'fifo'::public.delivery_mode NOT NULL,
    priorities boolean DEFAULT false NOT NULL,
    idempotency_from_webhook_id boolean DEFAULT false NOT NULL,
    require_lock_token boolean DEFAULT false NOT NULL,
    fifo_window integer DEFAULT 1 NOT NULL,
    window_rest bigint[],
    lock_acquired_at timestamp with time zone,
    lock_extensions integer DEFAULT 0 NOT NULL,
    superseded_tokens uuid[],
    paused_at timestamp with time zone,
    held_until timestamp with time zone,
    dedup_key text,
    dedup_window_seconds integer DEFAULT 86400 NOT NULL,
    ordering_key text,
    CONSTRAINT webhooks_dedup_key_form CHECK ((dedup_key ~ '^(header:[a-z0-9!#$%&''*+.^_`|~-]{1,100}|/.{0,199})$'::text)),
    CONSTRAINT webhooks_dedup_window_range CHECK (((dedup_window_seconds >= 1) AND (dedup_window_seconds <= 86400))),
    CONSTRAINT webhooks_fifo_window_range CHECK (((fifo_window >= 1) AND (fifo_window <= 100))),
    CONSTRAINT webhooks_lock_complete CHECK ((((locked_seq IS NULL) = (lock_token IS NULL)) AND ((locked_seq IS NULL) = (lock_expires_at IS NULL)))),
    CONSTRAINT webhooks_lock_timeout_range CHECK (((lock_timeout_seconds >= 1) AND (lock_timeout_seconds <= 43200))),
    CONSTRAINT webhooks_max_retries_range CHECK (((max_retries >= 1) AND (max_retries <= 100))),
    CONSTRAINT webhooks_ordering_key_form CHECK (((ordering_key IS NULL) OR ((ordering_key ~ '^(header:[a-z0-9!#$%&''*+.^_`|~-]{1,100}|/.{0,199})$'::text) AND (mode = 'fifo'::public.delivery_mode) AND (fifo_window = 1) AND (NOT priorities)))),
    CONSTRAINT webhooks_signature_complete CHECK ((((signature_scheme IS NULL) = (signature_secret IS NULL)) AND ((signature_secret IS NULL) = (signature_nonce IS NULL)) AND ((signature_secret IS NULL) = (signature_key_id IS NULL)))),
    CONSTRAINT webhooks_signature_scheme_known CHECK ((signature_scheme = ANY (ARRAY['standard-webhooks'::text, 'stripe'::text, 'github'::text]))),
    CONSTRAINT webhooks_signature_tolerance_range CHECK (((signature_tolerance_seconds >= 1) AND (signature_tolerance_seconds <= 86400))),
    CONSTRAINT webhooks_ttl_days_range CHECK (((ttl_days >= 1) AND (ttl_days <= 365))),
    CONSTRAINT webhooks_window_locked CHECK (((window_rest IS NULL) OR ((locked_seq IS NOT NULL) AND (cardinality(window_rest) > 0))))
);

CREATE FUNCTION public.hookline_delivery_webhook(p_webhook uuid, p_project bigint) RETURNS public.webhooks
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_dequeue(p_webhook uuid, p_project bigint, p_max integer, p_visibility integer) RETURNS SETOF public.locked_message
    LANGUAGE plpgsql
    AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_delivery_webhook(p_webhook, p_project);
BEGIN
    hook.lock_timeout_seconds := coalesce(p_visibility, hook.lock_timeout_seconds);
    RETURN QUERY SELECT * FROM hookline_lock_next(hook, p_max);
END
$$;

CREATE FUNCTION public.hookline_error(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_reason text, p_requeue boolean, OUT refusal public.lock_refusal, OUT state public.message_state, OUT retry_count integer, OUT max_retries integer) RETURNS record
    LANGUAGE sql
    AS $$
    SELECT n.refusal, n.state, n.retry_count, n.max_retries
    FROM hookline_nack(p_webhook, p_project, p_message, p_token, p_reason, p_requeue, NULL) n
$$;

CREATE FUNCTION public.hookline_expire_message_locks(p_webhook uuid, p_limit integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_expire_webhook_locks(p_limit integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_extend(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_seconds integer, OUT refusal public.lock_refusal, OUT state public.message_state, OUT lock_expires_at timestamp with time zone) RETURNS record
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_fail_attempts(p_webhook uuid, p_seqs bigint[], p_max_retries integer, p_reason text, p_cause public.attempt_cause, p_requeue boolean DEFAULT true) RETURNS TABLE(failed_seq bigint, new_state public.message_state, new_retry_count integer)
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_held_lock(hook public.webhooks, p_message uuid, p_token uuid) RETURNS public.held_lock
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_ingest(p_webhooks uuid[], p_ids uuid[], p_key_ids integer[], p_nonces bytea[], p_ciphertexts bytea[], p_priorities smallint[], p_delays integer[], p_ttls integer[]) RETURNS TABLE(message_id uuid, message_seq bigint)
    LANGUAGE sql
    SET lock_timeout TO '1s'
    AS $$
    SELECT * FROM hookline_ingest(p_webhooks, p_ids, p_key_ids, p_nonces, p_ciphertexts, p_priorities, p_delays,
                                  p_ttls, NULL::text[])
$$;

CREATE FUNCTION public.hookline_ingest(p_webhooks uuid[], p_ids uuid[], p_key_ids integer[], p_nonces bytea[], p_ciphertexts bytea[], p_priorities smallint[], p_delays integer[], p_ttls integer[], p_ordering_keys text[]) RETURNS TABLE(message_id uuid, message_seq bigint)
    LANGUAGE plpgsql
    SET lock_timeout TO '1s'
    AS $$
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

CREATE FUNCTION public.hookline_key_heads(hook public.webhooks, p_max integer) RETURNS bigint[]
    LANGUAGE plpgsql STABLE
    SET enable_sort TO 'off'
    AS $$
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

CREATE FUNCTION public.hookline_lock_available(hook public.webhooks, p_max integer) RETURNS SETOF public.locked_message
    LANGUAGE plpgsql
    SET enable_sort TO 'off'
    AS $$
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

CREATE FUNCTION public.hookline_lock_keyed(hook public.webhooks, p_max integer) RETURNS SETOF public.locked_message
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_lock_message(p_webhook uuid, p_project bigint, p_message uuid, OUT seq bigint, OUT state public.message_state, OUT locked boolean) RETURNS SETOF record
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_lock_next(hook public.webhooks, p_max integer) RETURNS SETOF public.locked_message
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_lock_taken() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.lock_acquired_at := now();
    NEW.lock_extensions := 0;
    RETURN NEW;
END
$$;

CREATE FUNCTION public.hookline_lock_window(hook public.webhooks, p_max integer) RETURNS SETOF public.locked_message
    LANGUAGE plpgsql
    SET enable_sort TO 'off'
    AS $$
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

CREATE FUNCTION public.hookline_nack(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_reason text, p_requeue boolean, p_hold integer, OUT refusal public.lock_refusal, OUT state public.message_state, OUT retry_count integer, OUT max_retries integer, OUT held_until timestamp with time zone) RETURNS record
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_next_due(p_webhook uuid) RETURNS timestamp with time zone
    LANGUAGE sql STABLE
    AS $$
    SELECT least(
        (SELECT min(deliver_at) FROM messages WHERE webhook_id = p_webhook AND state = 'queued' AND deliver_at > now()),
        (SELECT min(lock_expires_at) FROM messages WHERE webhook_id = p_webhook AND lock_token IS NOT NULL),
        (SELECT least(lock_expires_at, CASE WHEN held_until > now() THEN held_until END)
         FROM webhooks WHERE id = p_webhook))
$$;

CREATE FUNCTION public.hookline_promote_due(p_webhook uuid) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    WITH due AS (
        SELECT ctid AS row_id FROM messages
        WHERE webhook_id = p_webhook AND state = 'queued' AND deliver_at <= now()
        FOR UPDATE SKIP LOCKED
    )
    UPDATE messages SET deliver_at = NULL WHERE ctid = ANY (ARRAY(SELECT row_id FROM due));
END
$$;

CREATE FUNCTION public.hookline_purge_expired(p_limit integer) RETURNS integer
    LANGUAGE sql
    AS $$
    SELECT purged FROM hookline_purge_expired_skipping(p_limit, '{}', NULL, NULL)
$$;

CREATE FUNCTION public.hookline_purge_expired_skipping(p_limit integer, p_skip uuid[], p_from timestamp with time zone, p_only uuid, OUT purged integer, OUT candidates integer, OUT busy uuid[], OUT reached timestamp with time zone) RETURNS record
    LANGUAGE plpgsql
    AS $$
DECLARE
    cand_webhooks uuid[];
    cand_seqs bigint[];
    webhook_ids uuid[];
    seqs bigint[];
    free uuid[];
    hook record;
BEGIN
    -- Everything expired before p_from (null: the start) was taken or belongs to a busy webhook.
    SELECT coalesce(array_agg(webhook_id), '{}'), coalesce(array_agg(seq), '{}'), max(expires_at)
    INTO cand_webhooks, cand_seqs, reached
    FROM (SELECT webhook_id, seq, expires_at FROM messages
          WHERE expires_at <= now() AND expires_at >= coalesce(p_from, '-infinity')
            AND (webhook_id = p_only OR (p_only IS NULL AND webhook_id <> ALL (p_skip)))
          ORDER BY expires_at LIMIT p_limit) c;
    candidates := cardinality(cand_seqs);
    reached := coalesce(reached, p_from);
    IF p_only IS NULL THEN
        SELECT coalesce(array_agg(id), '{}') INTO free
        FROM (SELECT id FROM webhooks WHERE id = ANY (cand_webhooks) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED) w;
    ELSE
        -- One webhook found busy earlier: wait a moment for its row (a webhook its consumers
        -- lock many times a second is rarely free the instant a batch passes).
        PERFORM set_config('lock_timeout', '1s', true);
        SELECT coalesce(array_agg(id), '{}') INTO free
        FROM (SELECT id FROM webhooks WHERE id = p_only AND id = ANY (cand_webhooks) FOR NO KEY UPDATE) w;
    END IF;
    -- A deleted webhook's rows need no webhook lock (nothing can lock them any more).
    free := free || ARRAY(SELECT DISTINCT d.id FROM unnest(cand_webhooks) AS d(id)
                          WHERE NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.id));
    WITH doomed AS (
        SELECT m.ctid AS row_id
        FROM unnest(cand_webhooks, cand_seqs) AS c(webhook_id, seq)
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
    -- Busy: a candidate left behind (its webhook row or its own row held elsewhere). Each
    -- batch either purges or marks a webhook busy, so a run always ends.
    busy := ARRAY(SELECT DISTINCT c.webhook_id FROM unnest(cand_webhooks, cand_seqs) AS c(webhook_id, seq)
                  WHERE NOT EXISTS (SELECT 1 FROM unnest(webhook_ids, seqs) AS d(webhook_id, seq)
                                    WHERE d.webhook_id = c.webhook_id AND d.seq = c.seq));
    FOR hook IN
        SELECT d.webhook_id, array_agg(d.seq) AS seqs FROM unnest(webhook_ids, seqs) AS d(webhook_id, seq)
        GROUP BY d.webhook_id ORDER BY d.webhook_id
    LOOP
        PERFORM hookline_release_purged_lock(hook.webhook_id, hook.seqs);
    END LOOP;
    purged := cardinality(seqs);
END
$$;

CREATE FUNCTION public.hookline_purge_idempotency_keys(p_limit integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    purged integer;
BEGIN
    DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM idempotency_keys WHERE created_at <= now() - interval '24 hours' LIMIT p_limit));
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;

CREATE FUNCTION public.hookline_purge_live(p_webhook uuid, p_limit integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_purge_seen_signatures(p_limit integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    purged integer;
BEGIN
    DELETE FROM seen_signatures WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM seen_signatures WHERE expires_at <= now() ORDER BY expires_at LIMIT p_limit));
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;

CREATE FUNCTION public.hookline_purge_sessions(p_limit integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    purged integer;
BEGIN
    DELETE FROM sessions WHERE token_hash = ANY (ARRAY(
        SELECT token_hash FROM sessions WHERE expires_at <= now() ORDER BY expires_at LIMIT p_limit));
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;

CREATE FUNCTION public.hookline_redrive(p_webhook uuid, p_seqs bigint[], p_discard boolean) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_release_expired_locks(p_limit integer) RETURNS integer
    LANGUAGE sql
    AS $$
    SELECT hookline_expire_webhook_locks(p_limit) + hookline_expire_message_locks(NULL, p_limit)
$$;

CREATE FUNCTION public.hookline_release_lock(p_webhook uuid, p_message uuid, p_token uuid) RETURNS void
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_release_orphaned_locks(p_webhook uuid) RETURNS void
    LANGUAGE sql
    AS $$
    UPDATE webhooks w SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
    WHERE (p_webhook IS NULL OR w.id = p_webhook) AND w.locked_seq IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.webhook_id = w.id AND m.seq = w.locked_seq)
$$;

CREATE FUNCTION public.hookline_release_purged_lock(p_webhook uuid, p_seqs bigint[]) RETURNS void
    LANGUAGE sql
    AS $$
    SELECT hookline_shrink_window(w.id, w.lock_token, CASE WHEN w.locked_seq = ANY (p_seqs) THEN w.locked_seq ELSE
               (SELECT r.seq FROM unnest(w.window_rest) WITH ORDINALITY AS r(seq, k)
                WHERE r.seq = ANY (p_seqs) ORDER BY r.k LIMIT 1) END)
    FROM webhooks w
    WHERE w.id = p_webhook AND (w.locked_seq = ANY (p_seqs) OR w.window_rest && p_seqs)
$$;

CREATE FUNCTION public.hookline_release_window() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.window_rest := NULL;
    RETURN NEW;
END
$$;

CREATE FUNCTION public.hookline_remember_deleted_webhooks() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO deleted_webhooks (webhook_id) SELECT id FROM old_rows ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE FUNCTION public.hookline_shrink_window(p_webhook uuid, p_token uuid, p_seq bigint) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.hookline_skip_head(p_webhook uuid, p_project bigint, p_expect_seq bigint, p_reason text, p_actor text, p_key text, OUT refusal public.skip_refusal, OUT id uuid, OUT seq bigint, OUT superseded boolean) RETURNS record
    LANGUAGE plpgsql
    SET enable_sort TO 'off'
    AS $$
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

CREATE FUNCTION public.hookline_sweep_deleted_webhooks(p_limit integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    gone uuid;
    remaining integer := p_limit;
    n integer;
BEGIN
    FOR gone IN SELECT webhook_id FROM deleted_webhooks ORDER BY deleted_at FOR UPDATE SKIP LOCKED LOOP
        DELETE FROM messages WHERE webhook_id = gone AND seq = ANY (ARRAY(
            SELECT seq FROM messages WHERE webhook_id = gone ORDER BY seq LIMIT remaining));
        GET DIAGNOSTICS n = ROW_COUNT;
        remaining := remaining - n;
        EXIT WHEN remaining = 0;
        DELETE FROM idempotency_keys WHERE webhook_id = gone AND key = ANY (ARRAY(
            SELECT key FROM idempotency_keys WHERE webhook_id = gone LIMIT remaining));
        GET DIAGNOSTICS n = ROW_COUNT;
        remaining := remaining - n;
        EXIT WHEN remaining = 0;
        DELETE FROM webhook_counts WHERE webhook_id = gone;
        DELETE FROM deleted_webhooks WHERE webhook_id = gone;
    END LOOP;
    RETURN p_limit - remaining;
END
$$;

CREATE FUNCTION public.hookline_wake(p_webhook uuid) RETURNS void
    LANGUAGE sql
    AS $$
    SELECT pg_notify('hookline_queue', p_webhook::text)
$$;

CREATE FUNCTION public.hookline_wake_on_key_deleted() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM hookline_wake(OLD.webhook_id);
    RETURN NULL;
END
$$;

CREATE FUNCTION public.hookline_wake_on_release() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM hookline_wake(NEW.id);
    RETURN NULL;
END
$$;

CREATE FUNCTION public.hookline_wake_on_requeue() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM hookline_wake(NEW.webhook_id);
    RETURN NULL;
END
$$;

CREATE FUNCTION public.hookline_withheld(hook public.webhooks) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
    SELECT hook.paused_at IS NOT NULL OR coalesce(hook.held_until > now(), false)
$$;

CREATE TABLE public.api_keys (
    id bigint NOT NULL,
    project_id bigint NOT NULL,
    prefix text NOT NULL,
    hash text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    last_used_at timestamp with time zone,
    revoked_at timestamp with time zone,
    name text,
    scopes text[] DEFAULT '{manage,consume,publish}'::text[] NOT NULL,
    webhook_ids uuid[],
    CONSTRAINT api_keys_scopes_known CHECK (((cardinality(scopes) > 0) AND (scopes <@ '{manage,consume,publish}'::text[])))
);

ALTER TABLE public.api_keys ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.api_keys_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.deleted_webhooks (
    webhook_id uuid NOT NULL,
    deleted_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.idempotency_keys (
    webhook_id uuid NOT NULL,
    key text NOT NULL,
    message_id uuid NOT NULL,
    seq bigint,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    window_seconds integer
);

CREATE TABLE public.memberships (
    user_id bigint NOT NULL,
    project_id bigint NOT NULL,
    role public.member_role NOT NULL
);

CREATE TABLE public.messages (
    webhook_id uuid NOT NULL,
    seq bigint NOT NULL,
    id uuid NOT NULL,
    state public.message_state DEFAULT 'queued'::public.message_state NOT NULL,
    retry_count integer DEFAULT 0 NOT NULL,
    last_error text,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    committed_at timestamp with time zone,
    dead_at timestamp with time zone,
    key_id integer NOT NULL,
    nonce bytea NOT NULL,
    ciphertext bytea NOT NULL,
    priority smallint DEFAULT 0 NOT NULL,
    deliver_at timestamp with time zone,
    lock_token uuid,
    lock_expires_at timestamp with time zone,
    error_attempts integer DEFAULT 0 NOT NULL,
    expiry_attempts integer DEFAULT 0 NOT NULL,
    last_error_at timestamp with time zone,
    skipped_by text,
    replay_of uuid,
    ordering_key text,
    CONSTRAINT messages_committed_has_time CHECK (((state = 'committed'::public.message_state) = (committed_at IS NOT NULL))),
    CONSTRAINT messages_dead_has_time CHECK (((state = 'dead'::public.message_state) = (dead_at IS NOT NULL))),
    CONSTRAINT messages_lock_complete CHECK (((lock_token IS NULL) = (lock_expires_at IS NULL))),
    CONSTRAINT messages_priority_range CHECK (((priority >= 0) AND (priority <= 10))),
    CONSTRAINT messages_retry_count_nonnegative CHECK ((retry_count >= 0))
);

CREATE TABLE public.projects (
    id bigint NOT NULL,
    name text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    plan public.plan DEFAULT 'unlimited'::public.plan NOT NULL,
    ingest_per_second integer,
    dequeue_per_second integer,
    ack_per_second integer,
    max_webhooks integer,
    max_body_bytes integer,
    CONSTRAINT projects_ack_per_second_positive CHECK ((ack_per_second > 0)),
    CONSTRAINT projects_dequeue_per_second_positive CHECK ((dequeue_per_second > 0)),
    CONSTRAINT projects_ingest_per_second_positive CHECK ((ingest_per_second > 0)),
    CONSTRAINT projects_max_body_bytes_positive CHECK ((max_body_bytes > 0)),
    CONSTRAINT projects_max_webhooks_positive CHECK ((max_webhooks > 0))
);

ALTER TABLE public.projects ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.projects_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.seen_signatures (
    webhook_id uuid NOT NULL,
    signature bytea NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

CREATE TABLE public.sessions (
    token_hash bytea NOT NULL,
    user_id bigint NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

CREATE TABLE public.users (
    id bigint NOT NULL,
    email text NOT NULL,
    password_hash text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE public.users ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.users_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.webhook_counts (
    webhook_id uuid NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    live bigint DEFAULT 0 NOT NULL,
    dead bigint DEFAULT 0 NOT NULL,
    committed bigint DEFAULT 0 NOT NULL,
    ingested bigint DEFAULT 0 NOT NULL,
    delivered bigint DEFAULT 0 NOT NULL,
    folded boolean DEFAULT false NOT NULL
);

CREATE TABLE public.webhook_sequences (
    webhook_id uuid NOT NULL,
    last_seq bigint DEFAULT 0 NOT NULL
);

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_prefix_key UNIQUE (prefix);

ALTER TABLE ONLY public.deleted_webhooks
    ADD CONSTRAINT deleted_webhooks_pkey PRIMARY KEY (webhook_id);

ALTER TABLE ONLY public.idempotency_keys
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (webhook_id, key);

ALTER TABLE ONLY public.memberships
    ADD CONSTRAINT memberships_pkey PRIMARY KEY (user_id, project_id);

ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_id_key UNIQUE (id);

ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (webhook_id, seq);

ALTER TABLE ONLY public.projects
    ADD CONSTRAINT projects_name_key UNIQUE (name);

ALTER TABLE ONLY public.projects
    ADD CONSTRAINT projects_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.seen_signatures
    ADD CONSTRAINT seen_signatures_pkey PRIMARY KEY (webhook_id, signature);

ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (token_hash);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_email_key UNIQUE (email);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.webhook_sequences
    ADD CONSTRAINT webhook_sequences_pkey PRIMARY KEY (webhook_id);

ALTER TABLE ONLY public.webhooks
    ADD CONSTRAINT webhooks_pkey PRIMARY KEY (id);

CREATE INDEX idempotency_keys_created_idx ON public.idempotency_keys USING btree (created_at);

CREATE INDEX messages_dead_idx ON public.messages USING btree (webhook_id, seq) WHERE (state = 'dead'::public.message_state);

CREATE INDEX messages_delayed_idx ON public.messages USING btree (webhook_id, deliver_at) WHERE ((state = 'queued'::public.message_state) AND (deliver_at IS NOT NULL));

CREATE INDEX messages_expires_idx ON public.messages USING btree (expires_at);

CREATE INDEX messages_in_flight_idx ON public.messages USING btree (webhook_id, lock_expires_at) WHERE (lock_token IS NOT NULL);

CREATE INDEX messages_ready_idx ON public.messages USING btree (webhook_id, priority DESC, seq) WHERE ((state = 'queued'::public.message_state) AND (deliver_at IS NULL) AND (lock_token IS NULL));

CREATE INDEX seen_signatures_expires_idx ON public.seen_signatures USING btree (expires_at);

CREATE INDEX sessions_expires_idx ON public.sessions USING btree (expires_at);

CREATE INDEX webhook_counts_fold_idx ON public.webhook_counts USING btree (folded, at) WHERE (at > '-infinity'::timestamp with time zone);

CREATE INDEX webhook_counts_webhook_idx ON public.webhook_counts USING btree (webhook_id, at);

CREATE INDEX webhooks_project_order_idx ON public.webhooks USING btree (project_id, created_at, id);

CREATE TRIGGER messages_count_deleted AFTER DELETE ON public.messages REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION public.hookline_count_deleted();

CREATE TRIGGER messages_count_inserted AFTER INSERT ON public.messages REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.hookline_count_inserted();

CREATE TRIGGER messages_count_updated AFTER UPDATE ON public.messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.hookline_count_updated();

CREATE TRIGGER messages_key_deleted AFTER DELETE ON public.messages FOR EACH ROW WHEN (((old.lock_token IS NOT NULL) AND (old.ordering_key IS NOT NULL))) EXECUTE FUNCTION public.hookline_wake_on_key_deleted();

CREATE TRIGGER messages_key_released AFTER UPDATE OF lock_token ON public.messages FOR EACH ROW WHEN (((old.lock_token IS NOT NULL) AND (new.lock_token IS NULL) AND (new.ordering_key IS NOT NULL))) EXECUTE FUNCTION public.hookline_wake_on_requeue();

CREATE TRIGGER messages_lock_released AFTER UPDATE OF lock_token ON public.messages FOR EACH ROW WHEN (((old.lock_token IS NOT NULL) AND (new.lock_token IS NULL) AND (new.state = 'queued'::public.message_state))) EXECUTE FUNCTION public.hookline_wake_on_requeue();

CREATE TRIGGER messages_requeued AFTER UPDATE OF state ON public.messages FOR EACH ROW WHEN (((old.state = 'dead'::public.message_state) AND (new.state = 'queued'::public.message_state))) EXECUTE FUNCTION public.hookline_wake_on_requeue();

CREATE TRIGGER webhooks_deleted AFTER DELETE ON public.webhooks REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION public.hookline_remember_deleted_webhooks();

CREATE TRIGGER webhooks_lock_released AFTER UPDATE OF locked_seq ON public.webhooks FOR EACH ROW WHEN (((old.locked_seq IS NOT NULL) AND (new.locked_seq IS NULL))) EXECUTE FUNCTION public.hookline_wake_on_release();

CREATE TRIGGER webhooks_lock_taken BEFORE UPDATE OF lock_token ON public.webhooks FOR EACH ROW WHEN (((new.lock_token IS NOT NULL) AND (new.lock_token IS DISTINCT FROM old.lock_token))) EXECUTE FUNCTION public.hookline_lock_taken();

CREATE TRIGGER webhooks_window_released BEFORE UPDATE OF locked_seq ON public.webhooks FOR EACH ROW WHEN (((new.locked_seq IS NULL) AND (new.window_rest IS NOT NULL))) EXECUTE FUNCTION public.hookline_release_window();

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_project_id_fkey FOREIGN KEY (project_id) REFERENCES public.projects(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.memberships
    ADD CONSTRAINT memberships_project_id_fkey FOREIGN KEY (project_id) REFERENCES public.projects(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.memberships
    ADD CONSTRAINT memberships_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.webhook_sequences
    ADD CONSTRAINT webhook_sequences_webhook_id_fkey FOREIGN KEY (webhook_id) REFERENCES public.webhooks(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.webhooks
    ADD CONSTRAINT webhooks_project_id_fkey FOREIGN KEY (project_id) REFERENCES public.projects(id) ON DELETE CASCADE;

