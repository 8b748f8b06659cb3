-- One message per transaction: the per-webhook counter update and the insert, the same
-- statement the broker runs, on a random webhook in [lo, hi].
\set w random(:lo, :hi)
WITH counter AS (
    UPDATE webhook_sequences SET last_seq = last_seq + 1
    WHERE webhook_id = ('00000000-0000-0000-0000-' || lpad(:w::text, 12, '0'))::uuid
    RETURNING webhook_id, last_seq
)
INSERT INTO messages (webhook_id, seq, id, expires_at, key_id, nonce, ciphertext)
SELECT counter.webhook_id, counter.last_seq, gen_random_uuid(), now() + interval '7 days', 0,
       '\x000000000000000000000000'::bytea, decode(repeat('ab', 1040), 'hex')
FROM counter;
