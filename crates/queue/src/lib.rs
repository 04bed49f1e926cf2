//! # jewelshot-queue
//!
//! The work queue shared by the gateway (which pushes) and the workers (which pull): apalis on
//! Redis, one task per job, the task id equal to the job id. Tasks carry ids only — Postgres
//! holds the job's truth.
//!
//! ## Layout
//! - [`QueueConfig`] — Redis URL, queue name and command timeout (`JEWELSHOT_QUEUE__*`); the name
//!   prefixes every Redis key, which is how tests isolate themselves.
//! - [`connect`] — a self-reconnecting Redis connection with command timeouts;
//!   [`apalis_config`] — the apalis-redis key layout both sides share.
//! - [`EditTask`] — the task payload.
//! - [`Queue`] — push a job (now or at `run_at`), push a requeued job afresh, ping, and read
//!   queue depths ([`QueueDepths`]).
//! - [`QueueError`] — Redis, push and timeout failures (all `queue-unavailable`, all retryable).
//! - [`vacuum_finished`] — forget the Redis records of acknowledged (done or dead) tasks.
//! - [`position`] — a job's place in the dispatch order (Postgres when the line cannot say).
//! - [`cancel`] — cancel a job and take it out of the line (the gateway and the CLI).
//! - [`line_entry`], [`put_back`] — where a waiting job belongs: the dispatch line (it has not
//!   reached fal) or a task of its own (it has), as [`Placed`] reports; used by the gateway, the
//!   reconciler and requeue.

use std::time::Duration;

use apalis_core::{
    backend::TaskSink,
    task::{builder::TaskBuilder, task_id::TaskId},
};
use apalis_redis::{Config, RedisStorage};
use chrono::{DateTime, Utc};
use jewelshot_domain::JobId;
pub use jewelshot_ratelimit::conn::{check_cluster_key, RedisConn, CLUSTER_SLOT_KEY, CLUSTER_TAG};
use serde::{Deserialize, Serialize};

pub mod fleet;
pub mod snapshots;

/// The payload of a queue task: which job to run. Nothing else — the job row has the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditTask {
    pub job_id: JobId,
}

/// `JEWELSHOT_QUEUE__*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// `redis://` or `rediss://`; with [`QueueConfig::cluster`], one or more of the cluster's
    /// nodes, comma-separated (the client learns the rest from them).
    pub redis_url: String,
    /// Redis Cluster: every key in one hash slot, which the queue name must choose with the tag
    /// [`CLUSTER_TAG`] (checked at connect).
    pub cluster: bool,
    /// Prefix of every Redis key of the queue.
    pub name: String,
    /// Longest wait for one Redis command, in milliseconds.
    pub timeout_ms: u64,
    /// How long job snapshots (what polls read) stay in Redis.
    pub snapshots: snapshots::SnapshotConfig,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            name: "jewelshot:edits".into(),
            timeout_ms: 3_000,
            snapshots: Default::default(),
        }
    }
}

impl QueueConfig {
    /// In cluster mode, the dispatch line's and the limiter's keys (`JEWELSHOT_FAL__LIMITER_PREFIX`,
    /// by default under the queue name) must share the queue's slot: scripts use both at once.
    /// Every binary checks this with its configuration, at start.
    pub fn check_line(&self, line: &jewelshot_ratelimit::LineSettings) -> Result<(), String> {
        if !self.cluster {
            return Ok(());
        }
        check_cluster_key("JEWELSHOT_QUEUE__NAME", &self.name)?;
        check_cluster_key("JEWELSHOT_FAL__LIMITER_PREFIX", &line.prefix(&self.name))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("queue push failed: {0}")]
    Push(String),
    #[error("queue did not answer in time")]
    Timeout,
    #[error("queue misconfigured: {0}")]
    Config(String),
}

impl QueueError {
    pub fn code(&self) -> &'static str {
        "queue-unavailable"
    }

    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Config(_))
    }
}

/// Queue depths as Redis sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueDepths {
    /// Ready to be fetched.
    pub active: u64,
    /// Waiting for their time (delayed pushes, retries).
    pub scheduled: u64,
    /// Fetched by a worker and not yet acknowledged.
    pub inflight: u64,
}

/// A handle for pushing jobs; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    storage: RedisStorage<EditTask, RedisConn>,
    conn: RedisConn,
    timeout: Duration,
    /// [`QueueConfig::name`]: the prefix of the keys kept beside apalis's.
    name: String,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.storage.get_config().queue.as_ref()).finish()
    }
}

/// Forget finished tasks: apalis-redis keeps every task's payload and metadata forever, so Redis
/// would grow with every job ever run. Postgres is the record; once a task is acknowledged (done
/// or dead) its Redis records serve nothing. Pops up to `batch` ids from the done and the dead
/// sets and deletes their payload and metadata; returns how many. Idempotent: every worker may
/// run it.
///
/// An id still listed elsewhere — ready, scheduled, or in some worker's in-flight set (a worker
/// that died after acknowledging leaves its set behind, and orphan recovery moves the set back to
/// the ready list) — keeps its payload: apalis-redis's fetch fails outright ("invalid job data
/// format") on an id without one, and that worker stops. It goes back to the done set for a later
/// round. Ready ids that lost their payload anyway are dropped from the list.
pub async fn vacuum_finished(conn: &mut RedisConn, cfg: &QueueConfig, batch: usize) -> Result<usize, QueueError> {
    const SCRIPT: &str = r"
        local removed = 0
        local workers = redis.call('ZRANGE', KEYS[6], 0, -1)
        local function referenced(id)
          if redis.call('LPOS', KEYS[4], id) or redis.call('ZSCORE', KEYS[5], id) then return true end
          for _, w in ipairs(workers) do
            if redis.call('SISMEMBER', ARGV[3] .. ':' .. w, id) == 1 then return true end
          end
          return false
        end
        for _, set in ipairs({KEYS[1], KEYS[2]}) do
          local ids = redis.call('SPOP', set, tonumber(ARGV[2]))
          for _, id in ipairs(ids) do
            if referenced(id) then
              redis.call('SADD', set, id)
            else
              redis.call('HDEL', KEYS[3], id)
              redis.call('DEL', ARGV[1] .. ':' .. id)
              removed = removed + 1
            end
          end
        end
        for _, id in ipairs(redis.call('LRANGE', KEYS[4], 0, 999)) do
          if redis.call('HEXISTS', KEYS[3], id) == 0 then redis.call('LREM', KEYS[4], 0, id) end
        end
        return removed";
    let c = apalis_config(cfg);
    let script = redis::Script::new(SCRIPT);
    let mut inv = script.prepare_invoke();
    inv.key(c.done_jobs_set())
        .key(c.dead_jobs_set())
        .key(c.job_data_hash())
        .key(c.active_jobs_list())
        .key(c.scheduled_jobs_set())
        .key(c.workers_set())
        .arg(c.job_meta_hash())
        .arg(batch)
        .arg(c.inflight_jobs_set());
    let timeout = Duration::from_millis(cfg.timeout_ms);
    tokio::time::timeout(timeout, inv.invoke_async::<usize>(conn))
        .await
        .map_err(|_| QueueError::Timeout)?
        .map_err(QueueError::from)
}

/// The job as the dispatch line knows it.
pub fn line_entry(job: &jewelshot_db::jobs::JobRow) -> jewelshot_ratelimit::LineEntry {
    jewelshot_ratelimit::LineEntry {
        seq: job.seq,
        high: job.priority == jewelshot_domain::Priority::High,
        user: job.user_id.to_string(),
        job: job.id.to_string(),
    }
}

/// The job's place in the real dispatch order (1 = next; 0 when not waiting or not yet due): one
/// O(log n) look at the line. A job the line does not hold (waiting among retries, or put back by
/// the reconciler a moment from now) or a line that cannot be reached falls back to Postgres's
/// submit-order count. `high_burst` must be the dispatchers'.
pub async fn position(
    limiter: &jewelshot_ratelimit::Limiter,
    db: &jewelshot_db::Db,
    job: &jewelshot_db::jobs::JobRow,
    high_burst: u32,
) -> Result<i64, jewelshot_db::DbError> {
    if job.status != jewelshot_domain::JobStatus::Queued {
        return Ok(0);
    }
    let place = limiter.position(&line_entry(job), high_burst).await;
    position_from(place, db, job.status, job.run_at, job.seq).await
}

/// [`position`] of each of `jobs`, in their order: the line read once for all of them (the
/// console's view of its head), Postgres only for a job the line does not hold.
pub async fn positions(
    limiter: &jewelshot_ratelimit::Limiter,
    db: &jewelshot_db::Db,
    jobs: &[jewelshot_db::jobs::JobRow],
    high_burst: u32,
) -> Result<Vec<i64>, jewelshot_db::DbError> {
    let queued: Vec<&jewelshot_db::jobs::JobRow> =
        jobs.iter().filter(|j| j.status == jewelshot_domain::JobStatus::Queued).collect();
    let entries: Vec<_> = queued.iter().copied().map(line_entry).collect();
    let mut places = match limiter.positions(&entries, high_burst).await {
        Ok(places) => places.into_iter(),
        Err(e) => {
            tracing::warn!(error = %e, "dispatch line unavailable; positions from Postgres");
            vec![jewelshot_ratelimit::LinePlace::Absent; queued.len()].into_iter()
        }
    };
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        if job.status != jewelshot_domain::JobStatus::Queued {
            out.push(0);
            continue;
        }
        let place = places.next().unwrap_or(jewelshot_ratelimit::LinePlace::Absent);
        out.push(position_from(Ok(place), db, job.status, job.run_at, job.seq).await?);
    }
    Ok(out)
}

/// [`position`] of a job known by its snapshot.
pub async fn snapshot_position(
    limiter: &jewelshot_ratelimit::Limiter,
    db: &jewelshot_db::Db,
    snap: &jewelshot_db::snapshot::JobSnapshot,
    high_burst: u32,
) -> Result<i64, jewelshot_db::DbError> {
    if snap.status() != jewelshot_domain::JobStatus::Queued {
        return Ok(0);
    }
    let place = limiter.position(&snapshots::entry_of(snap), high_burst).await;
    position_from(place, db, snap.status(), snap.view.scheduled_for, snap.seq).await
}

/// The position a look at the line gives, or Postgres's submit-order count when the line does
/// not hold the job (waiting among retries, put back a moment from now) or cannot be reached.
pub async fn position_from(
    place: Result<jewelshot_ratelimit::LinePlace, jewelshot_ratelimit::LimitError>,
    db: &jewelshot_db::Db,
    status: jewelshot_domain::JobStatus,
    run_at: Option<DateTime<Utc>>,
    seq: i64,
) -> Result<i64, jewelshot_db::DbError> {
    use jewelshot_ratelimit::LinePlace;
    match place {
        Ok(LinePlace::Queued(p)) => return Ok(p as i64),
        Ok(LinePlace::Scheduled) => return Ok(0),
        Ok(LinePlace::Dispatched) => return Ok(1),
        Ok(LinePlace::Absent) => {}
        Err(e) => tracing::warn!(seq, error = %e, "dispatch line unavailable; position from Postgres"),
    }
    db.queue_position_of(status, run_at, seq).await
}

/// Cancel a waiting or running job — `owner`'s, or any job for an operator (`None`) — and take
/// it out of the dispatch line at once, so the positions behind it move up now rather than when
/// a dispatcher reaches it (one that still hands it out finds it canceled and returns its slot).
/// The gateway's `DELETE /api/jobs/{id}` and `jewelshot jobs cancel` both come here (the CLI
/// without a line when Redis does not answer: the job is still canceled, and skipped when a
/// dispatcher reaches it).
pub async fn cancel(
    line: Option<(&jewelshot_ratelimit::Limiter, &snapshots::SnapshotConfig)>,
    db: &jewelshot_db::Db,
    job: JobId,
    owner: Option<jewelshot_domain::UserId>,
) -> Result<jewelshot_db::jobs::CancelOutcome, jewelshot_db::DbError> {
    let outcome = db.cancel_job(job, owner).await?;
    if let jewelshot_db::jobs::CancelOutcome::Canceled(row) = &outcome {
        tracing::info!(job_id = %job, "job canceled");
        let Some((line, snapshot_cfg)) = line else { return Ok(outcome) };
        if let Err(e) = line.remove(&line_entry(row)).await {
            // Still safe: the dispatcher skips a canceled job; only positions lag until then.
            tracing::warn!(job_id = %job, error = %e, "could not take a canceled job out of line");
        }
        // Before answering: the canceller's next poll must not read the job as still waiting.
        if let Err(e) = snapshots::publish(line, db, snapshot_cfg, &[job]).await {
            tracing::warn!(job_id = %job, error = %e, "could not publish a canceled job's snapshot");
            let _ = line.invalidate_record(&job.to_string()).await;
        }
        // Jobs sharing its fal request are not canceled with it: the oldest takes it over.
        if row.cache_key.is_some() {
            if let Err(e) = settle_cache(db, line, None, job, Duration::ZERO).await {
                tracing::warn!(job_id = %job, error = %e, "the jobs sharing a canceled job's request are left to the reconciler");
            }
        }
    }
    Ok(outcome)
}

/// A job ended: settle what the result cache owes (`jewelshot_db::Db::cache_settle`). A job
/// that took over a request it shared goes in the dispatch line now; a sharer that completed or
/// failed with a webhook gets a task of its own (with `queue`), whose worker finds it final and
/// runs `notify-user` as for any finished job. Failures are logged: the workers' reconciler
/// settles what is left ([`jewelshot_db::Db::unsettled_leaders`]).
pub async fn settle_cache(
    db: &jewelshot_db::Db,
    line: &jewelshot_ratelimit::Limiter,
    queue: Option<&Queue>,
    job: JobId,
    ttl: Duration,
) -> Result<Vec<jewelshot_db::cache::Settled>, jewelshot_db::DbError> {
    use jewelshot_db::cache::SettledAs;
    let settled = db.cache_settle(job, ttl).await?;
    for s in &settled {
        tracing::info!(job_id = %s.job, shared_with = %job, outcome = ?s.outcome, "settled a job that shared a request");
        match s.outcome {
            SettledAs::Promoted => {
                let Some(row) = db.job(s.job).await? else { continue };
                let due = row.run_at.map(|t| t.timestamp_millis());
                if let Err(e) = line.enqueue(&line_entry(&row), due).await {
                    tracing::warn!(job_id = %s.job, error = %e, "a job that took over a request could not be put in line; the reconciler will");
                }
            }
            SettledAs::Complete | SettledAs::Failed if s.webhook => {
                if let Some(queue) = queue {
                    if let Err(e) = queue.push(s.job, None).await {
                        tracing::warn!(job_id = %s.job, error = %e, "a settled job's notification could not be handed to a worker");
                    }
                }
            }
            SettledAs::Complete | SettledAs::Failed => {}
        }
    }
    Ok(settled)
}

/// Where [`put_back`] put a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// In the dispatch line (or scheduled), at its fair place: it has not reached fal.
    Line,
    /// A task of its own: its fal request exists (or its generate step finished), so it needs no
    /// new slot from the line.
    Task,
}

/// Put a waiting job back where it belongs: a job whose `generate-image` has not started goes
/// back in the dispatch line, at the fair place its `seq` gives it; one past that point gets its
/// task pushed again (finished steps are kept). Idempotent.
pub async fn put_back(
    limiter: &jewelshot_ratelimit::Limiter,
    queue: &Queue,
    job: &jewelshot_db::jobs::JobRow,
    generate_started: bool,
) -> Result<Placed, QueueError> {
    if generate_started {
        queue.repush(job.id, None).await?;
        return Ok(Placed::Task);
    }
    let due = job.run_at.map(|t| t.timestamp_millis());
    limiter.enqueue(&line_entry(job), due).await.map_err(|e| QueueError::Push(e.to_string()))?;
    Ok(Placed::Line)
}

/// What [`requeue`] did with one job.
#[derive(Debug)]
pub enum Requeued {
    /// Back in line or in a task of its own.
    Done(Placed),
    /// It changed since it was listed (another requeue, a cancel): left alone.
    Skipped,
    /// Redis refused it: the job was failed again as it was, so a later requeue finds it.
    NotEnqueued(QueueError),
}

/// Requeue one failed or stuck job — the CLI's `requeue` and the operator console share this:
/// its row reset (finished steps kept unless `from_start`), then put back where it belongs
/// ([`put_back`]). Safe to repeat: a job changed since `job` was read is skipped.
pub async fn requeue(
    db: &jewelshot_db::Db,
    line: &jewelshot_ratelimit::Limiter,
    queue: &Queue,
    job: &jewelshot_db::jobs::JobRow,
    from_start: bool,
) -> Result<Requeued, jewelshot_db::DbError> {
    let Some(row) = db.requeue_job(job, from_start).await? else { return Ok(Requeued::Skipped) };
    let started = db.generate_started(row.id).await?;
    match put_back(line, queue, &row, started).await {
        Ok(placed) => {
            tracing::info!(job_id = %row.id, ?placed, "job requeued");
            Ok(Requeued::Done(placed))
        }
        Err(e) => {
            let code = job.error_code.as_deref().unwrap_or("requeue-failed");
            db.fail_job(row.id, code, job.error_message.as_deref().unwrap_or("")).await?;
            Ok(Requeued::NotEnqueued(e))
        }
    }
}

/// The Redis channel on which credential changes are announced to every gateway (their
/// credential caches drop what a message names): `key:<api key id>`, `user:<user id>`, or `*`.
pub fn auth_channel(cfg: &QueueConfig) -> String {
    format!("{}:auth:invalidate", cfg.name)
}

/// Announce a credential change (`key:<id>`, `user:<id>`, `*`) to every gateway; how many
/// gateways were listening.
pub async fn announce_auth_change(conn: &mut RedisConn, cfg: &QueueConfig, what: &str) -> Result<u64, QueueError> {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let n: u64 =
        tokio::time::timeout(timeout, redis::cmd("PUBLISH").arg(auth_channel(cfg)).arg(what).query_async(conn))
            .await
            .map_err(|_| QueueError::Timeout)??;
    Ok(n)
}

/// Listen on [`auth_channel`]: a subscription of its own (pub/sub takes a whole connection).
pub async fn subscribe_auth_changes(cfg: &QueueConfig) -> Result<redis::aio::PubSub, QueueError> {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let client = pubsub_client(cfg)?;
    let mut pubsub =
        tokio::time::timeout(timeout, client.get_async_pubsub()).await.map_err(|_| QueueError::Timeout)??;
    tokio::time::timeout(timeout, pubsub.subscribe(auth_channel(cfg))).await.map_err(|_| QueueError::Timeout)??;
    Ok(pubsub)
}

/// The apalis backend configuration used by both sides, so keys agree.
pub fn apalis_config(cfg: &QueueConfig) -> Config {
    Config::default().queue(&cfg.name)
}

/// The nodes `redis_url` names (one, or in cluster mode any number, comma-separated).
fn nodes(cfg: &QueueConfig) -> Vec<&str> {
    cfg.redis_url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

/// A client for subscriptions (they take a connection of their own). In a cluster, a message
/// published on any node reaches subscribers on every node, so the first node serves.
pub fn pubsub_client(cfg: &QueueConfig) -> Result<redis::Client, QueueError> {
    let first = nodes(cfg).first().copied().ok_or_else(|| QueueError::Config("queue.redis_url is empty".into()))?;
    Ok(redis::Client::open(first)?)
}

/// Open a Redis connection that reconnects by itself, with command timeouts: to one server, or
/// with [`QueueConfig::cluster`] to a Redis Cluster (after checking the queue name's slot).
pub async fn connect(cfg: &QueueConfig) -> Result<RedisConn, QueueError> {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    if cfg.cluster {
        check_cluster_key("JEWELSHOT_QUEUE__NAME", &cfg.name).map_err(QueueError::Config)?;
        let client = redis::cluster::ClusterClientBuilder::new(nodes(cfg))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2)
            .build()?;
        return tokio::time::timeout(timeout, client.get_async_connection())
            .await
            .map_err(|_| QueueError::Timeout)?
            .map(RedisConn::from)
            .map_err(QueueError::from);
    }
    let client = redis::Client::open(cfg.redis_url.as_str())?;
    let mgr_cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2);
    tokio::time::timeout(timeout, client.get_connection_manager_with_config(mgr_cfg))
        .await
        .map_err(|_| QueueError::Timeout)?
        .map(RedisConn::from)
        .map_err(QueueError::from)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Queue {
    pub async fn connect(cfg: &QueueConfig) -> Result<Self, QueueError> {
        Ok(Self::with_connection(connect(cfg).await?, cfg))
    }

    /// A queue over an open connection.
    pub fn with_connection(conn: RedisConn, cfg: &QueueConfig) -> Self {
        let storage = RedisStorage::new(conn.clone()).with_config(apalis_config(cfg));
        Self { storage, conn, timeout: Duration::from_millis(cfg.timeout_ms), name: cfg.name.clone() }
    }

    /// The list of tasks ready to be fetched (the dispatchers keep it short).
    pub fn ready_list(&self) -> String {
        self.storage.get_config().active_jobs_list()
    }

    /// The set where apalis-redis parks pushed and retried tasks until a fetch promotes them.
    pub fn scheduled_set(&self) -> String {
        self.storage.get_config().scheduled_jobs_set()
    }

    /// Push `job` to run now, or at `run_at`.
    pub async fn push(&self, job: JobId, run_at: Option<DateTime<Utc>>) -> Result<(), QueueError> {
        let mut builder = TaskBuilder::new(EditTask { job_id: job }).task_id(TaskId::from_ulid(job.0));
        if let Some(at) = run_at {
            builder = builder.run_at_timestamp(at.timestamp().max(0) as u64);
        }
        let mut storage = self.storage.clone();
        tokio::time::timeout(self.timeout, storage.push_task(builder.build()))
            .await
            .map_err(|_| QueueError::Timeout)?
            .map_err(|e| QueueError::Push(e.to_string()))
    }

    /// Push a job whose task ran before (a requeue). apalis-redis ignores a push whose task id
    /// it already holds (`HSETNX` on its data hash), so the old task's records go first, in one
    /// MULTI, then the task is pushed afresh.
    pub async fn repush(&self, job: JobId, run_at: Option<DateTime<Utc>>) -> Result<(), QueueError> {
        let cfg = self.storage.get_config();
        let id = job.to_string();
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(cfg.job_data_hash(), &id)
            .del(format!("{}:{id}", cfg.job_meta_hash()))
            .srem(cfg.done_jobs_set(), &id)
            .srem(cfg.dead_jobs_set(), &id)
            .zrem(cfg.scheduled_jobs_set(), &id)
            .lrem(cfg.active_jobs_list(), 0, &id);
        tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn))
            .await
            .map_err(|_| QueueError::Timeout)??;
        self.push(job, run_at).await
    }

    /// PING, for readiness checks.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map_err(|_| QueueError::Timeout)??;
        Ok(())
    }

    /// Worker processes whose heartbeat apalis-redis's workers set saw within `within`.
    pub async fn workers_alive(&self, within: Duration) -> Result<u64, QueueError> {
        let cfg = self.storage.get_config();
        let mut conn = self.conn.clone();
        let now = unix_now();
        let since = now.saturating_sub(within.as_secs());
        let n: u64 = tokio::time::timeout(
            self.timeout,
            redis::cmd("ZCOUNT").arg(cfg.workers_set()).arg(since).arg("+inf").query_async(&mut conn),
        )
        .await
        .map_err(|_| QueueError::Timeout)??;
        Ok(n)
    }

    /// The models the fleet runs: one member per worker process (`<model>` and `<worker>`, a
    /// newline between), scored with the Unix time it last said so.
    fn models_key(&self) -> String {
        format!("{}:models", self.name)
    }

    /// Say that worker process `worker` runs `model` (every heartbeat; the gateway keys the
    /// result cache with the model the live fleet runs).
    pub async fn announce_model(&self, worker: &str, model: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("ZADD").arg(self.models_key()).arg(unix_now()).arg(format!("{model}\n{worker}")).clone();
        tokio::time::timeout(self.timeout, cmd.query_async::<()>(&mut conn))
            .await
            .map_err(|_| QueueError::Timeout)??;
        Ok(())
    }

    /// Take back [`Queue::announce_model`] (a worker stopping).
    pub async fn withdraw_model(&self, worker: &str, model: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("ZREM").arg(self.models_key()).arg(format!("{model}\n{worker}")).clone();
        tokio::time::timeout(self.timeout, cmd.query_async::<()>(&mut conn))
            .await
            .map_err(|_| QueueError::Timeout)??;
        Ok(())
    }

    /// The models worker processes announced within `within`, each once. Announcements older
    /// than an hour (processes long gone) are dropped on the way.
    pub async fn fleet_models(&self, within: Duration) -> Result<std::collections::BTreeSet<String>, QueueError> {
        let (key, now) = (self.models_key(), unix_now());
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE").arg(&key).arg("-inf").arg(now.saturating_sub(3600)).ignore();
        pipe.cmd("ZRANGEBYSCORE").arg(&key).arg(now.saturating_sub(within.as_secs())).arg("+inf");
        let mut conn = self.conn.clone();
        let (members,): (Vec<String>,) = tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
            .await
            .map_err(|_| QueueError::Timeout)??;
        Ok(members.iter().filter_map(|m| m.split_once('\n').map(|(model, _)| model.to_owned())).collect())
    }

    /// Every worker process apalis-redis knows, with the Unix time of its last heartbeat, newest
    /// first.
    pub async fn workers(&self) -> Result<Vec<(String, u64)>, QueueError> {
        let cfg = self.storage.get_config();
        let mut conn = self.conn.clone();
        let workers: Vec<(String, f64)> = tokio::time::timeout(
            self.timeout,
            redis::cmd("ZREVRANGE").arg(cfg.workers_set()).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut conn),
        )
        .await
        .map_err(|_| QueueError::Timeout)??;
        Ok(workers.into_iter().map(|(w, at)| (w, at.max(0.0) as u64)).collect())
    }

    /// Depths of the queue's Redis structures.
    pub async fn depths(&self) -> Result<QueueDepths, QueueError> {
        let cfg = self.storage.get_config();
        let mut conn = self.conn.clone();
        let workers: Vec<String> = tokio::time::timeout(
            self.timeout,
            redis::cmd("ZRANGE").arg(cfg.workers_set()).arg(0).arg(-1).query_async(&mut conn),
        )
        .await
        .map_err(|_| QueueError::Timeout)??;
        let mut pipe = redis::pipe();
        pipe.cmd("LLEN").arg(cfg.active_jobs_list()).cmd("ZCARD").arg(cfg.scheduled_jobs_set());
        for w in &workers {
            pipe.cmd("SCARD").arg(format!("{}:{w}", cfg.inflight_jobs_set()));
        }
        let counts: Vec<u64> = tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
            .await
            .map_err(|_| QueueError::Timeout)??;
        Ok(QueueDepths {
            active: counts.first().copied().unwrap_or(0),
            scheduled: counts.get(1).copied().unwrap_or(0),
            inflight: counts.iter().skip(2).sum(),
        })
    }

    /// The Redis connection (shared, auto-reconnecting).
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }
}
