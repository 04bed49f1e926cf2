-- Polls are served from a snapshot of each job kept in Redis (issue G). Several processes write
-- snapshots (the gateway on submit and cancel, the worker running the job, the delivery loop,
-- the CLI), so each snapshot carries a revision and Redis keeps only the newest.
--
-- Every row a job's view is made of counts its own updates (`rev`, bumped by a trigger, under
-- the row's lock). A snapshot read in one statement takes rev = the job's + its steps' + its
-- delivery's: a later read never sees a smaller sum, and sees a larger one as soon as anything it
-- shows has changed. Rows are never deleted while the job lives (requeue --from-start resets its
-- steps instead), so the sum only grows.
ALTER TABLE jobs ADD COLUMN rev BIGINT NOT NULL DEFAULT 1;
ALTER TABLE job_steps ADD COLUMN rev BIGINT NOT NULL DEFAULT 1;
ALTER TABLE webhook_deliveries ADD COLUMN rev BIGINT NOT NULL DEFAULT 1;

CREATE FUNCTION jewelshot_bump_rev() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.rev := OLD.rev + 1;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_rev BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION jewelshot_bump_rev();
CREATE TRIGGER job_steps_rev BEFORE UPDATE ON job_steps FOR EACH ROW EXECUTE FUNCTION jewelshot_bump_rev();
CREATE TRIGGER webhook_deliveries_rev BEFORE UPDATE ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION jewelshot_bump_rev();

-- A submit in one statement (one round trip, one implicit transaction): the idempotency key,
-- the per-user cap on waiting jobs and the insert. Each statement inside takes a fresh snapshot
-- (READ COMMITTED), so the count after the user's advisory lock sees every submit that held the
-- lock before. Outcomes:
--   'new'      the job was inserted (job = the row);
--   'existing' the key was used within 24 h (job = its job; same_request says whether the
--              request hash matched);
--   'cap'      the user already has p_queued_cap jobs waiting (nothing written).
CREATE FUNCTION jewelshot_submit(
    p_id TEXT, p_user TEXT, p_priority TEXT, p_prompt TEXT, p_input_url TEXT, p_webhook_url TEXT,
    p_run_at TIMESTAMPTZ, p_max_attempts INTEGER, p_queued_cap BIGINT,
    p_key TEXT, p_request_hash TEXT)
RETURNS TABLE (outcome TEXT, same_request BOOLEAN, job jobs)
LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_hash TEXT;
    v_prior TEXT;
    v_waiting BIGINT;
BEGIN
    IF p_key IS NOT NULL THEN
        SELECT k.request_hash, k.job_id INTO v_hash, v_prior
          FROM idempotency_keys k
         WHERE k.user_id = p_user AND k.key = p_key AND k.created_at > now() - interval '24 hours'
           FOR UPDATE;
        IF FOUND THEN
            SELECT * INTO v_job FROM jobs WHERE id = v_prior;
            RETURN QUERY SELECT 'existing'::text, v_hash = p_request_hash, v_job;
            RETURN;
        END IF;
    END IF;
    IF p_queued_cap > 0 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('jobs-queued:' || p_user, 0));
        SELECT count(*) INTO v_waiting
          FROM (SELECT 1 FROM jobs WHERE user_id = p_user AND status = 'queued' LIMIT p_queued_cap) t;
        IF v_waiting >= p_queued_cap THEN
            RETURN QUERY SELECT 'cap'::text, NULL::boolean, NULL::jobs;
            RETURN;
        END IF;
    END IF;
    INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, webhook_url, run_at, max_attempts)
    VALUES (p_id, p_user, 'queued', p_priority, p_prompt, p_input_url, p_webhook_url, p_run_at, p_max_attempts)
    RETURNING * INTO v_job;
    IF p_key IS NOT NULL THEN
        -- Claims the key, or takes over an expired one. A concurrent first use of the same key
        -- waits here on the key's row and then finds it live: this job is withdrawn and the
        -- other one answered.
        INSERT INTO idempotency_keys (user_id, key, request_hash, job_id)
        VALUES (p_user, p_key, p_request_hash, p_id)
        ON CONFLICT (user_id, key) DO UPDATE
           SET request_hash = EXCLUDED.request_hash, job_id = EXCLUDED.job_id, created_at = now()
         WHERE idempotency_keys.created_at <= now() - interval '24 hours';
        IF NOT FOUND THEN
            DELETE FROM jobs WHERE id = p_id;
            SELECT k.request_hash, k.job_id INTO v_hash, v_prior
              FROM idempotency_keys k WHERE k.user_id = p_user AND k.key = p_key;
            SELECT * INTO v_job FROM jobs WHERE id = v_prior;
            RETURN QUERY SELECT 'existing'::text, v_hash = p_request_hash, v_job;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT 'new'::text, NULL::boolean, v_job;
END $$;
