-- Plans: each project is on one, and an operator may override any of its limits.
CREATE TYPE plan AS ENUM ('free', 'pro', 'enterprise', 'unlimited');

ALTER TABLE projects
    ADD COLUMN plan plan NOT NULL DEFAULT 'unlimited',
    -- NULL keeps the plan's limit; a value replaces it (per second, per webhook).
    ADD COLUMN ingest_per_second integer CONSTRAINT projects_ingest_per_second_positive CHECK (ingest_per_second > 0),
    ADD COLUMN dequeue_per_second integer CONSTRAINT projects_dequeue_per_second_positive CHECK (dequeue_per_second > 0),
    ADD COLUMN ack_per_second integer CONSTRAINT projects_ack_per_second_positive CHECK (ack_per_second > 0),
    ADD COLUMN max_webhooks integer CONSTRAINT projects_max_webhooks_positive CHECK (max_webhooks > 0),
    ADD COLUMN max_body_bytes integer CONSTRAINT projects_max_body_bytes_positive CHECK (max_body_bytes > 0);
