-- 64 messages per transaction on one random webhook in [lo, hi]: the group-commit ceiling.
\set w random(:lo, :hi)
WITH counter AS (
    UPDATE webhook_sequences SET last_seq = last_seq + 64
    WHERE webhook_id = ('00000000-0000-0000-0000-' || lpad(:w::text, 12, '0'))::uuid
    RETURNING webhook_id, last_seq - 64 AS base
)
INSERT INTO messages (webhook_id, seq, id, expires_at, key_id, nonce, ciphertext)
SELECT counter.webhook_id, counter.base + n, gen_random_uuid(), now() + interval '7 days', 0,
       '\x000000000000000000000000'::bytea, decode(repeat('ab', 1040), 'hex')
FROM counter, generate_series(1, 64) n;
