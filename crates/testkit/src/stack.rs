//! The whole system on this machine for one test: emulator + gateway over a fresh database,
//! queue and storage root, and workers on demand — configured through the worker's own typed
//! [`jewelshot_worker::Config`], never a list of environment strings.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use jewelshot_storage::StorageConfig;
use jewelshot_worker::Config as WorkerConfig;
use serde_json::Value;

use crate::{
    db::{admin_database_url, fresh_database_on, redis_url, unique_queue_name, TestDb},
    processes::{fixture_photo, Proc},
    servers::{RedisServer, S3Server},
};

/// Which object store a [`Stack`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageKind {
    #[default]
    Local,
    /// s3s-fs, with presigned URLs.
    S3,
}

/// A change to the workers' [`jewelshot_worker::Config`]: tests and benchmarks set fields, and
/// the stack turns the config into the `JEWELSHOT_*` environment the binary reads.
#[derive(Clone, Default)]
pub struct WorkerTweak(Option<Arc<TweakFn>>);

type TweakFn = dyn Fn(&mut WorkerConfig) + Send + Sync;

impl WorkerTweak {
    pub fn new(f: impl Fn(&mut WorkerConfig) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    fn apply(&self, cfg: &mut WorkerConfig) {
        if let Some(f) = &self.0 {
            f(cfg);
        }
    }
}

impl std::fmt::Debug for WorkerTweak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "WorkerTweak(..)" } else { "WorkerTweak(none)" })
    }
}

/// The `PREFIX_SECTION__KEY=value` environment that makes a binary load `cfg`: every field that
/// differs from `default`, in figment's syntax (arrays and tables inline, strings quoted inside
/// them). Fields equal to the default are left out, so the environment says what a test changed.
pub fn config_env<T: serde::Serialize>(prefix: &str, cfg: &T, default: &T) -> anyhow::Result<HashMap<String, String>> {
    let (cfg, default) = (serde_json::to_value(cfg)?, serde_json::to_value(default)?);
    let mut out = HashMap::new();
    flatten(prefix, &cfg, Some(&default), &mut out);
    Ok(out)
}

fn flatten(name: &str, v: &Value, default: Option<&Value>, out: &mut HashMap<String, String>) {
    if default == Some(v) {
        return;
    }
    match v {
        Value::Object(fields) => {
            for (k, field) in fields {
                let key = format!("{name}{}{}", if name.ends_with('_') { "" } else { "__" }, k.to_uppercase());
                flatten(&key, field, default.and_then(|d| d.get(k)), out);
            }
        }
        Value::Null => {}
        Value::String(s) => {
            out.insert(name.to_owned(), s.clone());
        }
        other => {
            out.insert(name.to_owned(), inline(other));
        }
    }
}

/// A value in figment's inline syntax: `[1, 2]`, `{id="a", n=2}`, `"text"`.
fn inline(v: &Value) -> String {
    match v {
        Value::Array(items) => format!("[{}]", items.iter().map(inline).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => {
            let parts: Vec<String> =
                fields.iter().filter(|(_, f)| !f.is_null()).map(|(k, f)| format!("{k}={}", inline(f))).collect();
            format!("{{{}}}", parts.join(", "))
        }
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// How to start a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Extra emulator flags, e.g. `--max-concurrent 2`.
    pub emulator_args: Vec<String>,
    /// Extra environment for the gateway.
    pub gateway_env: HashMap<String, String>,
    /// A change to every worker's typed config, after the stack's own settings.
    pub worker: WorkerTweak,
    /// `RUST_LOG` for the workers (the tests' default is `info`).
    pub worker_log: Option<String>,
    /// Environment every worker gets beyond its config (e.g. `OTEL_*`).
    pub worker_env: HashMap<String, String>,
    /// Run a Redis server of the stack's own instead of the shared one.
    pub own_redis: bool,
    /// Create the stack's database on this server instead of the shared one.
    pub admin_database_url: Option<String>,
    /// Storage root to use instead of a temporary directory (the demo keeps its results).
    pub files_dir: Option<PathBuf>,
    pub storage: StorageKind,
    /// Postgres and Redis servers of the stack's own, the gateway and workers reaching both over
    /// TLS only (`sslmode=require`, `rediss://`) with a CA of the test's own (`SSL_CERT_FILE`).
    pub tls: bool,
    /// A Redis Cluster of the stack's own (three masters): the processes run in cluster mode and
    /// the queue name carries the hash tag cluster mode requires.
    pub redis_cluster: bool,
    /// The result cache, for the gateway and every worker. Off by default: most tests submit
    /// one photo and prompt many times and count fal's requests (the cache's tests turn it on).
    pub cache: Option<jewelshot_domain::cache::CacheSettings>,
}

impl StackOptions {
    /// The defaults with these emulator flags, e.g. `&["--max-concurrent", "2"]`.
    pub fn emulator(args: &[&str]) -> Self {
        Self { emulator_args: args.iter().map(|s| s.to_string()).collect(), ..Self::default() }
    }
}

/// The result cache every process of a stack runs with: the options', or off.
fn cache_settings(opts: &StackOptions) -> jewelshot_domain::cache::CacheSettings {
    opts.cache.clone().unwrap_or(jewelshot_domain::cache::CacheSettings { enabled: false, ..Default::default() })
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            emulator_args: vec![
                "--latency-ms".into(),
                "100-300".into(),
                "--max-concurrent".into(),
                "4".into(),
                "--max-per-minute".into(),
                "0".into(),
            ],
            gateway_env: HashMap::new(),
            worker: WorkerTweak::default(),
            worker_log: None,
            worker_env: HashMap::new(),
            own_redis: false,
            admin_database_url: None,
            files_dir: None,
            storage: StorageKind::Local,
            tls: false,
            redis_cluster: false,
            cache: None,
        }
    }
}

/// What a [`Stack`] with [`StackOptions::tls`] runs.
pub struct StackTls {
    pub ca: crate::tls::TestCa,
    pub postgres: crate::servers::PgServer,
    /// The processes' database URL (`sslmode=require`).
    pub database_url: String,
    /// The processes' Redis URL (`rediss://`, the TLS port).
    pub redis_url: String,
}

/// Emulator + gateway on port 0 over a fresh database, queue and storage root. Workers are
/// started on demand so tests can fill the queue first.
pub struct Stack {
    pub db: TestDb,
    pub queue_name: String,
    /// The storage root.
    pub files: PathBuf,
    _files_tmp: Option<tempfile::TempDir>,
    pub logs: PathBuf,
    pub emulator: Proc,
    pub gateway: Proc,
    pub workers: Vec<Proc>,
    pub s3: Option<S3Server>,
    /// The stack's own Redis, when asked for.
    pub redis: Option<RedisServer>,
    /// With [`StackOptions::tls`]: the stack's Postgres, its CA and what the processes connect to.
    pub tls: Option<StackTls>,
    /// With [`StackOptions::redis_cluster`] (or `own_redis` under `just test-cluster`): the
    /// stack's own cluster.
    pub cluster: Option<crate::servers::RedisCluster>,
    /// The processes run in Redis Cluster mode (on [`Stack::cluster`] or the run's cluster).
    pub cluster_mode: bool,
    /// Where this stack's services store images.
    /// The storage every process of the stack shares (its signing key included).
    pub storage: StorageConfig,
    /// The first gateway's environment, for more replicas.
    gateway_env: HashMap<String, String>,
    /// Gateways started after the first ([`Stack::start_gateway`]).
    pub more_gateways: Vec<Proc>,
    pub http: reqwest::Client,
    opts: StackOptions,
    next_worker: usize,
}

impl Stack {
    pub async fn start(opts: StackOptions) -> anyhow::Result<Self> {
        // Cluster mode: asked for, or the run's Redis is a cluster (`just test-cluster`), where a
        // test's own Redis is a cluster of its own.
        let cluster_mode = opts.redis_cluster || (crate::db::redis_cluster().is_some() && !opts.tls);
        let own_cluster = opts.redis_cluster || (cluster_mode && opts.own_redis);
        let mut queue_name = unique_queue_name();
        if cluster_mode && !queue_name.starts_with(jewelshot_queue::CLUSTER_TAG) {
            queue_name = format!("{}:{queue_name}", jewelshot_queue::CLUSTER_TAG);
        }
        let logs = std::env::temp_dir().join(format!("jewelshot-test-logs/{}", queue_name.replace(':', "-")));
        std::fs::create_dir_all(&logs)?;
        let (mut tls, mut redis) = (None, None);
        if opts.tls {
            let ca = crate::tls::TestCa::generate()?;
            let postgres = crate::servers::PgServer::start_tls(&logs, &ca).await?;
            let (server, redis_url) = RedisServer::start_tls(&logs, &ca)?;
            redis = Some(server);
            tls = Some(StackTls { ca, postgres, database_url: String::new(), redis_url });
        }
        let admin = match &tls {
            Some(t) => t.postgres.admin_url.clone(),
            None => opts.admin_database_url.clone().unwrap_or_else(admin_database_url),
        };
        let db = fresh_database_on(&admin).await?;
        if let Some(t) = &mut tls {
            // Named, so a test can find the processes' own connections in pg_stat_ssl.
            t.database_url = format!("{}?sslmode=require&application_name=jewelshot-tls", db.url);
        }
        let (files, files_tmp) = match &opts.files_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (dir.clone(), None)
            }
            None => {
                let tmp = tempfile::tempdir()?;
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        let mut eargs = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
        eargs.extend(opts.emulator_args.iter().cloned());
        let emulator = Proc::spawn("emulator", "fal-emulator", &eargs, &HashMap::new(), &logs, true)?;

        if opts.own_redis && redis.is_none() && !own_cluster {
            redis = Some(RedisServer::start(&logs)?);
        }
        let cluster = if own_cluster { Some(crate::servers::RedisCluster::start(&logs)?) } else { None };
        let redis_url = match &cluster {
            Some(c) => c.url.clone(),
            None => redis.as_ref().map_or_else(redis_url, |r| r.url.clone()),
        };
        let mut storage = StorageConfig::default();
        storage.local.root = files.clone();
        // One key for the stack's gateway and workers: a worker's URLs verify at the gateway.
        storage.local.signing_key = format!("test-{}", ulid::Ulid::generate());
        let s3 = match opts.storage {
            StorageKind::Local => None,
            StorageKind::S3 => {
                let server = S3Server::start(&logs)?;
                let bucket = format!("jewelshot-{}", ulid::Ulid::generate().to_string().to_lowercase());
                server.configure(&mut storage, &bucket);
                Some(server)
            }
        };
        let mut env = HashMap::from([
            ("JEWELSHOT_DATABASE__URL".to_owned(), db.url.clone()),
            ("JEWELSHOT_DATABASE__MAX_CONNECTIONS".into(), "4".into()),
            ("JEWELSHOT_QUEUE__REDIS_URL".into(), redis_url.clone()),
            ("JEWELSHOT_QUEUE__NAME".into(), queue_name.clone()),
            ("JEWELSHOT_QUEUE__CLUSTER".into(), cluster_mode.to_string()),
            ("JEWELSHOT_WEBHOOK__ALLOW_INSECURE".into(), "true".into()),
        ]);
        env.extend(config_env("JEWELSHOT_STORAGE", &storage, &StorageConfig::default())?);
        env.extend(config_env("JEWELSHOT_SECRETS", &db.secrets, &Default::default())?);
        if let Some(t) = &tls {
            env.insert("JEWELSHOT_DATABASE__URL".into(), t.database_url.clone());
            env.insert("JEWELSHOT_QUEUE__REDIS_URL".into(), t.redis_url.clone());
            env.insert("SSL_CERT_FILE".into(), t.ca.ca_file.display().to_string());
        }
        env.insert("JEWELSHOT_GATEWAY__LISTEN".into(), "127.0.0.1:0".into());
        env.insert("JEWELSHOT_GATEWAY__METRICS_LISTEN".into(), "127.0.0.1:0".into());
        // Tests queue hundreds of jobs from one user; the limit tests turn the limits back on.
        env.insert("JEWELSHOT_LIMITS__SUBMITS_PER_MINUTE".into(), "0".into());
        env.insert("JEWELSHOT_LIMITS__MAX_QUEUED_PER_USER".into(), "0".into());
        let cache = cache_settings(&opts);
        env.insert("JEWELSHOT_CACHE__ENABLED".into(), cache.enabled.to_string());
        env.insert("JEWELSHOT_CACHE__SCOPE".into(), cache.scope.as_str().into());
        env.insert("JEWELSHOT_CACHE__TTL_SECS".into(), cache.ttl_secs.to_string());
        env.insert("JEWELSHOT_CACHE__MAX_ENTRIES".into(), cache.max_entries.to_string());
        env.extend(opts.gateway_env.clone());
        let gateway = Proc::spawn("gateway", "jewelshot-gateway", &[], &env, &logs, true)?;
        let gateway_env = env;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Self {
            db,
            queue_name,
            files,
            _files_tmp: files_tmp,
            logs,
            emulator,
            gateway,
            workers: Vec::new(),
            s3,
            redis,
            tls,
            cluster,
            cluster_mode,
            storage,
            gateway_env,
            more_gateways: Vec::new(),
            http,
            opts,
            next_worker: 0,
        })
    }

    /// Stop the stack's processes, drop its database and its Redis keys (benchmarks leave large
    /// ones behind).
    pub async fn drop_database(mut self) -> anyhow::Result<()> {
        for p in self.workers.iter_mut().chain(self.more_gateways.iter_mut()) {
            p.sigkill();
        }
        self.gateway.sigkill();
        let name = self.db.url.rsplit('/').next().unwrap_or_default().to_owned();
        let (client, conn) = tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
        if self.cluster_mode {
            return Ok(()); // a cluster is the stack's own or the run's, and goes with it
        }
        let mut redis = redis::Client::open(self.redis_url())?.get_multiplexed_async_connection().await?;
        let pattern = format!("{}*", self.queue_name);
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(5000)
                .query_async(&mut redis)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK").arg(&keys).query_async::<()>(&mut redis).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The Redis this stack uses (its own, the shared one, or its cluster's nodes comma-separated).
    pub fn redis_url(&self) -> String {
        if let Some(c) = &self.cluster {
            return c.url.clone();
        }
        self.redis.as_ref().map_or_else(redis_url, |r| r.url.clone())
    }

    /// The queue configuration the stack's processes use (cluster mode included).
    pub fn queue_config(&self) -> jewelshot_queue::QueueConfig {
        jewelshot_queue::QueueConfig {
            redis_url: self.tls.as_ref().map_or_else(|| self.redis_url(), |t| t.redis_url.clone()),
            cluster: self.cluster_mode,
            name: self.queue_name.clone(),
            ..Default::default()
        }
    }

    /// A connection to the stack's Redis, single node or cluster.
    pub async fn redis_conn(&self) -> anyhow::Result<jewelshot_queue::RedisConn> {
        Ok(jewelshot_queue::connect(&self.queue_config()).await?)
    }

    /// `FLUSHALL` on the stack's own Redis (every node of its own cluster).
    pub async fn flush_redis(&self) -> anyhow::Result<()> {
        if let Some(c) = &self.cluster {
            return c.flush();
        }
        let server = self.redis.as_ref().ok_or_else(|| anyhow::anyhow!("the stack has no Redis of its own"))?;
        let mut conn = redis::Client::open(server.url.as_str())?.get_multiplexed_async_connection().await?;
        Ok(redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?)
    }

    /// Kill the stack's own Redis (every node of its own cluster).
    pub fn kill_redis(&mut self) -> anyhow::Result<()> {
        match (&mut self.cluster, &mut self.redis) {
            (Some(c), _) => c.kill(),
            (None, Some(r)) => r.proc.sigkill(),
            (None, None) => anyhow::bail!("the stack has no Redis of its own"),
        }
        Ok(())
    }

    /// Start the stack's own Redis again, empty, on the same port(s).
    pub fn restart_redis(&mut self) -> anyhow::Result<()> {
        match (&mut self.cluster, &mut self.redis) {
            (Some(c), _) => c.restart(),
            (None, Some(r)) => r.restart(),
            (None, None) => anyhow::bail!("the stack has no Redis of its own"),
        }
    }

    pub fn gateway_url(&self) -> &str {
        self.gateway.url.as_deref().unwrap_or_default()
    }

    pub fn emulator_url(&self) -> &str {
        self.emulator.url.as_deref().unwrap_or_default()
    }

    /// Start one more gateway replica over the same database, queue and storage; returns its URL.
    pub fn start_gateway(&mut self) -> anyhow::Result<String> {
        self.start_gateway_with(&HashMap::new())
    }

    /// [`Stack::start_gateway`] with `extra` environment on top of the first gateway's.
    pub fn start_gateway_with(&mut self, extra: &HashMap<String, String>) -> anyhow::Result<String> {
        let name = format!("gateway-{}", self.more_gateways.len() + 2);
        let mut env = self.gateway_env.clone();
        env.extend(extra.clone());
        let proc = Proc::spawn(&name, "jewelshot-gateway", &[], &env, &self.logs, true)?;
        let url = proc.url.clone().context("the gateway printed no URL")?;
        self.more_gateways.push(proc);
        Ok(url)
    }

    /// Start one more worker process with the stack's worker settings.
    pub fn start_worker(&mut self) -> anyhow::Result<usize> {
        self.start_worker_with(|_| {})
    }

    /// Start one more worker process; `tweak` changes its config after the stack's settings.
    pub fn start_worker_with(&mut self, tweak: impl FnOnce(&mut WorkerConfig)) -> anyhow::Result<usize> {
        let mut cfg = self.worker_config();
        tweak(&mut cfg);
        let mut env = config_env("JEWELSHOT_", &cfg, &WorkerConfig::default())?;
        if let Some(level) = &self.opts.worker_log {
            env.insert("RUST_LOG".into(), level.clone());
        }
        if let Some(t) = &self.tls {
            env.insert("SSL_CERT_FILE".into(), t.ca.ca_file.display().to_string());
        }
        env.extend(self.opts.worker_env.clone());
        let name = format!("worker-{}", self.next_worker);
        self.next_worker += 1;
        // Its `url` is its metrics endpoint (the worker prints it first thing).
        let path = crate::processes::bin_path("jewelshot-worker");
        if !path.exists() {
            anyhow::bail!(
                "{} is missing: run `cargo build --workspace --bins` first (`just test` does)",
                path.display()
            );
        }
        let proc = Proc::spawn_path(&name, &path, &[], &env, &self.logs, Some("metrics on "))?;
        self.workers.push(proc);
        Ok(self.workers.len() - 1)
    }

    /// The config the stack's next worker runs with: this stack's database, queue, storage and
    /// emulator, quick timings for tests, the account limits the emulator's flags set, then the
    /// options' [`WorkerTweak`].
    pub fn worker_config(&self) -> WorkerConfig {
        let mut c = WorkerConfig::default();
        c.database.url = self.db.url.clone();
        c.database.max_connections = 4;
        c.database.pooler = crate::db::pooler();
        c.secrets = self.db.secrets.clone();
        c.queue.redis_url = self.redis_url();
        c.queue.cluster = self.cluster_mode;
        if let Some(t) = &self.tls {
            c.database.url = t.database_url.clone();
            c.queue.redis_url = t.redis_url.clone();
        }
        c.queue.name = self.queue_name.clone();
        c.cache = cache_settings(&self.opts);
        c.storage = self.storage.clone();
        c.storage.local.public_base_url = format!("{}/files", self.gateway_url());
        c.webhook.allow_insecure = true;
        c.webhook.backoff_base_ms = 50;
        let fal = &mut c.fal.client;
        fal.queue_url = self.emulator_url().to_owned();
        fal.key = jewelshot_fal::Secret("test-key-1".into());
        fal.poll_interval_ms = 50;
        let flag = |name: &str| self.opts.emulator_args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
        let scale: f64 = flag("--time-scale").and_then(|v| v.parse().ok()).unwrap_or(1.0);
        fal.max_per_minute = flag("--max-per-minute").and_then(|v| v.parse().ok()).unwrap_or(15);
        fal.max_concurrent = flag("--max-concurrent").and_then(|v| v.parse().ok()).unwrap_or(4);
        fal.rate_window_ms = (60_000.0 * scale).ceil() as u64;
        let w = &mut c.worker;
        w.poll_interval_ms = 50;
        w.backoff_base_ms = 50;
        w.backoff_max_ms = 500;
        w.heartbeat_secs = 1;
        w.missed_heartbeats = 2;
        w.vacuum_interval_secs = 1;
        w.job_heartbeat_secs = 1;
        w.orphan_after_secs = 3;
        w.metrics_listen = "127.0.0.1:0".into();
        w.reconcile_interval_secs = 1;
        // The emulator serves results from loopback.
        w.allow_insecure_downloads = true;
        w.id = format!("test-worker-{}-{}", self.next_worker, ulid::Ulid::generate());
        self.opts.worker.apply(&mut c);
        c
    }

    /// Create a user and an API key; returns (user id, key, webhook secret).
    pub async fn user(&self, email: &str) -> anyhow::Result<(String, String, String)> {
        let (u, secret) = self.db.db.create_user_with_secret(email, "free").await?;
        let k = self.db.db.create_api_key(u.id, "test").await?;
        Ok((u.id.to_string(), k.key, secret.expose().to_owned()))
    }

    /// Upload the demo photo through `POST /api/uploads` and return its URL, as a client would.
    pub async fn input_photo_url(&self, key: &str) -> anyhow::Result<String> {
        let bytes = std::fs::read(fixture_photo()).context("reading the demo photo")?;
        let r = self
            .http
            .post(format!("{}/api/uploads", self.gateway_url()))
            .bearer_auth(key)
            .header("content-type", "image/jpeg")
            .body(bytes)
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 201 {
            bail!("upload answered {status}: {body}");
        }
        body["url"].as_str().map(str::to_owned).context("upload answer has no url")
    }

    pub async fn submit(&self, key: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r =
            self.http.post(format!("{}/api/ai/edit", self.gateway_url())).bearer_auth(key).json(body).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get_job(&self, key: &str, id: &str) -> anyhow::Result<(u16, Value)> {
        let r = self.http.get(format!("{}/api/jobs/{id}", self.gateway_url())).bearer_auth(key).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// Poll a job until its status is final, or fail after `timeout`.
    pub async fn wait_final(&self, key: &str, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let (status, job) = self.get_job(key, id).await?;
            if status == 200 && matches!(job["status"].as_str(), Some("complete" | "failed" | "canceled")) {
                return Ok(job);
            }
            if start.elapsed() > timeout {
                bail!("job {id} not final after {timeout:?}: {job}\n{}", self.worker_logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll a job until its webhook delivery (`notification`) is in `state`, or fail after
    /// `timeout`.
    pub async fn wait_notification(
        &self,
        key: &str,
        id: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let (status, job) = self.get_job(key, id).await?;
            if status == 200 && job["notification"]["state"] == state {
                return Ok(job);
            }
            if start.elapsed() > timeout {
                bail!("job {id}'s delivery not {state} after {timeout:?}: {job}\n{}", self.worker_logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the emulator saw.
    pub async fn emulator_stats(&self) -> anyhow::Result<Value> {
        Ok(self.http.get(format!("{}/__stats", self.emulator_url())).send().await?.json().await?)
    }

    /// Recent log lines of every worker, for failure messages.
    pub fn worker_logs(&self) -> String {
        self.workers.iter().map(|w| format!("--- {} ---\n{}", w.name, w.log_tail())).collect::<Vec<_>>().join("\n")
    }
}
