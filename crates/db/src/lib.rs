//! # jewelshot-db
//!
//! The Postgres record: a bounded deadpool pool, embedded migrations, and every SQL statement the
//! system runs. Nothing outside this crate writes SQL.
//!
//! ## Layout
//! - [`DbConfig`] — URL, pool size, timeouts (`JEWELSHOT_DATABASE__*`).
//! - [`Db`] — the pool handle: [`Db::connect`] (bounded by `max_connections`, every wait timed
//!   out), [`Db::migrate`] (applies `migrations/`, embedded at build time by refinery),
//!   [`Db::ping`], [`Db::pool_status`]; the modules below add the queries as `Db` methods.
//! - [`DbError`] — typed failures with `code()`, `is_retryable()` and `is_unavailable()`;
//!   [`Result`] defaults its error to it.
//! - [`users`] — users, API keys (stored as SHA-256 only) and webhook secrets (sealed).
//! - [`secrets`] — the keyring that seals webhook secrets (`JEWELSHOT_SECRETS__*`); a `Db`
//!   holds one ([`Db::with_keyring`]).
//! - [`jobs`] — job rows ([`jobs::JobRow`]), idempotent insert, queue position, attempts,
//!   heartbeats and status transitions.
//! - `group` (private) — the group insert: concurrent submits without a cap or a key share a statement.
//! - [`requeue`] — selecting and resetting failed or stuck jobs for `jewelshot requeue`.
//! - [`steps`] — per-step outcome and output — what makes a retry skip finished work.
//! - [`deliveries`] — webhook deliveries: the outbox workers claim (per-user cap, leases).
//! - [`gallery`] — saved images (and deleting one: its object goes only when nothing else refers
//!   to it).
//! - [`cache`] — the result cache (V12): a worker's fingerprinted job meets it, a finished job
//!   settles it, upkeep evicts it; hit-rate counts.
//! - [`storage`] — uploads and per-user storage accounting (quota reservations).
//! - `views` (private) — [`jobs::JobRow::to_view`]: rows → the client-facing `JobView`.

pub mod cache;
pub mod deliveries;
pub mod gallery;
mod group;
pub mod jobs;
pub mod requeue;
pub mod secrets;
pub mod snapshot;
pub mod sql;
pub mod steps;
pub mod storage;
pub mod users;
mod views;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use serde::{Deserialize, Serialize};
use tokio_postgres::NoTls;

mod tls {
    //! Postgres over TLS (`sslmode=require`): rustls with the ring provider, the server's
    //! certificate verified against the system's roots — or only those in `SSL_CERT_FILE` (a PEM
    //! bundle, e.g. a managed service's CA) when that is set.

    use crate::{DbError, Result};

    pub(crate) fn connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
            return Err(DbError::Config(format!(
                "sslmode=require, but no trusted root certificate was found{why}: install ca-certificates or set SSL_CERT_FILE to a PEM bundle"
            )));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| DbError::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Database settings (`JEWELSHOT_DATABASE__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DbConfig {
    /// libpq-style URL, e.g. `postgres://postgres@127.0.0.1:5432/jewelshot`.
    pub url: String,
    /// Most connections this process holds at once.
    pub max_connections: usize,
    /// Longest wait for a pooled connection or a new connection, in milliseconds.
    pub timeout_ms: u64,
    /// Longest a single statement may run, in milliseconds (server-side `statement_timeout`).
    pub statement_timeout_ms: u64,
    /// `none` (direct or session pooler: statements prepared once per connection) or
    /// `transaction` (PgBouncer/Supavisor in transaction mode: one-round-trip unnamed statements).
    pub pooler: sql::Pooler,
    /// Submits without a cap or a key that wait on one pool share one statement (`group`; on by
    /// default: off, each is its own statement).
    pub group_insert: bool,
    /// Writers per pool of the group insert (at most `max_connections`), each writing one batch
    /// at a time — a statement per kind in it, so up to three connections: fewer writers, bigger
    /// batches and fewer busy backends.
    pub group_writers: usize,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/jewelshot".into(),
            max_connections: 16,
            timeout_ms: 5_000,
            statement_timeout_ms: 10_000,
            pooler: sql::Pooler::None,
            group_insert: true,
            group_writers: 4,
        }
    }
}

/// What went wrong talking to Postgres.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database configuration: {0}")]
    Config(String),
    #[error("no database connection available: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
    #[error("the user already has {cap} jobs waiting")]
    QueuedCapReached { cap: i64 },
    #[error(transparent)]
    Secret(#[from] secrets::SecretsError),
    /// One fault that failed several callers at once (a group insert's statement): each gets it.
    #[error(transparent)]
    Shared(std::sync::Arc<DbError>),
}

impl DbError {
    /// Stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Config(_) => "database-config",
            Self::Pool(_) => "database-unavailable",
            Self::Query(_) => "database-error",
            Self::Migration(_) => "migration-failed",
            Self::Corrupt(_) => "database-corrupt",
            Self::QueuedCapReached { .. } => "too-many-queued-jobs",
            Self::Secret(_) => "secret-unavailable",
            Self::Shared(e) => e.code(),
        }
    }

    /// True for faults that may pass (connection lost, pool exhausted, serialization failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Query(e) => {
                e.is_closed() || e.as_db_error().is_none() || e.code().is_some_and(|c| c.code().starts_with("40"))
            }
            Self::Shared(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// True when Postgres could not be reached at all (answer 503, not 500).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Query(e) => e.is_closed() || e.as_db_error().is_none(),
            Self::Shared(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// A pool's occupancy ([`Db::pool_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Most connections it may open.
    pub max: usize,
    /// Connections open now.
    pub open: usize,
    /// Open and not lent out.
    pub idle: usize,
    /// Callers waiting for one.
    pub waiting: usize,
}

impl std::ops::Add for PoolStats {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            max: self.max + o.max,
            open: self.open + o.open,
            idle: self.idle + o.idle,
            waiting: self.waiting + o.waiting,
        }
    }
}

/// A handle on the pool; cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    pooler: sql::Pooler,
    /// Told of every job a write changes (the snapshot publisher), if any.
    changes: Option<std::sync::Arc<dyn snapshot::ChangeSink>>,
    keyring: std::sync::Arc<secrets::Keyring>,
    /// The group insert ([`group`]), when `group_insert` is on.
    group: Option<std::sync::Arc<group::Group>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("status", &self.pool.status()).finish()
    }
}

impl Db {
    /// Build the pool. Connections are opened lazily; call [`Db::ping`] to check reachability.
    pub fn connect(cfg: &DbConfig) -> Result<Self> {
        let mut pg: tokio_postgres::Config =
            cfg.url.parse().map_err(|e: tokio_postgres::Error| DbError::Config(e.to_string()))?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        pg.connect_timeout(timeout);
        // A transaction pooler hands out server connections its own clients set up: startup
        // options would be refused or ignored. Behind one, the timeout is the role's
        // (`ALTER ROLE … SET statement_timeout`, docs/configuration.md).
        if cfg.pooler == sql::Pooler::None {
            pg.options(format!("-c statement_timeout={}", cfg.statement_timeout_ms));
        }
        // Operators may name a process in its URL (`application_name=…`, shown in
        // pg_stat_activity); otherwise it is `jewelshot`.
        if pg.get_application_name().is_none() {
            pg.application_name("jewelshot");
        }
        let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        // TLS when the URL asks for it (`sslmode=require`), verified; `prefer` (libpq's and our
        // default) stays plaintext: a local server's self-signed certificate would not verify.
        let manager = match pg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => Manager::from_config(pg, tls::connector()?, recycling),
            _ => Manager::from_config(pg, NoTls, recycling),
        };
        let pool = Pool::builder(manager)
            .max_size(cfg.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts { wait: Some(timeout), create: Some(timeout), recycle: Some(timeout) })
            .build()
            .map_err(|e| DbError::Config(e.to_string()))?;
        let group = cfg.group_insert.then(|| {
            std::sync::Arc::new(group::Group::new(pool.clone(), cfg.pooler, cfg.group_writers.min(cfg.max_connections)))
        });
        Ok(Self { pool, pooler: cfg.pooler, changes: None, keyring: Default::default(), group })
    }

    /// Seal and open webhook secrets with `keyring` (without one they are stored as plaintext).
    #[must_use]
    pub fn with_keyring(mut self, keyring: secrets::Keyring) -> Self {
        self.keyring = std::sync::Arc::new(keyring);
        self
    }

    /// The keyring webhook secrets are sealed with.
    pub fn keyring(&self) -> &secrets::Keyring {
        &self.keyring
    }

    pub(crate) async fn conn(&self) -> Result<sql::Conn> {
        Ok(sql::Conn::new(self.pool.get().await?, self.pooler))
    }

    /// Statements sent and rows written by this pool's group inserts (see `group`: rows per
    /// statement is the batch size).
    pub fn group_inserts(&self) -> (u64, u64) {
        self.group.as_ref().map(|g| g.counts()).unwrap_or_default()
    }

    /// How statements are sent (see [`sql::Pooler`]).
    pub fn pooler(&self) -> sql::Pooler {
        self.pooler
    }

    /// Apply pending migrations. Safe to run concurrently from several processes: refinery
    /// runs them in one transaction per migration and records them in `refinery_schema_history`.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        if self.pooler == sql::Pooler::Transaction {
            // The migrators' lock is a session's: behind a transaction pooler it would be taken on
            // one server connection and released (not) on another.
            return Err(DbError::Config(
                "migrations need a direct connection, not a transaction pooler: run `jewelshot migrate` \
                 with JEWELSHOT_DATABASE__POOLER=none and the database's own address"
                    .into(),
            ));
        }
        let mut conn = self.conn().await?;
        let client = conn.client_mut();
        // Serialise concurrent migrators (several workers starting at once).
        client.batch_execute("SELECT pg_advisory_lock(727274)").await?;
        let report = embedded::migrations::runner().run_async(client).await;
        client.batch_execute("SELECT pg_advisory_unlock(727274)").await?;
        Ok(report?.applied_migrations().iter().map(|m| m.to_string()).collect())
    }

    /// One round trip, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        self.conn().await?.batch_execute("SELECT 1").await?;
        Ok(())
    }

    /// The statements prepared on one pooled connection (with `max_connections` 1: all of them),
    /// read without preparing anything — how tests see that statements are prepared once per
    /// connection, or never behind a transaction pooler.
    #[doc(hidden)]
    pub async fn prepared_statements(&self) -> Result<Vec<String>> {
        let rows = self.conn().await?.simple_column("SELECT statement FROM pg_prepared_statements").await?;
        Ok(rows.into_iter().flatten().collect())
    }

    /// Pool occupancy, for metrics and `queue stats`.
    pub fn pool_status(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size, s.max_size)
    }

    /// The pool's connections and waiters, for the database-connections metrics.
    pub fn pool_stats(&self) -> PoolStats {
        let s = self.pool.status();
        PoolStats { max: s.max_size, open: s.size, idle: s.available, waiting: s.waiting }
    }
}
