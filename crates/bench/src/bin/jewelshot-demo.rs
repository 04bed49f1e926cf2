//! `just demo`: the whole system on this machine — the fal emulator, a gateway and two workers
//! over a fresh database — performing a real edit of the shipped photo. Prints the queue
//! position as it changes and where the result was saved, then stops everything it started.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jewelshot_testkit::{repo_root, Stack, StackOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scale = std::env::var("DEMO_TIME_SCALE").unwrap_or_else(|_| "0.1".into());
    let files = repo_root().join("target/demo/files");
    println!("▶ starting the fal emulator (20-45 s per edit, time-scaled ×{scale}), the gateway and two workers…");
    let opts = StackOptions {
        files_dir: Some(files.clone()),
        ..StackOptions::emulator(&["--time-scale", &scale, "--max-concurrent", "2", "--max-per-minute", "15"])
    };
    let mut stack = Stack::start(opts).await.context("starting the stack (is `just services` happy?)")?;
    println!("  gateway  {}", stack.gateway_url());
    println!("  emulator {}", stack.emulator_url());
    println!("  logs     {}", stack.logs.display());

    let (_, key, _) = stack.user(&format!("demo-{}@example.com", ulid::Ulid::generate())).await?;
    let input = stack.input_photo_url(&key).await?;
    // A few other shoppers' edits are already waiting, so the line visibly moves.
    for i in 0..5 {
        stack.submit(&key, &json!({ "image_url": input, "prompt": format!("studio lighting, variant {i}") })).await?;
    }
    let (status, body) =
        stack.submit(&key, &json!({ "image_url": input, "prompt": "enhance lighting, white background" })).await?;
    if status != 202 {
        bail!("submit answered {status}: {body}");
    }
    let id = body["jobId"].as_str().context("no jobId")?.to_owned();
    println!("▶ submitted job {id}: queued at position {}", body["queuePosition"]);

    // One job at a time per worker, so the line moves visibly.
    stack.start_worker_with(|c| c.worker.concurrency = 1)?;
    stack.start_worker_with(|c| c.worker.concurrency = 1)?;
    println!("▶ two workers started (concurrency 1 each)");

    let start = Instant::now();
    let mut last = (String::new(), -1i64);
    let job = loop {
        let (_, job) = stack.get_job(&key, &id).await?;
        let now = (job["status"].as_str().unwrap_or("?").to_owned(), job["queuePosition"].as_i64().unwrap_or(0));
        if now != last {
            match now.0.as_str() {
                "queued" => println!("  [{:>5.1}s] queued, position {}", start.elapsed().as_secs_f64(), now.1),
                s => println!("  [{:>5.1}s] {s}", start.elapsed().as_secs_f64()),
            }
            last = now;
        }
        if matches!(last.0.as_str(), "complete" | "failed" | "canceled") {
            break job;
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("the job did not finish in 5 minutes\n{}", stack.worker_logs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if job["status"] != "complete" {
        bail!("the job ended {}: {}", job["status"], job["error"]);
    }
    let url = job["imageUrl"].as_str().context("no imageUrl")?;
    // The URL is signed and expiring (`?expires=…&sig=…`); the object's key is its path.
    let key_path =
        url.split_once("/files/").map(|(_, k)| k.split('?').next().unwrap_or(k)).context("unexpected imageUrl")?;
    let path = files.join(key_path);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let served = stack.http.get(url).send().await?;
    if !served.status().is_success() || served.bytes().await?.as_ref() != bytes.as_slice() {
        bail!("the signed imageUrl does not serve the saved file");
    }
    let is_jpeg = bytes.starts_with(&[0xFF, 0xD8, 0xFF]);
    println!("▶ complete: {url}");
    println!("  saved to {} ({} bytes, {})", path.display(), bytes.len(), if is_jpeg { "JPEG" } else { "NOT a JPEG" });
    println!("▶ stopping everything the demo started");
    if !is_jpeg {
        bail!("the saved result is not a JPEG");
    }
    Ok(())
}
