//! # jewelshot-worker
//!
//! Runs edit jobs from the queue. Scale by running more processes (each with its own id);
//! within a process, `concurrency` jobs run at once.
//!
//! ## Layout
//! - [`config`] — `JEWELSHOT_*` settings: [`Config`] (re-exported at the root; [`Config::load`])
//!   with its database, queue, fal (client and dispatch line), storage, worker, webhook and
//!   image sections.
//! - [`pipeline`] — one job's life: its upstream slot, attempts, retries, how it ends
//!   ([`pipeline::run_job`]); [`pipeline::Ctx`] is what every job of the process shares.
//! - [`steps`] — the three recorded, resumable steps as typed phases (`generate`, `save`,
//!   `notify`) and the one helper that starts, skips, completes or fails a step
//!   ([`steps::run_step`]).
//! - [`upstream`] — the fal account pool, the fleet-wide limiter in front of it, and one
//!   request's life there (slots, submit with rerouting on 429/401, polling);
//!   [`upstream::Upstream`], [`upstream::resolve_pool`].
//! - [`dispatcher`] — moves jobs from the dispatch line to the work queue as slots free up
//!   ([`dispatcher::spawn`]).
//! - [`cache`] — the result cache's worker side: hashing a job's input before its fal request
//!   ([`cache::meet`]), settling the jobs that shared a request, eviction and orphan upkeep.
//! - [`reconciler`] — puts back what Redis lost, from Postgres (one worker at a time);
//!   [`reconciler::Reconciler`].
//! - [`deliveries`] — webhook delivery as its own queued work (a Postgres outbox, its own slots,
//!   a per-user cap): [`deliveries::spawn`].
//! - [`webhook`] — one signed, SSRF-guarded webhook attempt ([`webhook::WebhookSender`],
//!   [`webhook::sign`]).
//! - [`backoff`] — retry delays ([`backoff::backoff`]).
//! - [`poll`] — [`poll::SteadyInterval`], a polling strategy that keeps idle workers awake
//!   (works around apalis-core).
//! - [`run`] — wires the apalis worker (supervised: restarted if Redis drops it) until shutdown.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cache;
pub mod config;
pub mod deliveries;
pub mod dispatcher;
pub mod egress;
pub mod pipeline;
pub mod poll;
pub mod reconciler;
pub mod steps;
pub mod upstream;
pub mod webhook;

use std::{future::Future, sync::Arc, time::Duration};

use apalis::prelude::{BackendExt, BoxDynError, Data, Monitor, ParallelizeExt, WorkerBuilder, WorkerBuilderExt};
use apalis_redis::RedisStorage;
use jewelshot_db::{secrets::Keyring, Db};
use jewelshot_domain::edit::WebhookPolicy;
use jewelshot_fal::FalClient;
use jewelshot_queue::EditTask;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::Config;
use pipeline::Ctx;

/// A name unique to this process, for apalis (which requires it) and for the job row.
fn worker_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}-{}-{}", std::process::id(), &ulid::Ulid::generate().to_string()[20..])
}

async fn handle(task: EditTask, ctx: Data<Arc<Ctx>>) -> Result<(), BoxDynError> {
    // Labels the log lines of the whole delivery; the exported span is `run-job`, made once
    // the job's row (and the trace it belongs to) has been read.
    let span = tracing::info_span!(target: "jewelshot_worker::untraced", "job", job_id = %task.job_id);
    pipeline::run_job(&ctx, task.job_id).instrument(span).await.map_err(|e| {
        tracing::warn!(error = %e, "handing the job back to the queue");
        e.into()
    })
}

/// apalis-core beats a worker's heart only while the worker polls for tasks, and a worker polls
/// only when it has a free slot: a worker whose slots are all busy (fal takes 20-45 s; jobs also
/// wait for upstream capacity) goes silent, and the other workers declare it dead and run its jobs
/// a second time. This beats for it whatever its slots are doing: `ZADD XX` on apalis-redis's
/// workers set (the same record its own heartbeat refreshes; XX never re-registers a worker
/// apalis removed — apalis then restarts it through the Monitor).
///
/// `name` is the apalis worker's current name: a restarted apalis worker registers under a new
/// one (see [`run`]), and the old record, no longer refreshed, expires so that apalis's orphan
/// recovery hands its in-flight tasks to others.
fn spawn_keep_alive(
    conn: jewelshot_queue::RedisConn,
    workers_set: String,
    name: Arc<std::sync::Mutex<String>>,
    heartbeat_secs: u64,
) -> tokio::task::JoinHandle<()> {
    let every = half_heartbeat(heartbeat_secs);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let Ok(current) = name.lock().map(|n| n.clone()) else { continue };
            let mut c = conn.clone();
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(&workers_set).arg("XX").arg(now).arg(&current);
            match tokio::time::timeout(every, cmd.query_async::<i64>(&mut c)).await {
                Ok(Ok(_)) => metrics::gauge!(jewelshot_domain::metric_names::WORKER_HEARTBEAT).set(now as f64),
                Ok(Err(e)) => tracing::warn!(error = %e, "worker heartbeat failed"),
                Err(_) => tracing::warn!("worker heartbeat timed out"),
            }
        }
    })
}

/// How often a heartbeat-driven loop ticks: twice per `heartbeat_secs`, at most every 250 ms.
fn half_heartbeat(heartbeat_secs: u64) -> Duration {
    Duration::from_millis((heartbeat_secs * 1000 / 2).max(250))
}

/// Announce the fal model this process runs with every heartbeat, and withdraw it when the
/// shutdown begins: the gateways key the result cache with the model the live fleet runs, and
/// bypass the cache while the fleet runs more than one (a rollout), so a model change never
/// serves the old model's results (`jewelshot_queue::Queue::fleet_models`).
fn spawn_model_announcer(
    queue: jewelshot_queue::Queue,
    worker: String,
    model: String,
    heartbeat_secs: u64,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let every = half_heartbeat(heartbeat_secs);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = queue.announce_model(&worker, &model).await {
                        tracing::warn!(error = %e, "could not announce the worker's model");
                    }
                }
                _ = stop.cancelled() => {
                    if let Err(e) = queue.withdraw_model(&worker, &model).await {
                        tracing::warn!(error = %e, "could not withdraw the worker's model; it lapses by itself");
                    }
                    return;
                }
            }
        }
    })
}

/// Retry a start-up step that needs Redis until it works (backoff up to 5 s): a worker started
/// while Redis restarts waits for it instead of exiting.
async fn until_ok<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let mut delay = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "could not {what}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Refresh the heartbeat of every job this process runs, in one statement, every `every`.
fn spawn_job_heartbeats(ctx: Arc<Ctx>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let ids = ctx.running.ids();
            if let Err(e) = ctx.db.heartbeat(&ctx.worker_id, &ids).await {
                tracing::warn!(error = %e, jobs = ids.len(), "job heartbeat failed");
            }
            // A running job's snapshot lives as long as its worker does (see snapshots).
            if let Err(e) = ctx.snapshots.renew(&ids).await {
                tracing::debug!(error = %e, jobs = ids.len(), "job snapshots not renewed");
            }
        }
    })
}

/// Remove finished tasks' records from Redis every `interval_secs` (see
/// [`jewelshot_queue::vacuum_finished`]), at most 20 batches of 500 a round.
fn spawn_vacuum(
    mut conn: jewelshot_queue::RedisConn,
    queue: jewelshot_queue::QueueConfig,
    interval_secs: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if interval_secs == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(interval_secs));
        loop {
            tick.tick().await;
            for _ in 0..20 {
                match jewelshot_queue::vacuum_finished(&mut conn, &queue, 500).await {
                    Ok(n) if n >= 500 => continue,
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(removed = n, "finished tasks removed from Redis");
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not remove finished tasks from Redis");
                        break;
                    }
                }
            }
        }
    })
}

/// Run until `shutdown` resolves, then stop taking jobs and give in-flight ones the grace period.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    serve_metrics(&cfg.worker)?;
    let token = CancellationToken::new();
    let conn = until_ok("connect to Redis", || jewelshot_queue::connect(&cfg.queue)).await;
    let ctx = Arc::new(context(&cfg, conn.clone(), token.clone()).await?);
    let name = ctx.worker_id.clone();
    let background = Background::spawn(&cfg, &ctx, conn.clone(), token.clone())?;
    tracing::info!(worker = %name, concurrency = cfg.worker.concurrency, queue = %cfg.queue.name, "worker starting");
    let monitor = monitor(&cfg, ctx, conn, background.current_name.clone());
    monitor
        .run_with_signal(async move {
            shutdown.await;
            tracing::info!("shutdown requested: finishing in-flight jobs");
            token.cancel();
            Ok(())
        })
        .await?;
    background.finish().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// The Prometheus exporter on `metrics_listen` (unless empty). When that port is taken (two
/// workers on one machine) the exporter takes a free one and says which.
fn serve_metrics(s: &config::WorkerSettings) -> anyhow::Result<()> {
    if s.metrics_listen.is_empty() {
        return Ok(());
    }
    let wanted: std::net::SocketAddr = s.metrics_listen.parse()?;
    let free = |mut a: std::net::SocketAddr| -> std::io::Result<std::net::SocketAddr> {
        a.set_port(0);
        std::net::TcpListener::bind(a)?.local_addr()
    };
    let addr = if wanted.port() == 0 { free(wanted)? } else { wanted };
    let addr = match jewelshot_runtime::metrics::builder().with_http_listener(addr).install() {
        Ok(()) => addr,
        Err(e) if wanted.port() != 0 => {
            tracing::warn!(%addr, error = %e, "metrics port taken; using a free one");
            let other = free(wanted)?;
            jewelshot_runtime::metrics::builder().with_http_listener(other).install()?;
            other
        }
        Err(e) => return Err(e.into()),
    };
    jewelshot_runtime::metrics::describe_all();
    jewelshot_runtime::allocator::spawn_gauges(jewelshot_runtime::allocator::SAMPLE_EVERY);
    tracing::info!(allocator = %jewelshot_runtime::allocator::settings(), "allocator");
    // Printed on stdout too, like the gateway's address: tests and scripts read it there.
    println!("metrics on http://{addr}/metrics");
    tracing::info!(%addr, "serving metrics");
    Ok(())
}

/// What every job of this process shares: Postgres, storage, the fal pool behind the fleet's
/// limiter (its accounts registered in Redis), webhook deliveries.
async fn context(cfg: &Config, conn: jewelshot_queue::RedisConn, token: CancellationToken) -> anyhow::Result<Ctx> {
    let db = Db::connect(&cfg.database)?.with_keyring(Keyring::load(&cfg.secrets)?);
    db.ping().await?;
    let store = jewelshot_storage::open(&cfg.storage).await?;
    let s = &cfg.worker;
    let timeout = Duration::from_millis(cfg.queue.timeout_ms);
    let limiter_cfg = upstream::limiter_config(&cfg.fal.client, &cfg.fal.line, &cfg.queue.name, timeout);
    let client = FalClient::new(cfg.fal.client.clone())?;
    let conn_for_queue = conn.clone();
    let upstream = upstream::Upstream::new(&client, upstream::resolve_pool(&cfg.fal.client)?, limiter_cfg, conn);
    until_ok("register the fal accounts", || upstream.limiter.register()).await;
    let snapshots = jewelshot_queue::snapshots::Publisher::new(upstream.limiter.clone(), cfg.queue.snapshots.clone());
    let db = db.with_changes(snapshots.clone());
    for k in upstream.limiter.keys() {
        tracing::info!(key = %k.id, max_per_minute = k.max_per_minute, max_concurrent = k.max_concurrent, "fal account in the pool");
    }
    Ok(Ctx {
        db,
        upstream,
        store,
        deliveries: deliveries::Deliveries::new(cfg.webhook.clone())?,
        settings: s.clone(),
        images: cfg.images,
        worker_id: worker_name(&s.id),
        downloads: egress::Egress::new(
            WebhookPolicy { allow_insecure: s.allow_insecure_downloads },
            Duration::from_secs(s.download_timeout_secs),
            concat!("jewelshot/", env!("CARGO_PKG_VERSION")),
        )?,
        shutdown: token,
        running: pipeline::Running::default(),
        snapshots,
        queue: jewelshot_queue::Queue::with_connection(conn_for_queue, &cfg.queue),
        cache: cfg.cache.clone(),
    })
}

/// The apalis backend as the workers use it. lock_tasks off: per-task leases scan the active
/// list (slow with a backlog); the worker's in-flight set plus heartbeats already recover a dead
/// worker's tasks.
fn backend_config(cfg: &Config) -> apalis_redis::Config {
    let s = &cfg.worker;
    jewelshot_queue::apalis_config(&cfg.queue)
        .batch_size(s.concurrency)
        .heartbeat_interval(Duration::from_secs(s.heartbeat_secs))
        .missed_heartbeats(s.missed_heartbeats)
        .lock_tasks(false)
        .emit_events(false)
}

/// The process's background tasks beside the apalis worker; aborted when dropped.
struct Background {
    /// The apalis worker's current name (it changes when the Monitor restarts the worker).
    current_name: Arc<std::sync::Mutex<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The webhook delivery loop: on shutdown it lets its attempts end instead of being aborted.
    deliveries: Option<tokio::task::JoinHandle<()>>,
    /// Publishes job snapshots; flushed last, once nothing else changes jobs.
    snapshots: Arc<jewelshot_queue::snapshots::Publisher>,
}

impl Background {
    /// The limiter's wake-ups, the dispatcher, job heartbeats, the reconciler, the apalis
    /// keep-alive, the vacuum, and the webhook delivery loop.
    fn spawn(
        cfg: &Config,
        ctx: &Arc<Ctx>,
        conn: jewelshot_queue::RedisConn,
        token: CancellationToken,
    ) -> anyhow::Result<Self> {
        let s = &cfg.worker;
        let limiter = &ctx.upstream.limiter;
        let queue = jewelshot_queue::Queue::with_connection(conn.clone(), &cfg.queue);
        let dispatch = jewelshot_ratelimit::DispatchOptions {
            high_burst: cfg.fal.line.high_burst,
            ahead: if s.dispatch_ahead == 0 { s.concurrency as u32 } else { s.dispatch_ahead },
            ready_list: queue.ready_list(),
            scheduled_set: queue.scheduled_set(),
        };
        let current_name = Arc::new(std::sync::Mutex::new(ctx.worker_id.clone()));
        let fleet = jewelshot_queue::fleet::Fleet {
            limiter: limiter.clone(),
            queue: queue.clone(),
            db: ctx.db.clone(),
            pools: {
                let db = ctx.db.clone();
                Arc::new(move || vec![db.pool_stats()])
            },
            settings: cfg.monitoring.clone(),
            model: cfg.fal.client.model.clone(),
        };
        let tasks = vec![
            tokio::spawn(ctx.snapshots.clone().run(ctx.db.clone())),
            tokio::spawn(fleet.run()),
            limiter.spawn_waker(jewelshot_queue::pubsub_client(&cfg.queue)?, token.clone()),
            dispatcher::spawn(limiter.clone(), queue.clone(), dispatch, token.clone()),
            spawn_job_heartbeats(ctx.clone(), Duration::from_secs(s.job_heartbeat_secs)),
            reconciler(cfg, ctx, queue.clone(), conn.clone()).spawn(token.clone()),
            cache::spawn(ctx.clone(), Duration::from_secs(s.reconcile_interval_secs.max(1)), token.clone()),
            spawn_keep_alive(conn.clone(), backend_config(cfg).workers_set(), current_name.clone(), s.heartbeat_secs),
            spawn_model_announcer(
                queue.clone(),
                ctx.worker_id.clone(),
                cfg.fal.client.model.clone(),
                s.heartbeat_secs,
                token.clone(),
            ),
            spawn_vacuum(conn, cfg.queue.clone(), s.vacuum_interval_secs),
        ];
        let deliveries = Some(deliveries::spawn(ctx.clone(), token));
        Ok(Self { current_name, tasks, deliveries, snapshots: ctx.snapshots.clone() })
    }

    /// Stop: webhook attempts in flight end (the loop stops claiming once the shutdown token is
    /// cancelled, and bounds its own wait), everything else is aborted.
    async fn finish(mut self) {
        if let Some(d) = self.deliveries.take() {
            let _ = d.await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.snapshots.flush()).await.is_err() {
            tracing::warn!("job snapshots still unpublished at exit; polls may show those jobs' earlier state until their snapshots expire");
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.deliveries) {
            t.abort();
        }
    }
}

fn reconciler(
    cfg: &Config,
    ctx: &Ctx,
    queue: jewelshot_queue::Queue,
    conn: jewelshot_queue::RedisConn,
) -> reconciler::Reconciler {
    let apalis = jewelshot_queue::apalis_config(&cfg.queue);
    reconciler::Reconciler {
        db: ctx.db.clone(),
        limiter: ctx.upstream.limiter.clone(),
        queue,
        keys: jewelshot_ratelimit::QueueKeys {
            ready: apalis.active_jobs_list(),
            scheduled: apalis.scheduled_jobs_set(),
            workers: apalis.workers_set(),
            inflight_prefix: apalis.inflight_jobs_set(),
        },
        conn,
        lease_key: format!("{}:reconciler", cfg.queue.name),
        worker: ctx.worker_id.clone(),
        interval: Duration::from_secs(cfg.worker.reconcile_interval_secs),
        stale: Duration::from_secs(cfg.worker.orphan_after_secs),
    }
}

/// The supervised apalis worker.
///
/// apalis-redis refuses to register a name whose record is still fresh — and our keep-alive
/// keeps it fresh — so a restarted apalis worker (after a Redis error) takes a new name. The old
/// one expires; its in-flight tasks go back to the queue through orphan recovery (the run lock in
/// `begin_attempt` keeps a job still running here from running twice).
fn monitor(
    cfg: &Config,
    ctx: Arc<Ctx>,
    conn: jewelshot_queue::RedisConn,
    current_name: Arc<std::sync::Mutex<String>>,
) -> Monitor {
    let s = &cfg.worker;
    let storage = RedisStorage::<EditTask, jewelshot_queue::RedisConn>::new(conn).with_config(backend_config(cfg));
    let (concurrency, poll_every) = (s.concurrency, Duration::from_millis(s.poll_interval_ms));
    let name = ctx.worker_id.clone();
    let restarts = std::sync::atomic::AtomicUsize::new(0);
    Monitor::new()
        .register(move |_| {
            let n = restarts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let apalis_name = if n == 0 { name.clone() } else { format!("{name}-r{n}") };
            if let Ok(mut current) = current_name.lock() {
                current.clone_from(&apalis_name);
            }
            WorkerBuilder::new(apalis_name)
                .backend(storage.clone().poll_with_strategy(poll::SteadyInterval::new(poll_every)))
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .data(ctx.clone())
                .build(handle)
        })
        .should_restart(|w, err| {
            tracing::warn!(worker = %w.name(), error = %err, "worker stopped; restarting");
            // A failing backend (Redis down) must not turn into a tight restart loop.
            std::thread::sleep(Duration::from_millis(250));
            true
        })
        .shutdown_timeout(Duration::from_secs(s.shutdown_grace_secs))
}
