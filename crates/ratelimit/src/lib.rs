//! # jewelshot-ratelimit
//!
//! One upstream limiter for the whole worker fleet, kept in Redis. fal limits every account in
//! two ways — requests started per minute, and requests in progress at once — and refuses what
//! goes over. This crate decides, for every process and replica at once, whether one more request
//! may start and on which account ("key") of the pool.
//!
//! ## Algorithm
//! Each decision is one Lua script (`acquire.lua`), so two workers can never both take the last
//! slot. Per key it keeps a **sliding-window log** of start times (a sorted set, trimmed to the
//! window — exactly how the upstream counts) and a set of **in-flight leases** that expire unless
//! renewed, so a crashed worker's slot comes back by itself. A start is recorded again when the
//! upstream has answered ([`Limiter::confirm`]), so our window entry never leaves before the
//! upstream's does. The request goes to the healthy key with the most free slots.
//!
//! Waiting is ordered and cheap: a waiter joins a line (sorted by its ticket, e.g. the job's
//! submit sequence) and only the first *free-slots* waiters may start. A waiter sleeps until a
//! release is published on a channel (woken within milliseconds) or until the time the script says
//! a window entry ages out — never spinning.
//!
//! Fresh jobs wait in the **dispatch line** ([`line`](crate::LineEntry)): fair between users,
//! `high` first at a share, and a dispatcher takes the head together with a slot in one script.
//!
//! ## Layout
//! - [`PoolKey`] — one account's id and limits; [`key_id_for`] derives a loggable id from a secret.
//! - [`Limiter`] — acquire ([`Grant`]; one look: [`Limiter::try_acquire`] → [`Decision`]),
//!   confirm, hold (renew a lease), release, cool down (429), disable (401/403), and
//!   [`Limiter::snapshot`] for `GET /api/queue`; [`LimiterConfig`] its prefix, window, lease and
//!   timeouts; [`LimitError`] its failures.
//! - `line` (private) — the dispatch line as more [`Limiter`] methods: [`Limiter::enqueue`]
//!   ([`Enqueued`]), [`Limiter::dispatch`] ([`DispatchOptions`] → [`Dispatched`]),
//!   [`Limiter::claim`], [`Limiter::position`] ([`LinePlace`]), `remove`, `undispatch`,
//!   `line_lengths`, and [`Limiter::absent`] (over the work queue's [`QueueKeys`]);
//!   [`LineEntry`] is a job in line.
//! - [`LineSettings`] — the line's prefix and high burst, loaded the same way by every binary,
//!   and [`LineSettings::reader`] for processes without keys; [`default_prefix`] is the prefix
//!   when none is set.
//! - `capacity` (private) — [`Capacity`] (what the healthy accounts allow: rate, lanes, the
//!   [`RateWindow`], and ETAs), from each key's [`KeyStatus`].
//! - [`WindowLimiter`] — a per-subject sliding-window counter (the gateway's per-user submit
//!   rate); [`WindowHit`] is one event's outcome.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod capacity;
pub mod conn;
mod line;

pub use capacity::{Capacity, KeyStatus, RateWindow};
pub use conn::RedisConn;

/// ETAs use the mean generation time over this many seconds.
pub const GENERATION_WINDOW_SECS: u64 = 3_600;

pub use line::{DispatchOptions, Dispatched, Enqueued, JobRecord, LineEntry, LinePlace, QueueKeys};

const ACQUIRE: &str = concat!(include_str!("clock.lua"), include_str!("pool.lua"), include_str!("acquire.lua"));

/// One upstream account and its limits (0 = unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolKey {
    /// A name safe to log and to show; never the secret.
    pub id: String,
    pub max_per_minute: u32,
    pub max_concurrent: u32,
}

/// A stable, non-secret id for a key: `key-` and the first 8 hex digits of its SHA-256.
pub fn key_id_for(secret: &str) -> String {
    let digest = sha2::Sha256::digest(secret.as_bytes());
    format!("key-{}", &hex::encode(digest)[..8])
}

/// The limiter's Redis prefix when none is configured: beside the queue it serves.
pub fn default_prefix(queue_name: &str) -> String {
    format!("{queue_name}:upstream")
}

/// The dispatch line's settings, which every process must agree on: where the fleet's limiter
/// and line live in Redis, and how many `high` jobs go in a row while `normal` work waits (the
/// workers dispatch by it; gateways and the CLI compute positions by it). Every binary reads
/// them from `JEWELSHOT_FAL__LIMITER_PREFIX` and `JEWELSHOT_FAL__HIGH_BURST` through this type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LineSettings {
    /// Redis prefix of the limiter and the line; empty = `<queue name>:upstream`.
    pub limiter_prefix: String,
    /// `high` dispatches in a row before one `normal` (4: normal keeps ≥ 1 in 5).
    pub high_burst: u32,
}

impl Default for LineSettings {
    fn default() -> Self {
        Self { limiter_prefix: String::new(), high_burst: 4 }
    }
}

impl LineSettings {
    /// The limiter's Redis prefix for the queue `queue_name`.
    pub fn prefix(&self, queue_name: &str) -> String {
        if self.limiter_prefix.is_empty() {
            default_prefix(queue_name)
        } else {
            self.limiter_prefix.clone()
        }
    }

    /// Refuse settings no dispatcher can work with.
    pub fn validate(&self) -> Result<(), String> {
        if self.high_burst == 0 {
            return Err("JEWELSHOT_FAL__HIGH_BURST must be at least 1".into());
        }
        Ok(())
    }

    /// A limiter that reads the line and the pool but holds no keys of its own (gateways, the
    /// CLI): positions, capacity, enqueue and remove.
    pub fn reader(&self, conn: impl Into<RedisConn>, queue_name: &str, timeout: Duration) -> Limiter {
        let mut cfg = LimiterConfig::new(self.prefix(queue_name));
        cfg.timeout = timeout;
        Limiter::new(conn, cfg, Vec::new())
    }
}

/// Limiter settings.
#[derive(Debug, Clone)]
pub struct LimiterConfig {
    /// Prefix of every Redis key the limiter uses (tests make it unique).
    pub prefix: String,
    /// The rate window: 60 s upstream; shorter in time-scaled tests.
    pub window: Duration,
    /// An in-flight slot not renewed for this long is presumed abandoned.
    pub lease: Duration,
    /// A waiter silent this long (its process died) leaves the line.
    pub waiter_ttl: Duration,
    /// Longest sleep between two looks while waiting (a lost wake-up costs at most this).
    pub max_idle: Duration,
    /// Longest wait for one Redis command.
    pub timeout: Duration,
}

impl LimiterConfig {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            window: Duration::from_secs(60),
            lease: Duration::from_secs(120),
            waiter_ttl: Duration::from_secs(5),
            max_idle: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("rate limiter unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("rate limiter did not answer in time")]
    Timeout,
    #[error("every upstream key is disabled")]
    NoHealthyKeys,
    #[error("stopped while waiting for upstream capacity")]
    Canceled,
    #[error("the key pool is empty")]
    EmptyPool,
    #[error("unreadable limiter state: {0}")]
    Corrupt(String),
}

/// Permission to start one upstream request: the key to use and the slot it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key_id: String,
    /// This start's entry in the key's rate window.
    pub grant_id: String,
    /// The in-flight slot (the caller's lease name, e.g. the job id).
    pub lease: String,
    /// How long the caller waited for it.
    pub waited: Duration,
    /// Its number in the fleet-wide dispatch order.
    pub dispatch: u64,
    /// Every key was disabled: this start finds out whether fal takes the key again.
    pub probe: bool,
}

/// What one look at the pool found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `dispatch`: this grant's number in the fleet-wide dispatch order (1, 2, …).
    Granted {
        key_id: String,
        dispatch: u64,
    },
    /// Not yet. `retry_in`: when capacity frees by itself (a window entry ages out, a cool-down
    /// ends), if it does; `rank`: place in the line (0 = next); `free`: slots free right now.
    Wait {
        retry_in: Option<Duration>,
        rank: u64,
        free: u64,
    },
    NoHealthyKeys {
        retry_in: Option<Duration>,
    },
}

/// The fleet-wide limiter. Cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    conn: RedisConn,
    cfg: Arc<LimiterConfig>,
    keys: Arc<Vec<PoolKey>>,
    scripts: Arc<Scripts>,
    wake: Arc<Notify>,
    /// The dispatch line's seven keys (see `line.lua`), made once.
    line_keys: Arc<[String; 7]>,
}

/// Every decision that reads the clock runs in Redis, on Redis's clock, so workers on machines
/// whose clocks disagree still agree on windows and leases.
struct Scripts {
    acquire: redis::Script,
    /// Move a start's window entry to now; clear the key's `disabled_until`.
    confirm: redis::Script,
    /// Set a lease's expiry to now + lease.
    hold: redis::Script,
    /// Set a key's `cool_until`/`disabled_until` and drop one grant's window entry and lease.
    until: redis::Script,
    /// Redis's clock, read on the node that holds `KEYS[1]` (in a cluster, the one every other
    /// script runs on).
    clock: redis::Script,
    line: line::Scripts,
}

impl Scripts {
    fn new() -> Self {
        const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 ";
        Self {
            acquire: redis::Script::new(ACQUIRE),
            confirm: redis::Script::new(&format!(
                "{NOW} redis.call('ZADD', KEYS[1], now, ARGV[1]) redis.call('HDEL', KEYS[2], 'disabled_until') return 1"
            )),
            hold: redis::Script::new(&format!(
                "{NOW} redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) return 1"
            )),
            until: redis::Script::new(&format!(
                "{NOW} redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2])) \
                 redis.call('ZREM', KEYS[2], ARGV[3]) redis.call('ZREM', KEYS[3], ARGV[4]) return 1"
            )),
            clock: redis::Script::new("local t = redis.call('TIME') return {tonumber(t[1]), tonumber(t[2])}"),
            line: line::Scripts::new(),
        }
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("prefix", &self.cfg.prefix).field("keys", &self.keys).finish()
    }
}

impl Limiter {
    /// A limiter over `keys`. Call [`Limiter::register`] once per process that dispatches and
    /// [`Limiter::spawn_waker`] so waiters wake on releases.
    pub fn new(conn: impl Into<RedisConn>, cfg: LimiterConfig, keys: Vec<PoolKey>) -> Self {
        let line_keys = [
            "line:high",
            "line:normal",
            "line:scheduled",
            "line:state",
            "line:tags:high",
            "line:tags:normal",
            "granted",
        ]
        .map(|k| format!("{}:{k}", cfg.prefix));
        Self {
            line_keys: Arc::new(line_keys),
            conn: conn.into(),
            cfg: Arc::new(cfg),
            keys: Arc::new(keys),
            scripts: Arc::new(Scripts::new()),
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn keys(&self) -> &[PoolKey] {
        &self.keys
    }

    /// Notified whenever a slot may have freed or work arrived (see [`Limiter::spawn_waker`]).
    pub fn wake_signal(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The longest a waiter sleeps between two looks.
    pub fn max_idle(&self) -> Duration {
        self.cfg.max_idle
    }

    fn k(&self, what: &str) -> String {
        format!("{}:{what}", self.cfg.prefix)
    }

    fn key_k(&self, id: &str, what: &str) -> String {
        format!("{}:key:{id}:{what}", self.cfg.prefix)
    }

    fn channel(&self) -> String {
        self.k("wake")
    }

    async fn timed<T>(&self, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, LimitError> {
        tokio::time::timeout(self.cfg.timeout, f).await.map_err(|_| LimitError::Timeout)?.map_err(LimitError::from)
    }

    /// Publish this pool's keys and limits, so readers without the secrets (the gateway) can
    /// report capacity.
    pub async fn register(&self) -> Result<(), LimitError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for key in self.keys.iter() {
            let limits = format!("{},{},{}", key.max_per_minute, key.max_concurrent, self.cfg.window.as_millis());
            pipe.hset(self.k("registry"), &key.id, limits).ignore();
        }
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Subscribe to releases and wake local waiters on each; reconnects until `stop`.
    pub fn spawn_waker(&self, client: redis::Client, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (wake, channel) = (self.wake.clone(), self.channel());
        tokio::spawn(async move {
            use futures::StreamExt;
            loop {
                let session = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    // Whatever was released while we were away: look again.
                    wake.notify_waiters();
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        wake.notify_waiters();
                    }
                    Ok::<(), redis::RedisError>(())
                };
                tokio::select! {
                    r = session => {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "limiter wake-up channel lost; reconnecting");
                        }
                    }
                    _ = stop.cancelled() => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    }

    /// One look: take a slot for `lease` if this waiter's turn has come and a key has room.
    pub async fn try_acquire(&self, grant_id: &str, lease: &str, ticket: f64) -> Result<Decision, LimitError> {
        self.look(grant_id, lease, ticket, false).await
    }

    async fn look(&self, grant_id: &str, lease: &str, ticket: f64, probe: bool) -> Result<Decision, LimitError> {
        if self.keys.is_empty() {
            return Err(LimitError::EmptyPool);
        }
        let mut inv = self.scripts.acquire.prepare_invoke();
        inv.key(self.k("waiters")).key(self.k("waiters:seen")).key(self.k("dispatched"));
        for key in self.keys.iter() {
            inv.key(self.key_k(&key.id, "window")).key(self.key_k(&key.id, "leases")).key(self.key_k(&key.id, "state"));
        }
        inv.arg(self.cfg.window.as_millis() as u64)
            .arg(self.cfg.lease.as_millis() as u64)
            .arg(grant_id)
            .arg(lease)
            .arg(lease)
            .arg(ticket)
            .arg(self.cfg.waiter_ttl.as_millis() as u64)
            .arg(self.keys.len())
            .arg(if probe { "1" } else { "0" });
        for key in self.keys.iter() {
            inv.arg(key.max_per_minute).arg(key.max_concurrent);
        }
        let mut conn = self.conn.clone();
        let r: Vec<i64> = self.timed(inv.invoke_async(&mut conn)).await?;
        let get = |i: usize| r.get(i).copied().unwrap_or(-1);
        let retry_in = (get(2) >= 0).then(|| Duration::from_millis(get(2) as u64));
        Ok(match get(0) {
            1 => {
                let idx = get(1).max(1) as usize - 1;
                Decision::Granted { key_id: self.key_at(idx)?, dispatch: get(6).max(0) as u64 }
            }
            0 => Decision::Wait { retry_in, rank: get(3).max(0) as u64, free: get(4).max(0) as u64 },
            _ => Decision::NoHealthyKeys { retry_in },
        })
    }

    /// The id of the pool's key at `idx`, as the scripts number them (an index the pool does not
    /// have means the scripts and this process disagree about the pool: an error, never "").
    fn key_at(&self, idx: usize) -> Result<String, LimitError> {
        self.keys
            .get(idx)
            .map(|k| k.id.clone())
            .ok_or_else(|| LimitError::Corrupt(format!("the limiter granted key #{idx} of {}", self.keys.len())))
    }

    /// Wait for a slot, in `ticket` order across the fleet. `lease` names the in-flight slot (one
    /// per job); `stop` ends the wait (the waiter leaves the line). When every key is disabled,
    /// the grant is a probe ([`Grant::probe`]) on a disabled key: fal's answer to it says whether
    /// the key works again ([`Limiter::confirm`] re-enables it).
    pub async fn acquire(&self, lease: &str, ticket: f64, stop: &CancellationToken) -> Result<Grant, LimitError> {
        let started = Instant::now();
        let grant_id = ulid::Ulid::generate().to_string();
        let mut probe = false;
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let sleep = match self.look(&grant_id, lease, ticket, probe).await? {
                Decision::Granted { key_id, dispatch } => {
                    // Others in line may be able to start too.
                    self.publish().await;
                    let waited = started.elapsed();
                    return Ok(Grant { key_id, grant_id, lease: lease.to_owned(), waited, dispatch, probe });
                }
                Decision::Wait { retry_in, .. } => retry_in.unwrap_or(self.cfg.max_idle).min(self.cfg.max_idle),
                Decision::NoHealthyKeys { .. } if !probe => {
                    probe = true;
                    continue;
                }
                Decision::NoHealthyKeys { .. } => {
                    self.leave_line(lease).await;
                    return Err(LimitError::NoHealthyKeys);
                }
            };
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.cancelled() => {
                    self.leave_line(lease).await;
                    return Err(LimitError::Canceled);
                }
            }
        }
    }

    async fn leave_line(&self, waiter: &str) {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.zrem(self.k("waiters"), waiter).ignore().zrem(self.k("waiters:seen"), waiter).ignore();
        if let Err(e) = self.timed(pipe.query_async::<()>(&mut conn)).await {
            tracing::debug!(error = %e, "could not leave the limiter's line (it expires by itself)");
        }
    }

    async fn publish(&self) {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.channel()).arg(1);
        if let Err(e) = self.timed(cmd.query_async::<i64>(&mut conn)).await {
            tracing::debug!(error = %e, "limiter wake-up not published (waiters look again within a second)");
        }
    }

    /// The upstream accepted the submit: count the start from now, so our window entry leaves
    /// no earlier than the upstream's; and the key works (a disabled one is enabled again).
    pub async fn confirm(&self, grant: &Grant) -> Result<(), LimitError> {
        let mut inv = self.scripts.confirm.prepare_invoke();
        inv.key(self.key_k(&grant.key_id, "window")).key(self.key_k(&grant.key_id, "state")).arg(&grant.grant_id);
        let mut conn = self.conn.clone();
        self.timed(inv.invoke_async::<i64>(&mut conn)).await.map(|_| ())
    }

    /// Keep an in-flight slot (call every `lease / 3` while the request runs). Also re-takes a
    /// slot after a restart: a resumed request is in flight upstream whatever our count says.
    pub async fn hold(&self, key_id: &str, lease: &str) -> Result<(), LimitError> {
        let mut inv = self.scripts.hold.prepare_invoke();
        inv.key(self.key_k(key_id, "leases")).arg(lease).arg(self.cfg.lease.as_millis() as u64);
        let mut conn = self.conn.clone();
        self.timed(inv.invoke_async::<i64>(&mut conn)).await.map(|_| ())
    }

    /// The request finished upstream (or never started): free its in-flight slot.
    pub async fn release(&self, key_id: &str, lease: &str) -> Result<(), LimitError> {
        let mut conn = self.conn.clone();
        self.timed(redis::cmd("ZREM").arg(self.key_k(key_id, "leases")).arg(lease).query_async::<i64>(&mut conn))
            .await?;
        self.publish().await;
        Ok(())
    }

    /// The upstream refused the start with 429: it did not count it, so neither do we; the key
    /// rests for `retry_after`.
    pub async fn refused(&self, grant: &Grant, retry_after: Duration) -> Result<(), LimitError> {
        self.set_until(grant, "cool_until", retry_after).await
    }

    /// The upstream refused the key itself (401/403): take it out of the pool for `recheck`, after
    /// which one request tries it again (a restored account comes back by itself).
    pub async fn disable(&self, grant: &Grant, recheck: Duration) -> Result<(), LimitError> {
        self.set_until(grant, "disabled_until", recheck).await
    }

    async fn set_until(&self, grant: &Grant, field: &str, d: Duration) -> Result<(), LimitError> {
        let mut inv = self.scripts.until.prepare_invoke();
        inv.key(self.key_k(&grant.key_id, "state"))
            .key(self.key_k(&grant.key_id, "window"))
            .key(self.key_k(&grant.key_id, "leases"))
            .arg(field)
            .arg(d.as_millis() as u64)
            .arg(&grant.grant_id)
            .arg(&grant.lease);
        let mut conn = self.conn.clone();
        self.timed(inv.invoke_async::<i64>(&mut conn)).await?;
        self.publish().await;
        Ok(())
    }

    /// Every registered key's state (reads what workers registered; needs no secrets).
    pub async fn snapshot(&self) -> Result<Vec<KeyStatus>, LimitError> {
        let mut conn = self.conn.clone();
        let registry: Vec<(String, String)> = self
            .timed(redis::cmd("HGETALL").arg(self.k("registry")).query_async::<Vec<(String, String)>>(&mut conn))
            .await?;
        // id → "max_per_minute,max_concurrent,window_ms" as the workers registered it.
        let mut keys: Vec<(PoolKey, f64)> = registry
            .into_iter()
            .map(|(id, limits)| {
                let mut it = limits.split(',').map(|v| v.trim().parse::<u64>().unwrap_or(0));
                let (pm, conc) = (it.next().unwrap_or(0) as u32, it.next().unwrap_or(0) as u32);
                let window = it.next().filter(|w| *w > 0).unwrap_or(self.cfg.window.as_millis() as u64);
                (PoolKey { id, max_per_minute: pm, max_concurrent: conc }, window as f64)
            })
            .collect();
        keys.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let (secs, micros): (u64, u64) =
            self.timed(self.scripts.clock.key(self.k("registry")).invoke_async(&mut conn)).await?;
        let now = secs as f64 * 1000.0 + micros as f64 / 1000.0;
        let mut pipe = redis::pipe();
        for (key, window) in &keys {
            let since = now - window;
            pipe.cmd("ZCOUNT").arg(self.key_k(&key.id, "window")).arg(format!("({since}")).arg("+inf");
            pipe.cmd("ZCOUNT").arg(self.key_k(&key.id, "leases")).arg(format!("({now}")).arg("+inf");
            pipe.cmd("HMGET").arg(self.key_k(&key.id, "state")).arg("cool_until").arg("disabled_until");
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.key_k(&key.id, "window"))
                .arg(format!("({since}"))
                .arg("+inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(key.max_per_minute);
        }
        let values: Vec<redis::Value> =
            if keys.is_empty() { Vec::new() } else { self.timed(pipe.query_async(&mut conn)).await? };
        let rows = values.chunks(4).map(|c| {
            let count =
                |v: Option<&redis::Value>| v.and_then(|v| redis::from_redis_value_ref::<u64>(v).ok()).unwrap_or(0);
            let state = c
                .get(2)
                .and_then(|v| redis::from_redis_value_ref::<(Option<f64>, Option<f64>)>(v).ok())
                .unwrap_or((None, None));
            let starts =
                c.get(3).and_then(|v| redis::from_redis_value_ref::<Vec<(String, f64)>>(v).ok()).unwrap_or_default();
            let ages = starts.iter().map(|(_, at)| (now - at).max(0.0) as u64).collect();
            (count(c.first()), count(c.get(1)), state, ages)
        });
        Ok(keys
            .into_iter()
            .zip(rows)
            .map(|((key, window), (started, in_flight, (cool, disabled), window_ages_ms))| KeyStatus {
                id: key.id,
                window_ms: window as u64,
                max_per_minute: key.max_per_minute,
                max_concurrent: key.max_concurrent,
                started_in_window: started,
                in_flight,
                healthy: disabled.is_none_or(|d| d <= now),
                cooling_down: cool.is_some_and(|c| c > now),
                window_ages_ms,
            })
            .collect())
    }
}

/// How one event fared against a sliding-window limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowHit {
    pub allowed: bool,
    /// Events still allowed in the current window.
    pub remaining: u32,
    /// Until the oldest counted event leaves the window (when one more is allowed, if refused).
    pub reset: Duration,
}

/// A sliding-window counter per subject, in Redis: at most `limit` events per `window`, exact
/// across every process sharing the prefix.
#[derive(Clone)]
pub struct WindowLimiter {
    conn: RedisConn,
    prefix: String,
    script: Arc<redis::Script>,
    timeout: Duration,
}

impl std::fmt::Debug for WindowLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowLimiter").field("prefix", &self.prefix).finish()
    }
}

impl WindowLimiter {
    pub fn new(conn: impl Into<RedisConn>, prefix: impl Into<String>, timeout: Duration) -> Self {
        Self {
            conn: conn.into(),
            prefix: prefix.into(),
            script: Arc::new(redis::Script::new(include_str!("window.lua"))),
            timeout,
        }
    }

    /// Count one event for `subject` if the limit allows it.
    pub async fn hit(&self, subject: &str, limit: u32, window: Duration) -> Result<WindowHit, LimitError> {
        let mut inv = self.script.prepare_invoke();
        inv.key(format!("{}:{subject}", self.prefix))
            .arg(limit)
            .arg(window.as_millis() as u64)
            .arg(ulid::Ulid::generate().to_string());
        let mut conn = self.conn.clone();
        let r: Vec<i64> = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| LimitError::Timeout)??;
        let get = |i: usize| r.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok(WindowHit { allowed: get(0) == 1, remaining: get(1) as u32, reset: Duration::from_millis(get(2)) })
    }
}
