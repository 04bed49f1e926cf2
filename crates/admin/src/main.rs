//! `jewelshot`: the operator CLI — migrations, users and API keys, job inspection, queue stats.
//! Reads the same `JEWELSHOT_DATABASE__*` / `JEWELSHOT_QUEUE__*` settings as the services.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use figment::{
    providers::{Env, Serialized},
    Figment,
};
use jewelshot_db::{jobs::JobRow, Db, DbConfig};
use jewelshot_domain::{JobId, JobStatus, UserId};
use jewelshot_queue::{Queue, QueueConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(name = "jewelshot", version, about = "JewelShot operator CLI")]
struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Apply pending database migrations.
    Migrate,
    /// Manage users.
    Users {
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Inspect jobs.
    Jobs {
        #[command(subcommand)]
        cmd: JobsCmd,
    },
    /// Inspect the queue.
    Queue {
        #[command(subcommand)]
        cmd: QueueCmd,
    },
    /// Put failed or stuck jobs back in line. Finished steps are kept (a finished generation is
    /// never paid for again) unless --from-start. Safe to run twice.
    Requeue {
        /// Jobs that ended `failed`.
        #[arg(long)]
        failed: bool,
        /// Jobs `processing` with no progress for this long (default 10m when given bare).
        #[arg(long, value_name = "AGE", num_args = 0..=1, default_missing_value = "10m")]
        stuck: Option<humantime::Duration>,
        /// These jobs (failed or processing), by id.
        #[arg(long = "job", value_name = "ID", num_args = 1..)]
        jobs: Vec<JobId>,
        /// Only jobs that finished (or last changed) within this long, e.g. 1h, 30m, 2d.
        #[arg(long, value_name = "DURATION")]
        since: Option<humantime::Duration>,
        /// Only this user's jobs (email or id).
        #[arg(long)]
        user: Option<String>,
        /// Only jobs that failed with this error code, e.g. upstream-unavailable.
        #[arg(long)]
        error_code: Option<String>,
        /// List what would be requeued and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run every step again, including a finished generate-image (pays fal again).
        #[arg(long)]
        from_start: bool,
        /// At most this many jobs in one run.
        #[arg(long, default_value_t = 10_000)]
        limit: i64,
    },
    /// Run the upload compression pipeline on a file and report what it did.
    Compress {
        input: std::path::PathBuf,
        output: std::path::PathBuf,
        /// Longest side, in pixels.
        #[arg(long, default_value_t = 1920)]
        max_side: u32,
        /// Starting quality.
        #[arg(long, default_value_t = 80)]
        quality: u8,
        /// Largest output, in bytes.
        #[arg(long, default_value_t = 500_000)]
        max_bytes: usize,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCmd {
    /// Create a user; prints its id and webhook signing secret.
    Create {
        #[arg(long)]
        email: String,
        /// Plan name (e.g. free, pro).
        #[arg(long, default_value = "free")]
        plan: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Issue an API key for a user (by email or id). The key is printed once and never again.
    Create {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum JobsCmd {
    /// List jobs, newest first.
    List {
        #[arg(long)]
        status: Option<JobStatus>,
        /// User email or id.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Show one job with its steps.
    Show { id: JobId },
    /// Cancel a queued job.
    Cancel { id: JobId },
}

#[derive(Debug, Subcommand)]
enum QueueCmd {
    /// Job counts (Postgres) and queue depths (Redis).
    Stats,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Config {
    database: DbConfig,
    queue: QueueConfig,
    fal: FalSettings,
}

/// What the CLI reads of `JEWELSHOT_FAL__*`: where the workers' upstream limiter and dispatch
/// line live, and the dispatchers' `high_burst` (for positions).
#[derive(Debug, Serialize, Deserialize)]
#[serde(default)]
struct FalSettings {
    limiter_prefix: String,
    high_burst: u32,
}

impl Default for FalSettings {
    fn default() -> Self {
        Self { limiter_prefix: String::new(), high_burst: 4 }
    }
}

impl FalSettings {
    fn prefix(&self, queue_name: &str) -> String {
        if self.limiter_prefix.is_empty() {
            jewelshot_ratelimit::default_prefix(queue_name)
        } else {
            self.limiter_prefix.clone()
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Compress { input, output, max_side, quality, max_bytes } = &cli.cmd {
        // Needs no database and no async runtime: keep it lean for benchmarks and usable anywhere.
        return compress_file(input, output, *max_side, *quality, *max_bytes, cli.json);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    jewelshot_runtime::init_tracing("warn");
    let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
        .merge(Env::prefixed("JEWELSHOT_").split("__"))
        .extract()
        .context("reading JEWELSHOT_* configuration")?;
    let db = Db::connect(&cfg.database)?;
    match cli.cmd {
        Cmd::Migrate => {
            let applied = db.migrate().await.context("applying migrations")?;
            if applied.is_empty() {
                println!("database is up to date");
            }
            for m in applied {
                println!("applied {m}");
            }
        }
        Cmd::Users { cmd: UsersCmd::Create { email, plan } } => {
            let u = db.create_user(&email, &plan).await.context("creating the user")?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"id": u.id.to_string(), "email": u.email, "plan": u.plan, "webhookSecret": u.webhook_secret})
                );
            } else {
                println!("user {} <{}> plan={}", u.id, u.email, u.plan);
                println!("webhook secret: {}", u.webhook_secret);
            }
        }
        Cmd::Keys { cmd: KeysCmd::Create { user, name } } => {
            let u = resolve_user(&db, &user).await?;
            let k = db.create_api_key(u, &name).await?;
            if cli.json {
                println!("{}", serde_json::json!({"id": k.id, "userId": u.to_string(), "key": k.key}));
            } else {
                eprintln!("API key for {user} (shown once; store it now):");
                println!("{}", k.key);
            }
        }
        Cmd::Jobs { cmd: JobsCmd::List { status, user, limit } } => {
            let user = match user {
                Some(u) => Some(resolve_user(&db, &u).await?),
                None => None,
            };
            let jobs = db.list_jobs(user, status, None, limit.clamp(1, 1000)).await?;
            if cli.json {
                let views: Vec<_> = jobs.iter().map(|j| j.to_view(&[], 0, None)).collect();
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                println!("{:<26}  {:<10}  {:<7}  {:>8}  {:<20}  PROMPT", "ID", "STATUS", "PRIO", "ATTEMPTS", "CREATED");
                for j in &jobs {
                    println!("{}", job_line(j));
                }
            }
        }
        Cmd::Jobs { cmd: JobsCmd::Show { id } } => {
            let Some(job) = db.job(id).await? else { bail!("no job {id}") };
            let steps = db.steps(id).await?;
            let position = match Queue::connect(&cfg.queue).await {
                Ok(q) => {
                    let limiter = jewelshot_ratelimit::Limiter::new(
                        q.connection(),
                        jewelshot_ratelimit::LimiterConfig::new(cfg.fal.prefix(&cfg.queue.name)),
                        Vec::new(),
                    );
                    jewelshot_queue::position(&limiter, &db, &job, cfg.fal.high_burst).await?
                }
                Err(_) => db.queue_position(&job).await?,
            };
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&job.to_view(&steps, position, None))?);
            } else {
                println!("job        {}", job.id);
                println!("user       {}", job.user_id);
                println!(
                    "status     {}{}",
                    job.status,
                    if position > 0 { format!(" (position {position})") } else { String::new() }
                );
                println!("priority   {}", job.priority);
                println!("attempts   {}/{}", job.attempts, job.max_attempts);
                println!("prompt     {}", job.prompt);
                println!("input      {}", job.input_url);
                if let Some(w) = &job.webhook_url {
                    println!("webhook    {w}");
                }
                if let Some(r) = &job.result_url {
                    println!("result     {r}");
                }
                if let Some(c) = &job.error_code {
                    println!("error      {c}: {}", job.error_message.as_deref().unwrap_or(""));
                }
                if let Some(w) = &job.worker_id {
                    println!("worker     {w}");
                }
                println!("created    {}", job.created_at.to_rfc3339());
                println!("updated    {}", job.updated_at.to_rfc3339());
                println!("steps:");
                for s in &steps {
                    println!(
                        "  {:<16} {:<9} attempts={} finished={} {}",
                        s.name,
                        s.status,
                        s.attempts,
                        s.finished_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into()),
                        s.error.as_deref().unwrap_or("")
                    );
                }
            }
        }
        Cmd::Compress { .. } => unreachable!("handled before connecting"),
        Cmd::Jobs { cmd: JobsCmd::Cancel { id } } => match db.cancel_any(id).await? {
            Some(_) => println!("job {id} canceled (a running fal request is canceled by its worker)"),
            None => match db.job(id).await? {
                None => bail!("no job {id}"),
                Some(j) => bail!("job {id} is {}; only queued or processing jobs can be canceled", j.status),
            },
        },
        Cmd::Requeue { failed, stuck, jobs, since, user, error_code, dry_run, from_start, limit } => {
            if !failed && stuck.is_none() && jobs.is_empty() {
                bail!("say which jobs: --failed, --stuck [AGE] or --job ID…");
            }
            let ago = |d: humantime::Duration| chrono::Utc::now() - chrono::Duration::from_std(*d).unwrap_or_default();
            let filter = jewelshot_db::requeue::RequeueFilter {
                failed,
                stuck_before: stuck.map(ago),
                jobs,
                since: since.map(ago),
                user: match user {
                    Some(u) => Some(resolve_user(&db, &u).await?),
                    None => None,
                },
                error_code,
                limit: limit.clamp(1, 1_000_000),
            };
            requeue(&db, &cfg.queue, cfg.fal.prefix(&cfg.queue.name), &filter, dry_run, from_start, cli.json).await?;
        }
        Cmd::Queue { cmd: QueueCmd::Stats } => {
            let counts = db.queue_counts().await?;
            let queue = Queue::connect(&cfg.queue).await.ok();
            let depths = match &queue {
                Some(q) => q.depths().await.ok(),
                None => None,
            };
            let upstream = match &queue {
                Some(q) => {
                    let limiter = jewelshot_ratelimit::Limiter::new(
                        q.connection(),
                        jewelshot_ratelimit::LimiterConfig::new(cfg.fal.prefix(&cfg.queue.name)),
                        Vec::new(),
                    );
                    limiter.snapshot().await.ok()
                }
                None => None,
            };
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "jobs": {"queued": counts.queued, "scheduled": counts.scheduled, "processing": counts.processing,
                                 "complete": counts.complete, "failed": counts.failed, "canceled": counts.canceled},
                        "redis": depths,
                        "upstream": upstream,
                    })
                );
            } else {
                println!(
                    "jobs (postgres): queued={} scheduled={} processing={} complete={} failed={} canceled={}",
                    counts.queued, counts.scheduled, counts.processing, counts.complete, counts.failed, counts.canceled
                );
                match depths {
                    Some(d) => println!(
                        "queue (redis {}): ready={} scheduled={} in-flight={}",
                        cfg.queue.name, d.active, d.scheduled, d.inflight
                    ),
                    None => println!("queue (redis): unreachable"),
                }
                for k in upstream.unwrap_or_default() {
                    println!(
                        "fal account {}: {} | {}/{} started this window, {}/{} in flight{}",
                        k.id,
                        if k.healthy { "healthy" } else { "DISABLED (fal refused its key)" },
                        k.started_in_window,
                        k.max_per_minute,
                        k.in_flight,
                        k.max_concurrent,
                        if k.cooling_down { ", resting after a 429" } else { "" }
                    );
                }
            }
        }
    }
    Ok(())
}

/// Put a requeued job back where it belongs (see [`jewelshot_queue::put_back`]).
async fn put_back(
    db: &Db,
    limiter: &jewelshot_ratelimit::Limiter,
    queue: &Queue,
    job: &jewelshot_db::jobs::JobRow,
) -> anyhow::Result<jewelshot_queue::Placed> {
    let started = db.generate_started(job.id).await?;
    Ok(jewelshot_queue::put_back(limiter, queue, job, started).await?)
}

#[allow(clippy::too_many_arguments)]
async fn requeue(
    db: &Db,
    queue_cfg: &QueueConfig,
    limiter_prefix: String,
    filter: &jewelshot_db::requeue::RequeueFilter,
    dry_run: bool,
    from_start: bool,
    json: bool,
) -> anyhow::Result<()> {
    let candidates = db.requeue_candidates(filter).await?;
    if dry_run || !json {
        for j in &candidates {
            println!(
                "{}  {:<10}  {:<24}  attempts {}/{}  {}",
                j.id,
                j.status,
                j.error_code.as_deref().unwrap_or("-"),
                j.attempts,
                j.max_attempts,
                j.updated_at.format("%Y-%m-%d %H:%M:%S")
            );
        }
    }
    if dry_run {
        println!("dry run: would requeue {} job(s); nothing changed", candidates.len());
        return Ok(());
    }
    if candidates.is_empty() {
        println!("nothing to requeue");
        return Ok(());
    }
    let queue = Queue::connect(queue_cfg).await.context("connecting to the queue")?;
    // Jobs that never reached fal go back in the dispatch line (their fair place, exact
    // positions); the others get their task again.
    let limiter = jewelshot_ratelimit::Limiter::new(
        queue.connection(),
        jewelshot_ratelimit::LimiterConfig::new(limiter_prefix),
        Vec::new(),
    );
    let bar = indicatif::ProgressBar::new(candidates.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut requeued, mut skipped, mut failed) = (0u64, 0u64, Vec::new());
    for job in &candidates {
        match db.requeue_job(job, from_start).await? {
            None => skipped += 1, // changed since it was listed (e.g. another requeue)
            Some(row) => match put_back(db, &limiter, &queue, &row).await {
                Ok(_) => requeued += 1,
                Err(e) => {
                    // Not in Redis: put it back as it was, so a later run finds it again.
                    let code = job.error_code.as_deref().unwrap_or("requeue-failed");
                    db.fail_job(row.id, code, job.error_message.as_deref().unwrap_or("")).await?;
                    failed.push((row.id, e.to_string()));
                }
            },
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for (id, e) in &failed {
        eprintln!("job {id}: could not be enqueued ({e}); left as it was");
    }
    println!(
        "requeued {requeued}, skipped {skipped} (changed meanwhile), failed to enqueue {}{}",
        failed.len(),
        if from_start { " — all steps will run again" } else { " — finished steps kept" }
    );
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} job(s) could not be enqueued; run the same command again", failed.len())
    }
}

fn compress_file(
    input: &std::path::Path,
    output: &std::path::Path,
    max_side: u32,
    quality: u8,
    max_bytes: usize,
    json: bool,
) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let limits = jewelshot_imaging::Limits { max_side, quality, max_output_bytes: max_bytes, ..Default::default() };
    let out = jewelshot_imaging::compress(&bytes, &limits).map_err(|e| anyhow::anyhow!("{} ({})", e, e.code()))?;
    std::fs::write(output, &out.bytes).with_context(|| format!("writing {}", output.display()))?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if json {
        let mut v = serde_json::to_value(&out)?;
        v["bytes"] = serde_json::json!(out.bytes.len());
        v["milliseconds"] = serde_json::json!(ms);
        println!("{v}");
    } else {
        println!(
            "{} {}x{} {} B -> {} {}x{} {} B ({:.1}%), {}, {:.1} ms",
            input.display(),
            out.original_width,
            out.original_height,
            out.original_bytes,
            out.content_type,
            out.width,
            out.height,
            out.bytes.len(),
            100.0 * out.bytes.len() as f64 / out.original_bytes.max(1) as f64,
            match out.quality {
                Some(q) => format!("quality {q}"),
                None => "input kept (metadata stripped)".into(),
            },
            ms
        );
    }
    Ok(())
}

async fn resolve_user(db: &Db, user: &str) -> anyhow::Result<UserId> {
    if let Ok(id) = user.parse::<UserId>() {
        if db.user(id).await?.is_some() {
            return Ok(id);
        }
    }
    match db.user_by_email(user).await? {
        Some(u) => Ok(u.id),
        None => bail!("no user with id or email `{user}`"),
    }
}

fn job_line(j: &JobRow) -> String {
    let prompt: String = j.prompt.chars().take(40).collect();
    format!(
        "{:<26}  {:<10}  {:<7}  {:>8}  {:<20}  {}",
        j.id,
        j.status,
        j.priority,
        format!("{}/{}", j.attempts, j.max_attempts),
        j.created_at.format("%Y-%m-%d %H:%M:%S"),
        prompt
    )
}
