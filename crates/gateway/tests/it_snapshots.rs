//! Polls answered from the job snapshots in Redis say exactly what Postgres says, field by
//! field, at every step of a job's life — and cost Postgres nothing.
//!
//! Two gateways over one database and queue: one answers from Redis (the default), the other
//! with `poll_snapshots` off reads Postgres every time. The test plays the worker's part with the
//! same calls the worker makes (the record's writes, reported to a snapshot publisher), so every
//! state is compared once it has settled.

mod common;

use std::{sync::Arc, time::Duration};

use common::Api;
use jewelshot_db::{deliveries::AttemptEnd, deliveries::NewDelivery, jobs::Begun, Db, DbConfig};
use jewelshot_domain::{JobId, StepName, UserId};
use jewelshot_queue::snapshots::Publisher;
use serde_json::{json, Value};

struct Pair {
    api: Api,
    pg: String,
    key: String,
    user: UserId,
    /// The worker's handle on the record, reporting to `publisher`.
    worker: Db,
    publisher: Arc<Publisher>,
}

impl Pair {
    async fn start() -> Self {
        let api = Api::start_with(|c| {
            c.webhook.allow_insecure = true;
            c.gateway.auth_cache_ttl_ms = 60_000;
            // The fleet gauges' background reads are not polls: sampled once, at start.
            c.monitoring.sample_interval_ms = 3_600_000;
            // Both gateways sign file URLs alike, at one address.
            c.storage.local.public_base_url = "http://files.test/files".into();
            c.storage.local.signing_key = "snapshot-test".into();
        })
        .await;
        let pg = api.replica(|c| c.gateway.poll_snapshots = false).await;
        let owner = api.db.db.create_user("ana@example.com", "free").await.expect("user");
        let key = api.db.db.create_api_key(owner.id, "t").await.expect("key").key;
        let publisher = Publisher::new(api.line.clone(), api.cfg.queue.snapshots.clone());
        let worker = Db::connect(&DbConfig {
            url: api.db.url.clone(),
            max_connections: 2,
            pooler: jewelshot_testkit::db::pooler(),
            ..Default::default()
        })
        .expect("pool")
        .with_keyring(api.db.db.keyring().clone())
        .with_changes(publisher.clone());
        tokio::spawn(publisher.clone().run(worker.clone()));
        Self { api, pg, key, user: owner.id, worker, publisher }
    }

    async fn submit(&self, body: Value) -> JobId {
        let (status, v) = self.api.submit(&self.key, body).await;
        assert_eq!(status, 202, "{v}");
        v["jobId"].as_str().expect("jobId").parse().expect("job id")
    }

    /// Both gateways' answers for `job` once the worker's writes are published: equal in every
    /// field. Returns the answer.
    async fn same(&self, job: JobId, stage: &str) -> Value {
        self.publisher.flush().await;
        let path = format!("/api/jobs/{job}");
        for attempt in 0.. {
            let (s1, redis) = self.api.get_from(&self.api.base, &path, &self.key).await;
            let (s2, pg) = self.api.get_from(&self.pg, &path, &self.key).await;
            assert_eq!((s1, s2), (200, 200), "{stage}: {redis} / {pg}");
            // A signed URL's expiry moves at each minute: the one retry covers a pair that
            // straddled it.
            if redis["imageUrl"] != pg["imageUrl"] && attempt == 0 {
                continue;
            }
            let fields: std::collections::BTreeSet<&String> =
                redis.as_object().expect("object").keys().chain(pg.as_object().expect("object").keys()).collect();
            for f in fields {
                assert_eq!(redis.get(f), pg.get(f), "{stage}: `{f}` differs\nredis:    {redis}\npostgres: {pg}");
            }
            // And the Redis gateway did answer from Redis: it holds this very revision.
            let snap = self.api.db.db.job_snapshot(job, None).await.expect("read").expect("exists");
            let (data, _) = self.api.line.read_record(&job.to_string(), 4).await.expect("redis").expect("a record");
            let held: jewelshot_db::snapshot::JobSnapshot = serde_json::from_slice(&data).expect("snapshot");
            assert_eq!(held.rev, snap.rev, "{stage}: Redis holds the newest revision");
            return redis;
        }
        unreachable!()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_whole_life_reads_the_same_from_redis_and_from_postgres() {
    let p = Pair::start().await;
    let hook = "http://127.0.0.1:9/hook";
    let first = p
        .submit(json!({"image_url": "https://example.com/a.jpg", "prompt": "enhance lighting", "webhook_url": hook}))
        .await;
    let second = p.submit(json!({"image_url": "https://example.com/b.jpg", "prompt": "white background"})).await;
    let later =
        p.submit(json!({"image_url": "https://example.com/c.jpg", "prompt": "later", "delay_seconds": 600})).await;
    let failing = p.submit(json!({"image_url": "https://example.com/d.jpg", "prompt": "fails"})).await;

    let v = p.same(first, "queued").await;
    assert_eq!((v["status"].as_str(), v["queuePosition"].as_i64()), (Some("queued"), Some(1)));
    assert!(v["etaSeconds"].as_i64().is_some_and(|e| e > 0), "{v}");
    assert_eq!(p.same(second, "queued behind").await["queuePosition"], 2);
    let v = p.same(later, "scheduled").await;
    assert_eq!(v["queuePosition"], 0);
    assert!(v["scheduledFor"].is_string());

    // The dispatcher takes it out of line; the worker begins and runs its steps.
    let row = p.api.db.db.job(first).await.expect("job").expect("exists");
    p.api.line.remove(&jewelshot_queue::line_entry(&row)).await.expect("out of line");
    assert_eq!(p.same(second, "next in line").await["queuePosition"], 1);
    let stale = Duration::from_secs(30);
    assert!(matches!(p.worker.begin_attempt(first, "w1", stale).await.expect("begin"), Begun::Started(_)));
    assert_eq!(p.same(first, "processing").await["status"], "processing");
    p.worker.start_step(first, StepName::GenerateImage).await.expect("start");
    p.same(first, "generating").await;
    p.worker.checkpoint_step(first, StepName::GenerateImage, &json!({"request": "r1"})).await.expect("checkpoint");
    p.worker.complete_step(first, StepName::GenerateImage, &json!({"url": "u"})).await.expect("generated");
    assert_eq!(p.same(first, "generated").await["steps"][0]["status"], "complete");
    p.worker.start_step(first, StepName::SaveToGallery).await.expect("start");
    p.worker.complete_step(first, StepName::SaveToGallery, &json!({"key": "k"})).await.expect("saved");
    let result_key = format!("results/{}/{first}.jpg", p.user);
    let result_url = format!("http://files.test/files/{result_key}");
    p.worker.complete_job(first, &result_key, &result_url).await.expect("complete");
    let v = p.same(first, "complete").await;
    assert_eq!(v["status"], "complete");
    assert!(v["imageUrl"].as_str().is_some_and(|u| u.contains(&result_key) && u.contains("sig=")), "{v}");

    // notify-user, and the webhook's delivery as the client sees it.
    p.worker.start_step(first, StepName::NotifyUser).await.expect("start");
    let message = format!("msg_{first}_job.completed_1");
    let delivery = NewDelivery {
        job_id: first,
        user_id: p.user,
        message_id: &message,
        event: "job.completed",
        url: hook,
        max_attempts: 3,
    };
    p.worker.enqueue_delivery(&delivery).await.expect("owed");
    p.worker.complete_step(first, StepName::NotifyUser, &json!({})).await.expect("notified");
    assert_eq!(p.same(first, "delivery owed").await["notification"]["state"], "pending");
    let lease = Duration::from_secs(60);
    assert_eq!(p.worker.claim_deliveries("w1", 10, 2, lease).await.expect("claim").len(), 1);
    assert_eq!(p.same(first, "delivering").await["notification"]["state"], "sending");
    let failed =
        AttemptEnd::Failed { code: "webhook-rejected", message: "500", retry_in: Duration::ZERO, permanent: false };
    p.worker.end_attempt(first, "w1", failed).await.expect("attempt");
    assert_eq!(p.same(first, "delivery failed once").await["notification"]["error"]["code"], "webhook-rejected");
    p.worker.claim_deliveries("w1", 10, 2, lease).await.expect("claim");
    p.worker.end_attempt(first, "w1", AttemptEnd::Delivered).await.expect("delivered");
    assert_eq!(p.same(first, "delivered").await["notification"]["state"], "delivered");

    // Canceled through the API: the next poll already says so (no wait for any publisher).
    let (status, _) = p.api.call(reqwest::Method::DELETE, &format!("/api/jobs/{second}"), Some(&p.key)).await;
    assert_eq!(status, 200);
    let (_, now) = p.api.get_from(&p.api.base, &format!("/api/jobs/{second}"), &p.key).await;
    assert_eq!(now["status"], "canceled", "read-your-writes after a cancel");
    p.same(second, "canceled").await;

    // A failure, then the on-call engineer's requeue.
    let row = p.api.db.db.job(failing).await.expect("job").expect("exists");
    p.api.line.remove(&jewelshot_queue::line_entry(&row)).await.expect("dispatched");
    assert!(matches!(p.worker.begin_attempt(failing, "w1", stale).await.expect("begin"), Begun::Started(_)));
    p.worker.fail_job(failing, "upstream-invalid-input", "fal refused the input").await.expect("fail");
    assert_eq!(p.same(failing, "failed").await["error"]["code"], "upstream-invalid-input");
    let row = p.worker.job(failing).await.expect("job").expect("exists");
    let row = p.worker.requeue_job(&row, false).await.expect("requeue").expect("requeued");
    let queue = jewelshot_queue::Queue::connect(&p.api.cfg.queue).await.expect("queue");
    jewelshot_queue::put_back(&p.api.line, &queue, &row, false).await.expect("back in line");
    let v = p.same(failing, "requeued").await;
    assert_eq!((v["status"].as_str(), v["queuePosition"].as_i64()), (Some("queued"), Some(1)));

    // A snapshot Redis lost is read from Postgres — the same answer — and written back.
    p.api.line.drop_record(&first.to_string()).await.expect("drop");
    let (_, from_pg) = p.api.get_from(&p.api.base, &format!("/api/jobs/{first}"), &p.key).await;
    assert_eq!(from_pg["notification"]["state"], "delivered");
    assert!(p.api.line.read_record(&first.to_string(), 4).await.expect("redis").is_some(), "read repair");
    p.same(first, "read repaired").await;

    // Another user's job is not found through either path.
    let other = p.api.key("ben@example.com").await;
    for base in [&p.api.base, &p.pg] {
        let (status, _) = p.api.get_from(base, &format!("/api/jobs/{first}"), &other).await;
        assert_eq!(status, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_an_open_job_costs_postgres_nothing() {
    let p = Pair::start().await;
    let job = p.submit(json!({"image_url": "https://example.com/a.jpg", "prompt": "enhance lighting"})).await;
    // ETAs read the mean generation time the workers record in Redis.
    p.api.line.record_generation(Duration::from_secs(30), Duration::from_secs(3600)).await.expect("record");
    let path = format!("/api/jobs/{job}");
    let (status, _) = p.api.get_from(&p.api.base, &path, &p.key).await; // the key and ETA inputs cached
    assert_eq!(status, 200);
    let before = p.api.db.transactions().await.expect("count");
    for _ in 0..200 {
        let (status, v) = p.api.get_from(&p.api.base, &path, &p.key).await;
        assert_eq!((status, v["queuePosition"].as_i64()), (200, Some(1)));
    }
    let after = p.api.db.transactions().await.expect("count");
    assert_eq!(after - before, 0, "200 polls of a queued job cost no Postgres transaction");

    // The gateway that reads Postgres pays for every poll: the count can move.
    let before = after;
    for _ in 0..20 {
        p.api.get_from(&p.pg, &path, &p.key).await;
    }
    let after = p.api.db.transactions().await.expect("count");
    assert!(after - before >= 20, "{} transactions for 20 polls from Postgres", after - before);
}
