-- `just bench-gateway`: the single-row INSERT a submit makes, for Postgres's own ceiling
-- (pgbench -M prepared: parsed once per connection, one round trip per insert). Ids rise like
-- the gateway's ULIDs (random ones would scatter the primary key's inserts and slow every run
-- after the first).
INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, webhook_url, run_at, max_attempts)
VALUES ('pgbench-' || lpad(nextval('pgbench_job_ids')::text, 12, '0'), :user, 'queued', 'normal',
        'enhance lighting', 'https://cdn.example.com/rings/solitaire.jpg', NULL, NULL, 3)
RETURNING *;
