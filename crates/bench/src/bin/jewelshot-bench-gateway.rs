//! `just bench-gateway`: what one gateway does per core (issue G), in one run on this machine.
//!
//! The release gateway over a fresh database, limits off, no workers; `wrk` drives it. Printed:
//! - Postgres's own ceiling for the submit's single-row INSERT (`pgbench -M prepared`, 50
//!   clients), measured before and after the submits — the ratio is the figure that travels
//!   between machines;
//! - submits/s and p50/p99 at 50 connections, and Postgres transactions per submit;
//! - the machine's CPU per submit against per `pgbench` insert (`/proc/stat`), and the share of
//!   each phase the host stole: on a noisy host the rates swing, the CPU per operation much less;
//! - polls/s and p50/p99 at 50, 200 and 1,000 connections over open jobs, and Postgres
//!   transactions per poll — then the same polls through a gateway with `poll_snapshots` off
//!   (every poll reads Postgres: the "before");
//! - cache hits/s and p50/p99 at 50 connections through a gateway with the result cache on, every
//!   submit naming an upload whose result is cached (issue I: the hit path must cost no more than
//!   a plain submit), and Postgres transactions per hit;
//! - the gateway's RSS after each phase, 11 s after the last (jemalloc hands a burst's pages back
//!   within its 10-s decay), and its peak.
//!
//! Transactions are Postgres's own counters (`pg_stat_database`): every statement outside a
//! transaction is one. Goals (issue G): submits ≥ 60 % of the ceiling with p99 ≤ 15 ms; polls ≥
//! 15,000/s at 200 connections with p99 ≤ 20 ms; 0 transactions per poll of an open job; RSS ≤
//! 64 MB.

use std::{collections::HashMap, path::Path, process::Command};

use anyhow::{bail, Context};
use jewelshot_bench::{rss_mb, MachineCpu};
use jewelshot_testkit::{Stack, StackOptions};

/// One `wrk` run.
#[derive(Debug, Default, Clone)]
struct Load {
    rps: f64,
    requests: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// Non-2xx answers and socket errors.
    errors: u64,
}

fn ms(text: &str) -> Option<f64> {
    let (num, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

/// Read wrk's `--latency` report.
fn parse_wrk(out: &str) -> anyhow::Result<Load> {
    let mut load = Load::default();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => load.p50_ms = ms(v).context("p50")?,
            ["99%", v] => load.p99_ms = ms(v).context("p99")?,
            ["Requests/sec:", v] => load.rps = v.parse()?,
            [n, "requests", "in", ..] => load.requests = n.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                load.errors += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>()
            }
            _ => {}
        }
        if let Some(n) = line.strip_prefix("BENCH status_errors=") {
            load.errors += n.parse::<u64>()?;
        }
    }
    if load.requests == 0 {
        bail!("wrk reported no requests:\n{out}");
    }
    Ok(load)
}

fn wrk(url: &str, script: &Path, connections: u32, secs: u64, env: &[(&str, &str)]) -> anyhow::Result<Load> {
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{secs}s"), "--timeout", "10s", "--latency", "-s"])
        .arg(script)
        .arg(url)
        .envs(env.iter().copied())
        .output()
        .context("running wrk (Debian package `wrk`; `just bench-gateway` installs it)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// What a phase cost the whole machine: CPU µs per operation, and the share of the time the
/// host stole (a noisy neighbour: rates measured then are low, the CPU per operation less so).
#[derive(Debug, Default, Clone, Copy)]
struct Cost {
    us_per_op: f64,
    steal: f64,
}

/// Run `phase`, which reports how many operations it did, and measure its [`Cost`].
fn costed<T>(phase: impl FnOnce() -> anyhow::Result<(T, f64)>) -> anyhow::Result<(T, Cost)> {
    let before = MachineCpu::now();
    let (out, ops) = phase()?;
    let (busy, steal) = MachineCpu::now().since(&before);
    Ok((out, Cost { us_per_op: busy * 1e6 / ops.max(1.0), steal }))
}

/// `pgbench -M prepared` with the submit's INSERT: inserts per second, and its [`Cost`].
fn pgbench(url: &str, script: &Path, user: &str, secs: u64) -> anyhow::Result<(f64, Cost)> {
    costed(|| pgbench_tps(url, script, user, secs).map(|tps| (tps, tps * secs as f64)))
}

fn pgbench_tps(url: &str, script: &Path, user: &str, secs: u64) -> anyhow::Result<f64> {
    let out = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", "50", "-j", "2", "-T", &secs.to_string(), "-D"])
        .arg(format!("user={user}"))
        .arg("-f")
        .arg(script)
        .arg(url)
        .output()
        .context("running pgbench (Debian package postgresql-contrib / postgresql-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .with_context(|| format!("no tps in pgbench's report:\n{text}"))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (submit_lua, poll_lua, insert_sql) = (
        root.join("deploy/bench/wrk/submit.lua"),
        root.join("deploy/bench/wrk/poll.lua"),
        root.join("deploy/bench/pgbench-insert.sql"),
    );
    let mut opts = StackOptions::default();
    opts.gateway_env.insert("RUST_LOG".into(), std::env::var("BENCH_GATEWAY_LOG").unwrap_or_else(|_| "info".into()));
    // The gateway as it ships (the test stack's small pool is for tests on a shared server).
    let pool = std::env::var("BENCH_DB_POOL")
        .unwrap_or_else(|_| jewelshot_db::DbConfig::default().max_connections.to_string());
    opts.gateway_env.insert("JEWELSHOT_DATABASE__MAX_CONNECTIONS".into(), pool);
    let mut stack = Stack::start(opts).await?;
    let pg_reader = stack
        .start_gateway_with(&HashMap::from([("JEWELSHOT_GATEWAY__POLL_SNAPSHOTS".to_owned(), "false".to_owned())]))?;
    let (user, key, _) = stack.user("bench@example.com").await?;
    let base = stack.gateway_url().to_owned();
    let env = [("BENCH_KEY", key.as_str())];
    println!("gateway {base} (release, {} cores), database {}", num_cpus(), stack.db.url);

    let client = stack.db.client().await?;
    client.batch_execute("CREATE SEQUENCE IF NOT EXISTS pgbench_job_ids").await?;
    // Warm up (connections, the credential cache, the statement caches).
    wrk(&format!("{base}/api/ai/edit"), &submit_lua, 50, 2, &env)?;

    let (ceiling_before, insert_before) = pgbench(&stack.db.direct_url, &insert_sql, &user, secs)?;
    let tx0 = stack.db.transactions().await?;
    let (submits, submit_cost) = costed(|| {
        let load = wrk(&format!("{base}/api/ai/edit"), &submit_lua, 50, secs, &env)?;
        let n = load.requests as f64;
        Ok((load, n))
    })?;
    let tx1 = stack.db.transactions().await?;
    let (ceiling_after, insert_after) = pgbench(&stack.db.direct_url, &insert_sql, &user, secs)?;
    let ceiling = (ceiling_before + ceiling_after) / 2.0;
    let insert_us = (insert_before.us_per_op + insert_after.us_per_op) / 2.0;
    let cpu_line = format!(
        "machine CPU per operation: submit {:.0} µs, pgbench insert {:.0} µs ({:.0}, {:.0}) → {:.1} % (steal: submits {:.1} %, pgbench {:.1} / {:.1} %)",
        submit_cost.us_per_op,
        insert_us,
        insert_before.us_per_op,
        insert_after.us_per_op,
        insert_us / submit_cost.us_per_op.max(f64::MIN_POSITIVE) * 100.0,
        submit_cost.steal * 100.0,
        insert_before.steal * 100.0,
        insert_after.steal * 100.0
    );
    let per_submit = (tx1 - tx0) as f64 / submits.requests as f64;
    let hits = hits(&mut stack, &user, &key, secs, &root.join("deploy/bench/wrk/submit-hit.lua")).await?;
    if std::env::var("BENCH_ONLY").as_deref() == Ok("submits") {
        print_hits(&submits, &hits);
        println!(
            "ceiling {ceiling:.0}/s ({ceiling_before:.0}, {ceiling_after:.0}); submits {:.0}/s = {:.1} %, p50 {:.2} ms, p99 {:.2} ms, errors {}",
            submits.rps,
            submits.rps / ceiling * 100.0,
            submits.p50_ms,
            submits.p99_ms,
            submits.errors
        );
        println!("{cpu_line}");
        drop(client);
        return stack.drop_database().await;
    }

    // Polls over 1,000 of the open jobs the submits made.
    let ids: Vec<String> = client
        .query(
            "SELECT id FROM jobs WHERE status = 'queued' AND id NOT LIKE 'pgbench-%' ORDER BY random() LIMIT 1000",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ids_file = stack.logs.join("poll-ids.txt");
    std::fs::write(&ids_file, ids.join("\n"))?;
    let ids_path = ids_file.to_string_lossy().into_owned();
    let poll_env = [("BENCH_KEY", key.as_str()), ("BENCH_IDS", ids_path.as_str())];
    let poll_url = format!("{base}/api/jobs/x");
    wrk(&poll_url, &poll_lua, 50, 2, &poll_env)?;
    let tx2 = stack.db.transactions().await?;
    let mut polls = Vec::new();
    let mut rss_by_phase = vec![("after the submits", rss_mb(stack.gateway.pid()).0)];
    for c in [50, 200, 1000] {
        polls.push((c, wrk(&poll_url, &poll_lua, c, secs, &poll_env)?));
        rss_by_phase
            .push((if c == 1000 { "after 1,000 connections" } else { "after polls" }, rss_mb(stack.gateway.pid()).0));
    }
    // (The counts' 11-s settling wait doubles as the idle time after the load.)
    let tx3 = stack.db.transactions().await?;
    rss_by_phase.push(("11 s later", rss_mb(stack.gateway.pid()).0));
    let polled: u64 = polls.iter().map(|(_, l)| l.requests).sum();
    let per_poll = (tx3 - tx2) as f64 / polled as f64;
    // After the load: once the allocator has handed the burst's pages back (its decay is 10 s).
    let (rss, peak) = rss_mb(stack.gateway.pid());

    // The same polls answered from Postgres (the reference the snapshots are measured against).
    let pg_url = format!("{pg_reader}/api/jobs/x");
    wrk(&pg_url, &poll_lua, 50, 2, &poll_env)?;
    let tx4 = stack.db.transactions().await?;
    let from_pg = wrk(&pg_url, &poll_lua, 50, secs, &poll_env)?;
    let tx5 = stack.db.transactions().await?;
    let per_pg_poll = (tx5 - tx4) as f64 / from_pg.requests as f64;

    let ratio = submits.rps / ceiling;
    println!();
    println!("Postgres single-INSERT ceiling (pgbench -M prepared, 50 clients): {ceiling:.0}/s (before {ceiling_before:.0}, after {ceiling_after:.0})");
    println!(
        "submits @50:    {:>8.0}/s = {:>5.1} % of the ceiling   p50 {:>6.2} ms   p99 {:>6.2} ms   errors {}   Postgres transactions/submit {:.2}",
        submits.rps,
        ratio * 100.0,
        submits.p50_ms,
        submits.p99_ms,
        submits.errors,
        per_submit
    );
    println!("  {cpu_line}");
    for (c, l) in &polls {
        println!(
            "polls @{c:<5}    {:>8.0}/s                           p50 {:>6.2} ms   p99 {:>6.2} ms   errors {}",
            l.rps, l.p50_ms, l.p99_ms, l.errors
        );
    }
    print_hits(&submits, &hits);
    println!("Postgres transactions per poll (open jobs, snapshots in Redis): {per_poll:.4}");
    println!(
        "polls @50 from Postgres (poll_snapshots off): {:.0}/s p99 {:.2} ms, {per_pg_poll:.2} transactions/poll → {:.1} % fewer with snapshots",
        from_pg.rps,
        from_pg.p99_ms,
        (1.0 - per_poll / per_pg_poll.max(f64::MIN_POSITIVE)) * 100.0
    );
    println!("gateway RSS 11 s after the load: {rss:.1} MB (peak during it {peak:.1} MB)");
    let phases: Vec<String> = rss_by_phase.iter().map(|(what, mb)| format!("{what} {mb:.1}")).collect();
    println!("  RSS by phase (MB): {}", phases.join(", "));
    println!();
    let p200 = polls.iter().find(|(c, _)| *c == 200).map(|(_, l)| l.clone()).unwrap_or_default();
    println!("G acceptance (this run):");
    println!(
        "  1. submits ≥ 60 % of the ceiling, p99 ≤ 15 ms: {:.1} %, {:.2} ms — {}",
        ratio * 100.0,
        submits.p99_ms,
        verdict(ratio >= 0.6 && submits.p99_ms <= 15.0)
    );
    println!(
        "  2. polls ≥ 15,000/s at 200 connections, p99 ≤ 20 ms, 0 statements per poll: {:.0}/s, {:.2} ms, {per_poll:.4} — {}",
        p200.rps,
        p200.p99_ms,
        verdict(p200.rps >= 15_000.0 && p200.p99_ms <= 20.0 && per_poll < 0.001)
    );
    println!("  4. RSS ≤ 64 MB: {rss:.1} MB — {}", verdict(rss <= 64.0));
    println!(
        "I acceptance 2 (this run): a cache hit costs no more than a plain submit: {:.0}/s vs {:.0}/s, p99 {:.2} vs {:.2} ms — {}",
        hits.0.rps,
        submits.rps,
        hits.0.p99_ms,
        submits.p99_ms,
        verdict(hits.0.rps >= submits.rps * 0.95 && hits.0.p99_ms <= submits.p99_ms * 1.05)
    );
    let errors: u64 = submits.errors + polls.iter().map(|(_, l)| l.errors).sum::<u64>();
    if errors > 0 {
        println!("  errors: {errors} non-2xx answers or socket errors");
    }
    drop(client);
    stack.drop_database().await?;
    Ok(())
}

/// Cache hits through a gateway with the cache on: one upload, a stored result for it (the
/// entry written here, as a finished job would leave it: the bench runs no worker), then every
/// submit of that upload and prompt is a hit. The load and Postgres transactions per hit.
async fn hits(stack: &mut Stack, user: &str, key: &str, secs: u64, script: &Path) -> anyhow::Result<(Load, f64)> {
    let cached =
        stack.start_gateway_with(&HashMap::from([("JEWELSHOT_CACHE__ENABLED".to_owned(), "true".to_owned())]))?;
    let photo = std::fs::read(jewelshot_testkit::fixture_photo())?;
    let r = stack
        .http
        .post(format!("{cached}/api/uploads"))
        .bearer_auth(key)
        .header("content-type", "image/jpeg")
        .body(photo)
        .send()
        .await?;
    let upload: serde_json::Value = r.json().await?;
    let image = upload["url"].as_str().context("the upload answered no url")?.to_owned();
    let client = stack.db.client().await?;
    let row = client
        .query_one("SELECT storage_key, content_sha256, bytes FROM uploads WHERE id = $1", &[&upload["id"].as_str()])
        .await?;
    let (object, content, bytes): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
    let user_id: jewelshot_domain::UserId = user.parse().map_err(|_| anyhow::anyhow!("user id {user}"))?;
    let model = jewelshot_fal::FalConfig::default().model;
    let basis =
        jewelshot_domain::cache::basis(jewelshot_domain::cache::CacheScope::User, user_id, &model, "enhance lighting");
    client
        .execute(
            "INSERT INTO result_cache (key, job_id, storage_key, url, content_type, bytes, width, height, ready_at, expires_at)
             VALUES ($1, 'bench', $2, $2, 'image/jpeg', $3, 1024, 576, now(), now() + interval '1 day')",
            &[&jewelshot_domain::cache::key(&basis, &content), &object, &bytes],
        )
        .await?;
    let env = [("BENCH_KEY", key), ("BENCH_IMAGE", image.as_str())];
    let url = format!("{cached}/api/ai/edit");
    let warm = wrk(&url, script, 50, 2, &env)?;
    if warm.requests == 0 || warm.errors > 0 {
        bail!("the hit warm-up failed: {warm:?}");
    }
    let tx0 = stack.db.transactions().await?;
    let load = wrk(&url, script, 50, secs, &env)?;
    let tx1 = stack.db.transactions().await?;
    let cached_jobs: i64 = client.query_one("SELECT count(*) FROM jobs WHERE cached", &[]).await?.get(0);
    if (cached_jobs as u64) < load.requests {
        bail!("{} hits answered but only {cached_jobs} jobs completed from the cache", load.requests);
    }
    Ok((load.clone(), (tx1 - tx0) as f64 / load.requests.max(1) as f64))
}

fn print_hits(submits: &Load, (hits, per_hit): &(Load, f64)) {
    println!(
        "cache hits @50: {:>8.0}/s = {:>5.1} % of plain submits   p50 {:>6.2} ms   p99 {:>6.2} ms   errors {}   Postgres transactions/hit {per_hit:.2}",
        hits.rps,
        hits.rps / submits.rps.max(f64::MIN_POSITIVE) * 100.0,
        hits.p50_ms,
        hits.p99_ms,
        hits.errors
    );
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let out = "Running 10s test @ http://127.0.0.1:1/api/ai/edit
  2 threads and 50 connections
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    2.00ms
     99%   12.50ms
  98000 requests in 10.00s, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:   9800.00
BENCH status_errors=3
";
        let l = parse_wrk(out).expect("parsed");
        assert_eq!((l.requests, l.errors), (98_000, 6));
        assert!((l.p50_ms - 0.812).abs() < 1e-9 && (l.p99_ms - 12.5).abs() < 1e-9 && (l.rps - 9800.0).abs() < 1e-9);
        assert!(parse_wrk("nothing").is_err());
    }
}
