//! Attacks that reach the worker through fal's answers (issue F).

use std::time::Duration;

use jewelshot_testkit::{Stack, StackOptions};
use serde_json::json;

/// A result URL on an internal address (here: the emulator's own, on loopback) is never fetched
/// by a production worker: the job fails with `upstream-bad-response`, nothing is stored, and
/// the client reads the code's sentence, not the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_results_on_internal_addresses_are_not_fetched() {
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let (_, key, _) = stack.user("ssrf@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    stack.start_worker_with(|c| c.worker.allow_insecure_downloads = false).expect("worker");
    let (_, body) = stack.submit(&key, &json!({ "image_url": input, "prompt": "fetch me" })).await.expect("submit");
    let id = body["jobId"].as_str().expect("id");
    let job = stack.wait_final(&key, id, Duration::from_secs(30)).await.expect("final");
    assert_eq!(
        (job["status"].as_str(), job["error"]["code"].as_str()),
        (Some("failed"), Some("upstream-bad-response")),
        "{job}"
    );
    let message = job["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("127.0.0.1"), "no internal detail reaches the client: {message}");
    assert_eq!(job["attempts"], 1, "refused, not retried: {job}");
    assert_eq!(stack.db.db.gallery_count_for_job(id.parse().expect("id")).await.expect("count"), 0);
}
