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

/// The upload bombs again, this time as fal's results (the emulator answers with the bytes the
/// test serves it, undecoded): each job fails with a code after one attempt, nothing is stored,
/// and the worker that met them lives on to complete an ordinary job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_image_bombs_as_fal_results_fail_their_jobs_and_the_worker_lives() {
    use jewelshot_imaging::bombs;
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let (_, key, _) = stack.user("bombs@example.com").await.expect("user");
    let photo = bombs::progressive_jpeg(1024, 768).expect("jpeg");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("/gif-frame.gif", bombs::gif_frame()),
        ("/scans.jpg", bombs::repeat_last_scan(&photo, 5_000).expect("scans")),
        ("/tiny.png", bombs::tiny_png()),
        ("/zeros.png", bombs::zero_png(7000, 7000).expect("png")),
        ("/cut.jpg", bombs::truncated(&photo)),
    ];
    let base = jewelshot_testkit::serve_files(files.iter().map(|(p, b)| (p.to_string(), b.clone())).collect())
        .await
        .expect("file server");
    let worker = stack.start_worker().expect("worker");
    let mut ids = Vec::new();
    for (path, _) in &files {
        let body = json!({ "image_url": format!("{base}{path}"), "prompt": format!("[as-is] {path}") });
        let (status, r) = stack.submit(&key, &body).await.expect("submit");
        assert_eq!(status, 202, "{r}");
        ids.push((path, r["jobId"].as_str().expect("id").to_owned()));
    }
    for (path, id) in &ids {
        let job = stack.wait_final(&key, id, Duration::from_secs(60)).await.expect("final");
        assert_eq!(
            (job["status"].as_str(), job["error"]["code"].as_str(), job["attempts"].as_u64()),
            (Some("failed"), Some("upstream-bad-response"), Some(1)),
            "{path}: {job}"
        );
        assert_eq!(stack.db.db.gallery_count_for_job(id.parse().expect("id")).await.expect("count"), 0, "{path}");
    }
    assert!(stack.workers[worker].is_running(), "the worker survived every bomb");
    let input = stack.input_photo_url(&key).await.expect("input");
    let (_, r) = stack.submit(&key, &json!({ "image_url": input, "prompt": "after the bombs" })).await.expect("submit");
    let job = stack.wait_final(&key, r["jobId"].as_str().expect("id"), Duration::from_secs(60)).await.expect("final");
    assert_eq!(job["status"], "complete", "{job}");
}
