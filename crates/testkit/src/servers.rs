//! Servers of a test's own, for tests that must stop or restart them: S3 (s3s-fs), Redis and
//! PostgreSQL, each on a free loopback port.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::processes::Proc;

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

    /// Point a service's storage settings at this server, in a bucket of its own (created on
    /// first use), with presigned URLs.
    pub fn configure(&self, storage: &mut jewelshot_storage::StorageConfig, bucket: &str) {
        storage.backend = "s3".into();
        let s3 = &mut storage.s3;
        s3.endpoint = self.endpoint.clone();
        s3.bucket = bucket.into();
        s3.region = "us-east-1".into();
        s3.path_style = true;
        s3.create_bucket = true;
        s3.access_key_id = S3_ACCESS_KEY.into();
        s3.secret_access_key = S3_SECRET_KEY.into();
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
        Self::spawn_with(port, logs, &[])
    }

    fn spawn_with(port: u16, logs: &Path, extra: &[String]) -> anyhow::Result<Proc> {
        let mut args: Vec<String> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(extra.iter().cloned());
        Proc::spawn_path("redis", Path::new("redis-server"), &args, &HashMap::new(), logs, Some("Ready to accept"))
    }

    /// [`RedisServer::start`] with a TLS port beside the plain one (the test's own tools use
    /// `url`): returns the server and the `rediss://` URL of its TLS port.
    pub fn start_tls(logs: &Path, ca: &crate::tls::TestCa) -> anyhow::Result<(Self, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let tls_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let path = |p: &Path| p.display().to_string();
        let extra = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(&ca.cert_file),
            "--tls-key-file".into(),
            path(&ca.key_file),
            "--tls-ca-cert-file".into(),
            path(&ca.ca_file),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let proc = Self::spawn_with(port, logs, &extra)?;
        let server = Self { proc, port, url: format!("redis://127.0.0.1:{port}"), logs: logs.to_path_buf() };
        Ok((server, format!("rediss://127.0.0.1:{tls_port}")))
    }

    /// Stop and start again on the same port, empty (it keeps nothing on disk): a restart.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.sigkill();
        self.proc = Self::spawn(self.port, &self.logs)?;
        Ok(())
    }
}

/// A Redis Cluster of the test's own: three masters (`redis-server --cluster-enabled yes`, no
/// replicas) on free loopback ports, the 16,384 slots spread over them by
/// `redis-cli --cluster create`, nothing kept on disk beyond each node's `nodes.conf` in `logs`.
pub struct RedisCluster {
    pub nodes: Vec<Proc>,
    pub ports: Vec<u16>,
    /// Every node, comma-separated: what `JEWELSHOT_QUEUE__REDIS_URL` takes in cluster mode.
    pub url: String,
    args: Vec<Vec<String>>,
    logs: PathBuf,
}

impl RedisCluster {
    pub fn start(logs: &Path) -> anyhow::Result<Self> {
        let free = || -> anyhow::Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
        let mut cluster = Self {
            nodes: Vec::new(),
            ports: Vec::new(),
            url: String::new(),
            args: Vec::new(),
            logs: logs.to_path_buf(),
        };
        for _ in 0..3 {
            let (port, bus) = (free()?, free()?);
            let conf = logs.join(format!("nodes-{port}.conf"));
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                &conf.display().to_string(),
                "--cluster-node-timeout",
                "5000",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            cluster.nodes.push(Self::spawn(port, &args, logs)?);
            cluster.ports.push(port);
            cluster.args.push(args);
        }
        let mut create = std::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for p in &cluster.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create.args(["--cluster-replicas", "0", "--cluster-yes"]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok()?;
        cluster.url = cluster.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        Ok(cluster)
    }

    fn spawn(port: u16, args: &[String], logs: &Path) -> anyhow::Result<Proc> {
        let name = format!("redis-cluster-{port}");
        Proc::spawn_path(&name, Path::new("redis-server"), args, &HashMap::new(), logs, Some("Ready to accept"))
    }

    fn cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
        let out = std::process::Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every node must agree that all slots are served before a client may rely on the map.
    fn wait_ok(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for p in &self.ports {
            while !Self::cli(*p, &["cluster", "info"])?.contains("cluster_state:ok") {
                anyhow::ensure!(std::time::Instant::now() < deadline, "the cluster did not reach cluster_state:ok");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// `FLUSHALL` on every node.
    pub fn flush(&self) -> anyhow::Result<()> {
        for p in &self.ports {
            anyhow::ensure!(Self::cli(*p, &["flushall"])?.trim() == "OK", "FLUSHALL on {p}");
        }
        Ok(())
    }

    /// Kill every node (an outage of the whole cluster).
    pub fn kill(&mut self) {
        for n in &mut self.nodes {
            n.sigkill();
        }
    }

    /// Start every node again on its port, empty; each rejoins with its `nodes.conf` (its id and
    /// slots), as a restarted cluster does.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        for (i, args) in self.args.iter().enumerate() {
            self.nodes[i] = Self::spawn(self.ports[i], args, &self.logs)?;
        }
        self.wait_ok()
    }

    /// `redis-cli` on every node: `CLUSTER COUNTKEYSINSLOT slot` → (port, keys) for the node
    /// that serves `slot` (the others answer 0).
    pub fn keys_in_slot(&self, slot: u16) -> anyhow::Result<Vec<(u16, u64)>> {
        let mut out = Vec::new();
        for p in &self.ports {
            let n = Self::cli(*p, &["cluster", "countkeysinslot", &slot.to_string()])?;
            out.push((*p, n.trim().parse().unwrap_or(0)));
        }
        Ok(out)
    }

    /// `DBSIZE` summed over the nodes.
    pub fn keys(&self) -> anyhow::Result<u64> {
        let mut all = 0;
        for p in &self.ports {
            all += Self::cli(*p, &["dbsize"])?.trim().parse::<u64>().unwrap_or(0);
        }
        Ok(all)
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
    /// More `-c name=value` settings.
    settings: Vec<String>,
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
        Self::start_with(logs, None).await
    }

    /// [`PgServer::start`] that also accepts TLS connections with `ca`'s server certificate
    /// (clients choose: `sslmode=require` gets TLS, the test's own plain connections still work).
    pub async fn start_tls(logs: &Path, ca: &crate::tls::TestCa) -> anyhow::Result<Self> {
        Self::start_with(logs, Some(ca)).await
    }

    async fn start_with(logs: &Path, ca: Option<&crate::tls::TestCa>) -> anyhow::Result<Self> {
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
        let mut settings = Vec::new();
        if let Some(ca) = ca {
            // Postgres wants its key owned by itself and private.
            for (from, to) in [(&ca.cert_file, "server.crt"), (&ca.key_file, "server.key")] {
                std::fs::copy(from, data.join(to))?;
                let _ = Command::new("chown").args(["postgres:postgres"]).arg(data.join(to)).status();
                let _ = Command::new("chmod").args(["600"]).arg(data.join(to)).status();
            }
            settings.extend(["ssl=on".to_owned(), "ssl_cert_file=server.crt".into(), "ssl_key_file=server.key".into()]);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut pg = Self {
            child: None,
            port,
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            log: logs.join("postgres.log"),
            settings,
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
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
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

/// Files served by [`serve_shared_files`]: path → bytes.
pub type SharedFiles = std::sync::Arc<std::sync::Mutex<HashMap<String, Vec<u8>>>>;

/// Serve `files` (path → bytes) over plain HTTP/1.1 on a loopback port, one request per
/// connection, for as long as the test runs; a path not in the map is a 404. Returns the base URL.
/// For files a test wants someone else (the emulator, a worker) to fetch.
pub async fn serve_files(files: HashMap<String, Vec<u8>>) -> anyhow::Result<String> {
    serve_shared_files(std::sync::Arc::new(std::sync::Mutex::new(files))).await
}

/// [`serve_files`] over a map the test may change while it is served (e.g. a JWKS that rotates).
pub async fn serve_shared_files(files: SharedFiles) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let found = files.lock().ok().and_then(|f| f.get(&path).cloned());
                let (status, body) = match &found {
                    Some(b) => ("200 OK", b.as_slice()),
                    None => ("404 Not Found", &b""[..]),
                };
                let header = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(header.as_bytes()).await;
                let _ = sock.write_all(body).await;
            });
        }
    });
    Ok(base)
}
