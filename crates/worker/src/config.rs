//! Worker configuration: one struct per concern, loaded from `JEWELSHOT_*` (nested with `__`).

use figment::{
    providers::{Env, Serialized},
    Figment,
};
use jewelshot_db::DbConfig;
use jewelshot_fal::{FalConfig, Secret};
use jewelshot_queue::QueueConfig;
use jewelshot_ratelimit::LineSettings;
use jewelshot_storage::StorageConfig;
use serde::{Deserialize, Serialize};

/// Everything `jewelshot-worker` reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub database: DbConfig,
    /// `JEWELSHOT_SECRETS__*`: the keys webhook secrets are sealed with.
    pub secrets: jewelshot_db::secrets::SecretsConfig,
    pub queue: QueueConfig,
    pub fal: FalSettings,
    pub storage: StorageConfig,
    pub worker: WorkerSettings,
    pub webhook: WebhookConfig,
    /// `JEWELSHOT_IMAGES__*`: how results are shrunk before they are stored.
    pub images: jewelshot_imaging::Limits,
    /// `JEWELSHOT_MONITORING__*`: what the metrics compare against, how often they are sampled.
    pub monitoring: jewelshot_domain::monitoring::MonitoringSettings,
    /// `JEWELSHOT_CACHE__*`: the result cache (shared with the gateways).
    pub cache: jewelshot_domain::cache::CacheSettings,
}

/// `JEWELSHOT_FAL__*`: the client and account pool, and the dispatch line's settings (which
/// gateways and the CLI read too, through the same [`LineSettings`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FalSettings {
    #[serde(flatten)]
    pub client: FalConfig,
    #[serde(flatten)]
    pub line: LineSettings,
}

/// `JEWELSHOT_WORKER__*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// Unique name of this worker process; generated when empty.
    pub id: String,
    /// Jobs run at once by this process (also the fetch batch size, so one worker does not hoard).
    pub concurrency: usize,
    /// How often an idle worker looks for new tasks, in milliseconds.
    pub poll_interval_ms: u64,
    /// Liveness heartbeat, in seconds; a worker silent for `heartbeat_secs * missed_heartbeats`
    /// is presumed dead and its tasks are handed to others.
    pub heartbeat_secs: u64,
    pub missed_heartbeats: usize,
    /// First retry delay, in milliseconds; doubles per attempt, with full jitter.
    pub backoff_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// Longest download of a generated image, in seconds.
    pub download_timeout_secs: u64,
    /// Largest generated image accepted, in bytes.
    pub max_result_bytes: u64,
    /// Development only: fetch results from `http://` and loopback addresses (the emulator).
    /// Off, results come only from public https addresses, like webhooks.
    pub allow_insecure_downloads: bool,
    /// On SIGTERM, how long in-flight jobs get to finish, in seconds.
    pub shutdown_grace_secs: u64,
    /// Address for Prometheus metrics (`GET /metrics`; `0.0.0.0:9465` in containers); empty = off.
    /// A taken port (two workers on one machine) falls back to a free one, printed at start.
    pub metrics_listen: String,
    /// How often finished tasks' records are removed from Redis, in seconds (0 = never).
    pub vacuum_interval_secs: u64,
    /// Dispatched jobs that may wait in the work queue for a worker (0 = `concurrency`): the
    /// dispatchers stop there, so the queue stays short however long the line.
    pub dispatch_ahead: u32,
    /// How often this process refreshes the heartbeat of the jobs it runs (in Postgres), seconds.
    pub job_heartbeat_secs: u64,
    /// A processing job whose heartbeat is this old is presumed orphaned: another delivery may
    /// run it, and the reconciler pushes it again if Redis no longer holds it. Seconds.
    pub orphan_after_secs: u64,
    /// How often the reconciler (one worker at a time) compares Postgres with Redis, in seconds
    /// (0 = never).
    pub reconcile_interval_secs: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            id: String::new(),
            concurrency: 4,
            poll_interval_ms: 250,
            heartbeat_secs: 10,
            missed_heartbeats: 3,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            download_timeout_secs: 60,
            max_result_bytes: 50 * 1024 * 1024,
            allow_insecure_downloads: false,
            shutdown_grace_secs: 30,
            metrics_listen: "127.0.0.1:9465".into(),
            vacuum_interval_secs: 30,
            dispatch_ahead: 0,
            job_heartbeat_secs: 5,
            orphan_after_secs: 30,
            reconcile_interval_secs: 10,
        }
    }
}

/// `JEWELSHOT_WEBHOOK__*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    /// Development only: allow `http://` and loopback targets. Never enable in production.
    pub allow_insecure: bool,
    /// Per delivery attempt, in milliseconds.
    pub timeout_ms: u64,
    /// Delivery attempts before giving up (the job stays complete).
    pub max_attempts: u32,
    /// First redelivery delay, in milliseconds; doubles per attempt, with jitter.
    pub backoff_base_ms: u64,
    /// Delivery attempts this process makes at once (beside its jobs, never in their slots).
    pub concurrency: usize,
    /// Attempts in flight for one user across the fleet: an endpoint that never answers holds
    /// at most this many delivery slots.
    pub per_user_concurrency: u32,
    /// How often an idle delivery loop looks for due deliveries, in milliseconds (a job this
    /// process finishes wakes it at once).
    pub poll_interval_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            allow_insecure: false,
            timeout_ms: 10_000,
            max_attempts: 6,
            backoff_base_ms: 2_000,
            concurrency: 16,
            per_user_concurrency: 2,
            poll_interval_ms: 1_000,
        }
    }
}

impl Config {
    /// Defaults, then `JEWELSHOT_*` variables; `FAL_KEY` fills the fal key when unset.
    pub fn load() -> anyhow::Result<Self> {
        let mut cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Env::prefixed("JEWELSHOT_").split("__"))
            .extract()?;
        if cfg.fal.client.key.0.is_empty() && cfg.fal.client.keys.is_empty() {
            if let Ok(k) = std::env::var("FAL_KEY") {
                cfg.fal.client.key = Secret(k);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field checks, at start-up rather than at the first job.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.worker.concurrency > 0, "JEWELSHOT_WORKER__CONCURRENCY must be at least 1");
        anyhow::ensure!(self.worker.heartbeat_secs > 0, "JEWELSHOT_WORKER__HEARTBEAT_SECS must be at least 1");
        crate::upstream::resolve_pool(&self.fal.client)?;
        anyhow::ensure!(
            self.worker.job_heartbeat_secs > 0 && self.worker.orphan_after_secs > 2 * self.worker.job_heartbeat_secs,
            "JEWELSHOT_WORKER__ORPHAN_AFTER_SECS must exceed twice JEWELSHOT_WORKER__JOB_HEARTBEAT_SECS (≥ 1)"
        );
        self.fal.line.validate().map_err(anyhow::Error::msg)?;
        self.queue.check_line(&self.fal.line).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(self.worker.poll_interval_ms > 0, "JEWELSHOT_WORKER__POLL_INTERVAL_MS must be at least 1");
        let w = &self.webhook;
        anyhow::ensure!(
            w.concurrency > 0 && w.per_user_concurrency > 0 && w.poll_interval_ms > 0 && w.max_attempts > 0,
            "JEWELSHOT_WEBHOOK__CONCURRENCY, __PER_USER_CONCURRENCY, __POLL_INTERVAL_MS and __MAX_ATTEMPTS must be at least 1"
        );
        Ok(())
    }
}
