//! # jewelshot-runtime
//!
//! The start and stop every binary shares, so they behave alike.
//!
//! ## Layout
//! - [`metrics`] — the Prometheus recorder's histogram buckets and descriptions.
//! - [`init_tracing`] — logs to stderr (stdout is kept for `listening on …`), `RUST_LOG` filter.
//! - [`shutdown_signal`] — resolves on SIGTERM (deploys) or Ctrl-C.

pub mod metrics;

/// Log to stderr, filtered by `RUST_LOG` (else `default`, e.g. `"info"`). `JEWELSHOT_LOG_FORMAT`:
/// `text` (the default; colours only on a terminal and never with `NO_COLOR`, so files and log
/// collectors get plain lines) or `json` (one JSON object a line, the span's fields — `job_id`
/// among them — beside the event's, for a log pipeline).
pub fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match LogFormat::from_env() {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init()
        }
    }
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
