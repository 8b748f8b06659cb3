-- Signed ingestion: a webhook may require senders to sign requests with a shared secret.
-- The secret is sealed like payloads (AES-256-GCM, key id, nonce; see src/crypto.rs).
ALTER TABLE webhooks
    ADD COLUMN signature_scheme text
        CONSTRAINT webhooks_signature_scheme_known CHECK (signature_scheme IN ('standard-webhooks', 'stripe', 'github')),
    ADD COLUMN signature_tolerance_seconds integer NOT NULL DEFAULT 300
        CONSTRAINT webhooks_signature_tolerance_range CHECK (signature_tolerance_seconds BETWEEN 1 AND 86400),
    ADD COLUMN signature_key_id integer,
    ADD COLUMN signature_nonce bytea,
    ADD COLUMN signature_secret bytea,
    ADD CONSTRAINT webhooks_signature_complete CHECK (
        (signature_scheme IS NULL) = (signature_secret IS NULL)
        AND (signature_secret IS NULL) = (signature_nonce IS NULL)
        AND (signature_secret IS NULL) = (signature_key_id IS NULL));
