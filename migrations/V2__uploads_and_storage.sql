-- Uploads, storage accounting, and object keys (so URLs can be made fresh: presigned URLs expire).

CREATE TABLE uploads (
    id             TEXT PRIMARY KEY,             -- ULID
    user_id        TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    storage_key    TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    bytes          BIGINT NOT NULL,              -- stored (compressed) size
    original_bytes BIGINT NOT NULL,              -- what the client sent
    width          INTEGER NOT NULL,
    height         INTEGER NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX uploads_user_created ON uploads (user_id, id DESC);

-- Bytes each user keeps in storage (uploads + gallery), maintained in the same transactions that
-- add or remove objects; a reservation is taken before writing so a quota cannot be raced.
CREATE TABLE user_storage (
    user_id    TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    bytes      BIGINT NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    objects    BIGINT NOT NULL DEFAULT 0 CHECK (objects >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE jobs ADD COLUMN result_key TEXT;
