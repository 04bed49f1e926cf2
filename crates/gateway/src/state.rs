//! What every handler shares.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jewelshot_db::Db;
use jewelshot_domain::UserId;
use jewelshot_queue::Queue;
use jewelshot_ratelimit::{Capacity, KeyStatus, Limiter, WindowLimiter};
use jewelshot_storage::ObjectStore;

use crate::config::Config;

/// Connections of a gateway's own pool (`/metrics`, background reads); the rest of
/// `database.max_connections` is split between the HTTP worker threads.
pub const BASE_POOL: usize = 2;

/// What every handler shares. Each HTTP worker thread has its own (see [`AppState::for_worker`]):
/// its own Postgres pool and Redis connection, driven on that thread, so a request never waits
/// for another thread to carry its query; everything process-wide (caches, limits, slots) is
/// shared between them.
pub struct AppState {
    pub db: Db,
    pub queue: Queue,
    pub store: Arc<dyn ObjectStore>,
    pub cfg: Config,
    /// Serves `/files/…` only when storage is the local filesystem.
    pub serve_files: bool,
    /// Bounds image compression to `uploads.image_workers` at once.
    pub image_slots: Arc<tokio::sync::Semaphore>,
    mean_generation: Arc<crate::refresh::Refreshed<Option<f64>>>,
    cache_stats: Arc<crate::refresh::Refreshed<jewelshot_db::cache::CacheStats>>,
    /// Reads the workers' upstream limiter (no keys of its own).
    pub limiter: Limiter,
    upstream: Arc<crate::refresh::Refreshed<Vec<KeyStatus>>>,
    /// The model the result cache keys requests with (see [`AppState::cache_model`]).
    cache_model: Arc<crate::refresh::Refreshed<Option<Arc<str>>>>,
    /// Per-user submissions per minute, shared by every gateway through Redis.
    pub submits: WindowLimiter,
    /// Uploads in progress per user on this gateway.
    uploading: Arc<Mutex<HashMap<UserId, usize>>>,
    /// Failed key lookups per client address (shared through Redis), and the addresses this
    /// gateway has seen go over, until when.
    pub auth_failures: WindowLimiter,
    blocked: Arc<Mutex<HashMap<std::net::IpAddr, Instant>>>,
    /// `gateway.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Verifies `/files/…` URLs (the local store signs them with the same key).
    pub file_urls: jewelshot_storage::local::UrlSigner,
    /// Identity-provider tokens, when `jwt.jwks_url` is set.
    pub jwt: Option<Arc<crate::jwt::JwtVerifier>>,
    /// API keys' users, kept for `auth_cache_ttl_ms`; dropped on announcements.
    pub auth_cache: Arc<crate::auth_cache::AuthCache>,
    /// Every pool of this process (its own and each worker thread's), for the connection metrics.
    pub pools: Arc<Mutex<Vec<Db>>>,
    /// Job announcements for this process's live status streams.
    pub events: Arc<crate::events::EventHub>,
    /// Requests (an upload and a cache basis) that hit the result cache lately: the next ones
    /// take the one-statement hit path.
    pub recent_hits: Arc<RecentHits>,
}

/// Requests that hit the result cache in the last [`RecentHits::TTL`], at most
/// [`RecentHits::MAX`] (beyond it, forgotten wholesale: a miss only costs the usual path): for
/// each upload and cache basis, the entry key its bytes gave (`<basis>:<content digest>`), so the
/// next such submit reads the entry by its key without looking at the upload again. An upload's
/// key names its bytes for good (a new upload gets a new key).
#[derive(Debug, Default)]
pub struct RecentHits(Mutex<HashMap<(String, String), (String, Instant)>>);

impl RecentHits {
    const TTL: Duration = Duration::from_secs(60);
    const MAX: usize = 10_000;

    /// The entry key `input_key` under `basis` hit lately.
    pub fn entry(&self, input_key: &str, basis: &str) -> Option<String> {
        let map = self.0.lock().ok()?;
        map.get(&(input_key.to_owned(), basis.to_owned()))
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(entry, _)| entry.clone())
    }

    pub fn remember(&self, input_key: &str, basis: &str, entry: &str) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= Self::MAX {
                map.clear();
            }
            map.insert((input_key.to_owned(), basis.to_owned()), (entry.to_owned(), Instant::now()));
        }
    }

    pub fn forget(&self, input_key: &str, basis: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&(input_key.to_owned(), basis.to_owned()));
        }
    }
}

/// One upload in progress for a user; its place frees when dropped.
pub struct UploadSlot {
    user: UserId,
    uploading: Arc<Mutex<HashMap<UserId, usize>>>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.uploading.lock() {
            if let Some(n) = map.get_mut(&self.user) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.user);
                }
            }
        }
    }
}

impl AppState {
    pub fn new(db: Db, queue: Queue, store: Arc<dyn ObjectStore>, cfg: Config) -> Self {
        let serve_files = cfg.storage.backend == "local";
        let image_slots = Arc::new(tokio::sync::Semaphore::new(cfg.uploads.workers()));
        let (limiter, submits, auth_failures) = Self::redis_users(&cfg, &queue);
        let trusted_proxies = cfg.gateway.proxies().unwrap_or_default();
        let file_urls = jewelshot_storage::local::UrlSigner::new(&cfg.storage.local);
        let auth_cache = Arc::new(crate::auth_cache::AuthCache::new(
            Duration::from_millis(cfg.gateway.auth_cache_ttl_ms),
            cfg.gateway.auth_cache_entries,
        ));
        Self {
            db,
            queue,
            store,
            cfg,
            serve_files,
            image_slots,
            mean_generation: Arc::new(crate::refresh::Refreshed::new(Duration::from_secs(10))),
            cache_stats: Arc::new(crate::refresh::Refreshed::new(Duration::from_secs(10))),
            limiter,
            upstream: Arc::new(crate::refresh::Refreshed::new(Duration::from_secs(2))),
            cache_model: Arc::new(crate::refresh::Refreshed::new(Duration::from_secs(2))),
            submits,
            uploading: Arc::default(),
            auth_failures,
            blocked: Arc::default(),
            pools: Arc::default(),
            events: crate::events::EventHub::new(),
            recent_hits: Arc::default(),
            auth_cache,
            trusted_proxies,
            file_urls,
            jwt: None,
        }
    }

    /// What talks to Redis, over `queue`'s connection.
    fn redis_users(cfg: &Config, queue: &Queue) -> (Limiter, WindowLimiter, WindowLimiter) {
        let timeout = Duration::from_millis(cfg.queue.timeout_ms);
        let limiter = cfg.fal.reader(queue.connection(), &cfg.queue.name, timeout);
        let window =
            |what: &str| WindowLimiter::new(queue.connection(), format!("{}:limits:{what}", cfg.queue.name), timeout);
        (limiter, window("submits"), window("auth-failures"))
    }

    /// This state for one HTTP worker thread (call it on that thread): a Postgres pool of its
    /// own (its share of `database.max_connections` after [`BASE_POOL`], at least one) and a
    /// Redis connection of its own, both
    /// driven by this thread; everything else shared with `self`. If Redis cannot be reached
    /// now, the worker shares `self`'s connection (which reconnects by itself).
    pub async fn for_worker(&self) -> Self {
        let workers = match self.cfg.gateway.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let mut db_cfg = self.cfg.database.clone();
        db_cfg.max_connections = (db_cfg.max_connections.saturating_sub(BASE_POOL) / workers).max(1);
        let db = match Db::connect(&db_cfg) {
            Ok(db) => db.with_keyring(self.db.keyring().clone()),
            Err(_) => self.db.clone(),
        };
        let queue = match Queue::connect(&self.cfg.queue).await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "no Redis connection of this worker's own yet; sharing the process's");
                self.queue.clone()
            }
        };
        let (limiter, submits, auth_failures) = Self::redis_users(&self.cfg, &queue);
        if let Ok(mut pools) = self.pools.lock() {
            pools.push(db.clone());
        }
        Self {
            db,
            queue,
            limiter,
            submits,
            auth_failures,
            store: self.store.clone(),
            cfg: self.cfg.clone(),
            serve_files: self.serve_files,
            image_slots: self.image_slots.clone(),
            mean_generation: self.mean_generation.clone(),
            cache_stats: self.cache_stats.clone(),
            upstream: self.upstream.clone(),
            cache_model: self.cache_model.clone(),
            uploading: self.uploading.clone(),
            blocked: self.blocked.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            file_urls: self.file_urls.clone(),
            jwt: self.jwt.clone(),
            auth_cache: self.auth_cache.clone(),
            pools: self.pools.clone(),
            events: self.events.clone(),
            recent_hits: self.recent_hits.clone(),
        }
    }

    /// What this process samples for the fleet-wide gauges (run it as a task of its own).
    pub fn fleet(&self) -> jewelshot_queue::fleet::Fleet {
        let (base, pools) = (self.db.clone(), self.pools.clone());
        jewelshot_queue::fleet::Fleet {
            limiter: self.limiter.clone(),
            queue: self.queue.clone(),
            db: self.db.clone(),
            pools: Arc::new(move || {
                let mut all = vec![base.pool_stats()];
                if let Ok(p) = pools.lock() {
                    all.extend(p.iter().map(Db::pool_stats));
                }
                all
            }),
            settings: self.cfg.monitoring.clone(),
            model: self.cfg.jobs.model.clone(),
        }
    }

    /// Until when `ip` is refused for failing too often, if it is (as this gateway last heard).
    pub fn auth_blocked(&self, ip: std::net::IpAddr) -> Option<Duration> {
        let blocked = self.blocked.lock().ok()?;
        let until = *blocked.get(&ip)?;
        until.checked_duration_since(Instant::now())
    }

    /// Count a failed lookup from `ip`; past the limit the address is refused until its window
    /// frees (Redis says when). Without Redis nothing is counted (auth still works).
    pub async fn auth_failed(&self, ip: std::net::IpAddr) {
        let limit = self.cfg.limits.failed_auth_per_minute;
        if limit == 0 {
            return;
        }
        let hit = match self.auth_failures.hit(&ip.to_string(), limit, Duration::from_secs(60)).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "failed-auth counter unavailable");
                return;
            }
        };
        if hit.remaining == 0 || !hit.allowed {
            tracing::warn!(%ip, "too many failed authentications; refusing this address for a while");
            if let Ok(mut blocked) = self.blocked.lock() {
                let now = Instant::now();
                if blocked.len() > 10_000 {
                    blocked.retain(|_, until| *until > now);
                }
                blocked.insert(ip, now + hit.reset.max(Duration::from_secs(1)));
            }
        }
    }

    /// A place for one more upload of `user`, or `None` when they already have
    /// `max_concurrent_per_user` in progress here (taken before the body is read).
    pub fn upload_slot(&self, user: UserId) -> Option<UploadSlot> {
        let cap = self.cfg.uploads.max_concurrent_per_user;
        let mut map = self.uploading.lock().ok()?;
        let n = map.entry(user).or_insert(0);
        if cap > 0 && *n >= cap {
            return None;
        }
        *n += 1;
        Some(UploadSlot { user, uploading: self.uploading.clone() })
    }

    /// The pool's accounts as the limiter sees them, refreshed at most every 2 s by one
    /// request (empty when no worker has registered, or Redis is away).
    pub async fn upstream_keys(&self) -> Vec<KeyStatus> {
        self.upstream
            .get(|| async {
                self.limiter.snapshot().await.unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "upstream capacity unavailable");
                    Vec::new()
                })
            })
            .await
    }

    /// The model the result cache keys a request with, read at most every 2 s by one request:
    /// the one every live worker announced (`jewelshot_queue::Queue::fleet_models`), so that a
    /// model change never serves the old model's results; `jobs.model` while no worker has
    /// (or Redis cannot say); `None` — the cache bypassed — while live workers run different
    /// models, as during a rollout.
    pub async fn cache_model(&self) -> Option<Arc<str>> {
        self.cache_model
            .get(|| async {
                match self.queue.fleet_models(jewelshot_queue::fleet::ALIVE_WITHIN).await {
                    Ok(models) if models.len() > 1 => {
                        tracing::info!(?models, "workers run different models: the result cache is bypassed");
                        None
                    }
                    Ok(models) => {
                        Some(Arc::from(models.into_iter().next().unwrap_or_else(|| self.cfg.jobs.model.clone())))
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "the fleet's model unavailable; keying the cache with jobs.model");
                        Some(Arc::from(self.cfg.jobs.model.as_str()))
                    }
                }
            })
            .await
    }

    /// Mean seconds a generation took over the last hour (None before any finished), refreshed
    /// at most every 10 s by one request, so polls and `GET /api/queue` stay cheap. The workers
    /// record each generation in Redis; Postgres answers when Redis cannot (or lost them).
    pub async fn observed_generation_secs(&self) -> Option<f64> {
        self.mean_generation
            .get(|| async {
                let window = Duration::from_secs(jewelshot_ratelimit::GENERATION_WINDOW_SECS);
                match self.limiter.mean_generation(window).await {
                    Ok(Some(mean)) => Some(mean),
                    _ => self.db.mean_generation_seconds().await.unwrap_or_else(|e| {
                        tracing::debug!(error = %e, "mean generation time unavailable");
                        None
                    }),
                }
            })
            .await
    }

    /// The result cache's figures for `GET /api/queue` and the console: counted over the last
    /// hour in Postgres, at most every 10 s by one request.
    pub async fn cache_view(&self) -> jewelshot_domain::view::CacheView {
        let cfg = &self.cfg.cache;
        let stats = self
            .cache_stats
            .get(|| async {
                self.db.cache_stats(Duration::from_secs(3600)).await.unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "result cache figures unavailable");
                    jewelshot_db::cache::CacheStats::default()
                })
            })
            .await;
        jewelshot_domain::view::CacheView {
            enabled: cfg.enabled,
            scope: cfg.scope.as_str().to_owned(),
            ttl_seconds: cfg.ttl_secs,
            hit_rate: stats.hit_rate(),
            hits: stats.hits,
            lookups: stats.lookups,
            sharing: stats.sharing,
            entries: stats.entries,
        }
    }

    /// The observed mean generation time, or the configured default before any finished.
    pub async fn mean_generation_secs(&self) -> f64 {
        self.observed_generation_secs().await.unwrap_or(self.cfg.jobs.default_generation_secs)
    }

    /// Seconds until a job at `position` completes (see [`Capacity::eta_seconds`]); before any
    /// worker registered its accounts, `upstream_parallelism` lanes are assumed.
    pub async fn eta_seconds(&self, position: i64) -> Option<i64> {
        if position <= 0 {
            return None;
        }
        let mean = self.mean_generation_secs().await;
        let lanes = self.cfg.jobs.upstream_parallelism.max(1);
        let cap = Capacity::of(&self.upstream_keys().await).unwrap_or(Capacity {
            per_minute: None,
            concurrent: Some(lanes),
            starts_per_sec: None,
            window: None,
        });
        Some(cap.eta_seconds(position, mean, f64::from(lanes)))
    }
}
