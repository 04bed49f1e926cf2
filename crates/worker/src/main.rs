//! `jewelshot-worker`: runs edit jobs. Configuration: `JEWELSHOT_*` (see docs/configuration.md).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = jewelshot_runtime::init_tracing(env!("CARGO_BIN_NAME"), "info");
    let cfg = jewelshot_worker::Config::load()?;
    jewelshot_worker::run(cfg, jewelshot_runtime::shutdown_signal()).await
}
