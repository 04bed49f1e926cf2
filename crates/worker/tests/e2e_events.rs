//! Issue I, live status: `GET /api/jobs/{id}/events` (Server-Sent Events) followed through a
//! gateway that did not take the submit — the job's position counting down while it waits, then
//! `processing`, then `complete` with its image — and a client that reconnects with
//! `Last-Event-ID` gets what it missed (a state carries its steps), and nothing twice.

use std::time::Duration;

use jewelshot_testkit::{sse::EventStream, Stack, StackOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_job_is_followed_live_from_queued_to_complete_through_another_gateway() {
    // One job at a time upstream, so the last of five waits behind the others.
    let opts = StackOptions::emulator(&["--latency-ms", "300-500", "--max-concurrent", "1", "--max-per-minute", "0"]);
    let mut stack = Stack::start(opts).await.expect("stack");
    let other = stack.start_gateway().expect("a second gateway");
    let (_, key, _) = stack.user("live@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("upload");
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, body) =
            stack.submit(&key, &json!({"imageUrl": input, "prompt": format!("live {i}")})).await.expect("submit");
        assert_eq!(status, 202, "{body}");
        ids.push(body["jobId"].as_str().expect("id").to_owned());
    }
    let last = ids.last().expect("a job").clone();
    let url = format!("{other}/api/jobs/{last}/events");
    let mut events = EventStream::open(&stack.http, &url, &key, None).await.expect("stream");
    let first = events.next_event(Duration::from_secs(10)).await.expect("first event").expect("an event");
    assert_eq!(first.data["status"], "queued", "{first:?}");
    assert_eq!(first.data["queuePosition"], 5, "{first:?}");

    stack.start_worker().expect("worker");
    let mut seen = vec![first];
    while let Some(e) = events.next_event(Duration::from_secs(60)).await.expect("event") {
        seen.push(e);
    }
    for e in &seen {
        println!("{} {} position {} eta {}", e.id, e.data["status"], e.data["queuePosition"], e.data["etaSeconds"]);
    }
    let positions: Vec<i64> =
        seen.iter().filter(|e| e.data["status"] == "queued").filter_map(|e| e.data["queuePosition"].as_i64()).collect();
    assert!(positions.windows(2).all(|w| w[1] < w[0]), "the position only falls, one event each: {positions:?}");
    assert!(positions.len() >= 3, "the countdown is seen live: {positions:?}");
    let statuses: Vec<&str> = seen.iter().filter_map(|e| e.data["status"].as_str()).collect();
    assert!(statuses.contains(&"processing"), "{statuses:?}");
    let done = seen.last().expect("events");
    assert_eq!(done.data["status"], "complete", "the stream ends on the final state: {statuses:?}");
    let image = done.data["imageUrl"].as_str().expect("imageUrl");
    let got = stack.http.get(image).send().await.expect("image");
    assert_eq!(got.status(), 200);
    let ids_seen: std::collections::HashSet<_> = seen.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids_seen.len(), seen.len(), "each event a new state");

    // Reconnecting with the id of the last state held: nothing again, and the stream ends.
    let mut again = EventStream::open(&stack.http, &url, &key, Some(&done.id)).await.expect("stream");
    let repeat = again.next_event(Duration::from_secs(5)).await.expect("end");
    assert!(repeat.is_none(), "no repeat of a state held:\n{}\n{:?}", done.data, repeat);

    // A client that left while the job waited resumes with everything it missed.
    let second = &ids[3];
    let _ = stack.wait_final(&key, second, Duration::from_secs(60)).await.expect("final");
    let mut resumed = EventStream::open(
        &stack.http,
        &format!("{other}/api/jobs/{second}/events"),
        &key,
        Some(&seen[0].id), // an old state of another job: not what it has
    )
    .await
    .expect("stream");
    let caught_up = resumed.next_event(Duration::from_secs(5)).await.expect("event").expect("the current state");
    assert_eq!(caught_up.data["status"], "complete");
    let steps: Vec<&str> =
        caught_up.data["steps"].as_array().expect("steps").iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(steps.len() >= 3, "the steps it missed come with the state: {steps:?}");
    assert!(resumed.next_event(Duration::from_secs(5)).await.expect("end").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_event_streams_are_the_owners_only() {
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let (_, key, _) = stack.user("owner@example.com").await.expect("user");
    let (_, other_key, _) = stack.user("other@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("upload");
    let (_, body) = stack.submit(&key, &json!({"imageUrl": input, "prompt": "p"})).await.expect("submit");
    let id = body["jobId"].as_str().expect("id");
    let url = format!("{}/api/jobs/{id}/events", stack.gateway_url());
    let status = |k: &str| stack.http.get(&url).bearer_auth(k).send();
    assert_eq!(status(&other_key).await.expect("get").status(), 404);
    assert_eq!(stack.http.get(&url).send().await.expect("get").status(), 401);
    let ok = status(&key).await.expect("get");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["content-type"], "text/event-stream");
}
