//! `fal-emulator`: serve the emulated fal queue API. Prints `listening on http://ADDR` once bound.

use clap::Parser;
use fal_emulator::EmulatorConfig;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = jewelshot_runtime::init_tracing(env!("CARGO_BIN_NAME"), "info");
    let cfg = EmulatorConfig::parse();
    let listener = std::net::TcpListener::bind(&cfg.listen)?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    fal_emulator::run(cfg, listener, jewelshot_runtime::shutdown_signal()).await
}
