//! `jewelshot webhooks list | resend`: a delivery that failed for good is visible to the client
//! (`notification`) and to the operator, and a resend delivers it under the same message id.

mod common;

use std::time::Duration;

use common::jewelshot;
use jewelshot_testkit::{hooks::Receiver, Stack, StackOptions, WorkerTweak};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_failed_delivery_is_listed_and_resent() {
    let tweak = WorkerTweak::new(|c| {
        c.webhook.max_attempts = 2;
        c.webhook.poll_interval_ms = 100;
    });
    let mut stack = Stack::start(StackOptions { worker: tweak, ..StackOptions::default() }).await.expect("stack");
    let (_, key, _) = stack.user("hooks@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    let hook = Receiver::start().await.expect("receiver");
    hook.answer(500);
    stack.start_worker().expect("worker");
    let (status, body) = stack
        .submit(&key, &json!({ "image_url": input, "prompt": "tell me", "webhook_url": hook.url }))
        .await
        .expect("submit");
    assert_eq!(status, 202, "{body}");
    let id = body["jobId"].as_str().expect("id").to_owned();
    // A plain job carries no notification.
    let (_, plain) = stack.submit(&key, &json!({ "image_url": input, "prompt": "quiet" })).await.expect("submit");
    let plain =
        stack.wait_final(&key, plain["jobId"].as_str().expect("id"), Duration::from_secs(30)).await.expect("final");
    assert!(plain["notification"].is_null(), "{plain}");

    let job = stack.wait_notification(&key, &id, "failed", Duration::from_secs(30)).await.expect("failed");
    assert_eq!(job["status"], "complete", "the job itself completed: {job}");
    let n = &job["notification"];
    assert_eq!(n["attempts"], 2, "{n}");
    assert_eq!(n["error"], json!({ "code": "webhook-rejected", "message": "The endpoint answered HTTP 500." }), "{n}");
    assert_eq!(hook.deliveries().len(), 2);

    let (ok, out) = jewelshot(&stack, &["webhooks", "list", "--state", "failed"]);
    assert!(ok && out.contains(&id) && out.contains("webhook-rejected"), "{out}");
    let (ok, out) = jewelshot(&stack, &["--json", "webhooks", "list", "--state", "delivered"]);
    let listed: Value = serde_json::from_str(&out).expect("json");
    assert!(ok && listed.as_array().is_some_and(|a| a.is_empty()), "{out}");
    let (ok, out) = jewelshot(&stack, &["jobs", "show", &id]);
    assert!(ok && out.contains("job.completed failed (2/2 attempts)"), "{out}");
    let (ok, out) = jewelshot(&stack, &["webhooks", "resend"]);
    assert!(!ok && out.contains("--failed"), "a resend must say which: {out}");

    hook.answer(204);
    let (ok, out) = jewelshot(&stack, &["webhooks", "resend", "--failed"]);
    assert!(ok && out.contains("resending 1 delivery") && out.contains(&id), "{out}");
    let job = stack.wait_notification(&key, &id, "delivered", Duration::from_secs(30)).await.expect("delivered");
    assert_eq!(job["notification"]["attempts"], 1, "{job}");
    let ids: Vec<_> = hook.deliveries().iter().map(|d| d.headers.get("webhook-id").cloned()).collect();
    assert_eq!(ids.len(), 3, "two failed attempts, one resent: {ids:?}");
    assert!(ids[0].is_some() && ids.iter().all(|i| *i == ids[0]), "one message id throughout: {ids:?}");
    let (ok, out) = jewelshot(&stack, &["webhooks", "resend", "--failed"]);
    assert!(ok && out.contains("resending 0"), "nothing left to resend: {out}");
}
