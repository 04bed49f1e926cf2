-- Per-user cap on waiting jobs: the gateway counts a user's queued jobs on every submit.
CREATE INDEX jobs_user_queued ON jobs (user_id) WHERE status = 'queued';
