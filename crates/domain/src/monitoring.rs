//! What the metrics compare against (`JEWELSHOT_MONITORING__*`), read by every gateway and worker
//! so each exports the same fleet-wide figures: capacities, quotas and the fal budget, and how
//! often the shared gauges are sampled.

use serde::{Deserialize, Serialize};

/// `JEWELSHOT_MONITORING__*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MonitoringSettings {
    /// How often each process samples the fleet-wide gauges (queue depth from Redis, storage use
    /// and the oldest waiting job from Postgres, workers alive, fal accounts), in milliseconds:
    /// scrapes read the last sample, so scraping costs Postgres nothing.
    pub sample_interval_ms: u64,
    /// The object store's capacity in bytes, so "80 % of capacity" is a ratio (0 = unknown).
    pub storage_capacity_bytes: u64,
    /// Bandwidth the plan includes per month, in bytes (0 = none).
    pub bandwidth_quota_bytes_per_month: u64,
    /// What one accepted fal request costs, in US dollars (flux-pro/kontext: $0.04 an image).
    pub fal_price_usd_per_request: f64,
    /// The monthly fal budget in US dollars (0 = none).
    pub fal_budget_usd_per_month: f64,
}

impl Default for MonitoringSettings {
    fn default() -> Self {
        Self {
            sample_interval_ms: 5_000,
            storage_capacity_bytes: 0,
            bandwidth_quota_bytes_per_month: 0,
            fal_price_usd_per_request: 0.04,
            fal_budget_usd_per_month: 0.0,
        }
    }
}
