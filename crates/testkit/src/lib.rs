//! # jewelshot-testkit
//!
//! Dev-only helpers so every test runs on the real parts and isolates itself: a fresh Postgres
//! database per test (named by ULID, migrated), a unique Redis queue name, a temporary storage
//! root, and the real binaries started on port 0.
//!
//! ## Layout
//! - [`fresh_database`] — create and migrate `jewelshot_test_<ulid>`.
//! - [`Proc`] — a spawned binary that is killed when dropped; SIGKILL/SIGTERM on demand.
//! - [`Stack`] — emulator + gateway (+ workers on demand) wired to one database and queue.
//! - [`fixture_photo`] — the small CC0 photo shipped in `assets/`.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context};
use jewelshot_db::{Db, DbConfig};
use serde_json::Value;

/// Server that hosts the per-test databases (the database name is replaced).
pub fn admin_database_url() -> String {
    std::env::var("JEWELSHOT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("JEWELSHOT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database made for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub url: String,
    pub db: Db,
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
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin);
    let url = format!("{base}/{name}");
    let db = Db::connect(&DbConfig { url: url.clone(), max_connections: 4, ..Default::default() })?;
    db.migrate().await?;
    Ok(TestDb { url, db })
}

/// A queue name no other test uses.
pub fn unique_queue_name() -> String {
    format!("jewelshot-test:{}", ulid::Ulid::generate())
}

/// The workspace's target directory, where `cargo build --bins` put the binaries.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // Tests live in target/<profile>/deps/, binaries (like the demo) in target/<profile>/.
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.join(name)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|_| PathBuf::from("."))
}

/// The shipped demo photo (CC0; see `deploy/demo/LICENSES.md`).
pub fn fixture_photo() -> PathBuf {
    repo_root().join("deploy/demo/seeding-1024.jpg")
}

/// A running binary, killed on drop. Its stderr is kept in a log file for post-mortems.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    /// What the process printed as `listening on http://…`, if it prints that.
    pub url: Option<String>,
}

impl Proc {
    /// Spawn one of the workspace's binaries with `env`; when `wait_listen`, wait for its
    /// `listening on` line.
    pub fn spawn(
        name: &str,
        bin: &str,
        args: &[String],
        env: &HashMap<String, String>,
        logs: &Path,
        wait_listen: bool,
    ) -> anyhow::Result<Self> {
        let path = bin_path(bin);
        if !path.exists() {
            bail!("{} is missing: run `cargo build --workspace --bins` first (`just test` does)", path.display());
        }
        Self::spawn_path(name, &path, args, env, logs, wait_listen.then_some("listening on "))
    }

    /// Spawn any program; when `marker` is given, wait for a stdout line containing it and keep
    /// the URL that follows it.
    pub fn spawn_path(
        name: &str,
        path: &Path,
        args: &[String],
        env: &HashMap<String, String>,
        logs: &Path,
        marker: Option<&str>,
    ) -> anyhow::Result<Self> {
        let log = logs.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new(path)
            .args(args)
            .env("RUST_LOG", std::env::var("JEWELSHOT_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawning {}", path.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        let wanted = marker.map(str::to_owned);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Some(m) = wanted.as_deref() else { continue };
                if let Some(at) = line.find(m) {
                    let url: String = line[at + m.len()..].chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(url);
                }
            }
        });
        let mut proc = Self { name: name.to_owned(), child, log, url: None };
        if marker.is_some() {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(url) => proc.url = Some(url),
                Err(_) => bail!("{name} did not start; log:\n{}", proc.log_tail()),
            }
        }
        Ok(proc)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill without warning, as a crash or OOM would.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ask to stop, as a deploy would; returns once the process has exited (or after `timeout`).
    pub fn sigterm(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3-compatible server (s3s-fs) on port 0 over a temporary directory.
pub struct S3Server {
    pub proc: Proc,
    pub endpoint: String,
    _root: tempfile::TempDir,
}

pub const S3_ACCESS_KEY: &str = "jewelshot-test-access";
pub const S3_SECRET_KEY: &str = "jewelshot-test-secret-key";

/// Where `s3s-fs` is: `JEWELSHOT_S3S_BIN`, then `PATH`, then `~/.cargo/bin`.
pub fn s3s_bin() -> PathBuf {
    if let Ok(p) = std::env::var("JEWELSHOT_S3S_BIN") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("s3s-fs")).find(|c| c.exists()))
        .unwrap_or_default();
    on_path.unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/s3s-fs"))
}

impl S3Server {
    pub fn start(logs: &Path) -> anyhow::Result<Self> {
        let root = tempfile::tempdir()?;
        let bin = s3s_bin();
        if !bin.exists() {
            bail!("s3s-fs is not installed: `just s3s` (cargo install s3s-fs --version 0.14.1 --features binary)");
        }
        let args: Vec<String> =
            ["--host", "127.0.0.1", "--port", "0", "--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY]
                .iter()
                .map(|s| s.to_string())
                .chain([root.path().display().to_string()])
                .collect();
        let env = HashMap::from([("RUST_LOG".to_owned(), "info".to_owned())]);
        let mut proc = Proc::spawn_path("s3s", &bin, &args, &env, logs, Some("server is running at "))?;
        let endpoint = proc.url.take().unwrap_or_default();
        // NO_COLOR is set for every spawned process; keep only the URL's own characters anyway.
        let endpoint: String = endpoint.chars().take_while(|c| c.is_ascii_graphic() && *c != '\u{1b}').collect();
        Ok(Self { proc, endpoint, _root: root })
    }

    /// Environment that points a gateway or worker at this server.
    pub fn env(&self, bucket: &str) -> HashMap<String, String> {
        HashMap::from([
            ("JEWELSHOT_STORAGE__BACKEND".into(), "s3".into()),
            ("JEWELSHOT_STORAGE__S3__ENDPOINT".into(), self.endpoint.clone()),
            ("JEWELSHOT_STORAGE__S3__BUCKET".into(), bucket.into()),
            ("JEWELSHOT_STORAGE__S3__REGION".into(), "us-east-1".into()),
            ("JEWELSHOT_STORAGE__S3__PATH_STYLE".into(), "true".into()),
            ("JEWELSHOT_STORAGE__S3__CREATE_BUCKET".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET_KEY.into()),
        ])
    }
}

/// A Redis server of the test's own (so a test may `FLUSHALL` or restart it without touching
/// anyone else's keys): `redis-server` on a free loopback port, nothing kept on disk.
pub struct RedisServer {
    pub proc: Proc,
    pub port: u16,
    pub url: String,
    logs: PathBuf,
}

impl RedisServer {
    pub fn start(logs: &Path) -> anyhow::Result<Self> {
        // Redis's own `--port 0` turns TCP off; take a free port from the OS instead.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let proc = Self::spawn(port, logs)?;
        Ok(Self { proc, port, url: format!("redis://127.0.0.1:{port}"), logs: logs.to_path_buf() })
    }

    fn spawn(port: u16, logs: &Path) -> anyhow::Result<Proc> {
        let args: Vec<String> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        Proc::spawn_path("redis", Path::new("redis-server"), &args, &HashMap::new(), logs, Some("Ready to accept"))
    }

    /// Stop and start again on the same port, empty (it keeps nothing on disk): a restart.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.sigkill();
        self.proc = Self::spawn(self.port, &self.logs)?;
        Ok(())
    }
}

/// A PostgreSQL server of the run's own (so a fault-injection run may restart it): `initdb` into
/// a temporary directory, `postgres` on a free loopback port, trust auth, no fsync. As root it
/// runs as the `postgres` user (PostgreSQL refuses root).
pub struct PgServer {
    child: Option<Child>,
    pub port: u16,
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub admin_url: String,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl PgServer {
    fn bindir() -> PathBuf {
        Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.join("postgres").exists())
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
    }

    fn as_owner(program: &Path) -> Command {
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
        if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    pub async fn start(logs: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("jewelshot-pg-").tempdir()?;
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        let data = dir.path().join("data");
        let out = Self::as_owner(&Self::bindir().join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut pg = Self {
            child: None,
            port,
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            log: logs.join("postgres.log"),
        };
        pg.spawn().await?;
        Ok(pg)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Self::as_owner(&Self::bindir().join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=200", "-c"])
            .arg(format!("unix_socket_directories={}", self.dir.path().display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        let started = Instant::now();
        while tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls).await.is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("postgres did not start; see {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Kill the server (as a crash or a failover would) and start it again on the same data and
    /// port; returns how long it was gone.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        let down = Instant::now();
        self.stop();
        self.spawn().await?;
        Ok(down.elapsed())
    }

    /// Crash the server and leave it down (see [`PgServer::start_again`]).
    pub fn crash(&mut self) {
        self.stop();
    }

    /// Start a crashed server again on the same data and port.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_none() {
            self.spawn().await?;
        }
        Ok(())
    }

    /// Immediate shutdown (SIGQUIT to the postmaster: every backend dies at once, no checkpoint,
    /// crash recovery at the next start) — what clients see in a crash or failover.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pidfile = self.dir.path().join("data/postmaster.pid");
        let pid = std::fs::read_to_string(&pidfile).ok().and_then(|t| t.lines().next().map(str::to_owned));
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-QUIT", &pid]).stderr(Stdio::null()).status();
            let started = Instant::now();
            while Command::new("kill").args(["-0", &pid]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
                && started.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which object store a [`Stack`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageKind {
    #[default]
    Local,
    /// s3s-fs, with presigned URLs.
    S3,
}

/// How to start a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Extra emulator flags, e.g. `--max-concurrent 2`.
    pub emulator_args: Vec<String>,
    /// Extra environment for the gateway.
    pub gateway_env: HashMap<String, String>,
    /// Extra environment for every worker.
    pub worker_env: HashMap<String, String>,
    /// Run a Redis server of the stack's own instead of the shared one.
    pub own_redis: bool,
    /// Create the stack's database on this server instead of the shared one.
    pub admin_database_url: Option<String>,
    /// Storage root to use instead of a temporary directory (the demo keeps its results).
    pub files_dir: Option<PathBuf>,
    pub storage: StorageKind,
}

impl StackOptions {
    /// The defaults with these emulator flags, e.g. `&["--max-concurrent", "2"]`.
    pub fn emulator(args: &[&str]) -> Self {
        Self { emulator_args: args.iter().map(|s| s.to_string()).collect(), ..Self::default() }
    }
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
            worker_env: HashMap::new(),
            own_redis: false,
            admin_database_url: None,
            files_dir: None,
            storage: StorageKind::Local,
        }
    }
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
    /// Environment every service of this stack shares.
    shared_env: HashMap<String, String>,
    pub http: reqwest::Client,
    opts: StackOptions,
    next_worker: usize,
}

impl Stack {
    pub async fn start(opts: StackOptions) -> anyhow::Result<Self> {
        let db = fresh_database_on(&opts.admin_database_url.clone().unwrap_or_else(admin_database_url)).await?;
        let queue_name = unique_queue_name();
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
        let logs = std::env::temp_dir().join(format!("jewelshot-test-logs/{}", queue_name.replace(':', "-")));
        std::fs::create_dir_all(&logs)?;
        let mut eargs = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
        eargs.extend(opts.emulator_args.iter().cloned());
        let emulator = Proc::spawn("emulator", "fal-emulator", &eargs, &HashMap::new(), &logs, true)?;

        let redis = if opts.own_redis { Some(RedisServer::start(&logs)?) } else { None };
        let redis_url = redis.as_ref().map_or_else(redis_url, |r| r.url.clone());
        let mut shared_env = Self::common_env(&db.url, &redis_url, &queue_name, &files);
        let s3 = match opts.storage {
            StorageKind::Local => None,
            StorageKind::S3 => {
                let server = S3Server::start(&logs)?;
                let bucket = format!("jewelshot-{}", ulid::Ulid::generate().to_string().to_lowercase());
                shared_env.extend(server.env(&bucket));
                Some(server)
            }
        };
        let mut env = shared_env.clone();
        env.insert("JEWELSHOT_GATEWAY__LISTEN".into(), "127.0.0.1:0".into());
        // Tests queue hundreds of jobs from one user; the limit tests turn the limits back on.
        env.insert("JEWELSHOT_LIMITS__SUBMITS_PER_MINUTE".into(), "0".into());
        env.insert("JEWELSHOT_LIMITS__MAX_QUEUED_PER_USER".into(), "0".into());
        env.extend(opts.gateway_env.clone());
        let gateway = Proc::spawn("gateway", "jewelshot-gateway", &[], &env, &logs, true)?;
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
            shared_env,
            http,
            opts,
            next_worker: 0,
        })
    }

    fn common_env(db_url: &str, redis_url: &str, queue: &str, files: &Path) -> HashMap<String, String> {
        HashMap::from([
            ("JEWELSHOT_DATABASE__URL".into(), db_url.to_owned()),
            ("JEWELSHOT_DATABASE__MAX_CONNECTIONS".into(), "4".into()),
            ("JEWELSHOT_QUEUE__REDIS_URL".into(), redis_url.to_owned()),
            ("JEWELSHOT_QUEUE__NAME".into(), queue.to_owned()),
            ("JEWELSHOT_STORAGE__LOCAL__ROOT".into(), files.display().to_string()),
            ("JEWELSHOT_WEBHOOK__ALLOW_INSECURE".into(), "true".into()),
        ])
    }

    /// The Redis this stack uses (its own, or the shared one).
    pub fn redis_url(&self) -> String {
        self.redis.as_ref().map_or_else(redis_url, |r| r.url.clone())
    }

    pub fn gateway_url(&self) -> &str {
        self.gateway.url.as_deref().unwrap_or_default()
    }

    pub fn emulator_url(&self) -> &str {
        self.emulator.url.as_deref().unwrap_or_default()
    }

    /// Start one more worker process; `env` overrides the stack's worker settings.
    pub fn start_worker(&mut self, env: &[(&str, &str)]) -> anyhow::Result<usize> {
        let mut e = self.shared_env.clone();
        e.insert("JEWELSHOT_STORAGE__LOCAL__PUBLIC_BASE_URL".into(), format!("{}/files", self.gateway_url()));
        e.insert("JEWELSHOT_FAL__QUEUE_URL".into(), self.emulator_url().to_owned());
        e.insert("FAL_KEY".into(), "test-key-1".into());
        e.insert("JEWELSHOT_FAL__POLL_INTERVAL_MS".into(), "50".into());
        e.insert("JEWELSHOT_WORKER__POLL_INTERVAL_MS".into(), "50".into());
        e.insert("JEWELSHOT_WORKER__BACKOFF_BASE_MS".into(), "50".into());
        e.insert("JEWELSHOT_WORKER__BACKOFF_MAX_MS".into(), "500".into());
        e.insert("JEWELSHOT_WORKER__HEARTBEAT_SECS".into(), "1".into());
        e.insert("JEWELSHOT_WORKER__MISSED_HEARTBEATS".into(), "2".into());
        e.insert("JEWELSHOT_WEBHOOK__BACKOFF_BASE_MS".into(), "50".into());
        e.insert("JEWELSHOT_WORKER__VACUUM_INTERVAL_SECS".into(), "1".into());
        e.insert("JEWELSHOT_WORKER__JOB_HEARTBEAT_SECS".into(), "1".into());
        e.insert("JEWELSHOT_WORKER__ORPHAN_AFTER_SECS".into(), "3".into());
        e.insert("JEWELSHOT_WORKER__RECONCILE_INTERVAL_SECS".into(), "1".into());
        e.insert("JEWELSHOT_WORKER__ID".into(), format!("test-worker-{}-{}", self.next_worker, ulid::Ulid::generate()));
        e.extend(self.upstream_limits_env());
        e.extend(self.opts.worker_env.clone());
        for (k, v) in env {
            e.insert((*k).to_owned(), (*v).to_owned());
        }
        let name = format!("worker-{}", self.next_worker);
        self.next_worker += 1;
        let proc = Proc::spawn(&name, "jewelshot-worker", &[], &e, &self.logs, false)?;
        self.workers.push(proc);
        Ok(self.workers.len() - 1)
    }

    /// The limiter settings that match the emulator's flags (its defaults: 15 a minute, 4 at
    /// once, unscaled), so workers and emulator agree on the account's limits.
    fn upstream_limits_env(&self) -> HashMap<String, String> {
        let flag = |name: &str| self.opts.emulator_args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
        let scale: f64 = flag("--time-scale").and_then(|v| v.parse().ok()).unwrap_or(1.0);
        HashMap::from([
            ("JEWELSHOT_FAL__MAX_PER_MINUTE".into(), flag("--max-per-minute").unwrap_or_else(|| "15".into())),
            ("JEWELSHOT_FAL__MAX_CONCURRENT".into(), flag("--max-concurrent").unwrap_or_else(|| "4".into())),
            ("JEWELSHOT_FAL__RATE_WINDOW_MS".into(), ((60_000.0 * scale).ceil() as u64).to_string()),
        ])
    }

    /// Create a user and an API key; returns (user id, key, webhook secret).
    pub async fn user(&self, email: &str) -> anyhow::Result<(String, String, String)> {
        let u = self.db.db.create_user(email, "free").await?;
        let k = self.db.db.create_api_key(u.id, "test").await?;
        Ok((u.id.to_string(), k.key, u.webhook_secret))
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

    /// What the emulator saw.
    pub async fn emulator_stats(&self) -> anyhow::Result<Value> {
        Ok(self.http.get(format!("{}/__stats", self.emulator_url())).send().await?.json().await?)
    }

    /// Recent log lines of every worker, for failure messages.
    pub fn worker_logs(&self) -> String {
        self.workers.iter().map(|w| format!("--- {} ---\n{}", w.name, w.log_tail())).collect::<Vec<_>>().join("\n")
    }
}

/// Queue `jobs` jobs at once for benchmarks: rows straight into Postgres (in batches; the
/// gateway's submit path is measured elsewhere) and each job into the dispatch line, as the
/// gateway would. Owners are spread over `users` with uneven weight (user i about as often as
/// 1/(i+1)); one job in ten is `high`. Returns the line entries in submit order.
pub async fn fill_queue(
    stack: &Stack,
    users: &[String],
    jobs: usize,
    input_url: &str,
) -> anyhow::Result<Vec<jewelshot_ratelimit::LineEntry>> {
    use jewelshot_ratelimit::{Limiter, LimiterConfig, LineEntry};
    const BATCH: usize = 5_000;
    let (client, conn) = tokio_postgres::connect(&stack.db.url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut entries: Vec<LineEntry> = Vec::with_capacity(jobs);
    for start in (0..jobs).step_by(BATCH) {
        let n = BATCH.min(jobs - start);
        let (mut ids, mut owners, mut prios, mut prompts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = ((x % 1000) as f64 / 1000.0 * (users.len() as f64).ln()).exp() as usize - 1;
            ids.push(ulid::Ulid::generate().to_string());
            owners.push(users[u.min(users.len() - 1)].clone());
            prios.push(if x % 10 == 0 { "high" } else { "normal" });
            prompts.push(format!("backlog #{}", start + i));
        }
        let rows = client
            .query(
                "INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, max_attempts)
                 SELECT id, user_id, 'queued', priority, prompt, $5, 5
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(id, user_id, priority, prompt)
                 RETURNING id, seq, user_id, priority",
                &[&ids, &owners, &prios, &prompts, &input_url],
            )
            .await?;
        for r in rows {
            entries.push(LineEntry {
                job: r.get(0),
                seq: r.get(1),
                user: r.get(2),
                high: r.get::<_, String>(3) == "high",
            });
        }
    }
    let redis = redis::Client::open(stack.redis_url().as_str())?;
    let limiter = Limiter::new(
        redis.get_connection_manager().await?,
        LimiterConfig::new(jewelshot_ratelimit::default_prefix(&stack.queue_name)),
        Vec::new(),
    );
    for chunk in entries.chunks(256) {
        let mut set = tokio::task::JoinSet::new();
        for e in chunk {
            let (l, e) = (limiter.clone(), e.clone());
            set.spawn(async move { l.enqueue(&e, None).await });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
    }
    Ok(entries)
}

/// Bytes Redis spends on every key whose name starts with `prefix` (`MEMORY USAGE`), and how
/// many keys there are.
pub async fn redis_footprint(prefix: &str) -> anyhow::Result<(u64, usize)> {
    let client = redis::Client::open(redis_url().as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await?;
    let mut bytes = 0u64;
    for k in &keys {
        let used: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg(k).query_async(&mut conn).await?;
        bytes += used.unwrap_or(0);
    }
    Ok((bytes, keys.len()))
}

/// Run a python snippet with the tool venv's interpreter (`just tools` creates it).
pub fn python() -> PathBuf {
    venv_tool("JEWELSHOT_TEST_PYTHON", "python", "python3")
}

/// A program from the tool venv (`target/pytools/bin`): `env_var` overrides it, and `fallback`
/// (looked up on `PATH`) stands in when the venv lacks it.
pub fn venv_tool(env_var: &str, name: &str, fallback: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env_var) {
        return PathBuf::from(p);
    }
    let venv = repo_root().join("target/pytools/bin").join(name);
    if venv.exists() {
        venv
    } else {
        PathBuf::from(fallback)
    }
}
