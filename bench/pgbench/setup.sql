-- Baseline database: the broker's own schema (applied by `hookline migrate`), 1,000 webhooks
-- with predictable ids, and queues prefilled for the dequeue scripts (webhook 1 deep,
-- the others 100 each).
INSERT INTO projects (name) VALUES ('baseline');
INSERT INTO webhooks (id, project_id, name, lock_timeout_seconds, max_retries, ttl_days)
SELECT ('00000000-0000-0000-0000-' || lpad(w::text, 12, '0'))::uuid, p.id, 'baseline-' || w, 300, 10, 7
FROM generate_series(1, 1000) w, projects p;
INSERT INTO messages (webhook_id, seq, id, expires_at, key_id, nonce, ciphertext)
SELECT w.id, s, gen_random_uuid(), now() + interval '7 days', 0, '\x000000000000000000000000'::bytea,
       decode(repeat('ab', 1040), 'hex')
FROM webhooks w, generate_series(1, CASE WHEN w.name = 'baseline-1' THEN 100000 ELSE 100 END) s;
INSERT INTO webhook_sequences (webhook_id, last_seq)
SELECT webhook_id, max(seq) FROM messages GROUP BY webhook_id;
VACUUM ANALYZE;
