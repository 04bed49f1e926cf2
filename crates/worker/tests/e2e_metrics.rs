//! Issue H, acceptance 1: a gateway's and a worker's `/metrics` under load show the seed's seven
//! critical metrics — each name there, each value moved — and `promtool check metrics` passes on
//! both (Debian package `prometheus`; required in CI).

use std::{collections::HashMap, time::Duration};

use jewelshot_domain::metric_names as m;
use jewelshot_testkit::{Stack, StackOptions, WorkerTweak};
use serde_json::json;

/// Sum of every sample of `name` whose labels contain all of `labels` (histograms: the
/// `_count` series).
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else { continue };
        let bare = series.split('{').next().unwrap_or(series);
        if (bare == name || bare == format!("{name}_count")) && labels.iter().all(|l| series.contains(l)) {
            *found.get_or_insert(0.0) += v.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

async fn scrape(url: &str) -> String {
    reqwest::get(url).await.expect("scrape").text().await.expect("text")
}

fn promtool_check(what: &str, text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(std::env::var_os("CI").is_none(), "CI must have promtool (Debian package prometheus)");
        eprintln!("promtool not installed: the lint half of this test is skipped");
        return;
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics on the {what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_the_seven_metrics_move_under_load_on_a_gateway_and_a_worker() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let monitoring = [
        ("JEWELSHOT_MONITORING__SAMPLE_INTERVAL_MS", "200"),
        ("JEWELSHOT_MONITORING__STORAGE_CAPACITY_BYTES", "1000000000"),
        ("JEWELSHOT_MONITORING__BANDWIDTH_QUOTA_BYTES_PER_MONTH", "50000000000"),
        ("JEWELSHOT_MONITORING__FAL_BUDGET_USD_PER_MONTH", "100"),
    ];
    let mut opts =
        StackOptions::emulator(&["--latency-ms", "300-600", "--max-concurrent", "4", "--max-per-minute", "0"]);
    opts.gateway_env = monitoring.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>();
    opts.gateway_env.insert("JEWELSHOT_GATEWAY__METRICS_LISTEN".into(), format!("127.0.0.1:{metrics_port}"));
    // And the logs as a log pipeline reads them: one JSON object a line.
    opts.gateway_env.insert("JEWELSHOT_LOG_FORMAT".into(), "json".into());
    opts.gateway_env.insert("JEWELSHOT_GATEWAY__ACCESS_LOG".into(), "true".into());
    opts.worker = WorkerTweak::new(|c| {
        c.monitoring.sample_interval_ms = 200;
        c.monitoring.storage_capacity_bytes = 1_000_000_000;
        c.monitoring.bandwidth_quota_bytes_per_month = 50_000_000_000;
        c.monitoring.fal_budget_usd_per_month = 100.0;
    });
    let mut stack = Stack::start(opts).await.expect("stack");
    let gateway_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let (_, key, _) = stack.user("metrics@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("an upload");

    // Jobs wait while no worker runs: the queue's depth shows them on the gateway.
    let mut ids = Vec::new();
    for i in 0..4 {
        let (status, body) = stack
            .submit(&key, &json!({ "image_url": input, "prompt": format!("metrics #{i}") }))
            .await
            .expect("submit");
        assert_eq!(status, 202, "{body}");
        ids.push(body["jobId"].as_str().expect("id").to_owned());
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let waiting = scrape(&gateway_metrics).await;
    assert_eq!(value(&waiting, m::QUEUE_DEPTH, &["state=\"waiting\""]), Some(4.0), "{waiting}");

    stack.start_worker().expect("worker");
    let worker_metrics =
        format!("{}/metrics", stack.workers[0].url.clone().expect("the worker printed its metrics URL"));
    let worker_before = scrape(&worker_metrics).await;
    let mut image_url = String::new();
    for id in &ids {
        let job = stack.wait_final(&key, id, Duration::from_secs(60)).await.expect("final");
        assert_eq!(job["status"], "complete", "{job}");
        image_url = job["imageUrl"].as_str().expect("imageUrl").to_owned();
    }
    let served = stack.http.get(&image_url).send().await.expect("result");
    assert_eq!(served.status().as_u16(), 200);
    assert!(!served.bytes().await.expect("bytes").is_empty());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let gateway = scrape(&gateway_metrics).await;
    let worker = scrape(&worker_metrics).await;

    // The seven, each on the process that measures it, each moved.
    let moved = |text: &str, before: &str, name: &str, labels: &[&str]| {
        let (b, a) = (value(before, name, labels).unwrap_or(0.0), value(text, name, labels));
        assert!(a.is_some_and(|a| a > b), "{name}{labels:?}: {b} → {a:?}");
    };
    moved(&gateway, &waiting, m::HTTP_DURATION, &["route=\"/api/jobs/{job_id}\""]); // 1
    moved(&worker, &worker_before, m::GENERATION_DURATION, &[]); // 2
    moved(&gateway, &waiting, m::HTTP_REQUESTS, &["status=\"200\""]); // 3
    moved(&worker, &worker_before, m::JOBS_FINISHED, &["status=\"complete\""]);
    for text in [&gateway, &worker] {
        // 4: the same fleet-wide value from both: nothing waits any more.
        assert_eq!(value(text, m::QUEUE_DEPTH, &["state=\"waiting\""]), Some(0.0), "{text}");
        assert!(value(text, m::QUEUE_OLDEST_AGE, &[]).is_some(), "{text}");
        // 5: this process's pools.
        assert!(value(text, m::DB_CONNECTIONS_MAX, &[]).is_some_and(|v| v >= 1.0), "{text}");
        assert!(value(text, m::DB_CONNECTIONS, &["state=\"idle\""]).is_some(), "{text}");
        assert!(value(text, m::DB_WAITING, &[]).is_some(), "{text}");
        // 6: the upload and four results are stored; the capacity is the configured one.
        assert!(value(text, m::STORAGE_BYTES, &[]).is_some_and(|v| v > 0.0), "{text}");
        assert!(value(text, m::STORAGE_OBJECTS, &[]).is_some_and(|v| v >= 5.0), "{text}");
        assert_eq!(value(text, m::STORAGE_CAPACITY, &[]), Some(1e9));
        // 7: the quota, configured.
        assert_eq!(value(text, m::BANDWIDTH_QUOTA, &[]), Some(5e10));
        assert_eq!(value(text, m::FAL_BUDGET, &[]), Some(100.0));
        // The heap as jemalloc sees it: live bytes (an idle gateway holds about a megabyte), and
        // at least as many resident.
        let allocated = value(text, m::ALLOCATOR_BYTES, &["state=\"allocated\""]);
        assert!(allocated.is_some_and(|v| v > 1e5), "{text}");
        assert!(value(text, m::ALLOCATOR_BYTES, &["state=\"resident\""]) >= allocated, "{text}");
    }
    assert_eq!(value(&waiting, m::STORAGE_OBJECTS, &[]), Some(1.0), "only the upload before the jobs ran");
    moved(&gateway, &waiting, m::BANDWIDTH, &["direction=\"files_served\""]); // 7
    assert!(
        value(&gateway, m::BANDWIDTH, &["direction=\"uploads_received\""]).is_some_and(|v| v > 10_000.0),
        "{gateway}"
    );
    moved(&worker, &worker_before, m::BANDWIDTH, &["direction=\"results_downloaded\""]);
    // Beside the seven: spend inputs, accounts, workers, heartbeats.
    moved(&worker, &worker_before, m::FAL_SUBMITS, &["outcome=\"accepted\""]);
    assert!(value(&worker, m::FAL_PRICE, &[]).is_some_and(|p| p > 0.0), "{worker}");
    assert_eq!(value(&worker, m::UPSTREAM_ACCOUNTS, &["state=\"healthy\""]), Some(1.0), "{worker}");
    for text in [&gateway, &worker] {
        assert_eq!(value(text, m::WORKERS_ALIVE, &[]), Some(1.0), "{text}");
    }
    assert!(value(&worker, m::WORKER_HEARTBEAT, &[]).is_some_and(|t| t > 1.7e9), "{worker}");
    // The generation histogram has buckets up to 120 s (a summary could not be summed).
    assert!(worker.contains(&format!("{}_bucket{{le=\"120\"}}", m::GENERATION_DURATION)), "{worker}");

    promtool_check("gateway", &gateway);
    promtool_check("worker", &worker);

    let log = std::fs::read_to_string(&stack.gateway.log).expect("gateway log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let submits = lines.iter().filter(|l| l["target"] == "access" && l["path"] == "/api/ai/edit").count();
    assert_eq!(submits, 4, "one access line per submit");
    assert!(lines.iter().any(|l| l["job_id"].as_str() == Some(ids[0].as_str())), "the submit's line names its job");
}
