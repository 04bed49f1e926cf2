//! `just bench-streams [N]`: what idle live-status streams cost one gateway (issue I).
//!
//! The release gateway over a fresh database, no workers: N jobs queued, then one
//! `GET /api/jobs/{id}/events` stream held open per job, each past its first event. Printed: the
//! gateway's RSS before and with the streams (and per stream), its CPU over 30 s of idle
//! streams, and how soon a change reaches its stream with all of them open (a job canceled
//! through the API: the stream's `canceled` event).

use std::time::{Duration, Instant};

use anyhow::Context;
use jewelshot_bench::{cpu_secs, rss_mb};
use jewelshot_testkit::{sse::EventStream, Stack, StackOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2_000);
    let mut opts = StackOptions::default();
    opts.gateway_env.insert("RUST_LOG".into(), "warn".into());
    let stack = Stack::start(opts).await?;
    let (_, key, _) = stack.user("streams@example.com").await?;
    let base = stack.gateway_url().to_owned();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({"imageUrl": "https://cdn.example.com/rings/solitaire.jpg", "prompt": format!("idle {i}")});
        let (status, r) = stack.submit(&key, &body).await?;
        anyhow::ensure!(status == 202, "submit: {status} {r}");
        ids.push(r["jobId"].as_str().context("jobId")?.to_owned());
    }
    let pid = stack.gateway.pid();
    tokio::time::sleep(Duration::from_secs(11)).await; // the allocator's decay after the submits
    let (before, _) = rss_mb(pid);

    // Every stream on a connection of its own (as browsers hold them), opened 100 at a time.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let started = Instant::now();
    let mut streams = Vec::with_capacity(n);
    for chunk in ids.chunks(100) {
        let opened = futures::future::join_all(chunk.iter().map(|id| {
            let (http, url, key) = (&http, format!("{base}/api/jobs/{id}/events"), &key);
            async move {
                let mut s = EventStream::open(http, &url, key, None).await?;
                let first = s.next_event(Duration::from_secs(30)).await?.context("stream ended")?;
                anyhow::ensure!(first.data["status"] == "queued", "{:?}", first.data);
                Ok::<_, anyhow::Error>(s)
            }
        }))
        .await;
        for s in opened {
            streams.push(s?);
        }
    }
    println!("{n} streams open, each past its first event, in {:.1} s", started.elapsed().as_secs_f64());
    let cpu0 = cpu_secs(pid);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let idle_cpu = cpu_secs(pid) - cpu0;
    let (with, peak) = rss_mb(pid);

    // A change with every stream open: cancel the first job, time its stream's event.
    let t = Instant::now();
    let resp = stack.http.delete(format!("{base}/api/jobs/{}", ids[0])).bearer_auth(&key).send().await?;
    anyhow::ensure!(resp.status().is_success(), "cancel: {}", resp.status());
    let canceled = loop {
        let e = streams[0].next_event(Duration::from_secs(10)).await?.context("stream ended without the change")?;
        if e.data["status"] == "canceled" {
            break t.elapsed();
        }
    };
    println!(
        "gateway RSS: {before:.1} MB before, {with:.1} MB with {n} idle streams (peak {peak:.1}) → {:.1} KiB a stream",
        (with - before) * 1024.0 / n as f64
    );
    println!("gateway CPU over 30 s of {n} idle streams: {idle_cpu:.2} s ({:.1} % of a core)", idle_cpu / 30.0 * 100.0);
    println!("a cancel reached its stream in {:.1} ms with {n} streams open", canceled.as_secs_f64() * 1000.0);
    drop(streams);
    stack.drop_database().await
}
