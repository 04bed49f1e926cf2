//! Isolation: a fresh, migrated Postgres database per test and a Redis key prefix no other test
//! uses.

use anyhow::Context;
use jewelshot_db::{
    secrets::{Keyring, SecretsConfig},
    Db, DbConfig,
};

/// Server that hosts the per-test databases (the database name is replaced).
pub fn admin_database_url() -> String {
    std::env::var("JEWELSHOT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The shared Redis: `JEWELSHOT_TEST_REDIS_URL`, or the cluster's nodes under
/// [`redis_cluster`], or the local server.
pub fn redis_url() -> String {
    if let Some(nodes) = redis_cluster() {
        return nodes;
    }
    std::env::var("JEWELSHOT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `JEWELSHOT_TEST_REDIS_CLUSTER` (the nodes, comma-separated): a Redis Cluster the run shares
/// (`just test-cluster` starts one). Under it every process a test starts runs in cluster mode,
/// every queue name carries the cluster's hash tag, and a test's "own Redis" is a cluster too.
pub fn redis_cluster() -> Option<String> {
    std::env::var("JEWELSHOT_TEST_REDIS_CLUSTER").ok().filter(|v| !v.is_empty())
}

/// A queue configuration on the shared Redis (cluster mode under [`redis_cluster`]) with a
/// name of its own.
pub fn queue_config() -> jewelshot_queue::QueueConfig {
    jewelshot_queue::QueueConfig {
        redis_url: redis_url(),
        cluster: redis_cluster().is_some(),
        name: unique_queue_name(),
        ..Default::default()
    }
}

/// How tests reach Postgres: `JEWELSHOT_DATABASE__POOLER` as the processes read it (`none`
/// unless set), so `just test-pooler` runs tests with one-round-trip unnamed statements — every
/// process a test starts inherits the variable.
pub fn pooler() -> jewelshot_db::sql::Pooler {
    std::env::var("JEWELSHOT_DATABASE__POOLER").ok().and_then(|v| v.parse().ok()).unwrap_or_default()
}

/// `JEWELSHOT_TEST_PGBOUNCER` (`host:port`): a transaction-mode PgBouncer in front of the shared
/// server (`just test-pooler` starts one). When set, the processes and the test's [`TestDb::db`]
/// reach a test's database through it, as they would behind Supabase's pooler; creating and
/// migrating the database stays direct.
pub fn pgbouncer() -> Option<String> {
    std::env::var("JEWELSHOT_TEST_PGBOUNCER").ok().filter(|v| !v.is_empty())
}

/// A database made for one test, with a keyring of its own (the processes a test starts on it
/// get the same keys through [`TestDb::secrets`]).
#[derive(Debug, Clone)]
pub struct TestDb {
    /// What the processes connect to (through PgBouncer under `just test-pooler`).
    pub url: String,
    /// The database itself, for the test's own SQL.
    pub direct_url: String,
    pub db: Db,
    pub secrets: SecretsConfig,
}

impl TestDb {
    /// Transactions Postgres has counted in this database (every statement outside a
    /// transaction is one), read from the admin database so the reading does not count. A
    /// backend reports its counts at most once a second while busy and within 10 s once idle
    /// (PostgreSQL 15's `PGSTAT_IDLE_INTERVAL`), so this waits 11 s first: a count read sooner
    /// can miss the last statements.
    pub async fn transactions(&self) -> anyhow::Result<i64> {
        transactions_in(&self.url).await
    }

    /// A plain connection to this database, for a test's own SQL (what is stored, counters).
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.direct_url, tokio_postgres::NoTls).await.context("connecting to Postgres")?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// [`TestDb::transactions`] for the database `url` names.
pub async fn transactions_in(url: &str) -> anyhow::Result<i64> {
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    let (client, conn) = tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls)
        .await
        .context("connecting to Postgres")?;
    tokio::spawn(conn);
    let name = url.rsplit('/').next().context("database name")?;
    let row = client
        .query_one("SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1", &[&name])
        .await?;
    Ok(row.get(0))
}

/// Create `jewelshot_test_<ulid>` and apply the migrations.
pub async fn fresh_database() -> anyhow::Result<TestDb> {
    fresh_database_on(&admin_database_url()).await
}

/// The same on the server `admin` points at.
pub async fn fresh_database_on(admin: &str) -> anyhow::Result<TestDb> {
    let admin = admin.to_owned();
    let name = format!("jewelshot_test_{}", ulid::Ulid::generate().to_string().to_lowercase());
    let (client, conn) =
        tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.context("connecting to Postgres")?;
    let task = tokio::spawn(conn);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    drop(client);
    let _ = task.await;
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin.clone());
    let direct_url = format!("{base}/{name}");
    let (keyring, secrets) = Keyring::random("test");
    // Migrations run over a direct connection (their lock is a session's); everything else the
    // way the processes connect.
    let direct = Db::connect(&DbConfig { url: direct_url.clone(), max_connections: 1, ..Default::default() })?;
    direct.migrate().await?;
    let url = match pgbouncer().filter(|_| admin == admin_database_url()) {
        Some(bouncer) => format!("postgres://postgres@{bouncer}/{name}"),
        None => direct_url.clone(),
    };
    let db = Db::connect(&DbConfig { url: url.clone(), max_connections: 4, pooler: pooler(), ..Default::default() })?
        .with_keyring(keyring);
    Ok(TestDb { url, direct_url, db, secrets })
}

/// A queue name no other test uses.
pub fn unique_queue_name() -> String {
    let name = format!("jewelshot-test:{}", ulid::Ulid::generate());
    match redis_cluster() {
        Some(_) => format!("{}:{name}", jewelshot_queue::CLUSTER_TAG),
        None => name,
    }
}
