//! Redis can be lost; Postgres is the record. The reconciler puts back what Redis forgot, and
//! nothing is paid for twice.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use jewelshot_testkit::{Stack, StackOptions};
use serde_json::{json, Value};

/// Acceptance D2: `FLUSHALL` in the middle of a run (jobs queued, dispatched, running and
/// finished) → every job still completes, and fal saw each prompt exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_redis_flushall_mid_run_every_job_completes() {
    const JOBS: usize = 30;
    let opts = StackOptions {
        own_redis: true,
        ..StackOptions::emulator(&["--latency-ms", "300-600", "--max-concurrent", "3", "--max-per-minute", "0"])
    };
    let mut stack = Stack::start(opts).await.expect("stack");
    let (_, key, _) = stack.user("flush@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let (status, r) =
            stack.submit(&key, &json!({ "image_url": input, "prompt": format!("flush #{i}") })).await.expect("submit");
        assert_eq!(status, 202, "{r}");
        ids.push(r["jobId"].as_str().expect("jobId").to_owned());
    }
    stack.start_worker().expect("worker 1");
    stack.start_worker().expect("worker 2");

    // Let a few finish, then lose everything Redis held.
    let started = Instant::now();
    loop {
        let c = stack.db.db.queue_counts().await.expect("counts");
        if c.complete >= 5 {
            assert!(c.queued > 5, "the flush must hit a queue with work left: {c:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "nothing completes:\n{}", stack.worker_logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.flush_redis().await.expect("FLUSHALL");
    let flushed = Instant::now();

    let mut done: HashMap<String, Value> = HashMap::new();
    while done.len() < ids.len() {
        assert!(
            flushed.elapsed() < Duration::from_secs(90),
            "{} of {JOBS} complete 90 s after FLUSHALL\n{}",
            done.len(),
            stack.worker_logs()
        );
        for id in &ids {
            if done.contains_key(id) {
                continue;
            }
            let (_, job) = stack.get_job(&key, id).await.expect("poll");
            match job["status"].as_str() {
                Some("complete") => {
                    done.insert(id.clone(), job);
                }
                Some("failed" | "canceled") => panic!("job failed: {job}\n{}", stack.worker_logs()),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("all {JOBS} complete {:.1} s after FLUSHALL", flushed.elapsed().as_secs_f64());
    let stats = stack.emulator_stats().await.expect("stats");
    for i in 0..JOBS {
        let prompt = format!("flush #{i}");
        assert_eq!(stats["submits_by_prompt"][&prompt], 1, "{prompt} submitted to fal more than once: {stats}");
    }
    // Whole logs: the put-back can lie further back than the tails `worker_logs` shows.
    let logs: String = stack.workers.iter().map(|w| std::fs::read_to_string(&w.log).unwrap_or_default()).collect();
    assert!(logs.contains("reconciler: put back"), "the reconciler did the work:\n{}", stack.worker_logs());
}

/// While Redis is down the gateway still takes submissions (202: the job row is the record) and
/// answers polls from Postgres; once Redis is back the reconciler puts the jobs in line and the
/// (self-healing) worker runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_submissions_while_redis_is_down_run_when_it_returns() {
    let opts = StackOptions { own_redis: true, ..StackOptions::default() };
    let mut stack = Stack::start(opts).await.expect("stack");
    let (_, key, _) = stack.user("outage@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    stack.start_worker().expect("worker");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.kill_redis().expect("kill redis");

    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, r) =
            stack.submit(&key, &json!({ "image_url": input, "prompt": format!("outage #{i}") })).await.expect("submit");
        assert_eq!(status, 202, "accepted while Redis is down: {r}");
        let id = r["jobId"].as_str().expect("jobId").to_owned();
        let (status, job) = stack.get_job(&key, &id).await.expect("poll");
        assert_eq!((status, job["status"].as_str()), (200, Some("queued")), "{job}");
        assert_eq!(job["queuePosition"].as_i64(), Some(i + 1), "position from Postgres: {job}");
        ids.push(id);
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = Instant::now();
    stack.restart_redis().expect("restart redis");
    for id in &ids {
        let job = stack.wait_final(&key, id, Duration::from_secs(60)).await.expect("final");
        assert_eq!(job["status"], "complete", "{job}\n{}", stack.worker_logs());
    }
    println!("3 jobs submitted during the outage complete {:.1} s after Redis returned", back.elapsed().as_secs_f64());
}

/// A job that takes its worker down every time (here: each worker is SIGKILLed as soon as the
/// job's attempt begins) ends `failed` with `poison-job` once its attempts are spent, instead of
/// looping; each crash counted as an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_job_that_kills_its_worker_every_time_ends_poison_job() {
    let opts = StackOptions {
        gateway_env: HashMap::from([("JEWELSHOT_JOBS__MAX_ATTEMPTS".into(), "2".into())]),
        ..StackOptions::emulator(&["--latency-ms", "5000-5000", "--max-per-minute", "0"])
    };
    let mut stack = Stack::start(opts).await.expect("stack");
    let (_, key, _) = stack.user("poison@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    let (status, r) = stack.submit(&key, &json!({ "image_url": input, "prompt": "poison" })).await.expect("submit");
    assert_eq!(status, 202, "{r}");
    let id: jewelshot_domain::JobId = r["jobId"].as_str().expect("jobId").parse().expect("id");
    for round in 1..=2 {
        let w = stack.start_worker().expect("worker");
        let started = Instant::now();
        loop {
            let job = stack.db.db.job(id).await.expect("job").expect("row");
            if job.attempts >= round {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "attempt {round} never began:\n{}",
                stack.worker_logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stack.workers[w].sigkill();
    }
    stack.start_worker().expect("last worker");
    let job = stack.wait_final(&key, &id.to_string(), Duration::from_secs(60)).await.expect("final");
    assert_eq!((job["status"].as_str(), job["error"]["code"].as_str()), (Some("failed"), Some("poison-job")), "{job}");
    assert_eq!(job["attempts"], 3, "two crashes, then the delivery that stopped it: {job}");
}
