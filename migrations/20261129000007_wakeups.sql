-- Long-poll wake-ups: whenever a webhook's queue may have become deliverable (a message
-- arrived, a lock was released, a dead letter came back), `hookline_queue` is notified with
-- the webhook id. NOTIFY is transactional: listeners hear it after the commit.

CREATE FUNCTION hookline_wake(p_webhook uuid) RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('hookline_queue', p_webhook::text)
$$;

CREATE FUNCTION hookline_wake_on_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM hookline_wake(NEW.id);
    RETURN NULL;
END
$$;

-- A released lock (commit, error, expiry) lets the next message through.
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
