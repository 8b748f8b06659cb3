-- A webhook may require the lock token on commit, error and extend (off by default: the
-- webhook broker document's examples send none). A call that names no token acts on
-- whichever lock the message holds; with the setting, every call must name the lock it
-- was given.
SET LOCAL lock_timeout = '5s';

-- A constant default: no table rewrite.
ALTER TABLE webhooks ADD COLUMN require_lock_token boolean NOT NULL DEFAULT false;

ALTER TYPE lock_refusal ADD VALUE 'token_required';

-- As before (baseline section 5), and first: a call without a token on a webhook that
-- requires one is refused whatever the message's state.
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
