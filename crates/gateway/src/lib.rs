//! # jewelshot-gateway
//!
//! The thin HTTP front: authenticate, validate, record the job in Postgres, enqueue it, and
//! answer in milliseconds. It never calls fal and never waits on a job. Stateless: run as many
//! replicas as traffic needs.
//!
//! ## Layout
//! - [`config`] — `JEWELSHOT_*` settings: [`Config`] (re-exported at the root) and
//!   [`Config::load`].
//! - [`state`] — [`state::AppState`], what every handler shares (database, queue, store, limiters,
//!   the cached upstream capacity and generation time behind ETAs).
//! - [`auth`] — the bearer middleware ([`auth::authenticate`]: API keys, or identity-provider
//!   JWTs through [`jwt`]) and the [`auth::AuthUser`] extractor.
//! - [`jwt`] — OIDC / Supabase JWTs: the JWKS cache with rotation, pinned algorithms, claims.
//! - [`routes`] — handlers (short: extract → service → DTO); [`routes::configure`] registers them.
//! - [`service`] — submit/view/list/cancel logic.
//! - [`uploads`] — uploads (capped read, bounded compression, quota), gallery, storage use.
//! - [`error`] — the one error shape, [`error::ApiError`] (and the `RateLimit` headers).
//! - [`openapi`] — the generated OpenAPI document.
//! - [`refresh`] — [`refresh::Refreshed`], a value read from a dependency now and then by one
//!   request while the others use the last one (the ETA's inputs).
//! - [`telemetry`] — Prometheus metrics and `/metrics`.
//! - [`Application`] — build (bind) then run until shutdown.

pub mod auth;
pub mod auth_cache;
pub mod config;
pub mod console;
pub mod cors;
pub mod error;
pub mod events;
pub mod jwt;
pub mod openapi;
pub mod refresh;
pub mod routes;
pub mod service;
pub mod state;
pub mod telemetry;
pub mod uploads;

use jewelshot_domain::error_code as codes;
use std::{future::Future, net::TcpListener};

use actix_web::{dev::Server, middleware, web, App, HttpServer};
use jewelshot_db::{secrets::Keyring, Db};
use jewelshot_queue::Queue;

pub use config::Config;
use state::AppState;

/// A gateway bound to its port, not yet serving.
pub struct Application {
    server: Server,
    port: u16,
    /// `GET /metrics` on its own listener, and its port.
    metrics: Option<(Server, u16)>,
    /// The credential cache and where its announcements come from.
    auth: (std::sync::Arc<auth_cache::AuthCache>, jewelshot_queue::QueueConfig),
    /// The fleet-wide gauges this process samples.
    fleet: jewelshot_queue::fleet::Fleet,
    /// Live status: the hub and the channel it follows.
    events: (std::sync::Arc<events::EventHub>, String),
}

impl Application {
    /// Connect to the dependencies and bind `cfg.gateway.listen` (port 0 picks one).
    pub async fn build(cfg: Config) -> anyhow::Result<Self> {
        let mut cfg = cfg;
        // The process's own pool (metrics, background reads); requests use their worker thread's.
        let mut base_db = cfg.database.clone();
        base_db.max_connections = state::BASE_POOL.min(base_db.max_connections);
        let db = Db::connect(&base_db)?.with_keyring(Keyring::load(&cfg.secrets)?);
        let queue = Queue::connect(&cfg.queue).await?;
        let listener = TcpListener::bind(&cfg.gateway.listen)?;
        let addr = listener.local_addr()?;
        let port = addr.port();
        if cfg.storage.backend == "local" && cfg.storage.local.public_base_url.is_empty() {
            // Serve our own files at our own address (port 0 included).
            let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
            cfg.storage.local.public_base_url = format!("http://{host}:{port}/files");
        }
        let store = jewelshot_storage::open(&cfg.storage).await?;
        let limit = cfg.gateway.max_json_bytes;
        let workers = cfg.gateway.workers;
        let grace = cfg.gateway.shutdown_grace_secs;
        telemetry::prometheus();
        let metrics_listen = cfg.gateway.metrics_listen.clone();
        let mut state = AppState::new(db, queue, store, cfg);
        if state.cfg.jwt.enabled() {
            state.jwt = Some(std::sync::Arc::new(jwt::JwtVerifier::new(state.cfg.jwt.clone())?));
        }
        let state = web::Data::new(state);
        let auth = (state.auth_cache.clone(), state.cfg.queue.clone());
        let fleet = state.fleet();
        let events = (state.events.clone(), state.limiter.events_channel());
        let metrics = if metrics_listen.is_empty() {
            None
        } else {
            Some(telemetry::metrics_server(&metrics_listen, state.clone())?)
        };
        let routes = openapi::Routes::from_document(&openapi::document(false));
        let cors = state.cfg.cors.clone();
        let mut server = HttpServer::new(move || {
            let routes = routes.clone();
            let base = state.clone();
            App::new()
                // Each worker thread its own connections (see `AppState::for_worker`).
                .data_factory(move || {
                    let base = base.clone();
                    async move { Ok::<_, std::convert::Infallible>(base.for_worker().await) }
                })
                .app_data(
                    web::JsonConfig::default().limit(limit).error_handler(move |e, _| error::json_error(e, limit)),
                )
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    error::ApiError::BadRequest { code: codes::INVALID_QUERY, message: e.to_string() }.into()
                }))
                .app_data(web::PathConfig::default().error_handler(|_, _| error::ApiError::NotFound.into()))
                .wrap(middleware::from_fn(auth::authenticate))
                .wrap(middleware::from_fn(telemetry::track))
                // Outermost: a preflight is answered before authentication could refuse it.
                .wrap(middleware::Condition::new(cors.enabled(), cors.middleware()))
                .configure(routes::configure)
                .default_service(web::to(move |req: actix_web::HttpRequest| {
                    let allowed = routes.allowed(req.path());
                    async move {
                        Err::<actix_web::HttpResponse, _>(match allowed {
                            Some(methods) => error::ApiError::MethodNotAllowed(methods),
                            None => error::ApiError::NotFound,
                        })
                    }
                }))
        })
        .listen(listener)?
        .shutdown_timeout(grace);
        if workers > 0 {
            server = server.workers(workers);
        }
        Ok(Self { server: server.disable_signals().run(), port, metrics, auth, fleet, events })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The metrics listener's port, when it is on.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(_, p)| *p)
    }

    /// Serve until `shutdown` resolves, then drain in-flight requests.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let metrics_handle = self.metrics.as_ref().map(|(s, _)| s.handle());
        let summary = tokio::spawn(telemetry::summarize_refusals(std::time::Duration::from_secs(10)));
        let follow = tokio::spawn(auth_cache::follow(self.auth.0.clone(), self.auth.1.clone()));
        let fleet = tokio::spawn(self.fleet.run());
        let (hub, channel) = self.events;
        let live = tokio::spawn(events::follow(hub.clone(), self.auth.1.clone(), channel, events::LINGER));
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutdown requested: draining requests");
            // Live status streams end now (clients reconnect elsewhere) instead of holding the drain.
            hub.close();
            handle.stop(true).await;
            if let Some(m) = metrics_handle {
                m.stop(true).await;
            }
        });
        match self.metrics {
            Some((metrics, _)) => {
                let (api, metrics) = futures::join!(self.server, metrics);
                api?;
                metrics?;
            }
            None => self.server.await?,
        }
        summary.abort();
        follow.abort();
        fleet.abort();
        live.abort();
        Ok(())
    }
}
