//! Issue H, acceptance 5: one job's trace, exported over OTLP/HTTP by the gateway and the worker
//! and decoded here as a collector would: the client's span → `submit` (gateway) → `run-job`
//! (worker, parented on the traceparent stored with the job) → `generate-image`,
//! `save-to-gallery`, `notify-user`.

use std::time::{Duration, Instant};

use jewelshot_testkit::{hooks::Receiver, otlp, Stack, StackOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_one_trace_runs_from_the_submit_through_each_step_of_the_job() {
    let collector = Receiver::start().await.expect("collector");
    let endpoint = collector.url.trim_end_matches("/hooks/jewelshot").to_owned();
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let mut opts = StackOptions::default();
    opts.gateway_env.extend(otel.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    opts.worker_env.extend(otel.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut stack = Stack::start(opts).await.expect("stack");
    stack.start_worker().expect("worker");
    let (_, key, _) = stack.user("traced@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("upload");
    // The client's own trace: the submit joins it.
    let client = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let r = stack
        .http
        .post(format!("{}/api/ai/edit", stack.gateway_url()))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{}-{}-01", client.0, client.1))
        .json(&json!({"imageUrl": input, "prompt": "enhance lighting"}))
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status().as_u16(), 202);
    let body: serde_json::Value = r.json().await.expect("body");
    let id = body["jobId"].as_str().expect("job id").to_owned();
    let done = stack.wait_final(&key, &id, Duration::from_secs(60)).await.expect("final");
    assert_eq!(done["status"], "complete", "{done}");

    // The row carries the trace the worker continued.
    let row = stack.db.db.job(id.parse().expect("id")).await.expect("read").expect("row");
    let traceparent = row.trace_parent.expect("the submit stored its traceparent");
    let trace_id = traceparent.split('-').nth(1).expect("trace id").to_owned();

    let wanted = ["submit", "run-job", "generate-image", "save-to-gallery", "notify-user"];
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let all = otlp::spans(&collector.deliveries()).expect("OTLP requests decode");
        let ours: Vec<_> = all.into_iter().filter(|s| s.trace_id == trace_id).collect();
        if wanted.iter().all(|w| ours.iter().any(|s| s.name == *w)) || Instant::now() > deadline {
            break ours;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let find = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} span in the job's trace: {spans:#?}"))
    };
    let submit = find("submit");
    let run = find("run-job");
    assert_eq!(submit.service, "jewelshot-gateway");
    assert_eq!(run.service, "jewelshot-worker");
    assert_eq!(trace_id, client.0, "the job continues the client's trace");
    assert_eq!(submit.parent_span_id, client.1, "the submit hangs under the client's span");
    assert_eq!(traceparent.split('-').nth(2), Some(submit.span_id.as_str()), "the row names the submit's span");
    assert_eq!(run.parent_span_id, submit.span_id, "the worker's run hangs under the submit");
    assert_eq!(run.attributes.get("job_id").map(String::as_str), Some(id.as_str()));
    for step in ["generate-image", "save-to-gallery", "notify-user"] {
        let s = find(step);
        assert_eq!(s.service, "jewelshot-worker");
        assert_eq!(s.parent_span_id, run.span_id, "{step} is a child of run-job");
        assert_eq!(s.attributes.get("step").map(String::as_str), Some(step));
    }
    // The tree, for the record.
    for s in &spans {
        eprintln!(
            "{:<18} {:<16} span {} parent {:<16} trace {}",
            s.service, s.name, s.span_id, s.parent_span_id, s.trace_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_without_an_endpoint_nothing_is_traced_or_stored() {
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    stack.start_worker().expect("worker");
    let (_, key, _) = stack.user("untraced@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("upload");
    let (status, body) =
        stack.submit(&key, &json!({"imageUrl": input, "prompt": "white background"})).await.expect("submit");
    assert_eq!(status, 202, "{body}");
    let id = body["jobId"].as_str().expect("job id").to_owned();
    stack.wait_final(&key, &id, Duration::from_secs(60)).await.expect("final");
    let row = stack.db.db.job(id.parse().expect("id")).await.expect("read").expect("row");
    assert_eq!(row.trace_parent, None, "traces are off by default");
}
