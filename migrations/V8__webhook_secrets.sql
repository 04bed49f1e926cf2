-- Webhook signing secrets leave the users table: each is sealed (AEAD) under a key from the
-- environment, whose id is kept beside it, and a user may have several at once while a rotation
-- overlaps (every unretired secret signs each delivery). The rows moved here from
-- users.webhook_secret are stored as they were, under the key id 'plaintext'; `jewelshot
-- migrate` (or `jewelshot secrets rewrap`) seals them as soon as a key is configured.
CREATE TABLE webhook_secrets (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key_id      TEXT NOT NULL,          -- the sealing key's id, or 'plaintext'
    sealed      BYTEA NOT NULL,         -- 24-byte nonce || ciphertext and tag (XChaCha20-Poly1305)
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    retires_at  TIMESTAMPTZ             -- NULL: the current secret; else it signs until then
);
CREATE INDEX webhook_secrets_user ON webhook_secrets (user_id, id DESC);
-- At most one current secret per user.
CREATE UNIQUE INDEX webhook_secrets_current ON webhook_secrets (user_id) WHERE retires_at IS NULL;
CREATE INDEX webhook_secrets_key ON webhook_secrets (key_id);

INSERT INTO webhook_secrets (user_id, key_id, sealed, created_at)
SELECT id, 'plaintext', convert_to(webhook_secret, 'UTF8'), created_at FROM users;

ALTER TABLE users DROP COLUMN webhook_secret;
