//! `just loadtest`: the seed's 50-concurrent-users scenario with the real k6 against the whole
//! system — gateway, 2 workers × 8, the emulator at the seed's 15 requests a minute (4 at once)
//! in reject mode with 20-45 s generations, everything time-scaled. Runs
//! `deploy/loadtest/edit.js`, prints k6's summary, then checks what the emulator and Postgres
//! saw: no 429 upstream, every submitted job complete.
//!
//! `jewelshot-loadtest [time-scale]` (default 0.1: the 9-minute scenario in about a minute).

use std::{collections::HashMap, time::Duration};

use anyhow::{bail, Context};
use jewelshot_bench::{k6_path, K6Users};
use jewelshot_testkit::{Stack, StackOptions, WorkerTweak};

const USERS: usize = 50;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scale: f64 = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.1);
    let opts = StackOptions {
        // The product's own per-user limits, not the tests' unlimited ones.
        gateway_env: HashMap::from([
            ("JEWELSHOT_LIMITS__SUBMITS_PER_MINUTE".into(), "30".into()),
            ("JEWELSHOT_LIMITS__MAX_QUEUED_PER_USER".into(), "100".into()),
            ("RUST_LOG".into(), "warn".into()),
        ]),
        worker: WorkerTweak::new(move |c| {
            c.worker.concurrency = 8;
            c.fal.client.poll_interval_ms = (1000.0 * scale).max(50.0) as u64;
            c.database.max_connections = 8;
        }),
        worker_log: Some("warn".into()),
        ..StackOptions::emulator(&[
            "--mode=reject",
            "--max-per-minute",
            "15",
            "--max-concurrent",
            "4",
            "--latency-ms",
            "20000-45000",
            "--time-scale",
            &scale.to_string(),
        ])
    };
    let mut stack = Stack::start(opts).await?;
    let k6_users = K6Users::create(&stack, USERS, "vu").await?;
    stack.start_worker()?;
    stack.start_worker()?;

    println!("k6 deploy/loadtest/edit.js against {} (time scale {scale})", stack.gateway_url());
    let status = k6_users
        .k6(&stack, "edit.js")
        .env("TIME_SCALE", scale.to_string())
        .status()
        .await
        .with_context(|| format!("running {} (`just loadtest` installs it)", k6_path().display()))?;

    let (client, conn) = tokio_postgres::connect(&stack.db.direct_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // k6 waited for every job it submitted; give the last notify steps a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = client.query("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status", &[]).await?;
    let by_status: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let stats = stack.emulator_stats().await?;
    let total = &stats["total"];
    let n = |f: &str| total[f].as_u64().unwrap_or(0);
    println!(
        "\nupstream (emulator): submitted {}, completed {}, 429s {}, max in progress {} (limit 4)",
        n("submitted"),
        n("completed"),
        n("rejected"),
        n("max_concurrent")
    );
    println!("jobs: {}", by_status.iter().map(|(s, c)| format!("{s} {c}")).collect::<Vec<_>>().join(", "));
    let all_complete = by_status.iter().all(|(s, _)| s == "complete");
    let pass = status.success() && all_complete && n("rejected") == 0 && n("max_concurrent") <= 4;
    println!(
        "k6 thresholds (0 HTTP errors, p95 < 50 ms, no failed job): {}; every job complete: {}; 0 upstream 429s: {}",
        if status.success() { "met" } else { "NOT met" },
        if all_complete { "yes" } else { "no" },
        if n("rejected") == 0 { "yes" } else { "no" },
    );
    println!("{}", if pass { "PASS" } else { "FAIL" });
    if !pass {
        bail!("load test failed");
    }
    Ok(())
}
