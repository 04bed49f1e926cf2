//! `jewelshot-worker`: runs edit jobs. Configuration: `JEWELSHOT_*` (see docs/configuration.md).

/// jemalloc, as in the gateway: a job decodes, resizes and encodes images of a few MB on
/// whichever thread runs it, and glibc's per-thread arenas kept what those left behind
/// fragmented — the hour's soak (debug) saw one worker grow 0.1 MiB a minute while its twin stayed
/// flat. jemalloc's background thread returns dirty pages within its decay time. It also serves
/// the C code's `malloc` (`unprefixed_malloc_on_supported_platforms`): mozjpeg and libwebp
/// allocate their MB-sized coder buffers on short-lived encoder threads, which glibc's arenas
/// were the likeliest cause of the release hour's creep (+0.06 to +0.13 MiB a minute); whether
/// this removes it is not settled yet (docs/benchmarks.md, the third hour).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = jewelshot_runtime::init_tracing(env!("CARGO_BIN_NAME"), "info");
    let cfg = jewelshot_worker::Config::load()?;
    jewelshot_worker::run(cfg, jewelshot_runtime::shutdown_signal()).await
}
