//! `just bench-uploads`: while 4 clients upload the kleiber photo (4.4 MB, 6028x3391) in a loop,
//! poll `GET /api/jobs/{id}` and print its latency percentiles. Goal: p99 < 20 ms — uploads are
//! compressed on a bounded pool and must not slow the thin path.

use std::time::{Duration, Instant};

use anyhow::Context;
use jewelshot_testkit::{repo_root, Stack, StackOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let photo_path = repo_root().join("../shared/fixtures/photos/kleiber-6028x3391.jpg");
    let photo = std::fs::read(&photo_path).with_context(|| format!("reading {}", photo_path.display()))?;
    let stack = Stack::start(StackOptions::default()).await?;
    let (_, key, _) = stack.user("bench@example.com").await?;
    let (_, job) =
        stack.submit(&key, &json!({ "image_url": "https://cdn.example.com/ring.jpg", "prompt": "bench" })).await?;
    let job_id = job["jobId"].as_str().context("jobId")?.to_owned();
    let base = stack.gateway_url().to_owned();
    let deadline = Instant::now() + Duration::from_secs(secs);

    let mut uploaders = Vec::new();
    for i in 0..4 {
        // Four clients, four users: one user's uploads at once are capped (`max_concurrent_per_user`).
        let (_, key, _) = stack.user(&format!("uploader{i}@example.com")).await?;
        let (http, base, photo) = (stack.http.clone(), base.clone(), photo.clone());
        uploaders.push(tokio::spawn(async move {
            let (mut ok, mut lat) = (0u32, Vec::new());
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/api/uploads"))
                    .bearer_auth(&key)
                    .header("content-type", "image/jpeg")
                    .body(photo.clone())
                    .send()
                    .await;
                if matches!(&r, Ok(r) if r.status().as_u16() == 201) {
                    ok += 1;
                    lat.push(t.elapsed());
                }
            }
            (ok, lat)
        }));
    }
    // The thin path: a client polling its job, as the web app does (every 20 ms here).
    let mut polls = Vec::new();
    let mut errors = 0;
    while Instant::now() < deadline {
        let t = Instant::now();
        let r = stack.http.get(format!("{base}/api/jobs/{job_id}")).bearer_auth(&key).send().await;
        match r {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                polls.push(t.elapsed());
            }
            _ => errors += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut uploads = 0;
    let mut upload_lat = Vec::new();
    for u in uploaders {
        let (n, lat) = u.await?;
        uploads += n;
        upload_lat.extend(lat);
    }
    polls.sort();
    upload_lat.sort();
    let pct = |v: &[Duration], p: f64| {
        v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{secs} s, 4 uploaders of {} ({} bytes each), 1 poller every 20 ms", photo_path.display(), photo.len());
    println!(
        "uploads: {uploads} stored ({:.1}/s), latency p50 {:.0} ms, p99 {:.0} ms",
        f64::from(uploads) / secs as f64,
        ms(pct(&upload_lat, 0.5)),
        ms(pct(&upload_lat, 0.99))
    );
    println!(
        "GET /api/jobs/{{id}}: {} polls, {errors} errors, p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        polls.len(),
        ms(pct(&polls, 0.5)),
        ms(pct(&polls, 0.95)),
        ms(pct(&polls, 0.99)),
        ms(polls.last().copied().unwrap_or_default())
    );
    let p99 = ms(pct(&polls, 0.99));
    println!("{} (goal: p99 < 20 ms)", if p99 < 20.0 && errors == 0 { "PASS" } else { "FAIL" });
    Ok(())
}
