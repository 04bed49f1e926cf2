//! `jewelshot-gateway`: the HTTP API. Prints `listening on http://ADDR` once bound.

/// jemalloc with its background purging thread: a burst of connections (each with its buffers
/// and request in flight) leaves glibc's malloc holding the memory for good, fragmented across
/// the worker threads' arenas; jemalloc hands dirty pages back to the system within its decay
/// time (10 s), so the gateway's RSS returns to its working set after a burst. The C codecs
/// that shrink uploads (mozjpeg, libwebp) allocate through it too
/// (`unprefixed_malloc_on_supported_platforms`), not through glibc's per-thread arenas.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = jewelshot_runtime::init_tracing(env!("CARGO_BIN_NAME"), "info");
    let cfg = jewelshot_gateway::Config::load()?;
    let host = cfg.gateway.listen.rsplit_once(':').map(|(h, _)| h.to_owned()).unwrap_or_default();
    let app = jewelshot_gateway::Application::build(cfg).await?;
    println!("listening on http://{host}:{}", app.port());
    app.run_until(jewelshot_runtime::shutdown_signal()).await
}
