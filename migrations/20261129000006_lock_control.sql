-- Lock control: an error may skip the retries (requeue = false sends the message straight
-- to the dead-letter queue), and a consumer may extend the lock it holds.

DROP FUNCTION hookline_error(uuid, bigint, uuid, uuid, text);
DROP FUNCTION hookline_fail_attempt(webhooks, text);

-- A failed attempt on the locked message of a webhook (error, or lock expiry): back to its
-- position with retry_count + 1, or dead at max_retries or when `p_requeue` is false; the
-- webhook's lock is released. The caller holds the webhook row lock.
CREATE FUNCTION hookline_fail_attempt(hook webhooks, p_reason text, p_requeue boolean DEFAULT true,
                                      OUT new_state message_state, OUT new_retry_count integer)
LANGUAGE plpgsql AS $$
DECLARE
    
BEGIN
    UPDATE messages m
    SET state = CASE WHEN NOT p_requeue OR m.retry_count + 1 >= hook.max_retries
                     THEN 'dead'::message_state ELSE 'queued'::message_state END,
        dead_at = CASE WHEN NOT p_requeue OR m.retry_count + 1 >= hook.max_retries THEN now() END,
        retry_count = m.retry_count + 1,
        last_error = p_reason
    WHERE m.webhook_id = hook.id AND m.seq = hook.locked_seq AND m.state = 'queued'
    RETURNING m.state, m.retry_count INTO new_state, new_retry_count;
    UPDATE webhooks SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL WHERE id = hook.id;
END
$$;

-- locked -> queued at the same position, or dead at max_retries (or at once without requeue).
CREATE FUNCTION hookline_error(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_reason text,
                               p_requeue boolean,
                               OUT new_state message_state, OUT new_retry_count integer, OUT max_retries integer)
LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_lock_holder(p_webhook, p_project, p_message, p_token);
BEGIN
    SELECT * INTO new_state, new_retry_count FROM hookline_fail_attempt(hook, p_reason, p_requeue);
    max_retries := hook.max_retries;
END
$$;

-- Renews the lock `p_message` holds: it now expires `p_seconds` from now.
CREATE FUNCTION hookline_extend(p_webhook uuid, p_project bigint, p_message uuid, p_token uuid, p_seconds integer)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_lock_holder(p_webhook, p_project, p_message, p_token);
    expires timestamptz := now() + make_interval(secs => p_seconds);
BEGIN
    UPDATE webhooks SET lock_expires_at = expires WHERE id = hook.id;
    RETURN expires;
END
$$;
