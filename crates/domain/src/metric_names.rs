//! Every metric name, in one place, with what it means. Binaries describe them at start-up.

/// (name, description) of every metric.
pub const ALL: &[(&str, &str)] = &[
    (HTTP_REQUESTS, "HTTP requests answered by the gateway, by route pattern and status"),
    (HTTP_DURATION, "Gateway request latency in seconds, by route pattern"),
    (JOBS_SUBMITTED, "Jobs accepted by the gateway, by priority"),
    (JOBS_ENQUEUE_DEFERRED, "Jobs accepted while Redis was unreachable (the reconciler enqueues them)"),
    (QUEUE_JOBS, "Jobs by state, as Postgres records them (sampled at scrape)"),
    (JOBS_FINISHED, "Jobs that reached a final state in a worker, by status and error code"),
    (JOB_ATTEMPTS, "Job attempts started by workers"),
    (STEP_DURATION, "Step run time in seconds, by step and outcome"),
    (FAL_SUBMITS, "Requests submitted to fal (each is billed), by outcome and account"),
    (UPSTREAM_WAIT, "Seconds a job waited for upstream capacity before its fal request could start"),
    (UPSTREAM_KEYS_DISABLED, "fal accounts taken out of the pool after fal refused their key, by account"),
    (WEBHOOK_DELIVERIES, "Webhook deliveries, by outcome"),
    (STORAGE_BYTES, "Bytes kept in object storage over all users (sampled at scrape)"),
    (STORAGE_OBJECTS, "Objects kept in object storage over all users (sampled at scrape)"),
];

pub const HTTP_REQUESTS: &str = "jewelshot_http_requests_total";
pub const HTTP_DURATION: &str = "jewelshot_http_request_duration_seconds";
pub const JOBS_SUBMITTED: &str = "jewelshot_jobs_submitted_total";
pub const JOBS_ENQUEUE_DEFERRED: &str = "jewelshot_jobs_enqueue_deferred_total";
pub const QUEUE_JOBS: &str = "jewelshot_queue_jobs";
pub const JOBS_FINISHED: &str = "jewelshot_jobs_finished_total";
pub const JOB_ATTEMPTS: &str = "jewelshot_job_attempts_total";
pub const STEP_DURATION: &str = "jewelshot_step_duration_seconds";
pub const FAL_SUBMITS: &str = "jewelshot_fal_submits_total";
pub const UPSTREAM_WAIT: &str = "jewelshot_upstream_wait_seconds";
pub const UPSTREAM_KEYS_DISABLED: &str = "jewelshot_upstream_keys_disabled_total";
pub const WEBHOOK_DELIVERIES: &str = "jewelshot_webhook_deliveries_total";
pub const STORAGE_BYTES: &str = "jewelshot_storage_bytes";
pub const STORAGE_OBJECTS: &str = "jewelshot_storage_objects";
