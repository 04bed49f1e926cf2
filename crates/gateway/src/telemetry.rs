//! Prometheus metrics: one recorder per process, HTTP request counts and latencies by route
//! pattern (never by raw path, so cardinality stays bounded), and `GET /metrics`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::Instant,
};

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    get,
    middleware::Next,
    web, HttpMessage, HttpResponse,
};
use jewelshot_domain::metric_names as m;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::state::AppState;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder (installed on first use; shared by every app in the process): every
/// histogram with its buckets, every metric described (`jewelshot_runtime::metrics`).
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = jewelshot_runtime::metrics::builder().build_recorder();
        let handle = recorder.handle();
        jewelshot_runtime::metrics::spawn_upkeep(handle.clone(), jewelshot_runtime::metrics::UPKEEP_EVERY);
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        jewelshot_runtime::metrics::describe_all();
        jewelshot_runtime::allocator::spawn_gauges(jewelshot_runtime::allocator::SAMPLE_EVERY);
        handle
    })
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

/// Prometheus text format. Only renders: what comes from Postgres and Redis is sampled in the
/// background (`jewelshot_queue::fleet`), so scraping costs them nothing. Served on the metrics
/// listener only.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics_endpoint() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(prometheus().render())
}
