//! Gateway configuration (`JEWELSHOT_*`, nested with `__`).

use figment::{
    providers::{Env, Serialized},
    Figment,
};
use jewelshot_db::DbConfig;
use jewelshot_queue::QueueConfig;
use jewelshot_storage::StorageConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub gateway: GatewaySettings,
    pub database: DbConfig,
    /// `JEWELSHOT_SECRETS__*`: the keys webhook secrets are sealed with.
    pub secrets: jewelshot_db::secrets::SecretsConfig,
    pub queue: QueueConfig,
    pub storage: StorageConfig,
    pub jobs: JobSettings,
    pub webhook: WebhookSettings,
    pub uploads: UploadSettings,
    /// `JEWELSHOT_IMAGES__*`: how uploads are shrunk (same settings as the worker's).
    pub images: jewelshot_imaging::Limits,
    /// `JEWELSHOT_FAL__LIMITER_PREFIX` / `__HIGH_BURST`, shared with the workers: where the line
    /// and the upstream capacity live, and how positions interleave classes.
    pub fal: jewelshot_ratelimit::LineSettings,
    pub limits: UserLimits,
    /// `JEWELSHOT_JWT__*`: identity-provider tokens beside API keys (off by default).
    pub jwt: crate::jwt::JwtSettings,
    /// `JEWELSHOT_MONITORING__*`: what the metrics compare against, how often they are sampled.
    pub monitoring: jewelshot_domain::monitoring::MonitoringSettings,
    /// `JEWELSHOT_CORS__*`: browsers on other origins (off until origins are listed).
    pub cors: crate::cors::CorsSettings,
    /// `JEWELSHOT_CONSOLE__*`: the operator console at `/admin`.
    pub console: crate::console::ConsoleSettings,
    /// `JEWELSHOT_CACHE__*`: the result cache (shared with the workers).
    pub cache: jewelshot_domain::cache::CacheSettings,
}

/// `JEWELSHOT_LIMITS__*`: what one user may ask of the fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UserLimits {
    /// Submissions per user per minute, over every gateway (0 = unlimited); over it → 429.
    pub submits_per_minute: u32,
    /// Jobs a user may have waiting, scheduled ones included (0 = unlimited); over it → 429.
    pub max_queued_per_user: i64,
    /// Plans whose users may submit `priority: "high"`; others get 403 `priority-not-allowed`.
    pub high_priority_plans: Vec<String>,
    /// Failed key lookups one client address may cause a minute, over every gateway (0 =
    /// unlimited); past it the address gets 429 `too-many-auth-failures` without a lookup.
    pub failed_auth_per_minute: u32,
    /// How long a request without a valid credential waits for its 401, in milliseconds. A
    /// person who mistyped a key does not notice; a client that floods the API with guesses or
    /// junk gets at most (its connections ÷ this delay) answers a second, so it cannot take the
    /// CPU the real users' requests need. Waiting costs a timer, no thread. 0 = answer at once.
    pub refused_auth_delay_ms: u64,
}

impl Default for UserLimits {
    fn default() -> Self {
        Self {
            submits_per_minute: 30,
            max_queued_per_user: 100,
            high_priority_plans: vec!["pro".into(), "business".into()],
            failed_auth_per_minute: 20,
            refused_auth_delay_ms: 250,
        }
    }
}

/// `JEWELSHOT_UPLOADS__*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadSettings {
    /// Bytes a user may keep in storage (uploads + gallery); 0 = unlimited.
    pub quota_bytes_per_user: i64,
    /// Images compressed at once per gateway process (0 = cores − 1, at least 1): the rest of
    /// the cores stay free for the thin request path.
    pub image_workers: usize,
    /// Longest an upload waits for a compression slot before 503, in milliseconds.
    pub queue_timeout_ms: u64,
    /// Uploads one user may have in progress on one gateway (0 = unlimited); more → 429
    /// `too-many-uploads`, answered before the body is read.
    pub max_concurrent_per_user: usize,
    /// Longest the whole body may take to arrive, in milliseconds; slower → 408.
    pub body_timeout_ms: u64,
    /// Parts a multipart upload may have (the file and a few fields); more → 400.
    pub max_multipart_parts: usize,
}

impl Default for UploadSettings {
    fn default() -> Self {
        Self {
            quota_bytes_per_user: 1024 * 1024 * 1024,
            image_workers: 0,
            queue_timeout_ms: 30_000,
            max_concurrent_per_user: 2,
            body_timeout_ms: 60_000,
            max_multipart_parts: 8,
        }
    }
}

impl UploadSettings {
    pub fn workers(&self) -> usize {
        if self.image_workers > 0 {
            return self.image_workers;
        }
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).saturating_sub(1).max(1)
    }

    pub fn quota(&self) -> Option<i64> {
        (self.quota_bytes_per_user > 0).then_some(self.quota_bytes_per_user)
    }
}

impl GatewaySettings {
    /// `trusted_proxies` parsed (a bare address is a /32 or /128).
    pub fn proxies(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("JEWELSHOT_GATEWAY__TRUSTED_PROXIES: {p:?} is not an address or CIDR"))
            })
            .collect()
    }
}

/// `JEWELSHOT_GATEWAY__*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: String,
    /// HTTP worker threads (0 = one per core).
    pub workers: usize,
    /// Largest JSON body accepted, in bytes.
    pub max_json_bytes: usize,
    /// Longest a readiness probe waits on each dependency, in milliseconds.
    pub ready_timeout_ms: u64,
    /// On SIGTERM, how long in-flight requests get to finish, in seconds.
    pub shutdown_grace_secs: u64,
    /// Proxies (addresses or CIDRs, e.g. the load balancer's subnet) whose `X-Forwarded-For` is
    /// believed; from anyone else the header is ignored and the peer address is the client's.
    pub trusted_proxies: Vec<String>,
    /// Where `GET /metrics` is served: its own listener, never the public one (port 0 picks a
    /// free port; empty = no metrics endpoint).
    pub metrics_listen: String,
    /// One log line per request (method, path, status, time, the job a submit made; not
    /// `/healthz`). Off by default: at thousands of requests a second the load balancer's log
    /// is the cheaper place for it (measured: ~5 % of the gateway's CPU). Requests refused
    /// for want of a valid credential are never logged one by one (a token flood would flood the
    /// logs): they are counted, and summed up in one line every 10 s.
    pub access_log: bool,
    /// How long a known API key's user is reused without asking Postgres, in milliseconds
    /// (revocations and plan changes reach every gateway at once through Redis; this bounds
    /// what a missed announcement leaves behind). 0 = ask every time.
    pub auth_cache_ttl_ms: u64,
    /// Keys the cache holds (least recently used ones leave first).
    pub auth_cache_entries: usize,
    /// Answer polls from the job snapshots kept in Redis (one round trip, no Postgres); off,
    /// every poll reads Postgres (the same answer, slower).
    pub poll_snapshots: bool,
    /// Live status streams (`GET /api/jobs/{id}/events`): a comment this often keeps an idle
    /// connection open through proxies, in seconds.
    pub events_heartbeat_secs: u64,
    /// A waiting job's stream re-reads its place in line at most this often while the line
    /// moves, in milliseconds.
    pub events_line_interval_ms: u64,
    /// A stream ends after this long (the client reconnects with `Last-Event-ID`), in seconds.
    pub events_max_secs: u64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            max_json_bytes: 64 * 1024,
            ready_timeout_ms: 2_000,
            shutdown_grace_secs: 15,
            trusted_proxies: Vec::new(),
            metrics_listen: "127.0.0.1:9464".into(),
            access_log: false,
            auth_cache_ttl_ms: 5_000,
            auth_cache_entries: 10_000,
            poll_snapshots: true,
            events_heartbeat_secs: 15,
            events_line_interval_ms: 500,
            events_max_secs: 3_600,
        }
    }
}

/// `JEWELSHOT_JOBS__*`: how jobs are run, decided at submit and stored with the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSettings {
    /// Attempts a job gets before it fails (each crash-recovery counts as one).
    pub max_attempts: i32,
    /// The fal model, reported by `GET /api/queue`.
    pub model: String,
    /// Jobs the upstream runs at once across the fleet, assumed until workers have registered
    /// their fal accounts (then the pool's own limits are used); turns a position into an ETA.
    pub upstream_parallelism: u32,
    /// Generation time assumed before any has been observed, in seconds.
    pub default_generation_secs: f64,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self { max_attempts: 5, model: jewelshot_fal_model(), upstream_parallelism: 4, default_generation_secs: 30.0 }
    }
}

fn jewelshot_fal_model() -> String {
    "fal-ai/flux-pro/kontext".into()
}

/// `JEWELSHOT_WEBHOOK__*` (shared with the worker).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookSettings {
    /// Development only: accept `http://` and loopback webhook targets.
    pub allow_insecure: bool,
}

impl Config {
    pub fn load() -> anyhow::Result<Self> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Env::prefixed("JEWELSHOT_").split("__"))
            .extract()?;
        anyhow::ensure!(cfg.jobs.max_attempts >= 1, "JEWELSHOT_JOBS__MAX_ATTEMPTS must be at least 1");
        anyhow::ensure!(cfg.gateway.max_json_bytes >= 1024, "JEWELSHOT_GATEWAY__MAX_JSON_BYTES is too small");
        cfg.gateway.proxies().map_err(anyhow::Error::msg)?;
        cfg.jwt.validate().map_err(anyhow::Error::msg)?;
        cfg.cors.validate().map_err(anyhow::Error::msg)?;
        cfg.queue.check_line(&cfg.fal).map_err(anyhow::Error::msg)?;
        Ok(cfg)
    }
}
