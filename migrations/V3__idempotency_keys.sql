-- Idempotent submit: the same Idempotency-Key from the same user within 24 h returns the first job.
CREATE TABLE idempotency_keys (
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,                  -- hex SHA-256 of the request body as parsed
    job_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
