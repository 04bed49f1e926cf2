-- Liveness of running jobs, kept in the record (Redis may be lost): the worker running a job
-- refreshes `heartbeat_at` every few seconds. A job whose heartbeat is fresh is not started by
-- anyone else (the run lock in `begin_attempt`); a processing job whose heartbeat went stale and
-- that Redis no longer holds is pushed again by the reconciler.
ALTER TABLE jobs ADD COLUMN heartbeat_at timestamptz;
CREATE INDEX jobs_open_seq ON jobs (seq) WHERE status IN ('queued', 'processing');
