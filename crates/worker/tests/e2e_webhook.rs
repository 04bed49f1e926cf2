//! Webhooks: a delivery verifies with the Standard Webhooks reference library and a retried one
//! keeps its `webhook-id` (A7); deliveries run off the jobs' slots, so an endpoint that never
//! answers holds no job and at most its user's share of delivery slots (F, acceptance 5).

use std::time::{Duration, Instant};

use jewelshot_testkit::{
    hooks::{verify_standard_webhooks, Receiver},
    Stack, StackOptions, WorkerTweak,
};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_webhook_verifies_with_standard_webhooks_and_keeps_its_id() {
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let (_, key, secret) = stack.user("hooks@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    let hook = Receiver::start().await.expect("receiver");
    hook.script(&[500]);
    let url = hook.url.clone();
    stack.start_worker().expect("worker");
    let (status, body) = stack
        .submit(&key, &json!({ "image_url": input, "prompt": "webhook me", "webhook_url": url }))
        .await
        .expect("submit");
    assert_eq!(status, 202, "{body}");
    let id = body["jobId"].as_str().expect("id").to_owned();
    let job = stack.wait_final(&key, &id, Duration::from_secs(30)).await.expect("final");
    assert_eq!(job["status"], "complete", "{job}");

    let job = stack.wait_notification(&key, &id, "delivered", Duration::from_secs(30)).await.expect("delivered");
    let n = &job["notification"];
    assert_eq!((n["attempts"].as_i64(), n["event"].as_str()), (Some(2), Some("job.completed")), "{n}");
    assert!(n["error"].is_null() && n["deliveredAt"].is_string(), "{n}");
    let deliveries = hook.deliveries();
    assert_eq!(deliveries.len(), 2, "one failed delivery, then one retry:\n{}", stack.worker_logs());
    let ids: Vec<_> = deliveries.iter().map(|d| d.headers.get("webhook-id").cloned()).collect();
    assert!(ids[0].is_some() && ids[0] == ids[1], "the same webhook-id on every retry: {ids:?}");

    let event: Value = serde_json::from_slice(&deliveries[1].body).expect("json body");
    assert_eq!(event["type"], "job.completed");
    assert_eq!(event["data"]["jobId"], id.as_str());
    assert_eq!(event["data"]["status"], "complete");
    assert_eq!(event["data"]["imageUrl"], job["imageUrl"]);

    for d in &deliveries {
        assert_eq!(verify_standard_webhooks(&secret, d), Ok("verified".to_owned()));
    }
    // The check can fail: a tampered body or another user's secret is refused.
    let mut tampered = deliveries[1].clone();
    tampered.body = tampered.body.iter().map(|b| if *b == b'1' { b'2' } else { *b }).collect();
    assert!(verify_standard_webhooks(&secret, &tampered).is_err());
    assert!(verify_standard_webhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &deliveries[1]).is_err());

    assert_eq!(n["messageId"].as_str(), ids[0].as_deref(), "the poll names the message id the receiver got");
}

async fn submit_id(stack: &Stack, key: &str, body: Value) -> String {
    let (status, body) = stack.submit(key, &body).await.expect("submit");
    assert_eq!(status, 202, "{body}");
    body["jobId"].as_str().expect("id").to_owned()
}

async fn time_to_complete(stack: &Stack, key: &str, id: &str) -> Duration {
    let start = Instant::now();
    let job = stack.wait_final(key, id, Duration::from_secs(60)).await.expect("final");
    assert_eq!(job["status"], "complete", "{job}");
    start.elapsed()
}

/// F, acceptance 5: eight jobs of user A whose webhook accepts connections and never answers,
/// one worker of concurrency 4 — user B's job completes within its normal time plus 5 s, A's
/// jobs complete too (their deliveries hold no job slot), and the endpoint holds no more than
/// A's share of delivery slots (`per_user_concurrency`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_webhook_that_never_answers_holds_no_job_slot() {
    let tweak = WorkerTweak::new(|c| {
        c.worker.concurrency = 4;
        c.webhook.timeout_ms = 5_000;
        c.webhook.max_attempts = 2;
        c.webhook.per_user_concurrency = 2;
    });
    let mut stack = Stack::start(StackOptions { worker: tweak, ..StackOptions::default() }).await.expect("stack");
    let (_, key_a, _) = stack.user("a@example.com").await.expect("user a");
    let (_, key_b, _) = stack.user("b@example.com").await.expect("user b");
    let input_a = stack.input_photo_url(&key_a).await.expect("input");
    let input_b = stack.input_photo_url(&key_b).await.expect("input");
    let hook = Receiver::start().await.expect("receiver");
    hook.hang(true);
    stack.start_worker().expect("worker");

    // B's normal time: the same worker, nothing else running.
    let warm = submit_id(&stack, &key_b, json!({ "image_url": input_b, "prompt": "normal" })).await;
    let normal = time_to_complete(&stack, &key_b, &warm).await;

    let mut a_jobs = Vec::new();
    for i in 0..8 {
        let body = json!({ "image_url": input_a, "prompt": format!("hang {i}"), "webhook_url": hook.url });
        a_jobs.push(submit_id(&stack, &key_a, body).await);
    }
    // B's job arrives once A's first deliveries are hanging.
    let first = stack.wait_notification(&key_a, &a_jobs[0], "sending", Duration::from_secs(30)).await.expect("sending");
    assert_eq!(first["status"], "complete", "{first}");
    let b = submit_id(&stack, &key_b, json!({ "image_url": input_b, "prompt": "unaffected" })).await;
    let took = time_to_complete(&stack, &key_b, &b).await;
    assert!(
        took <= normal + Duration::from_secs(5),
        "B's job took {took:?}, normally {normal:?}:\n{}",
        stack.worker_logs()
    );
    for id in &a_jobs {
        let job = stack.wait_final(&key_a, id, Duration::from_secs(30)).await.expect("final");
        assert_eq!(job["status"], "complete", "A's jobs finish while their webhook hangs: {job}");
    }
    let (_, max_open) = hook.open();
    assert!(max_open <= 2, "at most A's 2 delivery slots on the endpoint, saw {max_open} connections");
    assert!(!hook.deliveries().is_empty(), "the deliveries were attempted");

    // The hung attempt times out and the delivery says so, then gives up after its attempts.
    let job = stack.wait_notification(&key_a, &a_jobs[0], "failed", Duration::from_secs(60)).await.expect("failed");
    let n = &job["notification"];
    assert_eq!((n["error"]["code"].as_str(), n["attempts"].as_i64()), (Some("webhook-unreachable"), Some(2)), "{n}");
    assert!(
        n["error"]["message"].as_str().is_some_and(|m| m.contains("did not answer within 5 s")),
        "a sentence of ours: {n}"
    );
}
