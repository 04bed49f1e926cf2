-- Webhook deliveries as their own queued work (an outbox in the record), off the job's slot:
-- `notify-user` records one row when a job ends; workers claim due rows (at most a few per user
-- at once, under a lease), make one attempt per claim, and reschedule with backoff until the
-- delivery succeeds or its attempts run out. A worker that dies mid-attempt loses its lease and
-- the row is claimed again (receivers deduplicate on `message_id`).
CREATE TABLE webhook_deliveries (
    job_id          TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    message_id      TEXT NOT NULL,                 -- the Standard Webhooks `webhook-id`
    event           TEXT NOT NULL CHECK (event IN ('job.completed','job.failed')),
    url             TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending','sending','delivered','failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    next_at         TIMESTAMPTZ NOT NULL DEFAULT now(), -- pending: when due; sending: when the lease ends
    worker_id       TEXT,
    error_code      TEXT,
    error_message   TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_attempt_at TIMESTAMPTZ,
    delivered_at    TIMESTAMPTZ
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state IN ('pending','sending');
CREATE INDEX webhook_deliveries_user_sending ON webhook_deliveries (user_id) WHERE state = 'sending';
CREATE INDEX webhook_deliveries_state_created ON webhook_deliveries (state, created_at DESC);
