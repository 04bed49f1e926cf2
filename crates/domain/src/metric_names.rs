//! Every metric name, in one place, with what it means. Binaries describe them at start-up, and
//! `docs/metrics.md` is the table operators read (a test keeps the two the same).
//!
//! The seed's seven critical metrics are marked in [`SEVEN`].

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// (name, kind, description) of every metric.
pub const ALL: &[(&str, Kind, &str)] = &[
    (HTTP_REQUESTS, Kind::Counter, "HTTP requests answered by the gateway, by route pattern and status"),
    (HTTP_DURATION, Kind::Histogram, "Gateway request latency in seconds, by route pattern"),
    (JOBS_SUBMITTED, Kind::Counter, "Jobs accepted by the gateway, by priority"),
    (JOBS_ENQUEUE_DEFERRED, Kind::Counter, "Jobs accepted while Redis was unreachable (the reconciler enqueues them)"),
    (QUEUE_DEPTH, Kind::Gauge, "Jobs in the dispatch line and the work queue, by state (waiting, scheduled, dispatched, processing), as Redis holds them"),
    (QUEUE_OLDEST_AGE, Kind::Gauge, "Seconds the oldest job still waiting has waited since it was submitted (0 when none waits)"),
    (JOBS_FINISHED, Kind::Counter, "Jobs that reached a final state in a worker, by status and error code"),
    (JOB_ATTEMPTS, Kind::Counter, "Job attempts started by workers"),
    (STEP_DURATION, Kind::Histogram, "Step run time in seconds, by step and outcome"),
    (GENERATION_DURATION, Kind::Histogram, "Seconds fal took per generation, from accepting the request to the finished image"),
    (FAL_SUBMITS, Kind::Counter, "Requests submitted to fal, by outcome (accepted or the error code, e.g. upstream-rate-limited), account and model"),
    (FAL_PRICE, Kind::Gauge, "The configured price of one accepted fal request in US dollars, by model: spend = accepted submits times this"),
    (FAL_BUDGET, Kind::Gauge, "The configured monthly fal budget in US dollars (0 = none)"),
    (UPSTREAM_WAIT, Kind::Histogram, "Seconds a job waited for upstream capacity before its fal request could start"),
    (UPSTREAM_KEYS_DISABLED, Kind::Counter, "fal accounts taken out of the pool after fal refused their key, by account"),
    (UPSTREAM_ACCOUNTS, Kind::Gauge, "fal accounts in the pool by state (healthy, cooling after a 429, disabled)"),
    (WORKERS_ALIVE, Kind::Gauge, "Worker processes whose heartbeat Redis saw within the last 30 s"),
    (WORKER_HEARTBEAT, Kind::Gauge, "Unix time of this worker process's last heartbeat"),
    (WEBHOOK_DELIVERIES, Kind::Counter, "Webhook delivery attempts, by outcome"),
    (RECONCILER_ACTIONS, Kind::Counter, "What the reconciler put back after Redis lost it, by action (line, task)"),
    (DB_CONNECTIONS, Kind::Gauge, "Postgres connections of this process's pools, by state (in_use, idle)"),
    (DB_CONNECTIONS_MAX, Kind::Gauge, "Most Postgres connections this process's pools may open"),
    (DB_WAITING, Kind::Gauge, "Requests of this process waiting for a Postgres connection"),
    (STORAGE_BYTES, Kind::Gauge, "Bytes kept in object storage over all users"),
    (STORAGE_OBJECTS, Kind::Gauge, "Objects kept in object storage over all users"),
    (STORAGE_CAPACITY, Kind::Gauge, "The configured capacity of object storage in bytes (0 = unknown)"),
    (BANDWIDTH, Kind::Counter, "Bytes moved, by direction: files_served (GET /files), uploads_received, results_downloaded (from fal)"),
    (BANDWIDTH_QUOTA, Kind::Gauge, "The configured monthly bandwidth quota in bytes (0 = none)"),
    (ALLOCATOR_BYTES, Kind::Gauge, "jemalloc's view of this process's heap in bytes, by state: allocated (live), active (their pages), resident (with dirty pages not yet returned), retained (returned, still mapped), metadata"),
    (EVENT_STREAMS, Kind::Gauge, "Live status streams (GET /api/jobs/{id}/events) this gateway holds open"),
    (CACHE_LOOKUPS, Kind::Counter, "Result-cache lookups by outcome: hit (completed from a stored result), shared (waits on an identical job's fal request), miss (calls fal), bypass (cache: false, or the cache off)"),
    (CACHE_UPKEEP, Kind::Counter, "What the result cache's upkeep removed, by what: expired and capacity (entries), orphan (objects nothing referred to)"),
    (DB_GROUP_STATEMENTS, Kind::Counter, "Statements the group insert sent, by kind (plain, lookup): submits per statement is rows over statements"),
    (DB_GROUP_ROWS, Kind::Counter, "Submits the group insert wrote, by kind (plain: the bare INSERT; lookup: consulting the result cache)"),
];

/// The seed's seven critical metrics, in its order, and the names that carry each.
pub const SEVEN: &[(&str, &[&str])] = &[
    ("API response time", &[HTTP_DURATION]),
    ("AI generation time", &[GENERATION_DURATION]),
    ("Error rate", &[HTTP_REQUESTS, JOBS_FINISHED]),
    ("Queue length", &[QUEUE_DEPTH, QUEUE_OLDEST_AGE]),
    ("Database connections", &[DB_CONNECTIONS, DB_CONNECTIONS_MAX, DB_WAITING]),
    ("Storage usage", &[STORAGE_BYTES, STORAGE_OBJECTS, STORAGE_CAPACITY]),
    ("Bandwidth", &[BANDWIDTH, BANDWIDTH_QUOTA]),
];

pub const HTTP_REQUESTS: &str = "jewelshot_http_requests_total";
pub const HTTP_DURATION: &str = "jewelshot_http_request_duration_seconds";
pub const JOBS_SUBMITTED: &str = "jewelshot_jobs_submitted_total";
pub const CACHE_LOOKUPS: &str = "jewelshot_cache_lookups_total";
pub const CACHE_UPKEEP: &str = "jewelshot_cache_upkeep_total";
pub const JOBS_ENQUEUE_DEFERRED: &str = "jewelshot_jobs_enqueue_deferred_total";
pub const QUEUE_DEPTH: &str = "jewelshot_queue_depth";
pub const QUEUE_OLDEST_AGE: &str = "jewelshot_queue_oldest_job_age_seconds";
pub const JOBS_FINISHED: &str = "jewelshot_jobs_finished_total";
pub const JOB_ATTEMPTS: &str = "jewelshot_job_attempts_total";
pub const STEP_DURATION: &str = "jewelshot_step_duration_seconds";
pub const GENERATION_DURATION: &str = "jewelshot_generation_duration_seconds";
pub const FAL_SUBMITS: &str = "jewelshot_fal_submits_total";
pub const FAL_PRICE: &str = "jewelshot_fal_price_usd";
pub const FAL_BUDGET: &str = "jewelshot_fal_budget_usd";
pub const UPSTREAM_WAIT: &str = "jewelshot_upstream_wait_seconds";
pub const UPSTREAM_KEYS_DISABLED: &str = "jewelshot_upstream_keys_disabled_total";
pub const UPSTREAM_ACCOUNTS: &str = "jewelshot_upstream_accounts";
pub const WORKERS_ALIVE: &str = "jewelshot_workers_alive";
pub const WORKER_HEARTBEAT: &str = "jewelshot_worker_last_heartbeat_timestamp_seconds";
pub const WEBHOOK_DELIVERIES: &str = "jewelshot_webhook_deliveries_total";
pub const RECONCILER_ACTIONS: &str = "jewelshot_reconciler_actions_total";
pub const DB_CONNECTIONS: &str = "jewelshot_db_connections";
pub const DB_CONNECTIONS_MAX: &str = "jewelshot_db_connections_max";
pub const DB_WAITING: &str = "jewelshot_db_waiting";
pub const STORAGE_BYTES: &str = "jewelshot_storage_bytes";
pub const STORAGE_OBJECTS: &str = "jewelshot_storage_objects";
pub const STORAGE_CAPACITY: &str = "jewelshot_storage_capacity_bytes";
pub const BANDWIDTH: &str = "jewelshot_bandwidth_bytes_total";
pub const BANDWIDTH_QUOTA: &str = "jewelshot_bandwidth_quota_bytes";
pub const ALLOCATOR_BYTES: &str = "jewelshot_allocator_bytes";
pub const EVENT_STREAMS: &str = "jewelshot_gateway_event_streams";
pub const DB_GROUP_STATEMENTS: &str = "jewelshot_db_group_statements_total";
pub const DB_GROUP_ROWS: &str = "jewelshot_db_group_rows_total";

/// Buckets of the request and step histograms, in seconds.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Buckets of [`GENERATION_DURATION`]: fal takes 20-45 s, and 120 s is where a generation is
/// surely in trouble.
pub const GENERATION_BUCKETS: &[f64] =
    &[1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 60.0, 90.0, 120.0];

/// The metrics table of `docs/metrics.md` (name, type, meaning), generated from [`ALL`].
pub fn table() -> String {
    let mut out = String::from("| name | type | meaning |\n|---|---|---|\n");
    for (name, kind, help) in ALL {
        out.push_str(&format!("| `{name}` | {} | {help} |\n", kind.as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions_and_are_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for (name, kind, help) in ALL {
            assert!(seen.insert(*name), "{name} twice");
            assert!(name.starts_with("jewelshot_") && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(!help.is_empty());
            // Counters and only counters end in `_total`; nothing ends like a histogram's series.
            assert_eq!(name.ends_with("_total"), *kind == Kind::Counter, "{name}");
            for suffix in ["_count", "_sum", "_bucket"] {
                assert!(!name.ends_with(suffix), "{name}");
            }
        }
        for (_, names) in SEVEN {
            for n in *names {
                assert!(seen.contains(n), "{n} is one of the seven but not in ALL");
            }
        }
    }

    #[test]
    fn the_docs_table_is_current() {
        let docs = include_str!("../../../docs/metrics.md");
        assert!(docs.contains(&table()), "docs/metrics.md is out of date; its table is:\n{}", table());
    }
}
