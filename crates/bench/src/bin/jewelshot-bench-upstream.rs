//! `just bench-upstream`: how well the fleet uses fal's capacity. Worker processes share a pool
//! of fal accounts through the Redis limiter; the emulator enforces each account's limits and
//! counts what it refused. Prints what the emulator saw per account, the completed throughput
//! against the pool's quota, slot use, and how well submit-time positions predicted the order.
//!
//! `jewelshot-bench-upstream [reject|queue] [jobs] [time-scale]` — defaults: reject, 300, 0.2.
//! Reject: 3 accounts × 15/min, no concurrency cap, 4 workers × 8. Queue: the same with 4 in
//! progress per account.

use std::{collections::HashMap, time::Duration};

use anyhow::{bail, Context};
use jewelshot_ratelimit::{Limiter, LimiterConfig, PoolKey};
use jewelshot_testkit::{Stack, StackOptions, WorkerTweak};
use serde_json::{json, Value};

const KEYS: usize = 3;
const PER_MINUTE: u32 = 15;
const WORKERS: usize = 4;
const CONCURRENCY: usize = 8;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_else(|| "reject".into());
    let jobs: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(300);
    let scale: f64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(0.2);
    let max_concurrent: u32 = match mode.as_str() {
        "reject" => 0,
        "queue" => 4,
        other => bail!("mode is reject or queue, not {other:?}"),
    };
    let window = Duration::from_secs_f64(60.0 * scale);
    let (keys, pool) = jewelshot_bench::fal_pool("bench-key", KEYS);
    let opts = StackOptions {
        emulator_args: vec![
            format!("--mode={mode}"),
            "--max-per-minute".into(),
            PER_MINUTE.to_string(),
            "--max-concurrent".into(),
            max_concurrent.to_string(),
            "--time-scale".into(),
            scale.to_string(),
            "--latency-ms".into(),
            "20000-45000".into(),
            "--keys".into(),
            keys.join(","),
        ],
        worker: WorkerTweak::new(move |c| {
            c.fal.client.keys = pool.clone();
            c.worker.concurrency = CONCURRENCY;
            c.fal.client.poll_interval_ms = 100;
            c.database.max_connections = 8;
        }),
        worker_log: Some("warn".into()),
        // The operator's prior for one generation (the emulator's mean latency, time-scaled):
        // ETAs given before any job has finished use it.
        gateway_env: HashMap::from([(
            "JEWELSHOT_JOBS__DEFAULT_GENERATION_SECS".into(),
            format!("{:.2}", 32.5 * scale),
        )]),
        ..StackOptions::default()
    };
    let mut stack = Stack::start(opts).await?;
    // A fleet that has run before has registered its accounts' limits, which the gateway turns
    // into ETAs; do it here, since the workers start only after the backlog is queued.
    let redis = redis::Client::open(jewelshot_testkit::redis_url().as_str())?;
    let mut lcfg = LimiterConfig::new(jewelshot_ratelimit::LineSettings::default().prefix(&stack.queue_name));
    lcfg.window = window;
    let registry: Vec<PoolKey> =
        (1..=KEYS).map(|i| PoolKey { id: format!("acct{i}"), max_per_minute: PER_MINUTE, max_concurrent }).collect();
    Limiter::new(redis.get_connection_manager().await?, lcfg, registry).register().await?;
    let (_, key, _) = stack.user("bench@example.com").await?;
    let input = stack.input_photo_url(&key).await?;

    // The backlog first, so every worker starts with a full queue.
    let mut ids = Vec::with_capacity(jobs);
    let mut positions = HashMap::new();
    let mut etas = HashMap::new();
    for i in 0..jobs {
        let (status, body) = stack.submit(&key, &json!({ "image_url": input, "prompt": format!("bench {i}") })).await?;
        if status != 202 {
            bail!("submit answered {status}: {body}");
        }
        let id = body["jobId"].as_str().context("jobId")?.to_owned();
        positions.insert(id.clone(), body["queuePosition"].as_i64().unwrap_or(0));
        etas.insert(id.clone(), body["etaSeconds"].as_f64().unwrap_or(0.0));
        ids.push(id);
    }
    for _ in 0..WORKERS {
        stack.start_worker()?;
    }
    println!(
        "{jobs} jobs, {WORKERS} workers × {CONCURRENCY}, {KEYS} accounts × {PER_MINUTE}/min{}, emulator in {mode} mode, \
         latency 20-45 s, time scale {scale} (window {:.1} s)",
        if max_concurrent > 0 { format!(" and {max_concurrent} at once") } else { String::new() },
        window.as_secs_f64()
    );

    let (client, conn) = tokio_postgres::connect(&stack.db.direct_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // Worst case: every job alone in a window, plus slack.
    let deadline = std::time::Instant::now() + window * (jobs as u32 / (KEYS as u32 * PER_MINUTE) + 4) * 2;
    loop {
        let row = client
            .query_one("SELECT count(*) FILTER (WHERE status IN ('complete','failed','canceled')) FROM jobs", &[])
            .await?;
        let done: i64 = row.get(0);
        if done as usize >= jobs {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("only {done} of {jobs} jobs finished in time\n{}", stack.worker_logs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let statuses = client.query("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status", &[]).await?;
    let statuses: Vec<String> =
        statuses.iter().map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i64>(1))).collect();
    let span = client
        .query_one(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM job_steps \
             WHERE step = 'generate-image'",
            &[],
        )
        .await?;
    let busy: f64 = span.get(0);
    // Every start and completion, in seconds from the first start.
    let times = client
        .query(
            "SELECT extract(epoch FROM started_at - min(started_at) OVER ())::float8, \
                    extract(epoch FROM finished_at - min(started_at) OVER ())::float8 \
               FROM job_steps WHERE step = 'generate-image' AND finished_at IS NOT NULL",
            &[],
        )
        .await?;
    let mut starts: Vec<f64> = times.iter().map(|r| r.get(0)).collect();
    let mut ends: Vec<f64> = times.iter().map(|r| r.get(1)).collect();
    starts.sort_by(f64::total_cmp);
    ends.sort_by(f64::total_cmp);
    // Dispatch order: the limiter numbers every start it grants, fleet-wide.
    let order = client
        .query(
            "SELECT job_id FROM job_steps WHERE step = 'generate-image' \
             ORDER BY (output->>'dispatch')::bigint NULLS LAST, started_at",
            &[],
        )
        .await?;
    let displacement: Vec<i64> = order
        .iter()
        .enumerate()
        .map(|(rank, r)| {
            let reported = positions.get(&r.get::<_, String>(0)).copied().unwrap_or(0);
            (reported - (rank as i64 + 1)).abs()
        })
        .collect();
    let matched = displacement.iter().filter(|d| **d == 0).count();
    let worst = displacement.iter().max().copied().unwrap_or(0);

    // ETA given at submit against the real wait from submit to completion.
    let waits = client
        .query(
            "SELECT id, extract(epoch FROM finished_at - created_at)::float8 FROM jobs WHERE status = 'complete'",
            &[],
        )
        .await?;
    let mut eta_err: Vec<f64> = waits
        .iter()
        .filter_map(|r| {
            let real: f64 = r.get(1);
            let eta = *etas.get(&r.get::<_, String>(0))?;
            (real > 0.0).then(|| (eta - real) / real)
        })
        .collect();
    eta_err.sort_by(f64::total_cmp);
    let within = eta_err.iter().filter(|e| e.abs() <= 0.30).count();
    let median_err = eta_err.get(eta_err.len() / 2).copied().unwrap_or(0.0);

    // Retention: the workers' vacuum (every second here) forgets finished tasks.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (redis_bytes, redis_keys) = jewelshot_bench::redis_footprint(&stack.queue_name).await?;

    let stats: Value = stack.emulator_stats().await?;
    println!("\nper account (as the emulator saw it):");
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>14} {:>10}",
        "key", "submitted", "completed", "429s", "max in prog.", "busy s"
    );
    let (mut rejected, mut busy_ms, mut over_limit) = (0u64, 0u64, false);
    for k in &keys {
        let s = &stats["keys"][k];
        let n = |f: &str| s[f].as_u64().unwrap_or(0);
        rejected += n("rejected");
        busy_ms += n("busy_ms");
        over_limit |= max_concurrent > 0 && n("max_concurrent") > u64::from(max_concurrent);
        println!(
            "{:<14} {:>9} {:>9} {:>9} {:>14} {:>10.1}",
            k,
            n("submitted"),
            n("completed"),
            n("rejected"),
            n("max_concurrent"),
            n("busy_ms") as f64 / 1000.0
        );
    }
    let quota_per_window = (KEYS as u32 * PER_MINUTE) as f64;
    let w = window.as_secs_f64();
    let start_use = sliding_use(&starts, w, quota_per_window);
    let done_use = sliding_use(&ends, w, quota_per_window);
    let throughput = jobs as f64 / busy * window.as_secs_f64();
    println!("\njobs: {}", statuses.join(", "));
    println!(
        "busy period {:.1} s = {:.2} windows; completed {:.1} per window against a quota of {quota_per_window} \
         ({:.1}%)",
        busy,
        busy / window.as_secs_f64(),
        throughput,
        100.0 * throughput / quota_per_window
    );
    let slot_use = if max_concurrent > 0 {
        let s = busy_ms as f64 / 1000.0 / (busy * KEYS as f64 * f64::from(max_concurrent));
        println!("slot use: {:.1}% of {} slots over the busy period", 100.0 * s, KEYS as u32 * max_concurrent);
        Some(s)
    } else {
        None
    };
    println!(
        "dispatch order: {matched} of {jobs} jobs ({:.1}%) started exactly at the position they were given at \
         submit; the farthest was {worst} places off",
        100.0 * matched as f64 / jobs as f64
    );
    println!(
        "ETA at submit vs the real wait: {within} of {} ({:.1}%) within ±30%; median error {:+.1}%, \
         range {:+.1}% … {:+.1}%",
        eta_err.len(),
        100.0 * within as f64 / eta_err.len().max(1) as f64,
        100.0 * median_err,
        100.0 * eta_err.first().copied().unwrap_or(0.0),
        100.0 * eta_err.last().copied().unwrap_or(0.0)
    );
    let all_complete = statuses.len() == 1 && statuses[0].starts_with("complete");
    let mut pass = all_complete && rejected == 0 && !over_limit;
    println!(
        "Redis after {jobs} finished jobs: {redis_keys} keys, {:.1} KiB for the queue, limiter and limits",
        redis_bytes as f64 / 1024.0
    );
    println!("\n429s seen by the emulator: {rejected} (goal 0)");
    if max_concurrent > 0 {
        println!("in progress above the limit: {} (goal never)", if over_limit { "yes" } else { "never" });
    }
    if let (Some(st), Some(dn)) = (start_use, done_use) {
        println!(
            "quota use while jobs waited (every full window between the first and the last event): \
             starts {:.1}%, completions {:.1}%",
            100.0 * st,
            100.0 * dn
        );
    }
    match slot_use {
        Some(s) => {
            println!("slot use {:.1}% (goal ≥ 95%)", 100.0 * s);
            pass &= s >= 0.95;
        }
        None => {
            let share = done_use.unwrap_or(0.0);
            println!("completed throughput {:.1}% of quota over full windows (goal ≥ 97%)", 100.0 * share);
            pass &= share >= 0.97;
        }
    }
    println!("{}", if pass { "PASS" } else { "FAIL" });
    Ok(())
}

/// Mean events per window over every window [t, t + w) that fits between the first and the last
/// event (t stepped by w / 100), as a share of `quota`. None when the run is shorter than a window.
fn sliding_use(sorted: &[f64], w: f64, quota: f64) -> Option<f64> {
    let (first, last) = (*sorted.first()?, *sorted.last()?);
    if last - first < w {
        return None;
    }
    let steps = (((last - first - w) / (w / 100.0)).floor() as usize).max(1);
    let mut total = 0.0;
    for i in 0..=steps {
        let t = first + (last - first - w) * i as f64 / steps as f64;
        let lo = sorted.partition_point(|x| *x < t);
        let hi = sorted.partition_point(|x| *x < t + w);
        total += (hi - lo) as f64;
    }
    Some(total / (steps + 1) as f64 / quota)
}
