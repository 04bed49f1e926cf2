//! `just loadtest-async`: issue G's acceptance 3 — the seed's async flow at 1,000 concurrent
//! users with the real k6. Each user arrives once within 30 s, submits one edit and polls its job
//! every 2 s (real seconds, as a browser does) until it is final. Behind the gateway: 2 workers
//! × 10 and the emulator with 5 fal accounts at the seed's 15 a minute and 4 at once each, 20-45 s
//! generations, time-scaled. Goals: 0 HTTP errors, poll p95 ≤ 5 ms, submit p95 ≤ 10 ms, every
//! job complete.
//!
//! `jewelshot-loadtest-async [users] [time-scale]` (defaults 1000 and 0.05).

use std::{collections::HashMap, time::Duration};

use anyhow::{bail, Context};
use jewelshot_bench::{k6_path, K6Users};
use jewelshot_testkit::{Stack, StackOptions, WorkerTweak};

const ACCOUNTS: usize = 5;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let users: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let scale: f64 = std::env::args().nth(2).and_then(|v| v.parse().ok()).unwrap_or(0.05);
    let (keys, pool) = jewelshot_bench::fal_pool("load-key", ACCOUNTS);
    let opts = StackOptions {
        emulator_args: vec![
            "--mode=reject".into(),
            "--max-per-minute".into(),
            "15".into(),
            "--max-concurrent".into(),
            "4".into(),
            "--latency-ms".into(),
            "20000-45000".into(),
            "--time-scale".into(),
            scale.to_string(),
            "--keys".into(),
            keys.join(","),
        ],
        // The product's own per-user limits and defaults, not the tests' unlimited ones.
        gateway_env: HashMap::from([
            ("JEWELSHOT_LIMITS__SUBMITS_PER_MINUTE".into(), "30".into()),
            ("JEWELSHOT_LIMITS__MAX_QUEUED_PER_USER".into(), "100".into()),
            (
                "JEWELSHOT_DATABASE__MAX_CONNECTIONS".into(),
                jewelshot_db::DbConfig::default().max_connections.to_string(),
            ),
            ("JEWELSHOT_JOBS__DEFAULT_GENERATION_SECS".into(), format!("{:.2}", 32.5 * scale)),
            ("RUST_LOG".into(), "warn".into()),
        ]),
        worker: WorkerTweak::new(move |c| {
            c.fal.client.keys = pool.clone();
            c.worker.concurrency = 10;
            c.fal.client.poll_interval_ms = (1000.0 * scale).max(50.0) as u64;
            c.database.max_connections = 8;
        }),
        worker_log: Some("warn".into()),
        ..StackOptions::default()
    };
    let mut stack = Stack::start(opts).await?;
    let k6_users = K6Users::create(&stack, users, "user").await?;
    stack.start_worker()?;
    stack.start_worker()?;

    println!(
        "k6 deploy/loadtest/async.js — {users} users against {} (upstream time scale {scale})",
        stack.gateway_url()
    );
    let status = k6_users
        .k6(&stack, "async.js")
        .status()
        .await
        .with_context(|| format!("running {} (`just loadtest-async` installs it)", k6_path().display()))?;

    let client = stack.db.client().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = client.query("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status", &[]).await?;
    let by_status: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let stats = stack.emulator_stats().await?;
    let n = |f: &str| stats["total"][f].as_u64().unwrap_or(0);
    println!(
        "\nupstream (emulator): submitted {}, completed {}, 429s {}; jobs: {}",
        n("submitted"),
        n("completed"),
        n("rejected"),
        by_status.iter().map(|(s, c)| format!("{s} {c}")).collect::<Vec<_>>().join(", ")
    );
    let all_complete = by_status.iter().all(|(s, _)| s == "complete")
        && by_status.iter().map(|(_, c)| *c).sum::<i64>() == users as i64;
    let pass = status.success() && all_complete;
    println!(
        "k6 thresholds (0 HTTP errors, poll p95 ≤ 5 ms, submit p95 ≤ 10 ms, every job complete): {}",
        if status.success() { "met" } else { "NOT met" }
    );
    println!("{}", if pass { "PASS" } else { "FAIL" });
    drop(client);
    stack.drop_database().await?;
    if !pass {
        bail!("load test failed");
    }
    Ok(())
}
