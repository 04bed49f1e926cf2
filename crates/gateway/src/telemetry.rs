//! Prometheus metrics: one recorder per process, HTTP request counts and latencies by route
//! pattern (never by raw path, so cardinality stays bounded), and `GET /metrics`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    get,
    middleware::Next,
    web, HttpMessage, HttpResponse,
};
use jewelshot_domain::metric_names as m;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder (installed on first use; shared by every app in the process).
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        describe_all();
        handle
    })
}

/// Attach the descriptions from `metric_names::ALL` (the kind follows the name's suffix).
pub fn describe_all() {
    for (name, help) in m::ALL {
        if name.ends_with("_total") {
            metrics::describe_counter!(*name, *help);
        } else if name.ends_with("_seconds") {
            metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help);
        } else {
            metrics::describe_gauge!(*name, *help);
        }
    }
}

/// The job a request created, for its access-log line (set by the handler).
#[derive(Debug, Clone)]
pub struct LoggedJob(pub String);

/// Requests refused with 401 since the last summary line.
static UNAUTHORIZED: AtomicU64 = AtomicU64::new(0);

/// Middleware: count and time every request by its route pattern, and write the access log.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let pattern = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let log =
        req.app_data::<web::Data<AppState>>().is_some_and(|s| s.cfg.gateway.access_log) && req.path() != "/healthz";
    let line = log.then(|| (req.method().clone(), req.path().to_owned()));
    let res = next.call(req).await;
    let status = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    let elapsed = start.elapsed();
    metrics::counter!(m::HTTP_REQUESTS, "route" => pattern.clone(), "status" => status.to_string()).increment(1);
    metrics::histogram!(m::HTTP_DURATION, "route" => pattern).record(elapsed.as_secs_f64());
    if status == 401 {
        UNAUTHORIZED.fetch_add(1, Ordering::Relaxed);
    } else if let Some((method, path)) = line {
        let job = res.as_ref().ok().and_then(|r| r.request().extensions().get::<LoggedJob>().map(|j| j.0.clone()));
        let ms = elapsed.as_secs_f64() * 1000.0;
        match job {
            Some(job_id) => tracing::info!(target: "access", %method, path, status, ms, job_id, "request"),
            None => tracing::info!(target: "access", %method, path, status, ms, "request"),
        }
    }
    res
}

/// Every `every`, one line for the requests refused for want of a valid credential since the
/// last (none when there were none). Runs until the process ends.
pub async fn summarize_refusals(every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let n = UNAUTHORIZED.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::info!(target: "access", refused = n, secs = every.as_secs(), "requests without a valid credential refused (401)");
        }
    }
}

/// The metrics listener: `GET /metrics` only, one worker thread, apart from the public API (so
/// strangers cannot scrape it, and a busy API does not delay scrapes).
pub fn metrics_server(listen: &str, state: web::Data<AppState>) -> anyhow::Result<(actix_web::dev::Server, u16)> {
    let listener = std::net::TcpListener::bind(listen)?;
    let port = listener.local_addr()?.port();
    let server =
        actix_web::HttpServer::new(move || actix_web::App::new().app_data(state.clone()).service(metrics_endpoint))
            .workers(1)
            .listen(listener)?
            .disable_signals()
            .run();
    tracing::info!(%listen, port, "serving metrics");
    Ok((server, port))
}

/// Prometheus text format; open jobs by state are counted at scrape time from the partial index
/// of open jobs (never a scan of every job ever run). Served on the metrics listener only.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics_endpoint(state: web::Data<AppState>) -> HttpResponse {
    refresh_gauges(&state).await;
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(prometheus().render())
}

/// Read the gauges that come from Postgres, at most once per `metrics_refresh_ms`: one scrape
/// refreshes them while the others (and scrapes within the interval) serve the last values.
async fn refresh_gauges(state: &AppState) {
    let Ok(mut last) = state.metrics_refreshed.try_lock() else { return };
    let every = Duration::from_millis(state.cfg.gateway.metrics_refresh_ms);
    if last.is_some_and(|t| t.elapsed() < every) {
        return;
    }
    if let Ok(c) = state.db.open_counts().await {
        for (label, v) in [("queued", c.queued), ("scheduled", c.scheduled), ("processing", c.processing)] {
            metrics::gauge!(m::QUEUE_JOBS, "state" => label).set(v as f64);
        }
    }
    if let Ok(total) = state.db.total_storage().await {
        metrics::gauge!(m::STORAGE_BYTES).set(total.bytes as f64);
        metrics::gauge!(m::STORAGE_OBJECTS).set(total.objects as f64);
    }
    *last = Some(Instant::now());
}
