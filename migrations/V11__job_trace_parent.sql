-- The trace a job belongs to (H): the gateway's `submit` span as a W3C traceparent
-- (`00-<trace id>-<span id>-<flags>`), NULL when traces are not exported. Every worker attempt
-- continues that trace, so one trace shows the submit and each step of the job.
ALTER TABLE jobs ADD COLUMN trace_parent TEXT
    CHECK (trace_parent IS NULL OR length(trace_parent) <= 128);

-- jewelshot_submit takes the traceparent as a twelfth argument. The eleven-argument form stays,
-- passing NULL, for gateways still running the previous release during a rolling upgrade.
CREATE OR REPLACE FUNCTION jewelshot_submit(
    p_id TEXT, p_user TEXT, p_priority TEXT, p_prompt TEXT, p_input_url TEXT, p_webhook_url TEXT,
    p_run_at TIMESTAMPTZ, p_max_attempts INTEGER, p_queued_cap BIGINT,
    p_key TEXT, p_request_hash TEXT, p_trace_parent TEXT)
RETURNS TABLE (outcome TEXT, same_request BOOLEAN, job jobs)
LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_hash TEXT;
    v_prior TEXT;
    v_waiting BIGINT;
BEGIN
    IF p_queued_cap > 0 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('jobs-queued:' || p_user, 0));
    END IF;
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
        SELECT count(*) INTO v_waiting
          FROM (SELECT 1 FROM jobs WHERE user_id = p_user AND status = 'queued' LIMIT p_queued_cap) t;
        IF v_waiting >= p_queued_cap THEN
            RETURN QUERY SELECT 'cap'::text, NULL::boolean, NULL::jobs;
            RETURN;
        END IF;
    END IF;
    INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, webhook_url, run_at, max_attempts, trace_parent)
    VALUES (p_id, p_user, 'queued', p_priority, p_prompt, p_input_url, p_webhook_url, p_run_at, p_max_attempts, p_trace_parent)
    RETURNING * INTO v_job;
    IF p_key IS NOT NULL THEN
        -- Claims the key, or takes over an expired one. A concurrent first use of the same key
        -- (only possible without a cap) waits here on the key's row and then finds it live: this
        -- job is withdrawn and the other one answered.
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

CREATE OR REPLACE FUNCTION jewelshot_submit(
    p_id TEXT, p_user TEXT, p_priority TEXT, p_prompt TEXT, p_input_url TEXT, p_webhook_url TEXT,
    p_run_at TIMESTAMPTZ, p_max_attempts INTEGER, p_queued_cap BIGINT,
    p_key TEXT, p_request_hash TEXT)
RETURNS TABLE (outcome TEXT, same_request BOOLEAN, job jobs)
LANGUAGE sql AS $$
    SELECT * FROM jewelshot_submit(p_id, p_user, p_priority, p_prompt, p_input_url, p_webhook_url,
                                   p_run_at, p_max_attempts, p_queued_cap, p_key, p_request_hash, NULL)
$$;
