//! What every handler shares.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jewelshot_db::Db;
use jewelshot_queue::Queue;
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
}

impl AppState {
    pub fn new(db: Db, queue: Queue, store: Arc<dyn ObjectStore>, cfg: Config) -> Self {
        let serve_files = cfg.storage.backend == "local";
        let image_slots = tokio::sync::Semaphore::new(cfg.uploads.workers());
        Self { db, queue, store, cfg, serve_files, image_slots, mean_generation: Mutex::new(None) }
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

    /// Seconds until a job at `position` completes: the batches ahead of it (the upstream runs
    /// `upstream_parallelism` at once) plus its own generation.
    pub async fn eta_seconds(&self, position: i64) -> Option<i64> {
        if position <= 0 {
            return None;
        }
        let mean = self.mean_generation_secs().await;
        let lanes = i64::from(self.cfg.jobs.upstream_parallelism.max(1));
        let rounds = (position - 1) / lanes + 1;
        Some((rounds as f64 * mean).ceil() as i64)
    }
}
