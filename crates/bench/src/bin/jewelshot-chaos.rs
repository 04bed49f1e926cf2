//! `just chaos`: the fault-injection run. 300 jobs, 4 workers; every few seconds a random worker
//! is SIGKILLed and a new one started; Redis (which keeps nothing on disk) is restarted once and
//! PostgreSQL is crash-restarted once — both servers of the run's own; the emulator fails 10% of
//! submits with 5xx and lets 5% of submits hang. At the end it prints a table and checks:
//! every job `complete` or `failed` with a code (none lost), no job with two gallery images, and
//! no job submitted to fal more often than its generate step ran (a generate step that had
//! succeeded is never submitted again).
//!
//! Redis is restarted when a quarter of the jobs are final, PostgreSQL when half are.
//!
//! `jewelshot-chaos [jobs] [kill-every-secs]` — defaults: 300, 4.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use jewelshot_testkit::{PgServer, Stack, StackOptions, WorkerTweak};
use serde_json::json;

const WORKERS: usize = 4;

async fn pg(url: &str) -> Option<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(conn);
    Some(client)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let jobs: usize = args.first().and_then(|v| v.parse().ok()).unwrap_or(300);
    let kill_every = Duration::from_secs(args.get(1).and_then(|v| v.parse().ok()).unwrap_or(4));
    let logs = std::env::temp_dir().join(format!("jewelshot-chaos-{}", ulid::Ulid::generate()));
    std::fs::create_dir_all(&logs)?;
    let mut postgres = PgServer::start(&logs).await.context("starting a PostgreSQL of the run's own")?;
    let opts = StackOptions {
        own_redis: true,
        admin_database_url: Some(postgres.admin_url.clone()),
        worker: WorkerTweak::new(|c| {
            c.worker.concurrency = 4;
            // A hung submit is given up after 3 s (and retried); a stuck generation after 20 s.
            c.fal.client.request_timeout_ms = 3000;
            c.fal.client.generation_timeout_secs = 20;
            c.database.max_connections = 6;
        }),
        worker_log: Some("warn".into()),
        ..StackOptions::emulator(&[
            "--latency-ms",
            "1000-3000",
            "--max-per-minute",
            "0",
            "--max-concurrent",
            "0",
            "--error-rate",
            "0.1",
            "--hang-rate",
            "0.05",
            "--seed",
            "7",
        ])
    };
    let mut stack = Stack::start(opts).await?;
    let mut keys = Vec::new();
    for i in 0..3 {
        keys.push(stack.user(&format!("chaos{i}@example.com")).await?.1);
    }
    let input = stack.input_photo_url(&keys[0]).await?;
    let mut prompts = HashMap::new();
    for i in 0..jobs {
        let prompt = format!("chaos #{i}");
        let (status, body) =
            stack.submit(&keys[i % keys.len()], &json!({ "image_url": input, "prompt": prompt })).await?;
        if status != 202 {
            bail!("submit answered {status}: {body}");
        }
        prompts.insert(body["jobId"].as_str().context("jobId")?.to_owned(), prompt);
    }
    println!("{jobs} jobs queued; starting {WORKERS} workers and the faults (logs: {})", logs.display());

    let started = Instant::now();
    let mut alive: Vec<usize> = (0..WORKERS).map(|_| stack.start_worker()).collect::<Result<_, _>>()?;
    let (mut kills, mut redis_at, mut pg_at, mut pg_down) = (0u32, None, None, Duration::ZERO);
    let mut next_kill = Instant::now() + kill_every;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let deadline = started + Duration::from_secs(900);
    let mut last_report = Instant::now();
    let mut done = 0usize;
    loop {
        let now = Instant::now();
        if now >= next_kill {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let victim = (x as usize) % alive.len();
            stack.workers[alive[victim]].sigkill();
            alive[victim] = stack.start_worker()?;
            kills += 1;
            next_kill = now + kill_every;
        }
        let t = started.elapsed();
        // The servers go down while work is in full flow: Redis at a quarter done, PostgreSQL at half.
        if redis_at.is_none() && done >= jobs / 4 {
            stack.redis.as_mut().context("own redis")?.restart()?;
            redis_at = Some(t);
            println!("  {:>5.1} s  Redis restarted (empty)", t.as_secs_f64());
        }
        if pg_at.is_none() && done >= jobs / 2 {
            pg_down = postgres.restart().await?;
            pg_at = Some(t);
            println!("  {:>5.1} s  PostgreSQL crash-restarted (down {:.1} s)", t.as_secs_f64(), pg_down.as_secs_f64());
        }
        if let Some(client) = pg(&stack.db.direct_url).await {
            if let Ok(row) = client
                .query_one("SELECT count(*) FILTER (WHERE status IN ('complete', 'failed', 'canceled')) FROM jobs", &[])
                .await
            {
                done = row.get::<_, i64>(0) as usize;
                if last_report.elapsed() > Duration::from_secs(10) {
                    println!("  {:>5.1} s  {done} of {jobs} final, {kills} workers killed", t.as_secs_f64());
                    last_report = Instant::now();
                }
                if done >= jobs {
                    break;
                }
            }
        }
        if Instant::now() > deadline {
            println!("deadline: not every job is final after 15 minutes");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = started.elapsed();

    let client = pg(&stack.db.direct_url).await.context("postgres after the run")?;
    let mut by_state: BTreeMap<String, i64> = BTreeMap::new();
    for r in
        client.query("SELECT status || coalesce(' ' || error_code, ''), count(*) FROM jobs GROUP BY 1", &[]).await?
    {
        by_state.insert(r.get(0), r.get(1));
    }
    let failed_without_code: i64 =
        client.query_one("SELECT count(*) FROM jobs WHERE status = 'failed' AND error_code IS NULL", &[]).await?.get(0);
    let lost: i64 =
        client.query_one("SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing')", &[]).await?.get(0);
    let doubled: i64 = client
        .query_one(
            "SELECT count(*) FROM (
                SELECT job_id FROM (SELECT job_id FROM gallery_images WHERE job_id IS NOT NULL
                                    UNION ALL SELECT id FROM jobs WHERE gallery_entry) entries
                 GROUP BY job_id HAVING count(*) > 1) t",
            &[],
        )
        .await?
        .get(0);
    let attempts: HashMap<String, i32> = client
        .query("SELECT job_id, attempts FROM job_steps WHERE step = 'generate-image'", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let recoveries: i64 =
        client.query_one("SELECT coalesce(sum(greatest(attempts - 1, 0)), 0)::bigint FROM jobs", &[]).await?.get(0);
    let stats = stack.emulator_stats().await?;
    let (mut paid_twice, mut resubmitted) = (0, 0);
    for (job, prompt) in &prompts {
        let submits = stats["submits_by_prompt"][prompt].as_i64().unwrap_or(0);
        let ran = i64::from(attempts.get(job).copied().unwrap_or(0));
        if submits > ran {
            paid_twice += 1;
        }
        if submits > 1 {
            resubmitted += 1;
        }
    }
    let total = &stats["total"];

    println!("\nchaos run: {jobs} jobs, {WORKERS} workers, {took:.1?}");
    println!("| fault | count |");
    println!("|---|---|");
    println!("| workers SIGKILLed (a new one started each time) | {kills} |");
    println!("| Redis restarts (empty) | {} |", u8::from(redis_at.is_some()));
    println!("| PostgreSQL crash-restarts | {} (down {:.1} s) |", u8::from(pg_at.is_some()), pg_down.as_secs_f64());
    println!("| fal 5xx injected | {} |", total["injected_errors"]);
    println!("| fal submits hung (the worker timed out after 3 s and retried) | {} |", total["injected_hangs"]);
    println!("\n| outcome | jobs |");
    println!("|---|---|");
    for (state, n) in &by_state {
        println!("| {state} | {n} |");
    }
    println!("| lost (still queued or processing) | {lost} |");
    println!("| failed without an error code | {failed_without_code} |");
    println!("| with two gallery images | {doubled} |");
    println!("| submitted to fal more often than their generate step ran | {paid_twice} |");
    println!(
        "| submitted to fal more than once (hangs, 5xx after submit, crashes before the checkpoint) | {resubmitted} |"
    );
    println!("| attempts beyond the first (retries and crash recoveries) | {recoveries} |");
    let pass = lost == 0 && failed_without_code == 0 && doubled == 0 && paid_twice == 0;
    println!("\n{}", if pass { "PASS" } else { "FAIL" });
    if !pass {
        println!("{}", stack.worker_logs());
        std::process::exit(1);
    }
    Ok(())
}
