//! End to end against the real binaries: emulator, gateway and worker processes over a fresh
//! Postgres database and an isolated Redis queue.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use jewelshot_testkit::{Stack, StackOptions, StorageKind};
use serde_json::{json, Value};

async fn stats_submits(stack: &Stack, prompt: &str) -> u64 {
    let stats = stack.emulator_stats().await.expect("emulator stats");
    stats["submits_by_prompt"][prompt].as_u64().unwrap_or(0)
}

/// Acceptance A1: 20 edits from 3 users queued while no worker runs get positions 1..20; two
/// workers then complete them all against an emulator that runs 2 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_twenty_edits_three_users_positions_and_completion() {
    twenty_edits(StorageKind::Local).await;
}

/// Acceptance B4: the same with the S3 backend (s3s-fs); results are fetched through the
/// presigned `imageUrl` and decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_twenty_edits_on_s3_storage() {
    twenty_edits(StorageKind::S3).await;
}

async fn twenty_edits(storage: StorageKind) {
    let mut opts =
        StackOptions::emulator(&["--latency-ms", "200-400", "--max-concurrent", "2", "--max-per-minute", "0"]);
    opts.storage = storage;
    let mut stack = Stack::start(opts).await.expect("stack");
    let mut keys = Vec::new();
    for email in ["ana@example.com", "ben@example.com", "cy@example.com"] {
        keys.push(stack.user(email).await.expect("user").1);
    }
    let input = stack.input_photo_url(&keys[0]).await.expect("input");

    let mut jobs = Vec::new();
    for i in 0..20 {
        let key = keys[i % 3].clone();
        let prompt = format!("e2e edit #{i}");
        let (status, body) =
            stack.submit(&key, &json!({ "image_url": input, "prompt": prompt })).await.expect("submit");
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["queuePosition"].as_i64(), Some(i as i64 + 1), "positions are 1..20 in submit order: {body}");
        assert_eq!(body["status"], "queued");
        let id = body["jobId"].as_str().expect("jobId").to_owned();
        jobs.push((key, id, prompt, i as i64 + 1));
    }

    let started = Instant::now();
    stack.start_worker().expect("worker 1");
    stack.start_worker().expect("worker 2");

    let mut last: HashMap<String, i64> = jobs.iter().map(|(_, id, _, p)| (id.clone(), *p)).collect();
    let mut done: HashMap<String, Value> = HashMap::new();
    while done.len() < jobs.len() {
        assert!(started.elapsed() < Duration::from_secs(120), "not all complete in 120 s:\n{}", stack.worker_logs());
        for (key, id, _, _) in &jobs {
            if done.contains_key(id) {
                continue;
            }
            let (status, job) = stack.get_job(key, id).await.expect("poll");
            assert_eq!(status, 200);
            let pos = job["queuePosition"].as_i64().expect("queuePosition");
            let prev = last.insert(id.clone(), pos).unwrap_or(i64::MAX);
            assert!(pos <= prev, "position of {id} rose from {prev} to {pos}");
            match job["status"].as_str() {
                Some("complete") => {
                    done.insert(id.clone(), job);
                }
                Some("failed" | "canceled") => panic!("job failed: {job}\n{}", stack.worker_logs()),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    println!("20 jobs completed in {elapsed:?} after the workers started ({storage:?} storage)");

    for (key, id, prompt, _) in &jobs {
        let job = &done[id];
        assert_eq!(job["queuePosition"], 0);
        // The job is complete before notify-user records its outcome; give that a moment.
        let all_steps_done =
            |j: &Value| j["steps"].as_array().is_some_and(|s| s.iter().all(|s| s["status"] == "complete"));
        let mut latest = job.clone();
        for _ in 0..100 {
            if all_steps_done(&latest) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            latest = stack.get_job(key, id).await.expect("poll").1;
        }
        assert!(all_steps_done(&latest), "{latest}");
        let url = job["imageUrl"].as_str().expect("imageUrl");
        assert!(url.contains(id.as_str()), "the stored key derives from the job id: {url}");
        if storage == StorageKind::S3 {
            assert!(url.contains("X-Amz-Signature="), "S3 results are served by presigned URL: {url}");
        }
        let bytes = stack.http.get(url).send().await.expect("fetch").bytes().await.expect("body");
        let img = image::load_from_memory(&bytes).expect("the stored image decodes");
        assert!(img.width() > 0 && img.height() > 0);
        assert_eq!(stats_submits(&stack, prompt).await, 1, "{prompt} submitted to fal exactly once");
        assert_eq!(stack.db.db.gallery_count_for_job(id.parse().expect("id")).await.expect("count"), 1);
    }
    let stats = stack.emulator_stats().await.expect("stats");
    assert_eq!(stats["total"]["submitted"], 20, "{stats}");
    assert!(stats["total"]["max_concurrent"].as_u64().unwrap_or(99) <= 2, "{stats}");
    assert_redis_forgets_finished_tasks(&stack).await;
}

/// Retention: once the jobs are final, the workers' vacuum (every second here) removes their
/// task records from Redis — nothing of theirs stays but the queue's bookkeeping.
async fn assert_redis_forgets_finished_tasks(stack: &Stack) {
    let mut conn = stack.redis_conn().await.expect("redis");
    let pattern = format!("{}*", stack.queue_name);
    let started = Instant::now();
    loop {
        let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.expect("keys");
        let mut per_task = 0usize;
        for k in &keys {
            let kind: String = redis::cmd("TYPE").arg(k).query_async(&mut conn).await.expect("type");
            per_task += match kind.as_str() {
                "hash" if k.ends_with(":data") => {
                    redis::cmd("HLEN").arg(k).query_async::<usize>(&mut conn).await.expect("hlen")
                }
                "set" if k.ends_with(":done") || k.ends_with(":dead") => {
                    redis::cmd("SCARD").arg(k).query_async::<usize>(&mut conn).await.expect("scard")
                }
                _ if k.contains(":meta:") => 1,
                _ => 0,
            };
        }
        if per_task == 0 {
            println!("Redis keys left for the queue after 20 finished jobs: {}", keys.len());
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "finished tasks still in Redis: {per_task} records in {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Acceptance A2: a worker SIGKILLed after `generate-image` finished and before
/// `save-to-gallery` did → another worker completes the job and fal saw one submit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_sigkill_between_steps_never_pays_twice() {
    // Serving the generated image slowly holds the job inside save-to-gallery.
    let mut stack = Stack::start(StackOptions::emulator(&[
        "--latency-ms",
        "100-200",
        "--file-delay-ms",
        "4000",
        "--max-per-minute",
        "0",
    ]))
    .await
    .expect("stack");
    let (_, key, _) = stack.user("kill@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    let prompt = "survive a crash";
    let (status, body) = stack.submit(&key, &json!({ "image_url": input, "prompt": prompt })).await.expect("submit");
    assert_eq!(status, 202);
    let id: jewelshot_domain::JobId = body["jobId"].as_str().expect("id").parse().expect("ulid");

    let first = stack.start_worker().expect("worker");
    let start = Instant::now();
    loop {
        let steps = stack.db.db.steps(id).await.expect("steps");
        let status_of = |n: &str| steps.iter().find(|s| s.name.as_str() == n).map(|s| s.status.as_str());
        if status_of("generate-image") == Some("complete") {
            assert_ne!(status_of("save-to-gallery"), Some("complete"), "the kill must land between the steps");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "generate-image never finished:\n{}", stack.worker_logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.workers[first].sigkill();
    let killed = Instant::now();

    stack.start_worker().expect("second worker");
    let job = stack.wait_final(&key, &id.to_string(), Duration::from_secs(60)).await.expect("final");
    assert_eq!(job["status"], "complete", "{job}");
    // Here a dead worker is noticed after 2 missed 1 s heartbeats (production: 3 × 10 s, and the
    // job's own heartbeat goes stale after `orphan_after_secs`, 30 s).
    let recovered = killed.elapsed();
    println!("job completed {:.1} s after its worker was SIGKILLed", recovered.as_secs_f64());
    assert!(recovered < Duration::from_secs(20), "recovery took {recovered:?}");
    assert_eq!(job["attempts"], 2, "the crash cost one attempt: {job}");
    assert_eq!(stats_submits(&stack, prompt).await, 1, "fal saw exactly one submit");
    assert_eq!(stack.db.db.gallery_count_for_job(id).await.expect("count"), 1);
    let gen = &job["steps"][0];
    assert_eq!(gen["name"], "generate-image");
    assert_eq!(gen["attempts"], 1, "the finished generate step did not run again: {job}");
}

/// Acceptance A3 (validation): a prompt fal refuses with 422 fails at once with a stable code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_upstream_422_fails_after_one_attempt() {
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let (_, key, _) = stack.user("bad@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    stack.start_worker().expect("worker");
    let (_, body) =
        stack.submit(&key, &json!({ "image_url": input, "prompt": "make it [invalid]" })).await.expect("submit");
    let job =
        stack.wait_final(&key, body["jobId"].as_str().expect("id"), Duration::from_secs(30)).await.expect("final");
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "upstream-invalid-input", "{job}");
    // The code's sentence, never fal's own text ("prompt rejected by the content checker").
    assert_eq!(job["error"]["message"], "fal refused the input (422): retrying cannot help.", "{job}");
    assert_eq!(job["attempts"], 1, "no retry for a 422: {job}");
    assert!(job["imageUrl"].is_null());
}

/// Acceptance A3 (retries): with fal failing half the submits, every job still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_injected_5xx_are_retried_to_completion() {
    let mut opts = StackOptions::emulator(&[
        "--latency-ms",
        "50-100",
        "--error-rate",
        "0.5",
        "--seed",
        "7",
        "--max-per-minute",
        "0",
    ]);
    opts.gateway_env.insert("JEWELSHOT_JOBS__MAX_ATTEMPTS".into(), "12".into());
    let mut stack = Stack::start(opts).await.expect("stack");
    let (_, key, _) = stack.user("flaky@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    stack.start_worker().expect("worker");
    let mut ids = Vec::new();
    for i in 0..6 {
        let (_, body) =
            stack.submit(&key, &json!({ "image_url": input, "prompt": format!("flaky {i}") })).await.expect("submit");
        ids.push(body["jobId"].as_str().expect("id").to_owned());
    }
    let mut attempts = 0;
    for id in &ids {
        let job = stack.wait_final(&key, id, Duration::from_secs(60)).await.expect("final");
        assert_eq!(job["status"], "complete", "{job}");
        attempts += job["attempts"].as_i64().unwrap_or(0);
    }
    let stats = stack.emulator_stats().await.expect("stats");
    let injected = stats["total"]["injected_errors"].as_i64().unwrap_or(0);
    assert!(injected > 0, "the run must actually have injected errors: {stats}");
    assert_eq!(attempts, 6 + injected, "each injected 5xx cost exactly one retry");
    assert_eq!(stats["total"]["submitted"], 6, "{stats}");
}

/// Acceptance A3 (cap): a job fal always fails gets exactly `max_attempts` attempts, then fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_attempts_never_exceed_the_maximum() {
    let mut opts = StackOptions::default();
    opts.gateway_env.insert("JEWELSHOT_JOBS__MAX_ATTEMPTS".into(), "3".into());
    let mut stack = Stack::start(opts).await.expect("stack");
    let (_, key, _) = stack.user("doomed@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    stack.start_worker().expect("worker");
    let (_, body) =
        stack.submit(&key, &json!({ "image_url": input, "prompt": "always [fail]" })).await.expect("submit");
    let job =
        stack.wait_final(&key, body["jobId"].as_str().expect("id"), Duration::from_secs(30)).await.expect("final");
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "upstream-unavailable", "{job}");
    assert_eq!(job["attempts"], 3, "{job}");
    let stats = stack.emulator_stats().await.expect("stats");
    assert_eq!(stats["total"]["injected_errors"], 3, "fal was called exactly max_attempts times: {stats}");
}

/// apalis-redis hazard: an idle worker would see a job pushed by another process only at its
/// next heartbeat. With a 30 s heartbeat, a job must still start within a second or two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_idle_worker_picks_up_new_jobs_promptly() {
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let (_, key, _) = stack.user("idle@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    stack.start_worker_with(|c| c.worker.heartbeat_secs = 30).expect("worker");
    // A first job proves the worker is up; then it goes idle.
    let (_, warm) = stack.submit(&key, &json!({ "image_url": input, "prompt": "warm up" })).await.expect("submit");
    stack.wait_final(&key, warm["jobId"].as_str().expect("id"), Duration::from_secs(60)).await.expect("warm-up job");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let submitted = Instant::now();
    let (_, body) = stack.submit(&key, &json!({ "image_url": input, "prompt": "wake up" })).await.expect("submit");
    let id = body["jobId"].as_str().expect("id").to_owned();
    loop {
        let (_, job) = stack.get_job(&key, &id).await.expect("poll");
        if job["status"] != "queued" {
            break;
        }
        assert!(
            submitted.elapsed() < Duration::from_secs(3),
            "an idle worker took over 3 s to start a job ({}):\n{}",
            stack.logs.display(),
            stack.worker_logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("idle worker started the job {:?} after submit", submitted.elapsed());
}

/// D4: SIGTERM while a job waits on fal → the worker exits promptly and the job is handed back
/// at once (not after the orphan timeout, 30 s here); the next worker resumes the same fal
/// request, so fal sees one submit and the hand-back costs no attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_sigterm_hands_the_job_back_at_once() {
    let mut stack = Stack::start(StackOptions::emulator(&["--latency-ms", "4000-4000", "--max-per-minute", "0"]))
        .await
        .expect("stack");
    let (_, key, _) = stack.user("deploy@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    let slow_orphans = |c: &mut jewelshot_worker::Config| {
        c.worker.heartbeat_secs = 10;
        c.worker.missed_heartbeats = 3;
    };
    let first = stack.start_worker_with(slow_orphans).expect("worker");
    let (_, body) =
        stack.submit(&key, &json!({ "image_url": input, "prompt": "deploy during a job" })).await.expect("submit");
    let id: jewelshot_domain::JobId = body["jobId"].as_str().expect("id").parse().expect("ulid");
    // Wait until the job is waiting on fal (its request checkpointed).
    let start = Instant::now();
    loop {
        let step = stack.db.db.step(id, jewelshot_domain::StepName::GenerateImage).await.expect("step");
        if step.and_then(|s| s.output).is_some_and(|o| o.get("request").is_some()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never reached fal:\n{}", stack.worker_logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let exit = stack.workers[first].sigterm(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "the worker must stop cleanly within 10 s:\n{}", stack.worker_logs());
    println!("worker stopped {:?} after SIGTERM", t.elapsed());
    let (_, job) = stack.get_job(&key, &id.to_string()).await.expect("poll");
    assert_eq!(job["status"], "queued", "handed back: {job}");

    let t = Instant::now();
    stack.start_worker_with(slow_orphans).expect("second worker");
    let job = stack.wait_final(&key, &id.to_string(), Duration::from_secs(20)).await.expect("final");
    println!("resumed and completed {:?} after the second worker started", t.elapsed());
    assert_eq!(job["status"], "complete", "{job}");
    assert_eq!(job["attempts"], 1, "a hand-back is not an attempt: {job}");
    assert_eq!(stats_submits(&stack, "deploy during a job").await, 1, "fal saw one submit");
}

/// Workers whose every slot is busy longer than the orphan timeout (heartbeat 1 s × 2 here; jobs
/// wait for the account's 2 slots for seconds) are still alive: no worker may take another's
/// jobs over (apalis-core heartbeats only while a worker polls for more tasks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_busy_workers_are_not_declared_dead() {
    let mut stack = Stack::start(StackOptions::emulator(&[
        "--latency-ms",
        "800-1200",
        "--max-per-minute",
        "0",
        "--max-concurrent",
        "2",
    ]))
    .await
    .expect("stack");
    let (_, key, _) = stack.user("busy@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    let mut ids = Vec::new();
    for i in 0..16 {
        let (_, job) =
            stack.submit(&key, &json!({ "image_url": input, "prompt": format!("slow {i}") })).await.expect("submit");
        ids.push(job["jobId"].as_str().expect("id").to_owned());
    }
    stack.start_worker().expect("worker 1");
    stack.start_worker().expect("worker 2");
    for id in &ids {
        let done = stack.wait_final(&key, id, Duration::from_secs(60)).await.expect("final");
        assert_eq!(done["status"], "complete", "{done}");
        assert_eq!(done["attempts"], 1, "a job was taken from a live worker: {done}\n{}", stack.worker_logs());
    }
    assert!(!stack.worker_logs().contains("worker not registered"), "{}", stack.worker_logs());
}
