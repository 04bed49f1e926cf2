//! `just bench-position`: what `queuePosition` costs with a deep line. Fills the dispatch line
//! (and Postgres) with 100,000 queued jobs from 50 users of uneven weight, one in ten `high`
//! ([`jewelshot_bench::fill_queue`]), then
//! times position lookups: the line script alone (client round trip, and Redis's own time per
//! call from `INFO commandstats`), the whole `GET /api/jobs/{id}`, and — for comparison — the
//! submit-order count in Postgres that positions used to come from.
//!
//! `jewelshot-bench-position [jobs] [lookups]` — defaults: 100000, 2000.

use std::time::{Duration, Instant};

use anyhow::Context;
use jewelshot_ratelimit::{Limiter, LimiterConfig, LineEntry, LinePlace};
use jewelshot_testkit::{Stack, StackOptions};

const USERS: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
        v.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let jobs: usize = args.first().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let lookups: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let stack = Stack::start(StackOptions::default()).await?;
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(stack.user(&format!("u{i}@example.com")).await?);
    }

    let fill = Instant::now();
    let owners: Vec<String> = users.iter().map(|u| u.0.clone()).collect();
    let entries = jewelshot_bench::fill_queue(&stack, &owners, jobs, "https://example.com/in.jpg").await?;
    let (client, conn) = tokio_postgres::connect(&stack.db.direct_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let redis = redis::Client::open(stack.redis_url().as_str())?;
    let mut rconn = redis.get_connection_manager().await?;
    let limiter = Limiter::new(
        rconn.clone(),
        LimiterConfig::new(jewelshot_ratelimit::LineSettings::default().prefix(&stack.queue_name)),
        Vec::new(),
    );
    let (high, normal, _) = limiter.line_lengths().await?;
    println!(
        "{jobs} queued jobs ({high} high, {normal} normal) from {USERS} users, filled in {:.1} s",
        fill.elapsed().as_secs_f64()
    );

    // 1. The line script: client round trip, and Redis's own time per call.
    redis::cmd("CONFIG").arg("RESETSTAT").query_async::<()>(&mut rconn).await?;
    let mut line_times = Vec::with_capacity(lookups);
    let mut worst_place = 0;
    for i in 0..lookups {
        let e = &entries[(i * 7919) % entries.len()];
        let t = Instant::now();
        let place = limiter.position(e, 4).await?;
        line_times.push(t.elapsed());
        if let LinePlace::Queued(p) = place {
            worst_place = worst_place.max(p);
        } else {
            anyhow::bail!("{} is not in line: {place:?}", e.job);
        }
    }
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut rconn).await?;
    let server_us = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec_per_call=")))
        .and_then(|v| v.parse::<f64>().ok())
        .context("no evalsha stats")?;
    println!("\nposition from the line ({lookups} lookups, deepest place {worst_place}):");
    println!("  client round trip  {}", summary(line_times));
    println!("  Redis time per call {server_us:.1} µs (INFO commandstats)");

    // 2. The whole request, as the web app polls it.
    let key = &users[0].1;
    let own: Vec<&LineEntry> = entries.iter().filter(|e| e.user == users[0].0).collect();
    let mut http_times = Vec::with_capacity(lookups);
    for i in 0..lookups {
        let e = own[(i * 31) % own.len()];
        let t = Instant::now();
        let (status, body) = stack.get_job(key, &e.job).await?;
        http_times.push(t.elapsed());
        anyhow::ensure!(status == 200 && body["queuePosition"].as_i64().unwrap_or(0) > 0, "{status} {body}");
    }
    println!("GET /api/jobs/{{id}} ({lookups} requests, sequential, loopback): {}", summary(http_times));

    // 3. For comparison: the submit-order count in Postgres.
    let mut pg_times = Vec::new();
    for i in 0..50 {
        let e = &entries[(i * 7919) % entries.len()];
        let t = Instant::now();
        client
            .query_one(
                "SELECT count(*) FROM jobs WHERE status = 'queued' AND seq <= $1 AND (run_at IS NULL OR run_at <= now())",
                &[&e.seq],
            )
            .await?;
        pg_times.push(t.elapsed());
    }
    println!("the Postgres count it replaces (50 lookups): {}", summary(pg_times));
    let pass = server_us <= 1000.0;
    println!(
        "\nRedis time per position lookup {server_us:.1} µs (goal ≤ 1 ms): {}",
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(())
}
