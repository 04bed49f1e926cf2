//! `fal-emulator`: serve the emulated fal queue API. Prints `listening on http://ADDR` once bound.

use clap::Parser;
use fal_emulator::EmulatorConfig;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cfg = EmulatorConfig::parse();
    let listener = std::net::TcpListener::bind(&cfg.listen)?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    fal_emulator::run(cfg, listener, shutdown).await
}
