//! `just bench-backlog`: a backlog built while no worker runs drains once workers start.
//! Queues 20,000 jobs (Postgres rows and places in the dispatch line, as the gateway writes
//! them), then starts 4 workers against an emulator with no latency and no limits, on a tiny
//! input image — so what is measured is the queue's own overhead per job: dispatch, the apalis
//! handoff, the steps' bookkeeping in Postgres. Prints jobs/s, the most tasks apalis held waiting
//! for a worker (the dispatchers keep it short: apalis-redis 1.0's fetch fails at ~8,000 due tasks), and
//! Redis's memory.
//!
//! `jewelshot-bench-backlog [jobs] [workers]` — defaults: 20000, 4.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jewelshot_testkit::{Stack, StackOptions, WorkerTweak};

const CONCURRENCY: usize = 8;

/// A small photo-like JPEG (a gradient), so the emulator's edit and our compression cost little.
fn tiny_jpeg() -> anyhow::Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(160, 120, |x, y| image::Rgb([(x * 255 / 160) as u8, (y * 2) as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Jpeg)?;
    Ok(out.into_inner())
}

async fn redis_memory(conn: &mut redis::aio::ConnectionManager) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).context("used_memory")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let jobs: usize = args.first().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let workers: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(4);
    let opts = StackOptions {
        // Its own Redis, so the memory figures are this run's alone.
        own_redis: true,
        worker: WorkerTweak::new(|c| {
            c.worker.concurrency = CONCURRENCY;
            c.fal.client.poll_interval_ms = 5;
            c.worker.poll_interval_ms = 20;
            c.database.max_connections = 8;
            c.worker.reconcile_interval_secs = 10;
        }),
        worker_log: Some("warn".into()),
        ..StackOptions::emulator(&["--latency-ms", "0-0", "--max-per-minute", "0", "--max-concurrent", "0"])
    };
    let mut stack = Stack::start(opts).await?;
    let (user, key, _) = stack.user("backlog@example.com").await?;
    let r = stack
        .http
        .post(format!("{}/api/uploads", stack.gateway_url()))
        .bearer_auth(&key)
        .header("content-type", "image/jpeg")
        .body(tiny_jpeg()?)
        .send()
        .await?;
    let upload: serde_json::Value = r.json().await?;
    let input = upload["url"].as_str().context("upload url")?.to_owned();
    let mut users = vec![user];
    for i in 1..20 {
        users.push(stack.user(&format!("u{i}@example.com")).await?.0);
    }

    let fill = Instant::now();
    jewelshot_bench::fill_queue(&stack, &users, jobs, &input).await?;
    let redis = redis::Client::open(stack.redis_url().as_str())?;
    let mut conn = redis.get_connection_manager().await?;
    let mem_queued = redis_memory(&mut conn).await?;
    println!(
        "{jobs} jobs queued in {:.1} s with no worker running; Redis holds {:.1} MiB",
        fill.elapsed().as_secs_f64(),
        mem_queued as f64 / 1048576.0
    );

    let started = Instant::now();
    for _ in 0..workers {
        stack.start_worker()?;
    }
    let apalis = jewelshot_queue::apalis_config(&jewelshot_queue::QueueConfig {
        name: stack.queue_name.clone(),
        ..Default::default()
    });
    let (ready_list, parked) = (apalis.active_jobs_list(), apalis.scheduled_jobs_set());
    let (client, pg) = tokio_postgres::connect(&stack.db.direct_url, tokio_postgres::NoTls).await?;
    tokio::spawn(pg);
    let (mut deepest, mut peak_mem, mut last_report) = (0u64, mem_queued, Instant::now());
    let deadline = started + Duration::from_secs(3600);
    loop {
        // Pushed tasks wait in apalis's scheduled set until a fetch moves them to the ready list.
        let (ready, waiting): (u64, u64) =
            redis::pipe().llen(&ready_list).zcard(&parked).query_async(&mut conn).await?;
        let depth = ready + waiting;
        deepest = deepest.max(depth);
        peak_mem = peak_mem.max(redis_memory(&mut conn).await?);
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'complete'), \
                        count(*) FILTER (WHERE status IN ('failed', 'canceled')) FROM jobs",
                &[],
            )
            .await?;
        let (done, bad): (i64, i64) = (row.get(0), row.get(1));
        if bad > 0 {
            bail!("{bad} jobs failed\n{}", stack.worker_logs());
        }
        if done as usize >= jobs {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            println!(
                "  {done} done after {:.0} s ({:.1} jobs/s)",
                started.elapsed().as_secs_f64(),
                done as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        if Instant::now() > deadline {
            bail!("only {done} of {jobs} done in an hour\n{}", stack.worker_logs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = started.elapsed().as_secs_f64();
    // The workers' vacuum runs every 30 s by default; give it one round.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let mem_after = redis_memory(&mut conn).await?;
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
    println!(
        "\ndrained {jobs} jobs with {workers} workers × {CONCURRENCY} in {took:.1} s: {:.1} jobs/s \
         (queue overhead per job, instant emulator, tiny image)",
        jobs as f64 / took
    );
    println!("most tasks waiting in apalis for a worker: {deepest} (the line held the rest)");
    println!(
        "Redis memory: {:.1} MiB with the backlog queued, peak {:.1} MiB, {:.2} MiB and {keys} keys after \
         the retention pass",
        mem_queued as f64 / 1048576.0,
        peak_mem as f64 / 1048576.0,
        mem_after as f64 / 1048576.0
    );
    Ok(())
}
