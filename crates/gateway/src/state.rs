//! What every handler shares.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jewelshot_db::Db;
use jewelshot_queue::Queue;
use jewelshot_ratelimit::{KeyStatus, Limiter, LimiterConfig, WindowLimiter};
use jewelshot_storage::ObjectStore;

use crate::config::Config;

pub struct AppState {
    pub db: Db,
    pub queue: Queue,
    pub store: Arc<dyn ObjectStore>,
    pub cfg: Config,
    /// Serves `/files/…` only when storage is the local filesystem.
    pub serve_files: bool,
    /// Bounds image compression to `uploads.image_workers` at once.
    pub image_slots: tokio::sync::Semaphore,
    mean_generation: Mutex<Option<(Instant, Option<f64>)>>,
    /// Reads the workers' upstream limiter (no keys of its own).
    pub limiter: Limiter,
    upstream: Mutex<Option<(Instant, Vec<KeyStatus>)>>,
    /// Per-user submissions per minute, shared by every gateway through Redis.
    pub submits: WindowLimiter,
}

/// How fast the upstream can take jobs, from the pool's registered limits and current use.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    /// Starts per second the healthy accounts allow on average (None = unlimited).
    pub starts_per_sec: Option<f64>,
    /// The rate limit as the upstream applies it (None = unlimited).
    pub window: Option<RateWindow>,
    /// Requests they may run at once (None = unlimited).
    pub lanes: Option<f64>,
}

/// The pool's rate window: when its next starts can happen.
#[derive(Debug, Clone, PartialEq)]
pub struct RateWindow {
    pub window_secs: f64,
    /// Seconds from now until each of the next `quota` starts may happen, ascending: 0 for every
    /// start free now, then, for each start already in the window, the moment it ages out. Each
    /// repeats one window later, and so on.
    pub offsets: Vec<f64>,
}

impl Capacity {
    pub fn of(keys: &[KeyStatus]) -> Option<Self> {
        let healthy: Vec<&KeyStatus> = keys.iter().filter(|k| k.healthy).collect();
        if healthy.is_empty() {
            return None;
        }
        let unlimited_rate = healthy.iter().any(|k| k.max_per_minute == 0);
        let unlimited_lanes = healthy.iter().any(|k| k.max_concurrent == 0);
        let rate: f64 =
            healthy.iter().map(|k| f64::from(k.max_per_minute) / (k.window_ms.max(1) as f64 / 1000.0)).sum();
        let mut offsets = Vec::new();
        for k in &healthy {
            let window = k.window_ms as f64 / 1000.0;
            let spent: Vec<f64> = k
                .window_ages_ms
                .iter()
                .take(k.max_per_minute as usize)
                .map(|age| (window - *age as f64 / 1000.0).max(0.0))
                .collect();
            offsets.extend(std::iter::repeat_n(0.0, (k.max_per_minute as usize).saturating_sub(spent.len())));
            offsets.extend(spent);
        }
        offsets.sort_by(f64::total_cmp);
        let window_secs = healthy.iter().map(|k| k.window_ms).max().unwrap_or(60_000) as f64 / 1000.0;
        let lanes: f64 = healthy.iter().map(|k| f64::from(k.max_concurrent)).sum();
        Some(Self {
            starts_per_sec: (!unlimited_rate).then_some(rate),
            window: (!unlimited_rate).then_some(RateWindow { window_secs, offsets }),
            lanes: (!unlimited_lanes).then_some(lanes),
        })
    }

    /// Seconds until the job at `position` (1 = next) completes: when it can start, then its
    /// own generation (`mean`). It can start once the jobs ahead have started, which the slower
    /// of two limits decides: the rate window (the k-th job ahead takes the k-th of the window's
    /// coming starts — free ones now, then each spent one as it ages out, a window apart), and
    /// the lanes turning over every `mean`.
    pub fn eta_seconds(&self, position: i64, mean: f64, fallback_lanes: f64) -> i64 {
        let ahead = (position - 1).max(0) as usize;
        let by_rate = match &self.window {
            Some(w) if !w.offsets.is_empty() => {
                let q = w.offsets.len();
                (ahead / q) as f64 * w.window_secs + w.offsets[ahead % q]
            }
            _ => 0.0,
        };
        let lanes = self.lanes.unwrap_or(if self.window.is_some() { f64::INFINITY } else { fallback_lanes });
        let by_lanes = if lanes.is_finite() && lanes > 0.0 { ahead as f64 / lanes * mean } else { 0.0 };
        (by_rate.max(by_lanes) + mean).ceil() as i64
    }
}

impl AppState {
    pub fn new(db: Db, queue: Queue, store: Arc<dyn ObjectStore>, cfg: Config) -> Self {
        let serve_files = cfg.storage.backend == "local";
        let image_slots = tokio::sync::Semaphore::new(cfg.uploads.workers());
        let mut lcfg = LimiterConfig::new(cfg.fal.prefix(&cfg.queue.name));
        lcfg.timeout = Duration::from_millis(cfg.queue.timeout_ms);
        let limiter = Limiter::new(queue.connection(), lcfg, Vec::new());
        let submits = WindowLimiter::new(
            queue.connection(),
            format!("{}:limits:submits", cfg.queue.name),
            Duration::from_millis(cfg.queue.timeout_ms),
        );
        Self {
            db,
            queue,
            store,
            cfg,
            serve_files,
            image_slots,
            mean_generation: Mutex::new(None),
            limiter,
            upstream: Mutex::new(None),
            submits,
        }
    }

    /// The pool's accounts as the limiter sees them, refreshed at most every 2 s (empty when
    /// no worker has registered, or Redis is away).
    pub async fn upstream_keys(&self) -> Vec<KeyStatus> {
        if let Ok(guard) = self.upstream.lock() {
            if let Some((at, keys)) = guard.as_ref() {
                if at.elapsed() < Duration::from_secs(2) {
                    return keys.clone();
                }
            }
        }
        let fresh = match self.limiter.snapshot().await {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "upstream capacity unavailable");
                Vec::new()
            }
        };
        if let Ok(mut guard) = self.upstream.lock() {
            *guard = Some((Instant::now(), fresh.clone()));
        }
        fresh
    }

    /// Mean generation seconds, refreshed at most every 10 s so polls stay one cheap query.
    pub async fn mean_generation_secs(&self) -> f64 {
        let fallback = self.cfg.jobs.default_generation_secs;
        if let Ok(guard) = self.mean_generation.lock() {
            if let Some((at, v)) = *guard {
                if at.elapsed() < Duration::from_secs(10) {
                    return v.unwrap_or(fallback);
                }
            }
        }
        let fresh = self.db.mean_generation_seconds().await.ok().flatten();
        if let Ok(mut guard) = self.mean_generation.lock() {
            *guard = Some((Instant::now(), fresh));
        }
        fresh.unwrap_or(fallback)
    }

    /// Seconds until a job at `position` completes (see [`Capacity::eta_seconds`]); before any
    /// worker registered its accounts, `upstream_parallelism` lanes are assumed.
    pub async fn eta_seconds(&self, position: i64) -> Option<i64> {
        if position <= 0 {
            return None;
        }
        let mean = self.mean_generation_secs().await;
        let fallback = f64::from(self.cfg.jobs.upstream_parallelism.max(1));
        let cap = Capacity::of(&self.upstream_keys().await).unwrap_or(Capacity {
            starts_per_sec: None,
            window: None,
            lanes: Some(fallback),
        });
        Some(cap.eta_seconds(position, mean, fallback))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pm: u32, conc: u32, healthy: bool) -> KeyStatus {
        KeyStatus {
            id: "k".into(),
            max_per_minute: pm,
            max_concurrent: conc,
            window_ms: 60_000,
            started_in_window: 0,
            in_flight: 0,
            healthy,
            cooling_down: false,
            window_ages_ms: Vec::new(),
        }
    }

    #[test]
    fn eta_follows_the_slower_of_rate_and_lanes() {
        // 3 × 15/min; 3 × 4 lanes turning over every 30 s = 0.4 starts/s → lanes bind.
        let cap = Capacity::of(&[key(15, 4, true), key(15, 4, true), key(15, 4, true)]).expect("cap");
        assert_eq!(cap.eta_seconds(1, 30.0, 4.0), 30);
        assert_eq!(cap.eta_seconds(41, 30.0, 4.0), 130);
        // Unlimited lanes: the window binds — 45 start at once, the next 45 a window later.
        let cap = Capacity::of(&[key(15, 0, true), key(15, 0, true), key(15, 0, true)]).expect("cap");
        assert_eq!(cap.eta_seconds(45, 30.0, 4.0), 30);
        assert_eq!(cap.eta_seconds(46, 30.0, 4.0), 90);
        assert_eq!(cap.eta_seconds(136, 30.0, 4.0), 210);
        // Starts already spent in the window come back as they age out: ten started 20 s ago
        // free up 40 s from now, and again a window later.
        let mut spent = key(15, 0, true);
        spent.started_in_window = 10;
        spent.window_ages_ms = vec![20_000; 10];
        let cap = Capacity::of(&[spent, key(15, 0, true), key(15, 0, true)]).expect("cap");
        assert_eq!(cap.eta_seconds(35, 30.0, 4.0), 30);
        assert_eq!(cap.eta_seconds(36, 30.0, 4.0), 70);
        assert_eq!(cap.eta_seconds(45, 30.0, 4.0), 70);
        assert_eq!(cap.eta_seconds(46, 30.0, 4.0), 90);
        assert_eq!(cap.eta_seconds(81, 30.0, 4.0), 130);
        // A disabled key adds nothing; none healthy → no capacity known.
        let one = Capacity::of(&[key(15, 0, true), key(15, 0, false)]).expect("cap");
        assert_eq!(one.eta_seconds(16, 30.0, 4.0), 90);
        assert!(Capacity::of(&[key(15, 4, false)]).is_none());
    }
}
