-- Scoped API keys: what a key may do, and optionally which webhooks it may touch.
ALTER TABLE api_keys
    ADD COLUMN name text,
    ADD COLUMN scopes text[] NOT NULL DEFAULT '{manage,consume,publish}'
        CONSTRAINT api_keys_scopes_known
        CHECK (cardinality(scopes) > 0 AND scopes <@ '{manage,consume,publish}'::text[]),
    -- NULL: every webhook of the project.
    ADD COLUMN webhook_ids uuid[];
