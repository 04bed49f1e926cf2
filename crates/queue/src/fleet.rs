//! The fleet-wide gauges every gateway and worker exports, sampled in the background so a scrape
//! only renders: the queue's depth by state (from Redis, the same value from every replica), the
//! oldest waiting job and the storage in use (from Postgres, one cheap read each), workers alive,
//! the fal accounts by state, this process's Postgres pools, and the configured capacities,
//! quotas and budget the alerts compare against.

use std::{sync::Arc, time::Duration};

use jewelshot_db::{Db, PoolStats};
use jewelshot_domain::{metric_names as m, monitoring::MonitoringSettings};
use jewelshot_ratelimit::Limiter;

use crate::Queue;

/// A worker counts as alive while its heartbeat is this recent.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(30);

/// The pools this process's Postgres connections come from (a gateway has one per HTTP worker
/// thread).
pub type Pools = Arc<dyn Fn() -> Vec<PoolStats> + Send + Sync>;

/// What one process samples.
pub struct Fleet {
    pub limiter: Limiter,
    pub queue: Queue,
    /// For the reads from Postgres.
    pub db: Db,
    pub pools: Pools,
    pub settings: MonitoringSettings,
    /// The fal model the fleet runs (the price is per model).
    pub model: String,
}

impl Fleet {
    /// Sample every `settings.sample_interval_ms` until the task is dropped.
    pub async fn run(self) {
        let every = Duration::from_millis(self.settings.sample_interval_ms.max(100));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample().await;
        }
    }

    /// Set every fleet gauge once. A source that does not answer leaves its gauges as they were
    /// (the alerts on staleness are Prometheus's `up`, not a zero here).
    pub async fn sample(&self) {
        let s = &self.settings;
        metrics::gauge!(m::STORAGE_CAPACITY).set(s.storage_capacity_bytes as f64);
        metrics::gauge!(m::BANDWIDTH_QUOTA).set(s.bandwidth_quota_bytes_per_month as f64);
        metrics::gauge!(m::FAL_BUDGET).set(s.fal_budget_usd_per_month);
        metrics::gauge!(m::FAL_PRICE, "model" => self.model.clone()).set(s.fal_price_usd_per_request);
        self.pools();
        self.queue_depth().await;
        match self.queue.workers_alive(ALIVE_WITHIN).await {
            Ok(n) => metrics::gauge!(m::WORKERS_ALIVE).set(n as f64),
            Err(e) => tracing::debug!(error = %e, "workers alive not sampled"),
        }
        if let Ok(keys) = self.limiter.snapshot().await {
            let (mut healthy, mut cooling, mut disabled) = (0, 0, 0);
            for k in &keys {
                match (k.healthy, k.cooling_down) {
                    (_, true) => cooling += 1,
                    (true, false) => healthy += 1,
                    (false, false) => disabled += 1,
                }
            }
            for (state, n) in [("healthy", healthy), ("cooling", cooling), ("disabled", disabled)] {
                metrics::gauge!(m::UPSTREAM_ACCOUNTS, "state" => state).set(f64::from(n));
            }
        }
        match self.db.oldest_waiting_secs().await {
            Ok(secs) => metrics::gauge!(m::QUEUE_OLDEST_AGE).set(secs),
            Err(e) => tracing::debug!(error = %e, "oldest waiting job not sampled"),
        }
        match self.db.total_storage().await {
            Ok(total) => {
                metrics::gauge!(m::STORAGE_BYTES).set(total.bytes as f64);
                metrics::gauge!(m::STORAGE_OBJECTS).set(total.objects as f64);
            }
            Err(e) => tracing::debug!(error = %e, "storage use not sampled"),
        }
    }

    fn pools(&self) {
        let total = (self.pools)().into_iter().fold(PoolStats::default(), |a, b| a + b);
        metrics::gauge!(m::DB_CONNECTIONS, "state" => "in_use").set(total.open.saturating_sub(total.idle) as f64);
        metrics::gauge!(m::DB_CONNECTIONS, "state" => "idle").set(total.idle as f64);
        metrics::gauge!(m::DB_CONNECTIONS_MAX).set(total.max as f64);
        metrics::gauge!(m::DB_WAITING).set(total.waiting as f64);
    }

    async fn queue_depth(&self) {
        let (line, dispatched, work) =
            tokio::join!(self.limiter.line_lengths(), self.limiter.dispatched_count(), self.queue.depths());
        if let Ok((high, normal, scheduled)) = line {
            metrics::gauge!(m::QUEUE_DEPTH, "state" => "waiting").set((high + normal) as f64);
            metrics::gauge!(m::QUEUE_DEPTH, "state" => "scheduled").set(scheduled as f64);
        }
        if let (Ok(granted), Ok(work)) = (dispatched, work) {
            // Dispatched: holding a slot, not yet running (granted, or ready in the work queue).
            metrics::gauge!(m::QUEUE_DEPTH, "state" => "dispatched").set(granted.max(work.active) as f64);
            metrics::gauge!(m::QUEUE_DEPTH, "state" => "processing").set(work.inflight as f64);
        }
    }
}
