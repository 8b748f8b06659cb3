-- Dashboard sessions past their expiry are deleted by the TTL purger, in bounded batches,
-- instead of staying forever.
SET LOCAL lock_timeout = '5s';

-- Up to p_limit expired sessions (through sessions_expires_idx). Returns how many.
CREATE FUNCTION hookline_purge_sessions(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    purged integer;
BEGIN
    DELETE FROM sessions WHERE token_hash = ANY (ARRAY(
        SELECT token_hash FROM sessions WHERE expires_at <= now() ORDER BY expires_at LIMIT p_limit));
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;
