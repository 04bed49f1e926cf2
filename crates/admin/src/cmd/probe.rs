//! `jewelshot probe URL`: one GET, 2xx or not — the container images' health check (they carry
//! no curl). Needs no configuration, database or Redis.

use serde::Serialize;

use crate::app::{print, Failure, Report};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Probed {
    url: String,
    status: u16,
    milliseconds: f64,
}

impl Report for Probed {
    fn text(&self) -> String {
        format!("{} answered {} in {:.1} ms", self.url, self.status, self.milliseconds)
    }
}

/// From `main`, before any runtime exists (a health check must start fast and small).
pub fn run(url: &str, timeout_ms: u64, json: bool) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("starting the async runtime: {e}")))?;
    runtime.block_on(probe(url, timeout_ms, json))
}

pub async fn probe(url: &str, timeout_ms: u64, json: bool) -> Result<(), Failure> {
    let timeout = std::time::Duration::from_millis(timeout_ms);
    let start = std::time::Instant::now();
    let http = reqwest::Client::builder().timeout(timeout).build().map_err(|e| Failure::failed(e.to_string()))?;
    let status = http.get(url).send().await.map_err(|e| Failure::failed(format!("{url}: {e}")))?.status();
    let probed =
        Probed { url: url.to_owned(), status: status.as_u16(), milliseconds: start.elapsed().as_secs_f64() * 1e3 };
    if !status.is_success() {
        return Err(Failure::failed(probed.text()));
    }
    print(&probed, json)
}
