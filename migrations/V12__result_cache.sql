-- The result cache (issue I): "same prompt = same image". A job whose input bytes, prompt, model
-- and scope match a finished job's reuses its result instead of paying fal again; identical jobs
-- in flight share one fal request.
--
-- The key is `<basis>:<content>`: `basis` is the hex SHA-256 of (scope, model, normalized prompt)
-- made by `jewelshot_domain::cache`, `content` the hex SHA-256 of the bytes fal reads — an
-- upload's stored bytes (hashed when it is uploaded) or, for any other URL, the bytes the worker
-- fetched before submitting.
--
-- An entry is *pending* while its job's fal request runs (storage_key NULL) and *ready* once that
-- job completed (its stored result, until expires_at). Entries are never locked on the hit path:
-- a hit reads one, and an object is deleted only through a tombstone whose grace period outlives
-- any reader (see object_tombstones).
CREATE TABLE result_cache (
    key          TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL,          -- the job whose fal request makes (made) the result
    storage_key  TEXT,                   -- NULL while pending
    url          TEXT,
    content_type TEXT,
    bytes        BIGINT,
    width        INTEGER,
    height       INTEGER,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    ready_at     TIMESTAMPTZ,
    expires_at   TIMESTAMPTZ
);
CREATE INDEX result_cache_ready ON result_cache (ready_at) WHERE storage_key IS NOT NULL;
CREATE INDEX result_cache_object ON result_cache (storage_key) WHERE storage_key IS NOT NULL;

ALTER TABLE uploads ADD COLUMN content_sha256 TEXT;
CREATE INDEX uploads_storage_key ON uploads (storage_key);

-- cache_key: the job's key; `<basis>:` while its input is not hashed yet (a worker hashes what it
-- fetches before calling fal); NULL when it may not use the cache (`cache: false`, cache off,
-- scheduled).
-- cached: completed from another job's result, without a fal request of its own.
-- shares_job: while waiting, the job whose fal request it shares (it is not in the dispatch
-- line, holds no upstream slot and does not count against the user's cap on waiting jobs).
ALTER TABLE jobs ADD COLUMN cache_key TEXT;
ALTER TABLE jobs ADD COLUMN cached BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN shares_job TEXT;
CREATE INDEX jobs_sharing ON jobs (shares_job, seq) WHERE shares_job IS NOT NULL;

-- shared: the row points at an object another entry stored (a cache hit): its bytes are not
-- charged to this user, and deleting the row deletes the object only when nothing else refers
-- to it.
ALTER TABLE gallery_images ADD COLUMN shared BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX gallery_storage_key ON gallery_images (storage_key);

-- Objects nothing refers to any more, deleted by the workers' upkeep once due_at has passed and
-- only if still unreferenced then (a hit that read the cache entry just before it was evicted
-- has committed its gallery row by then).
CREATE TABLE object_tombstones (
    storage_key TEXT PRIMARY KEY,
    due_at      TIMESTAMPTZ NOT NULL
);

-- A ULID made in SQL (48-bit Unix ms, 80 random bits, Crockford base32), for the gallery rows
-- the cache writes; time-ordered with the ones the services make.
CREATE FUNCTION jewelshot_ulid() RETURNS TEXT LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    alphabet CONSTANT TEXT := '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
    ms BIGINT := floor(extract(epoch FROM clock_timestamp()) * 1000);
    rnd BYTEA := uuid_send(gen_random_uuid());
    hi BIGINT := 0;
    lo BIGINT := 0;
    out TEXT := '';
BEGIN
    FOR i IN 0..4 LOOP
        hi := (hi << 8) | get_byte(rnd, i);
        lo := (lo << 8) | get_byte(rnd, 10 + i);
    END LOOP;
    FOR i IN REVERSE 9..0 LOOP
        out := out || substr(alphabet, ((ms >> (5 * i)) & 31)::int + 1, 1);
    END LOOP;
    FOR i IN REVERSE 7..0 LOOP
        out := out || substr(alphabet, ((hi >> (5 * i)) & 31)::int + 1, 1);
    END LOOP;
    FOR i IN REVERSE 7..0 LOOP
        out := out || substr(alphabet, ((lo >> (5 * i)) & 31)::int + 1, 1);
    END LOOP;
    RETURN out;
END $$;

-- What a job completed from an entry records beside its row: a gallery row pointing at the
-- entry's object (not charged: storage is not duplicated). No step is recorded: the job ran
-- none (its view shows generate and save done; notify-user is the worker's when it has a
-- webhook — the caller hands the job to one).
CREATE FUNCTION jewelshot_cache_outputs(p_job jobs, p_entry result_cache, p_gallery_id TEXT) RETURNS VOID
LANGUAGE sql AS $$
    INSERT INTO gallery_images (id, user_id, job_id, storage_key, url, content_type, bytes, width, height, shared)
    VALUES (p_gallery_id, p_job.user_id, p_job.id, p_entry.storage_key, p_entry.url, p_entry.content_type,
            p_entry.bytes, p_entry.width, p_entry.height, true)
    ON CONFLICT (job_id) DO NOTHING
$$;

-- Complete a waiting (or, in a worker, just begun) job from a ready entry; NULL when the job is
-- no longer waiting or running (canceled meanwhile).
CREATE FUNCTION jewelshot_cache_fill(p_job TEXT, p_entry result_cache) RETURNS jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
BEGIN
    UPDATE jobs SET status = 'complete', cached = true, shares_job = NULL, cache_key = p_entry.key,
                    result_key = p_entry.storage_key, result_url = p_entry.url, error_code = NULL,
                    error_message = NULL, started_at = coalesce(started_at, now()), finished_at = now(),
                    updated_at = now()
     WHERE id = p_job AND status IN ('queued', 'processing')
    RETURNING * INTO v_job;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM jewelshot_cache_outputs(v_job, p_entry, jewelshot_ulid());
    RETURN v_job;
END $$;

-- Whether an entry can be taken over by a new job: expired, or pending on a job that ended
-- without a result. VOLATILE, so that inside an ON CONFLICT that waited for another transaction's
-- entry it reads with a fresh snapshot — and sees that transaction's (committed) job as alive.
CREATE FUNCTION jewelshot_cache_stale(p_entry result_cache) RETURNS BOOLEAN
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN p_entry.storage_key IS NOT NULL THEN p_entry.expires_at <= now()
                ELSE NOT EXISTS (SELECT 1 FROM jobs WHERE id = p_entry.job_id AND status IN ('queued', 'processing'))
           END
$$;

-- A waiting job (just inserted, or just fingerprinted by a worker) meets the cache:
--   'hit'     a ready entry: the job is complete now (jewelshot_cache_fill);
--   'shared'  an entry pending on another job: the job waits for that job's request;
--   'leader'  no usable entry: the job now owns a pending one and will call fal;
--   'gone'    the job is no longer waiting or running (canceled meanwhile).
-- The hit and shared paths read the entry without locking it (many submits of one popular key
-- never queue on its row); only taking an entry over writes it.
CREATE FUNCTION jewelshot_cache_join(p_job TEXT, p_key TEXT) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_entry result_cache;
BEGIN
    LOOP
        SELECT * INTO v_entry FROM result_cache WHERE key = p_key;
        IF FOUND AND v_entry.job_id = p_job THEN
            RETURN 'leader';
        ELSIF FOUND AND NOT jewelshot_cache_stale(v_entry) THEN
            IF v_entry.storage_key IS NOT NULL THEN
                IF (jewelshot_cache_fill(p_job, v_entry)).id IS NULL THEN
                    RETURN 'gone';
                END IF;
                RETURN 'hit';
            END IF;
            -- A worker's job (fingerprinted after it began) goes back to waiting, its attempt
            -- not counted, as when a worker hands a job back.
            UPDATE jobs SET shares_job = v_entry.job_id, cache_key = p_key, status = 'queued', worker_id = NULL,
                            attempts = CASE WHEN status = 'processing' THEN greatest(attempts - 1, 0) ELSE attempts END,
                            updated_at = now()
             WHERE id = p_job AND status IN ('queued', 'processing');
            IF NOT FOUND THEN
                RETURN 'gone';
            END IF;
            RETURN 'shared';
        END IF;
        -- Take it (or make it). A concurrent taker of the same key waits here on the row and
        -- then finds it live (jewelshot_cache_stale reads after the wait): it loops and shares.
        INSERT INTO result_cache (key, job_id) VALUES (p_key, p_job)
        ON CONFLICT (key) DO UPDATE
           SET job_id = EXCLUDED.job_id, storage_key = NULL, url = NULL, content_type = NULL, bytes = NULL,
               width = NULL, height = NULL, created_at = now(), ready_at = NULL, expires_at = NULL
         WHERE jewelshot_cache_stale(result_cache);
        IF FOUND THEN
            UPDATE jobs SET cache_key = p_key, shares_job = NULL WHERE id = p_job;
            RETURN 'leader';
        END IF;
    END LOOP;
END $$;

-- A job ended: settle what the cache owes. Complete → its result becomes the entry (ready for
-- p_ttl_secs) and every job sharing its request completes from it. Failed on its input (fal's
-- 422) → the sharers fail alike. Otherwise (canceled, failed for another reason, or complete
-- without a stored image) → the oldest sharer takes over the request (it goes in line; the
-- others now share its request). Idempotent.
-- Returns each job it changed: 'complete', 'failed' or 'promoted'.
CREATE FUNCTION jewelshot_cache_settle(p_job TEXT, p_ttl_secs DOUBLE PRECISION)
RETURNS TABLE (job_id TEXT, outcome TEXT, webhook BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_entry result_cache;
    v_img gallery_images;
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
        SELECT * INTO v_img FROM gallery_images g WHERE g.job_id = p_job;
        v_have_img := FOUND;
        IF v_have_img AND NOT v_job.cached THEN
            INSERT INTO result_cache (key, job_id, storage_key, url, content_type, bytes, width, height,
                                      ready_at, expires_at)
            VALUES (v_job.cache_key, p_job, v_img.storage_key, v_img.url, v_img.content_type, v_img.bytes,
                    v_img.width, v_img.height, now(), now() + make_interval(secs => p_ttl_secs))
            ON CONFLICT (key) DO UPDATE
               SET job_id = EXCLUDED.job_id, storage_key = EXCLUDED.storage_key, url = EXCLUDED.url,
                   content_type = EXCLUDED.content_type, bytes = EXCLUDED.bytes, width = EXCLUDED.width,
                   height = EXCLUDED.height, ready_at = EXCLUDED.ready_at, expires_at = EXCLUDED.expires_at
             WHERE result_cache.job_id = p_job OR jewelshot_cache_stale(result_cache);
        END IF;
        IF v_have_img THEN
            -- The sharers get what this job got, whatever became of the entry meanwhile.
            v_entry := ROW(v_job.cache_key, p_job, v_img.storage_key, v_img.url, v_img.content_type, v_img.bytes,
                           v_img.width, v_img.height, now(), now(), NULL)::result_cache;
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

-- The submit (V11) with the cache: p_cache_basis (NULL: caching off or `cache: false`) and the
-- storage key of the upload the job reads, when it reads one. An upload's bytes were hashed when
-- it was stored, so its key is known now: a hit completes here, in the submit's own statement,
-- and neither a hit nor a sharer counts against the cap on waiting jobs. Outcomes as V11's, plus
-- 'hit' and 'shared' (each with the job row).
CREATE FUNCTION jewelshot_submit(
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
                          trace_parent, cache_key, cached, result_key, result_url, started_at, finished_at)
        VALUES (p_id, p_user, 'complete', p_priority, p_prompt, p_input_url, p_webhook_url, p_run_at, p_max_attempts,
                p_trace_parent, v_cache_key, true, v_entry.storage_key, v_entry.url, now(), now())
        RETURNING * INTO v_job;
        PERFORM jewelshot_cache_outputs(v_job, v_entry, jewelshot_ulid());
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
            DELETE FROM gallery_images g WHERE g.job_id = p_id;
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
