-- A cache hit's gallery entry is its own job row (V12 wrote a gallery_images row for it).
--
-- Measured (pgbench, 50 clients, the same minute): a hit that wrote the job and a shared gallery
-- row cost Postgres ~1.4x a plain submit's insert — the second row is a heap tuple, four index
-- entries and two foreign-key checks — and the gallery row only repeated what the job carries
-- (the object it completed with). So a job completed from the cache now carries what its gallery
-- entry shows (content type, bytes, size) and `gallery_entry`; a user's gallery is their
-- gallery_images rows (images their own requests stored) plus their jobs with `gallery_entry`
-- (entry id = job id). Deleting such an entry clears the flag; the job and its result stay, as a
-- job's do when its gallery row is deleted.
--
-- Jobs cached before this migration keep their shared gallery_images rows (gallery_entry stays
-- false for them, so nothing is shown twice); every function reads both.
--
-- Upgrading: binaries from before V13 look only at gallery_images for references, so an old
-- worker's upkeep could delete an object that only V13 entries still show. Replace the workers
-- before (or with) the gateways, and no later than 60 s (the tombstones' grace) after the first
-- V13 binary starts. The two indexes below are built in the migration's transaction: on a large
-- jobs table, writes to it wait for them.

ALTER TABLE jobs
    ADD COLUMN result_content_type TEXT,
    ADD COLUMN result_bytes BIGINT,
    ADD COLUMN result_width INTEGER,
    ADD COLUMN result_height INTEGER,
    ADD COLUMN gallery_entry BOOLEAN NOT NULL DEFAULT false;

-- The gallery's second half, newest first; and who still refers to an object (the orphan checks).
-- Only cache hits are in them: a plain submit pays for neither.
CREATE INDEX jobs_gallery_entries ON jobs (user_id, id DESC) WHERE gallery_entry;
CREATE INDEX jobs_gallery_objects ON jobs (result_key) WHERE gallery_entry;

-- Whether a gallery entry (a row, or a cached job's own entry) refers to the object. The cache's
-- entries are checked by the callers, which sometimes must not count one they are deleting.
CREATE FUNCTION jewelshot_object_in_gallery(p_storage_key TEXT) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM gallery_images WHERE storage_key = p_storage_key)
        OR EXISTS (SELECT 1 FROM jobs WHERE result_key = p_storage_key AND gallery_entry)
$$;

-- Completing from an entry writes the job row only.
CREATE OR REPLACE FUNCTION jewelshot_cache_fill(p_job TEXT, p_entry result_cache) RETURNS jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
BEGIN
    UPDATE jobs SET status = 'complete', cached = true, shares_job = NULL, cache_key = p_entry.key,
                    result_key = p_entry.storage_key, result_url = p_entry.url,
                    result_content_type = p_entry.content_type, result_bytes = p_entry.bytes,
                    result_width = p_entry.width, result_height = p_entry.height,
                    -- (a job requeued from the start after its save step wrote its row keeps that one)
                    gallery_entry = NOT EXISTS (SELECT 1 FROM gallery_images g WHERE g.job_id = p_job),
                    error_code = NULL,
                    error_message = NULL, started_at = coalesce(started_at, now()), finished_at = now(),
                    updated_at = now()
     WHERE id = p_job AND status IN ('queued', 'processing')
    RETURNING * INTO v_job;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN v_job;
END $$;

DROP FUNCTION jewelshot_cache_outputs(jobs, result_cache, TEXT);

-- The finished job's image, for the entry and its sharers: its gallery row, or its own columns
-- when it was itself completed from the cache and its entry is still in its owner's gallery (a
-- deleted one's object may be on its way out: the sharers then take the request over, as in V12).
CREATE OR REPLACE FUNCTION jewelshot_cache_settle(p_job TEXT, p_ttl_secs DOUBLE PRECISION)
RETURNS TABLE (job_id TEXT, outcome TEXT, webhook BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_entry result_cache;
    v_follower jobs;
    v_next TEXT;
    v_have_img BOOLEAN;
BEGIN
    SELECT * INTO v_job FROM jobs WHERE id = p_job;
    IF NOT FOUND OR v_job.cache_key IS NULL OR right(v_job.cache_key, 1) = ':'
       OR v_job.status IN ('queued', 'processing') THEN
        RETURN;
    END IF;
    IF v_job.status = 'complete' THEN
        -- What the job got: the image its own request stored (its gallery row), or the one it
        -- was completed from (a cached job carries it; older ones kept a shared gallery row).
        SELECT v_job.cache_key, p_job, g.storage_key, g.url, g.content_type, g.bytes, g.width, g.height,
               now(), now(), NULL::timestamptz
          INTO v_entry FROM gallery_images g WHERE g.job_id = p_job;
        v_have_img := FOUND;
        IF NOT v_have_img AND v_job.gallery_entry THEN
            v_entry := ROW(v_job.cache_key, p_job, v_job.result_key, v_job.result_url, v_job.result_content_type,
                           v_job.result_bytes, v_job.result_width, v_job.result_height, now(), now(), NULL)::result_cache;
            v_have_img := true;
        END IF;
        IF v_have_img AND NOT v_job.cached THEN
            INSERT INTO result_cache (key, job_id, storage_key, url, content_type, bytes, width, height,
                                      ready_at, expires_at)
            VALUES (v_job.cache_key, p_job, v_entry.storage_key, v_entry.url, v_entry.content_type, v_entry.bytes,
                    v_entry.width, v_entry.height, now(), now() + make_interval(secs => p_ttl_secs))
            ON CONFLICT (key) DO UPDATE
               SET job_id = EXCLUDED.job_id, storage_key = EXCLUDED.storage_key, url = EXCLUDED.url,
                   content_type = EXCLUDED.content_type, bytes = EXCLUDED.bytes, width = EXCLUDED.width,
                   height = EXCLUDED.height, ready_at = EXCLUDED.ready_at, expires_at = EXCLUDED.expires_at
             WHERE result_cache.job_id = p_job OR jewelshot_cache_stale(result_cache);
        END IF;
        IF v_have_img THEN
            -- The sharers get what this job got, whatever became of the entry meanwhile.
            FOR v_follower IN SELECT * FROM jobs j WHERE j.shares_job = p_job AND j.status = 'queued' ORDER BY j.seq LOOP
                -- (A row IS NOT NULL only when every field is: test its id.)
                IF (jewelshot_cache_fill(v_follower.id, v_entry)).id IS NOT NULL THEN
                    RETURN QUERY SELECT v_follower.id, 'complete'::text, v_follower.webhook_url IS NOT NULL;
                END IF;
            END LOOP;
            RETURN;
        END IF;
    END IF;
    IF v_job.status = 'failed' AND v_job.error_code = 'upstream-invalid-input' THEN
        FOR v_follower IN
            UPDATE jobs j SET status = 'failed', shares_job = NULL, error_code = v_job.error_code,
                              error_message = v_job.error_message, finished_at = now(), updated_at = now()
             WHERE j.shares_job = p_job AND j.status = 'queued' RETURNING *
        LOOP
            RETURN QUERY SELECT v_follower.id, 'failed'::text, v_follower.webhook_url IS NOT NULL;
        END LOOP;
        DELETE FROM result_cache r WHERE r.key = v_job.cache_key AND r.job_id = p_job AND r.storage_key IS NULL;
        RETURN;
    END IF;
    SELECT j.id INTO v_next FROM jobs j WHERE j.shares_job = p_job AND j.status = 'queued'
     ORDER BY j.seq LIMIT 1 FOR UPDATE;
    IF FOUND THEN
        UPDATE jobs SET shares_job = NULL, updated_at = now() WHERE id = v_next;
        UPDATE jobs j SET shares_job = v_next WHERE j.shares_job = p_job AND j.status = 'queued';
        UPDATE result_cache r SET job_id = v_next, created_at = now()
         WHERE r.key = v_job.cache_key AND r.job_id = p_job AND r.storage_key IS NULL;
        RETURN QUERY SELECT v_next, 'promoted'::text, false;
    ELSE
        DELETE FROM result_cache r WHERE r.key = v_job.cache_key AND r.job_id = p_job AND r.storage_key IS NULL;
    END IF;
END $$;

-- The submit (V12) with a hit that writes only its job row.
CREATE OR REPLACE FUNCTION jewelshot_submit(
    p_id TEXT, p_user TEXT, p_priority TEXT, p_prompt TEXT, p_input_url TEXT, p_webhook_url TEXT,
    p_run_at TIMESTAMPTZ, p_max_attempts INTEGER, p_queued_cap BIGINT,
    p_key TEXT, p_request_hash TEXT, p_trace_parent TEXT, p_cache_basis TEXT, p_input_key TEXT)
RETURNS TABLE (outcome TEXT, same_request BOOLEAN, job jobs)
LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_hash TEXT;
    v_prior TEXT;
    v_waiting BIGINT;
    v_content TEXT;
    v_cache_key TEXT;
    v_entry result_cache;
    v_outcome TEXT := 'new';
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
    IF p_cache_basis IS NOT NULL AND p_input_key IS NOT NULL AND p_run_at IS NULL THEN
        SELECT u.content_sha256 INTO v_content FROM uploads u
         WHERE u.storage_key = p_input_key AND u.user_id = p_user AND u.content_sha256 IS NOT NULL LIMIT 1;
        IF v_content IS NOT NULL THEN
            v_cache_key := p_cache_basis || ':' || v_content;
            SELECT * INTO v_entry FROM result_cache WHERE key = v_cache_key;
            IF FOUND AND NOT jewelshot_cache_stale(v_entry) THEN
                -- 'hit' completes below; 'live' (pending on another job) will share its request.
                v_outcome := CASE WHEN v_entry.storage_key IS NOT NULL THEN 'hit' ELSE 'live' END;
            END IF;
        END IF;
    END IF;
    IF p_queued_cap > 0 AND v_outcome = 'new' THEN
        SELECT count(*) INTO v_waiting
          FROM (SELECT 1 FROM jobs WHERE user_id = p_user AND status = 'queued' AND shares_job IS NULL
                 LIMIT p_queued_cap) t;
        IF v_waiting >= p_queued_cap THEN
            RETURN QUERY SELECT 'cap'::text, NULL::boolean, NULL::jobs;
            RETURN;
        END IF;
    END IF;
    IF v_outcome = 'hit' THEN
        -- Complete in this statement: one row written as it ends, no line, no fal.
        INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, webhook_url, run_at, max_attempts,
                          trace_parent, cache_key, cached, result_key, result_url, result_content_type,
                          result_bytes, result_width, result_height, gallery_entry, started_at, finished_at)
        VALUES (p_id, p_user, 'complete', p_priority, p_prompt, p_input_url, p_webhook_url, p_run_at, p_max_attempts,
                p_trace_parent, v_cache_key, true, v_entry.storage_key, v_entry.url, v_entry.content_type,
                v_entry.bytes, v_entry.width, v_entry.height, true, now(), now())
        RETURNING * INTO v_job;
    ELSE
        INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, webhook_url, run_at, max_attempts,
                          trace_parent, cache_key)
        VALUES (p_id, p_user, 'queued', p_priority, p_prompt, p_input_url, p_webhook_url, p_run_at, p_max_attempts,
                p_trace_parent, coalesce(v_cache_key, p_cache_basis || ':'))
        RETURNING * INTO v_job;
        IF v_cache_key IS NOT NULL THEN
            v_outcome := jewelshot_cache_join(p_id, v_cache_key);
            IF v_outcome = 'leader' THEN
                v_outcome := 'new';
                -- The entry ended between the look above and the join: this job calls fal after
                -- all, so the cap it skipped applies.
                IF p_queued_cap > 0 THEN
                    SELECT count(*) INTO v_waiting
                      FROM (SELECT 1 FROM jobs WHERE user_id = p_user AND status = 'queued' AND shares_job IS NULL
                               AND id <> p_id LIMIT p_queued_cap) t;
                    IF v_waiting >= p_queued_cap THEN
                        DELETE FROM result_cache r WHERE r.key = v_cache_key AND r.job_id = p_id;
                        DELETE FROM jobs WHERE id = p_id;
                        RETURN QUERY SELECT 'cap'::text, NULL::boolean, NULL::jobs;
                        RETURN;
                    END IF;
                END IF;
            ELSE
                SELECT * INTO v_job FROM jobs WHERE id = p_id;
            END IF;
        END IF;
    END IF;
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (user_id, key, request_hash, job_id)
        VALUES (p_user, p_key, p_request_hash, p_id)
        ON CONFLICT (user_id, key) DO UPDATE
           SET request_hash = EXCLUDED.request_hash, job_id = EXCLUDED.job_id, created_at = now()
         WHERE idempotency_keys.created_at <= now() - interval '24 hours';
        IF NOT FOUND THEN
            -- Withdrawn (see V10): with everything it wrote.
            DELETE FROM result_cache r WHERE r.job_id = p_id AND r.storage_key IS NULL;
            DELETE FROM jobs WHERE id = p_id;
            SELECT k.request_hash, k.job_id INTO v_hash, v_prior
              FROM idempotency_keys k WHERE k.user_id = p_user AND k.key = p_key;
            SELECT * INTO v_job FROM jobs WHERE id = v_prior;
            RETURN QUERY SELECT 'existing'::text, v_hash = p_request_hash, v_job;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT v_outcome, NULL::boolean, v_job;
END $$;
