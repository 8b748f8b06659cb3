-- A message sealed with a key this replica lacks (a rolling key rotation) is not a failed
-- attempt and not tampering: its lock is released as if never taken, so it stays at its
-- position for a replica that has the key, and nothing behind it overtakes it.
SET LOCAL lock_timeout = '5s';

-- locked -> queued, retry_count unchanged: releases the lock `p_token` holds on the message,
-- in either mode.
CREATE FUNCTION hookline_release_lock(p_webhook uuid, p_message uuid, p_token uuid)
RETURNS void LANGUAGE sql AS $$
    WITH fifo AS (
        UPDATE webhooks SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
        WHERE id = p_webhook AND lock_token = p_token
        RETURNING id
    )
    UPDATE messages SET lock_token = NULL, lock_expires_at = NULL
    WHERE webhook_id = p_webhook AND id = p_message AND lock_token = p_token
      AND NOT EXISTS (SELECT 1 FROM fifo)
$$;
