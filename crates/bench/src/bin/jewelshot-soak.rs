//! `just soak MINUTES`: issue H's soak — the seed's load (k6, 50 users submitting and polling
//! every 2 s without pause) held for MINUTES against the whole system, the emulator time-scaled
//! (5 fal accounts at 15 a minute and 4 at once, 20-45 s generations) with faults injected (5 %
//! of submits answer 500, 1 % hang, 3 % of generations fail). Every minute it samples each
//! process's RSS and open descriptors, Redis's memory and Postgres's connections; at the end it
//! prints the table and each series' slope over the last two thirds of the run (see
//! `jewelshot_bench::soak`). Passes with 0 HTTP errors, every job final, nothing growing.
//!
//! `jewelshot-soak [minutes] [time-scale]` (defaults 60 and 0.05); `SOAK_SAMPLE_SECS` (60) and
//! `SOAK_VUS` (50) change the sampling and the load. `jewelshot-soak --judge LOG [minutes]` judges
//! the table of an earlier run's log again.

use std::{collections::BTreeMap, collections::HashMap, time::Duration};

use anyhow::{bail, Context};
use jewelshot_bench::soak::{process_sample, trend};
use jewelshot_bench::{k6_path, K6Users};
use jewelshot_testkit::{Stack, StackOptions, WorkerTweak};

const ACCOUNTS: usize = 5;
const WORKERS: usize = 2;

/// One row of the table: minutes since the load began, and each series' value.
type Sample = (f64, BTreeMap<String, f64>);

/// The table a run printed (its log), read back: `(minute, {series: value})` rows.
fn table_of(log: &str) -> anyhow::Result<Vec<Sample>> {
    let mut lines = log.lines().skip_while(|l| !l.trim_start().starts_with("min ") || !l.contains("RSS MiB"));
    let header = lines.next().context("no sample table in the log")?;
    let names: Vec<String> = header
        .get(8..)
        .unwrap_or_default()
        .as_bytes()
        .chunks(22)
        .map(|c| String::from_utf8_lossy(c).trim().to_owned())
        .collect();
    let mut samples = Vec::new();
    for line in lines.take_while(|l| !l.trim().is_empty()) {
        let t: f64 = line.get(..6).unwrap_or_default().trim().parse().context("a minute")?;
        let row = names
            .iter()
            .zip(line.get(8..).unwrap_or_default().as_bytes().chunks(22))
            .filter_map(|(n, c)| Some((n.clone(), String::from_utf8_lossy(c).trim().parse::<f64>().ok()?)))
            .collect();
        samples.push((t, row));
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `jewelshot-soak --judge LOG MINUTES`: judge the table an earlier run printed again.
    if std::env::args().nth(1).as_deref() == Some("--judge") {
        let log = std::fs::read_to_string(std::env::args().nth(2).context("--judge LOG MINUTES")?)?;
        let minutes: f64 = std::env::args().nth(3).and_then(|v| v.parse().ok()).unwrap_or(60.0);
        let growing = report(&table_of(&log)?, minutes);
        println!("{}", if growing.is_empty() { "nothing grows" } else { "growing" });
        return Ok(());
    }
    let minutes: f64 = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(60.0);
    let scale: f64 = std::env::args().nth(2).and_then(|v| v.parse().ok()).unwrap_or(0.05);
    let every: u64 = std::env::var("SOAK_SAMPLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let vus: usize = std::env::var("SOAK_VUS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let (keys, pool) = jewelshot_bench::fal_pool("soak-key", ACCOUNTS);
    // Finished jobs' poll snapshots live an hour, time-scaled like the upstream, so the run
    // reaches its steady state well before the judged span.
    let final_ttl = ((3600.0 * scale) as u64).max(60);
    let opts = StackOptions {
        emulator_args: [
            "--mode=reject",
            "--max-per-minute",
            "15",
            "--max-concurrent",
            "4",
            "--latency-ms",
            "20000-45000",
            "--error-rate",
            "0.05",
            "--hang-rate",
            "0.01",
            "--fail-rate",
            "0.03",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--time-scale".into(), scale.to_string(), "--keys".into(), keys.join(",")])
        .collect(),
        gateway_env: HashMap::from([
            ("JEWELSHOT_LIMITS__SUBMITS_PER_MINUTE".into(), "60".into()),
            ("JEWELSHOT_LIMITS__MAX_QUEUED_PER_USER".into(), "100".into()),
            ("JEWELSHOT_JOBS__DEFAULT_GENERATION_SECS".into(), format!("{:.2}", 32.5 * scale)),
            ("JEWELSHOT_QUEUE__SNAPSHOTS__FINAL_TTL_SECS".into(), final_ttl.to_string()),
            ("RUST_LOG".into(), "warn".into()),
        ]),
        worker: WorkerTweak::new(move |c| {
            c.fal.client.keys = pool.clone();
            c.worker.concurrency = 10;
            c.fal.client.poll_interval_ms = (1000.0 * scale).max(50.0) as u64;
            c.database.max_connections = 8;
            c.queue.snapshots.final_ttl_secs = final_ttl;
        }),
        worker_log: Some("warn".into()),
        own_redis: true,
        ..StackOptions::default()
    };
    let mut stack = Stack::start(opts).await?;
    let k6_users = K6Users::create(&stack, vus, "soak").await?;
    for _ in 0..WORKERS {
        stack.start_worker()?;
    }

    let mut procs: Vec<(String, u32)> =
        vec![("gateway".into(), stack.gateway.pid()), ("emulator".into(), stack.emulator.pid())];
    procs.extend(stack.workers.iter().enumerate().map(|(i, w)| (format!("worker-{i}"), w.pid())));
    // Each worker's live heap as jemalloc counts it (`jewelshot_allocator_bytes`), beside its RSS:
    // shown, not judged — it tells a heap that grows from pages the allocator keeps.
    let heaps: Vec<(String, String)> = stack
        .workers
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.url.clone().map(|u| (format!("worker-{i}"), u)))
        .collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let redis = redis::Client::open(stack.redis_url())?;
    let mut redis = redis::aio::ConnectionManager::new(redis).await?;
    let pg = stack.db.client().await?;

    println!(
        "soak: {minutes} min, {vus} users against {} (upstream time scale {scale}, faults: 5 % submit 500s, 1 % hangs, 3 % failed generations); a sample every {every} s",
        stack.gateway_url()
    );
    let mut run = k6_users
        .k6(&stack, "soak.js")
        .env("VUS", vus.to_string())
        .env("DURATION_SECS", ((minutes * 60.0) as u64).to_string())
        .spawn()
        .with_context(|| format!("running {} (`just soak` installs it)", k6_path().display()))?;

    let start = tokio::time::Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    // Which worker held the reconciler's lease at each sample (it does periodic work the other
    // does not): a growth seen only in the holder points at that work.
    let lease_key = format!("{}:reconciler", stack.queue_name);
    let mut lease_held: BTreeMap<String, u32> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    let k6_status = loop {
        tokio::select! {
            status = run.wait() => break status?,
            _ = tick.tick() => {
                let t = start.elapsed().as_secs_f64() / 60.0;
                if t > minutes + 0.01 {
                    // The users are finishing their last jobs: the load is over.
                    continue;
                }
                let mut row = BTreeMap::new();
                for (name, pid) in &procs {
                    if let Some((rss, fds)) = process_sample(*pid) {
                        row.insert(format!("{name} RSS MiB"), rss);
                        row.insert(format!("{name} fds"), fds);
                    }
                }
                for (name, url) in &heaps {
                    if let Some(bytes) = allocated_bytes(&http, url).await {
                        row.insert(format!("{name} heap MiB"), bytes / 1048576.0);
                    }
                }
                let info: String = redis::cmd("INFO").arg("memory").query_async(&mut redis).await.unwrap_or_default();
                if let Some(used) = info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse::<f64>().ok()) {
                    row.insert("redis used MiB".into(), used / 1048576.0);
                }
                let conns = pg
                    .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()", &[])
                    .await
                    .map(|r| r.get::<_, i64>(0) as f64);
                if let Ok(c) = conns {
                    row.insert("postgres connections".into(), c);
                }
                let holder: Option<String> = redis::cmd("GET").arg(&lease_key).query_async(&mut redis).await.unwrap_or_default();
                let holder = holder.as_deref().map_or_else(|| "none".to_owned(), lease_holder_name);
                *lease_held.entry(holder.clone()).or_default() += 1;
                eprintln!(
                    "[{t:5.1} min] {} · lease {holder}",
                    row.iter().map(|(k, v)| format!("{k} {v:.1}")).collect::<Vec<_>>().join(" · ")
                );
                samples.push((t, row));
            }
        }
    };

    // Every job final: k6's users waited for theirs; give the last retries a moment.
    let mut open = i64::MAX;
    for _ in 0..120 {
        open = pg.query_one("SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing')", &[]).await?.get(0);
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rows = pg.query("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status", &[]).await?;
    let by_status: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let stats = stack.emulator_stats().await?;
    let n = |f: &str| stats["total"][f].as_u64().unwrap_or(0);
    println!(
        "\njobs: {}; upstream (emulator): submitted {}, completed {}, 429s {}",
        by_status.iter().map(|(s, c)| format!("{s} {c}")).collect::<Vec<_>>().join(", "),
        n("submitted"),
        n("completed"),
        n("rejected"),
    );

    // For sizing (docs/scaling.md): what the record keeps per job.
    let bytes: i64 = pg
        .query_one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'",
            &[],
        )
        .await?
        .get(0);
    let jobs: i64 = by_status.iter().map(|(_, c)| c).sum();
    println!(
        "Postgres: {:.1} MiB in the tables with their indexes and TOAST, {:.0} bytes a job",
        bytes as f64 / 1048576.0,
        bytes as f64 / jobs.max(1) as f64
    );

    let growing = report(&samples, minutes);
    println!(
        "reconciler lease held at the samples: {}",
        lease_held.iter().map(|(w, n)| format!("{w} {n}")).collect::<Vec<_>>().join(", ")
    );
    let pass = k6_status.success() && open == 0 && growing.is_empty();
    println!("k6 thresholds (0 HTTP errors, no job lost): {}", if k6_status.success() { "met" } else { "NOT met" });
    println!("jobs still open after the load: {open}");
    if !growing.is_empty() {
        println!("growing: {}", growing.join(", "));
    }
    println!("{}", if pass { "PASS" } else { "FAIL" });
    drop(pg);
    stack.drop_database().await?;
    if !pass {
        bail!("soak failed");
    }
    Ok(())
}

/// Print the table and each series' trend over the last two thirds; the names that grow.
fn report(samples: &[Sample], minutes: f64) -> Vec<String> {
    let names: Vec<String> = samples
        .iter()
        .flat_map(|(_, r)| r.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    println!("\n{:>6}  {}", "min", names.iter().map(|n| format!("{n:>22}")).collect::<String>());
    for (t, row) in samples {
        let cells: String =
            names.iter().map(|n| row.get(n).map_or(format!("{:>22}", "-"), |v| format!("{v:>22.1}"))).collect();
        println!("{t:>6.1}  {cells}");
    }
    let from = minutes / 3.0;
    println!("\ntrend from minute {from:.0} (least squares): slope per minute (± its standard error, a day), rise over the span, allowed rise");
    let mut growing = Vec::new();
    for name in &names {
        let points: Vec<(f64, f64)> = samples.iter().filter_map(|(t, r)| r.get(name).map(|v| (*t, *v))).collect();
        // Counts move by whole units: two descriptors or connections are not a leak.
        let min_units = if name.ends_with("MiB") { 1.0 } else { 2.0 };
        // The emulator stands in for fal and keeps every result it made, as fal keeps them for
        // a while: its memory is shown, not judged. A worker's heap explains its RSS; the RSS
        // is what is judged.
        let judged = !name.starts_with("emulator") && !name.ends_with("heap MiB");
        match trend(&points, from, min_units) {
            Some(t) => {
                let verdict = match (t.grows(), judged) {
                    (_, false) => "(shown)",
                    (true, true) => "GROWS",
                    (false, true) => "flat",
                };
                println!(
                    "  {name:<26} {:>+9.3}/min (±{:.3}, {:>+8.1}/day)  rise {:>+8.2}  allowed {:>7.2}  mean {:>8.1}  {verdict}",
                    t.slope,
                    t.slope_se,
                    t.per_day(),
                    t.rise,
                    t.tolerance,
                    t.mean
                );
                if t.grows() && judged {
                    growing.push(name.clone());
                }
            }
            None => println!("  {name:<26} too few samples"),
        }
    }
    growing
}

/// `jewelshot_allocator_bytes{state="allocated"}` from a metrics endpoint.
async fn allocated_bytes(http: &reqwest::Client, url: &str) -> Option<f64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("jewelshot_allocator_bytes{state=\"allocated\"}"))
        .and_then(|v| v.trim().parse().ok())
}

/// The stack names its workers `test-worker-<n>-<ulid>`; the table calls them `worker-<n>`.
fn lease_holder_name(id: &str) -> String {
    id.strip_prefix("test-worker-")
        .and_then(|rest| rest.split('-').next())
        .map_or_else(|| id.to_owned(), |n| format!("worker-{n}"))
}
