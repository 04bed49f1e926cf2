//! `jewelshot-worker`: runs edit jobs. Configuration: `JEWELSHOT_*` (see docs/configuration.md).

/// jemalloc, as in the gateway: a job decodes, resizes and encodes images of a few MB on
/// whichever thread runs it, and glibc's per-thread arenas kept what those left behind
/// fragmented — the hour's soak (debug) saw one worker grow 0.1 MiB a minute while its twin stayed
/// flat. jemalloc's background thread returns dirty pages within its decay time. It also serves
/// the C code's `malloc` (`unprefixed_malloc_on_supported_platforms`): mozjpeg and libwebp
/// allocate their MB-sized coder buffers on short-lived encoder threads, which glibc's arenas
/// were the likeliest cause of the release hour's creep (+0.06 to +0.13 MiB a minute). With the
/// settings below as well, the hour's soak found both workers flat (docs/benchmarks.md, the
/// fourth hour).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings for the worker, read at its first allocation (`MALLOC_CONF` in the
/// environment still overrides them). A job's buffers are a few MB each and a worker runs a
/// handful at a time, so what matters is handing pages back, not allocating from many threads
/// at once: one arena (the default is four per core, each keeping its own freed pages; with
/// them the third soak hour saw a worker's RSS step from one plateau to a higher one) and dirty
/// pages returned after 1 s instead of 10 s (muzzy ones at once), so that RSS follows the live
/// heap (`jewelshot_allocator_bytes`): the fourth hour held both workers at 20-37 MiB, against
/// 40-62 before. The symbol is unprefixed on Linux, where the worker runs;
/// elsewhere jemalloc ignores it.
#[allow(non_upper_case_globals, unsafe_code)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &[u8; 47] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = jewelshot_runtime::init_tracing(env!("CARGO_BIN_NAME"), "info");
    let cfg = jewelshot_worker::Config::load()?;
    jewelshot_worker::run(cfg, jewelshot_runtime::shutdown_signal()).await
}
