-- JewelShot schema: Postgres is the record of every job; Redis only carries work.

CREATE TABLE users (
    id             TEXT PRIMARY KEY,             -- ULID
    email          TEXT NOT NULL UNIQUE,
    plan           TEXT NOT NULL DEFAULT 'free',
    webhook_secret TEXT NOT NULL,                -- whsec_<base64>, signs this user's webhooks
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,               -- ULID
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL DEFAULT '',
    prefix       TEXT NOT NULL,                  -- first characters, to recognise a key in lists
    key_hash     TEXT NOT NULL UNIQUE,           -- hex SHA-256 of the whole key; the key itself is never stored
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,              -- ULID, also the queue task id
    seq           BIGSERIAL NOT NULL UNIQUE,     -- submit order: the queue position is counted on it
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    status        TEXT NOT NULL CHECK (status IN ('queued','processing','complete','failed','canceled')),
    priority      TEXT NOT NULL DEFAULT 'normal' CHECK (priority IN ('normal','high')),
    prompt        TEXT NOT NULL,
    input_url     TEXT NOT NULL,
    webhook_url   TEXT,
    run_at        TIMESTAMPTZ,                   -- scheduled jobs: not before this instant
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    error_code    TEXT,
    error_message TEXT,
    result_url    TEXT,
    worker_id     TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ
);

-- Queue position: count of waiting jobs ahead, an index-only range count.
CREATE INDEX jobs_waiting_seq ON jobs (seq) WHERE status = 'queued';
-- A user's jobs, newest first, optionally by status.
CREATE INDEX jobs_user_created ON jobs (user_id, id DESC);
CREATE INDEX jobs_status_updated ON jobs (status, updated_at);

CREATE TABLE job_steps (
    job_id      TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step        TEXT NOT NULL CHECK (step IN ('generate-image','save-to-gallery','notify-user')),
    status      TEXT NOT NULL CHECK (status IN ('pending','running','complete','failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    output      JSONB,                           -- what the step produced (or, while running, how to resume it)
    error       TEXT,
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (job_id, step)
);

CREATE TABLE gallery_images (
    id           TEXT PRIMARY KEY,               -- ULID
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    job_id       TEXT UNIQUE REFERENCES jobs(id) ON DELETE SET NULL, -- one image per job, ever
    storage_key  TEXT NOT NULL,
    url          TEXT NOT NULL,
    content_type TEXT NOT NULL,
    bytes        BIGINT NOT NULL,
    width        INTEGER,
    height       INTEGER,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX gallery_user_created ON gallery_images (user_id, id DESC);
