//! # jewelshot-runtime
//!
//! The start and stop every binary shares, so they behave alike.
//!
//! ## Layout
//! - [`metrics`] — the Prometheus recorder's histogram buckets and descriptions.
//! - [`allocator`] — jemalloc's figures (live, resident, retained bytes) as gauges.
//! - [`init_tracing`] — logs to stderr (stdout is kept for `listening on …`), `RUST_LOG` filter;
//!   OpenTelemetry traces over OTLP when configured ([`telemetry`]).
//! - [`shutdown_signal`] — resolves on SIGTERM (deploys) or Ctrl-C.

pub mod allocator;
pub mod metrics;
pub mod telemetry;

pub use telemetry::Telemetry;

/// Tests that measure this process's heap take turns: jemalloc's figures are the whole
/// process's.
#[cfg(test)]
pub(crate) static HEAP_TEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Log to stderr, filtered by `RUST_LOG` (else `default`, e.g. `"info"`), and export traces
/// when OTLP is configured ([`telemetry`]) as `service` (e.g. `jewelshot-gateway`).
/// `JEWELSHOT_LOG_FORMAT`: `text` (the default; colours only on a terminal and never with
/// `NO_COLOR`, so files and log collectors get plain lines) or `json` (one JSON object a line,
/// the span's fields — `job_id` among them — beside the event's, for a log pipeline).
///
/// Keep the returned [`Telemetry`] alive until exit: dropping it exports the last spans.
pub fn init_tracing(service: &str, default: &str) -> Telemetry {
    use std::io::IsTerminal;
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let format = LogFormat::from_env();
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (tracer, failure) = if telemetry::configured() {
        match telemetry::provider(service) {
            Ok(pair) => (Some(pair), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let Some((provider, tracer)) = tracer else {
        // No export: the global filter, so callsites the filter rejects are cached as never.
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
        match format {
            LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
            LogFormat::Text => builder.with_ansi(ansi).init(),
        }
        if let Some(e) = failure {
            tracing::warn!(error = %e, "traces are not exported");
        }
        return Telemetry::off();
    };
    // Export: logs keep RUST_LOG's filter, the exporter its own (our spans at info and above,
    // whatever the logs say).
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => {
            fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).with_filter(filter).boxed()
        }
        LogFormat::Text => fmt.with_ansi(ansi).with_filter(filter).boxed(),
    };
    let exported = tracing_subscriber::filter::filter_fn(telemetry::exported)
        .with_max_level_hint(tracing_subscriber::filter::LevelFilter::INFO);
    let traces = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(exported);
    tracing_subscriber::registry().with(logs).with(traces).init();
    tracing::info!("exporting traces over OTLP/HTTP");
    telemetry::wrap(provider)
}

/// How logs are written (`JEWELSHOT_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `JEWELSHOT_LOG_FORMAT` (`text` or `json`; anything else is `text`, with a warning).
    pub fn from_env() -> Self {
        match std::env::var("JEWELSHOT_LOG_FORMAT").as_deref() {
            Ok("json") => Self::Json,
            Ok("text") | Err(_) => Self::Text,
            Ok(other) => {
                eprintln!("JEWELSHOT_LOG_FORMAT={other:?} is neither text nor json: writing text");
                Self::Text
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    // A handler that cannot be installed waits forever rather than stopping the process at once.
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "Ctrl-C cannot be caught; stop with SIGTERM");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
