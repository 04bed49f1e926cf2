//! `jewelshot-worker`: runs edit jobs. Configuration: `JEWELSHOT_*` (see docs/configuration.md).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    jewelshot_runtime::init_tracing("info");
    let cfg = jewelshot_worker::Config::load()?;
    jewelshot_worker::run(cfg, jewelshot_runtime::shutdown_signal()).await
}
