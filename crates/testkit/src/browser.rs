//! Headless Chromium for browser tests (`just test-browser` installs Debian's `chromium`): load a
//! page with **no network but loopback** — every other host name resolves to nothing — and read
//! the DOM after its scripts ran, or save a screenshot.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context;

/// The browser: `CHROMIUM`, or `chromium` / `chromium-browser` / `google-chrome` on the PATH.
pub fn chromium() -> anyhow::Result<PathBuf> {
    let mut names: Vec<String> = std::env::var("CHROMIUM").ok().into_iter().collect();
    names.extend(["chromium", "chromium-browser", "google-chrome"].map(String::from));
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        let candidate = Path::new(&name);
        if candidate.is_absolute() && candidate.exists() {
            return Ok(candidate.to_path_buf());
        }
        if let Some(found) = std::env::split_paths(&path).map(|d| d.join(&name)).find(|p| p.exists()) {
            return Ok(found);
        }
    }
    anyhow::bail!("no Chromium found: `just test-browser` installs it (Debian package chromium), or set CHROMIUM")
}

fn headless(budget: Duration) -> anyhow::Result<Command> {
    let profile = tempfile::tempdir()?.keep();
    let mut cmd = Command::new(chromium()?);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        // No network but this machine: any other name resolves to nothing.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost",
        &format!("--virtual-time-budget={}", budget.as_millis()),
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    Ok(cmd)
}

/// The DOM of `url` once its scripts ran (for up to `budget` of virtual time).
pub fn dump_dom(url: &str, budget: Duration) -> anyhow::Result<String> {
    let out = headless(budget)?.arg("--dump-dom").arg(url).output().context("running chromium")?;
    anyhow::ensure!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where a browser test saves the screenshot `name`: `target/browser/<name>` (the folder made).
pub fn screenshot_path(name: &str) -> anyhow::Result<PathBuf> {
    let dir = crate::repo_root().join("target/browser");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(name))
}

/// A screenshot of `url` (`width`×`height`) at `path` (a PNG).
pub fn screenshot(url: &str, path: &Path, (width, height): (u32, u32), budget: Duration) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = headless(budget)?
        .arg(format!("--screenshot={}", path.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(url)
        .output()
        .context("running chromium")?;
    anyhow::ensure!(out.status.success() && path.exists(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// `chromedriver` on a free loopback port, for tests that click and type (WebDriver); killed on
/// drop.
pub struct WebDriver {
    _proc: crate::Proc,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl WebDriver {
    pub fn start(logs: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let proc = crate::Proc::spawn_path(
            "chromedriver",
            Path::new("chromedriver"),
            &[format!("--port={port}")],
            &std::collections::HashMap::new(),
            logs,
            Some("started successfully"),
        )
        .context("starting chromedriver (Debian package chromium-driver; `just test-browser` installs it)")?;
        Ok(Self { _proc: proc, url: format!("http://127.0.0.1:{port}") })
    }

    /// What to ask chromedriver for: headless Chromium with no network but loopback, a window
    /// big enough for the pages' layouts.
    pub fn capabilities() -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium()?.display().to_string(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost",
                    "--window-size=1280,1400",
                ],
            },
        });
        match caps {
            serde_json::Value::Object(m) => Ok(m),
            _ => anyhow::bail!("capabilities are an object"),
        }
    }
}
