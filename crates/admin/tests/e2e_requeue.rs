//! `jewelshot requeue` after an injected fal outage: the dry run lists every failed job and
//! changes nothing; the real run puts them back and they complete; a second run finds nothing.

mod common;

use std::time::Duration;

use common::jewelshot;
use jewelshot_testkit::{Stack, StackOptions};
use serde_json::json;

const JOBS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_requeue_after_an_outage() {
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let (_, key, _) = stack.user("oncall@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    // The outage: fal refuses our key.
    let revoke = format!("{}/__keys/test-key-1/revoke", stack.emulator_url());
    stack.http.post(&revoke).send().await.expect("revoke");
    stack.start_worker().expect("worker");
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let (s, body) =
            stack.submit(&key, &json!({ "image_url": input, "prompt": format!("outage {i}") })).await.expect("submit");
        assert_eq!(s, 202);
        ids.push(body["jobId"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        let job = stack.wait_final(&key, id, Duration::from_secs(30)).await.expect("final");
        assert_eq!(
            (job["status"].as_str(), job["error"]["code"].as_str()),
            (Some("failed"), Some("upstream-unauthorized")),
            "{job}"
        );
    }

    let (ok, out) = jewelshot(&stack, &["requeue", "--failed", "--since", "1h", "--dry-run"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("would requeue {JOBS} job(s)")), "{out}");
    for id in &ids {
        assert!(out.contains(id.as_str()), "the dry run lists {id}:\n{out}");
    }
    let counts = stack.db.db.queue_counts().await.expect("counts");
    assert_eq!((counts.failed, counts.queued), (JOBS as i64, 0), "a dry run changes nothing");

    // fal is back.
    stack.http.post(revoke.replace("/revoke", "/restore")).send().await.expect("restore");
    let (ok, out) = jewelshot(&stack, &["requeue", "--failed", "--since", "1h"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("requeued {JOBS}, skipped 0")), "{out}");
    for id in &ids {
        let job = stack.wait_final(&key, id, Duration::from_secs(60)).await.expect("final");
        assert_eq!(job["status"], "complete", "{job}");
        assert!(job["error"].is_null());
    }
    let stats = stack.emulator_stats().await.expect("stats");
    assert_eq!(stats["total"]["submitted"], JOBS, "each job reached fal once, after the outage: {stats}");

    let (ok, out) = jewelshot(&stack, &["requeue", "--failed", "--since", "1h"]);
    assert!(ok && out.contains("nothing to requeue"), "safe to run twice: {out}");
    let (ok, out) = jewelshot(&stack, &["requeue"]);
    assert!(!ok && out.contains("--failed"), "a requeue must say which jobs: {out}");
}
