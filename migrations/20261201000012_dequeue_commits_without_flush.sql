-- A plain dequeue only takes locks (and fails attempts whose locks expired, which the next
-- dequeue or the reaper would fail again). Losing that in a database crash causes a
-- redelivery, which at-least-once allows, so its transaction no longer waits for its WAL
-- to reach the disk: synchronous_commit is off for that transaction alone. Commits, errors,
-- ingests and everything else stay durable before they are answered, and since WAL is
-- written in order, any later durable commit (the consumer's own commit first of all) makes
-- the dequeue durable too: a commit can never outlive the lock it was made under.
SET LOCAL lock_timeout = '5s';

CREATE OR REPLACE FUNCTION hookline_dequeue(p_webhook uuid, p_project bigint, p_max integer, p_visibility integer)
RETURNS SETOF locked_message LANGUAGE plpgsql AS $$
DECLARE
    hook webhooks%ROWTYPE := hookline_delivery_webhook(p_webhook, p_project);
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    hook.lock_timeout_seconds := coalesce(p_visibility, hook.lock_timeout_seconds);
    RETURN QUERY SELECT * FROM hookline_lock_next(hook, p_max);
END
$$;
