-- Strict-FIFO dequeue then commit, two transactions, through the broker's own dequeue
-- function and the same writes as its commit, on a random webhook in [lo, hi].
\set w random(:lo, :hi)
SELECT coalesce((SELECT seq FROM hookline_dequeue(('00000000-0000-0000-0000-' || lpad(:w::text, 12, '0'))::uuid,
                                                  (SELECT id FROM projects WHERE name = 'baseline'), 1, NULL)), 0) AS s \gset
BEGIN;
UPDATE messages SET state = 'committed', committed_at = now()
WHERE webhook_id = ('00000000-0000-0000-0000-' || lpad(:w::text, 12, '0'))::uuid AND seq = :s AND state = 'queued';
UPDATE webhooks SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
WHERE id = ('00000000-0000-0000-0000-' || lpad(:w::text, 12, '0'))::uuid AND locked_seq = :s;
END;
