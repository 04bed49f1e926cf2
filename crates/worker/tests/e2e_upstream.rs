//! The fal account pool end to end: worker processes share accounts through the Redis limiter,
//! against the emulator in reject mode (every excess request would be a 429).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use jewelshot_fal::{PoolKeyConfig, Secret};
use jewelshot_testkit::{Stack, StackOptions, WorkerTweak};
use serde_json::{json, Value};

fn pool(entries: &[(&str, &str, u32)]) -> Vec<PoolKeyConfig> {
    entries
        .iter()
        .map(|(id, key, conc)| PoolKeyConfig {
            id: (*id).into(),
            key: Secret((*key).into()),
            max_per_minute: None,
            max_concurrent: Some(*conc),
        })
        .collect()
}

async fn submit_all(stack: &Stack, key: &str, input: &str, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({ "image_url": input, "prompt": format!("{tag} #{i}") });
        let (status, r) = stack.submit(key, &body).await.expect("submit");
        assert_eq!(status, 202, "{r}");
        ids.push(r["jobId"].as_str().expect("jobId").to_owned());
    }
    ids
}

async fn wait_all(stack: &Stack, key: &str, ids: &[String], limit: Duration) -> Vec<Value> {
    let started = Instant::now();
    let mut done: HashMap<String, Value> = HashMap::new();
    while done.len() < ids.len() {
        assert!(
            started.elapsed() < limit,
            "{} of {} final after {limit:?}\n{}",
            done.len(),
            ids.len(),
            stack.worker_logs()
        );
        for id in ids {
            if !done.contains_key(id) {
                let job = stack.wait_final(key, id, limit).await.expect("final");
                done.insert(id.clone(), job);
            }
        }
    }
    ids.iter().map(|id| done[id].clone()).collect()
}

async fn queue_view(stack: &Stack, key: &str) -> Value {
    let r = stack.http.get(format!("{}/api/queue", stack.gateway_url())).bearer_auth(key).send().await.expect("queue");
    r.json().await.expect("json")
}

/// Acceptance C5: a key revoked mid-run is taken out of the pool and no job fails because of
/// it; a key whose real limit is lower than configured answers 429s, rests, and its jobs move
/// to the other keys — without spending attempts. Two worker processes share the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_key_pool_survives_a_revoked_key_and_a_429_burst() {
    let opts = StackOptions {
        // kC claims 4 slots; the emulator allows every key 2.
        worker: WorkerTweak::new(|c| {
            c.fal.client.keys = pool(&[("a", "kA", 2), ("b", "kB", 2), ("c", "kC", 4)]);
            c.worker.concurrency = 6;
        }),
        ..StackOptions::emulator(&[
            "--mode=reject",
            "--max-concurrent",
            "2",
            "--max-per-minute",
            "0",
            "--latency-ms",
            "300-600",
            "--keys",
            "kA,kB,kC",
        ])
    };
    let mut stack = Stack::start(opts).await.expect("stack");
    let (_, key, _) = stack.user("pool@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    let ids = submit_all(&stack, &key, &input, 30, "pool").await;
    stack.start_worker().expect("worker 1");
    stack.start_worker().expect("worker 2");

    // Revoke kB once some work has gone through it.
    let started = Instant::now();
    loop {
        let stats = stack.emulator_stats().await.expect("stats");
        if stats["keys"]["kB"]["completed"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "kB never used: {stats}\n{}", stack.worker_logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = stack.http.post(format!("{}/__keys/kB/revoke", stack.emulator_url())).send().await.expect("revoke");
    assert!(r.status().is_success());
    let b_submits_at_revoke = stack.emulator_stats().await.expect("stats")["keys"]["kB"]["submitted"].as_u64();

    let jobs = wait_all(&stack, &key, &ids, Duration::from_secs(120)).await;
    for job in &jobs {
        assert_eq!(job["status"], "complete", "{job}\n{}", stack.worker_logs());
    }
    let stats = stack.emulator_stats().await.expect("stats");
    let k = |name: &str, field: &str| stats["keys"][name][field].as_u64().unwrap_or(0);
    // kB took no request after it was revoked (the one that met the 401 was not accepted).
    assert_eq!(Some(k("kB", "submitted")), b_submits_at_revoke, "{stats}");
    // kC's over-claim met 429s; the honest keys never did, and none ran more than 2 at once.
    assert!(k("kC", "rejected") > 0, "kC's extra slots should have been refused: {stats}");
    assert_eq!((k("kA", "rejected"), k("kB", "rejected")), (0, 0), "{stats}");
    for name in ["kA", "kB", "kC"] {
        assert!(k(name, "max_concurrent") <= 2, "{stats}");
    }
    assert_eq!(
        k("kA", "submitted") + k("kB", "submitted") + k("kC", "submitted"),
        30,
        "one accepted submit per job: {stats}"
    );
    // Moving to another key spends no attempt.
    let attempts: Vec<i64> = jobs.iter().map(|j| j["attempts"].as_i64().unwrap_or(0)).collect();
    assert!(attempts.iter().all(|a| *a == 1), "attempts: {attempts:?}");

    // The pool as clients see it.
    let q = queue_view(&stack, &key).await;
    let up = &q["upstream"];
    assert_eq!((up["keysTotal"].as_u64(), up["keysHealthy"].as_u64()), (Some(3), Some(2)), "{q}");
    let b = up["keys"].as_array().and_then(|ks| ks.iter().find(|x| x["id"] == "b")).cloned().unwrap_or_default();
    assert_eq!(b["healthy"], false, "{q}");
    assert_eq!(up["concurrentLimit"].as_u64(), Some(6), "a (2) + c (4) while b is out: {q}");
}

/// Acceptance C6: a job submitted with `delay_seconds` waits at position 0 with `scheduledFor`,
/// is not dispatched before its time, and is dispatched within a second after it; a job
/// submitted later without a delay is not held up by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_scheduled_job_starts_on_time_not_before() {
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let (_, key, _) = stack.user("later@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    stack.start_worker().expect("worker");
    let (status, later) = stack
        .submit(&key, &json!({ "image_url": input, "prompt": "later", "delay_seconds": 2 }))
        .await
        .expect("submit");
    assert_eq!((status, later["queuePosition"].as_i64()), (202, Some(0)), "{later}");
    let later_id = later["jobId"].as_str().expect("id").to_owned();
    let (_, now) = stack.submit(&key, &json!({ "image_url": input, "prompt": "now" })).await.expect("submit");
    let now_id = now["jobId"].as_str().expect("id").to_owned();

    let (_, polled) = stack.get_job(&key, &later_id).await.expect("poll");
    let scheduled_for: chrono::DateTime<chrono::Utc> =
        polled["scheduledFor"].as_str().expect("scheduledFor").parse().expect("RFC 3339");
    let quick = stack.wait_final(&key, &now_id, Duration::from_secs(30)).await.expect("now");
    assert_eq!(quick["status"], "complete");
    let done_now: chrono::DateTime<chrono::Utc> = quick["updatedAt"].as_str().expect("updatedAt").parse().expect("ts");
    assert!(done_now < scheduled_for, "the undelayed job finished while the other still waited");

    let job = stack.wait_final(&key, &later_id, Duration::from_secs(30)).await.expect("later");
    assert_eq!(job["status"], "complete", "{job}");
    let steps = stack.db.db.steps(later_id.parse().expect("id")).await.expect("steps");
    let started =
        steps.iter().find(|s| s.name.as_str() == "generate-image").and_then(|s| s.started_at).expect("started");
    let late = started - scheduled_for;
    println!("scheduled job dispatched {} ms after its time", late.num_milliseconds());
    assert!(late >= chrono::Duration::zero(), "dispatched {} ms early", -late.num_milliseconds());
    assert!(late < chrono::Duration::seconds(1), "dispatched {} ms late", late.num_milliseconds());
}

/// Cancel (issue D): `DELETE` on a processing job answers 200 `canceled` at once; its worker
/// cancels the request at fal, frees the account's slot (the next job runs) and writes no result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cancel_a_processing_job_at_fal() {
    let opts = StackOptions {
        ..StackOptions::emulator(&["--latency-ms", "3000-3500", "--max-concurrent", "1", "--max-per-minute", "0"])
    };
    let mut stack = Stack::start(opts).await.expect("stack");
    let (_, key, _) = stack.user("cancel@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    let ids = submit_all(&stack, &key, &input, 2, "cancel").await;
    stack.start_worker_with(|c| c.worker.concurrency = 2).expect("worker");
    let started = Instant::now();
    loop {
        let stats = stack.emulator_stats().await.expect("stats");
        if stats["total"]["in_progress"].as_u64() == Some(1) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "nothing started: {stats}\n{}", stack.worker_logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = stack
        .http
        .delete(format!("{}/api/jobs/{}", stack.gateway_url(), ids[0]))
        .bearer_auth(&key)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["status"], "canceled", "{body}");

    let second = stack.wait_final(&key, &ids[1], Duration::from_secs(30)).await.expect("second");
    assert_eq!(second["status"], "complete", "the freed slot served the next job: {second}");
    let stats = stack.emulator_stats().await.expect("stats");
    assert_eq!(stats["total"]["canceled"].as_u64(), Some(1), "fal was asked to cancel: {stats}");
    let (_, first) = stack.get_job(&key, &ids[0]).await.expect("poll");
    assert_eq!(first["status"], "canceled", "{first}");
    assert!(first["imageUrl"].is_null(), "{first}");
    assert_eq!(stack.db.db.gallery_count_for_job(ids[0].parse().expect("id")).await.expect("count"), 0);
}

/// Acceptance C3, C4 and C7 end to end: user A queues 30 jobs, user B then 1, user C (plan
/// `pro`) then 5 `high` ones, while no worker runs. One account runs one request at a time, so
/// the dispatch numbers the workers record are the order jobs started. C's highs go first, but
/// a normal job gets every fifth dispatch; B's one job is not stuck behind A's 30; and every
/// job's position, polled before the workers started, equals its place in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_dispatch_is_fair_with_priorities_and_positions_are_exact() {
    let opts = StackOptions {
        ..StackOptions::emulator(&["--latency-ms", "20-40", "--max-concurrent", "1", "--max-per-minute", "0"])
    };
    let mut stack = Stack::start(opts).await.expect("stack");
    let (_, a, _) = stack.user("a@example.com").await.expect("user");
    let (_, b, _) = stack.user("b@example.com").await.expect("user");
    let c_user = stack.db.db.create_user("c@example.com", "pro").await.expect("pro user");
    let c = stack.db.db.create_api_key(c_user.id, "test").await.expect("key").key;
    let input = stack.input_photo_url(&a).await.expect("input");

    let a_ids = submit_all(&stack, &a, &input, 30, "a").await;
    let b_ids = submit_all(&stack, &b, &input, 1, "b").await;
    let mut c_ids = Vec::new();
    for i in 0..5 {
        let body = json!({ "image_url": input, "prompt": format!("c #{i}"), "priority": "high" });
        let (status, r) = stack.submit(&c, &body).await.expect("submit");
        assert_eq!(status, 202, "{r}");
        c_ids.push(r["jobId"].as_str().expect("jobId").to_owned());
    }
    let owners: Vec<(&str, &String)> = a_ids
        .iter()
        .map(|id| (a.as_str(), id))
        .chain(b_ids.iter().map(|id| (b.as_str(), id)))
        .chain(c_ids.iter().map(|id| (c.as_str(), id)))
        .collect();
    let mut reported = HashMap::new();
    for (key, id) in &owners {
        let (_, job) = stack.get_job(key, id).await.expect("poll");
        reported.insert((*id).clone(), job["queuePosition"].as_i64().expect("queuePosition"));
    }

    stack.start_worker().expect("worker 1");
    stack.start_worker().expect("worker 2");
    for (key, ids) in [(&a, &a_ids), (&b, &b_ids), (&c, &c_ids)] {
        for job in wait_all(&stack, key, ids, Duration::from_secs(120)).await {
            assert_eq!(job["status"], "complete", "{job}");
        }
    }

    let mut order: Vec<(u64, String)> = Vec::new();
    for (_, id) in &owners {
        let steps = stack.db.db.steps(id.parse().expect("id")).await.expect("steps");
        let generate = steps.iter().find(|s| s.name.as_str() == "generate-image").expect("generate step");
        let dispatch = generate.output.as_ref().and_then(|o| o["dispatch"].as_u64()).expect("dispatch number");
        order.push((dispatch, (*id).clone()));
    }
    order.sort();
    let class = |id: &String| {
        if c_ids.contains(id) {
            'H'
        } else if b_ids.contains(id) {
            'B'
        } else {
            'A'
        }
    };
    let seq: String = order.iter().map(|(_, id)| class(id)).collect();
    println!("dispatch order: {seq}");
    assert_eq!(&seq[..8], "HHHHAHBA", "highs first, a normal every fifth, B not stuck behind A: {seq}");
    for (i, (_, id)) in order.iter().enumerate() {
        assert_eq!(reported[id], i as i64 + 1, "{id} was told {} but started #{}: {seq}", reported[id], i + 1);
    }
}
