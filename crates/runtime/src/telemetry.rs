//! OpenTelemetry traces over OTLP/HTTP (protobuf), off unless an endpoint is configured.
//!
//! Configured by OpenTelemetry's own environment variables, so a collector set up for other
//! services needs nothing new: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) turns
//! export on, `OTEL_SERVICE_NAME` overrides the binary's name, `OTEL_BSP_*` tune the batch,
//! `OTEL_SDK_DISABLED=true` turns it off again, `OTEL_TRACES_SAMPLER` samples.
//!
//! Only spans of JewelShot's own crates are exported (not hyper's, apalis's or the SDK's own),
//! at `info` or above whatever `RUST_LOG` says about logs, with our warnings and errors as
//! events on them. A job's trace crosses processes in
//! its row: the gateway stores its `submit` span as a W3C `traceparent` ([`traceparent`]) and
//! the worker that runs an attempt parents its span on it ([`follow`]).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Spans whose target ends with this are logged but never exported: a span that only exists to
/// label log lines and would otherwise make a one-span trace of its own (the worker's per-task
/// span, made before the job's row is read). E.g. `target: "jewelshot_worker::untraced"`, which
/// `RUST_LOG=jewelshot_worker=…` still covers.
pub const UNTRACED: &str = "::untraced";

/// Whether the environment asks for OTLP export.
pub fn configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// OTLP/HTTP with protobuf is what we speak; a collector set up for gRPC (port 4317) would
/// receive HTTP, so that setting is refused rather than ignored.
fn protocol_supported() -> Result<(), String> {
    for name in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] {
        if let Ok(p) = std::env::var(name) {
            if !p.is_empty() && p != "http/protobuf" {
                return Err(format!("{name}={p:?}: only http/protobuf is supported (the collector's port 4318)"));
            }
        }
    }
    Ok(())
}

/// The tracer provider; dropping it exports what is still buffered (at most a few seconds).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// No export.
    pub const fn off() -> Self {
        Self { provider: None }
    }

    pub fn is_on(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // Longer than one export's timeout, so the last batch is tried once.
            if let Err(e) = p.shutdown_with_timeout(std::time::Duration::from_secs(5)) {
                eprintln!("traces not all exported at exit: {e}");
            }
        }
    }
}

/// The provider and its tracer for `service`, exporting in batches on the SDK's own thread.
pub(crate) fn provider(service: &str) -> Result<(SdkTracerProvider, opentelemetry_sdk::trace::Tracer), String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    protocol_supported()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(std::time::Duration::from_secs(4))
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
    let tracer = provider.tracer("jewelshot");
    Ok((provider, tracer))
}

pub(crate) fn wrap(provider: SdkTracerProvider) -> Telemetry {
    Telemetry { provider: Some(provider) }
}

/// Whether the exporter takes spans and events with this metadata: our spans at `info` and
/// above, and our warnings and errors as events on them (info lines stay in the logs).
pub(crate) fn exported(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    let level = if meta.is_span() { tracing::Level::INFO } else { tracing::Level::WARN };
    *meta.level() <= level && target.starts_with("jewelshot") && !target.ends_with(UNTRACED)
}

/// The current span as a W3C `traceparent` (`00-<trace>-<span>-<flags>`), to be stored with
/// work another process continues (a span that was not sampled says so in its flags, and what
/// follows it is not sampled either). `None` when export is off, so rows carry nothing then.
pub fn traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Make `span` — created and not yet entered — a child of the span `traceparent` names. A
/// missing or malformed value leaves the span where it is (a root of its own).
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let carrier = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        // Fails only without the exporting layer (export off), where there is nothing to link.
        let _ = span.set_parent(cx);
    }
}
