//! `jewelshot-gateway`: the HTTP API. Prints `listening on http://ADDR` once bound.

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    jewelshot_runtime::init_tracing("info");
    let cfg = jewelshot_gateway::Config::load()?;
    let host = cfg.gateway.listen.rsplit_once(':').map(|(h, _)| h.to_owned()).unwrap_or_default();
    let app = jewelshot_gateway::Application::build(cfg).await?;
    println!("listening on http://{host}:{}", app.port());
    app.run_until(jewelshot_runtime::shutdown_signal()).await
}
