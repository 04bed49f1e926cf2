//! The real binaries as child processes: spawned with their environment, their `listening on`
//! URL read from stdout, their stderr kept in a log, killed when dropped; and where the tools
//! and fixtures are.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context};

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
            // What the test does not set, a developer's shell must not set either.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("SSL_CERT_FILE")
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
