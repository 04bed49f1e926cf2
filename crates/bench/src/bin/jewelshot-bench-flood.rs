//! `just bench-flood`: F acceptance 2. For SECS seconds 400 connections send requests with
//! malformed bearer tokens (random lengths and alphabets, JWT look-alikes, near-miss keys) and
//! 20 scrape `/metrics`, while a real user polls its job every 20 ms. Prints the user's
//! latency before and during the flood, the flood's rate and what Postgres saw (goal: p99 <
//! 50 ms with 0 errors, and no statement for a malformed token).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use jewelshot_testkit::{Stack, StackOptions};
use serde_json::json;

const ATTACKERS: usize = 400;
const SCRAPERS: usize = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut opts = StackOptions::default();
    opts.gateway_env.insert("JEWELSHOT_GATEWAY__METRICS_LISTEN".into(), format!("127.0.0.1:{metrics_port}"));
    if let Ok(level) = std::env::var("FLOOD_GATEWAY_LOG") {
        opts.gateway_env.insert("RUST_LOG".into(), level);
    }
    let stack = Stack::start(opts).await?;
    let (_, key, _) = stack.user("real@example.com").await?;
    let (_, job) =
        stack.submit(&key, &json!({ "image_url": "https://cdn.example.com/ring.jpg", "prompt": "flood" })).await?;
    let job_id = job["jobId"].as_str().context("jobId")?.to_owned();
    let base = stack.gateway_url().to_owned();
    let poll_url = format!("{base}/api/jobs/{job_id}");

    // What Postgres does with nobody asking anything (the gateway's own background work).
    let idle_before = stack.db.transactions().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The 5 s here and the 11 s the second reading waits for the counts to settle.
    let idle = (stack.db.transactions().await? - idle_before) as f64 / 16.0;
    let quiet = poll(&stack.http, &poll_url, &key, Duration::from_secs(5)).await;
    let pg_before = stack.db.transactions().await?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (junk, scrapes, refused_other) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flood =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(ATTACKERS).build()?;
    let mut tasks = Vec::new();
    for a in 0..ATTACKERS {
        let (http, url, junk, other) =
            (flood.clone(), format!("{base}/api/jobs/{job_id}"), junk.clone(), refused_other.clone());
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (a as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
            while Instant::now() < deadline {
                let token = junk_token(&mut seed);
                match http.get(&url).header("authorization", format!("Bearer {token}")).send().await {
                    Ok(r) if r.status().as_u16() == 401 => {
                        junk.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) | Err(_) => {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for _ in 0..SCRAPERS {
        let (http, url, n) = (flood.clone(), format!("http://127.0.0.1:{metrics_port}/metrics"), scrapes.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if let Ok(r) = http.get(&url).send().await {
                    if r.bytes().await.is_ok() {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let loud = poll(&stack.http, &poll_url, &key, Duration::from_secs(secs)).await;
    for t in tasks {
        let _ = t.await;
    }
    let pg_flood = stack.db.transactions().await? - pg_before;

    // What the real user's polls cost on their own, to tell them apart from the flood's.
    let pg_quiet_before = stack.db.transactions().await?;
    let alone = poll(&stack.http, &poll_url, &key, Duration::from_secs(5)).await;
    // 5 s of polls plus the 1.5 s the stats take to flush.
    let per_poll = ((stack.db.transactions().await? - pg_quiet_before) as f64 - idle * 6.5) / alone.ok.max(1) as f64;

    let (junk, scrapes) = (junk.load(Ordering::Relaxed), scrapes.load(Ordering::Relaxed));
    println!("{secs} s: {ATTACKERS} connections of malformed tokens, {SCRAPERS} scraping /metrics, 1 user polling every 20 ms");
    println!(
        "flood: {junk} requests refused with 401 ({:.0}/s), {} other answers or errors; {scrapes} scrapes ({:.0}/s)",
        junk as f64 / secs as f64,
        refused_other.load(Ordering::Relaxed),
        scrapes as f64 / secs as f64
    );
    println!("user's polls, quiet: {}", quiet.line());
    println!("user's polls, flood: {}", loud.line());
    println!("Postgres transactions with no traffic: {idle:.1}/s (the gateway's background work)");
    let explained = per_poll * loud.ok as f64 + idle * (secs as f64 + 1.5);
    println!(
        "Postgres transactions during the flood: {pg_flood} — the user's {} polls and the background account for \
         {explained:.0} ({per_poll:.1} per poll, measured alone), /metrics scrapes and junk tokens for {:.0}",
        loud.ok,
        pg_flood as f64 - explained
    );
    let ok = loud.p99_ms() < 50.0 && loud.errors == 0;
    println!("{} (goal: the user's p99 < 50 ms with 0 errors during the flood)", if ok { "PASS" } else { "FAIL" });
    Ok(())
}

/// Random junk in the shapes an attacker would try.
fn junk_token(seed: &mut u64) -> String {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    const ALPHABET: &[u8] = b"ABCDEFabcdef0123456789_-+/=.~";
    let len = (*seed % 120) as usize + 1;
    let body: String =
        (0..len).map(|j| ALPHABET[((*seed >> (j % 50)) as usize + j) % ALPHABET.len()] as char).collect();
    match *seed % 4 {
        0 => body,
        1 => format!("jsk_{body}"),
        2 => format!("eyJ{body}.eyJ{body}.{body}"),
        _ => format!("jsk_{}!", &"A".repeat(42)),
    }
}

struct Polls {
    ok: u64,
    errors: u64,
    lat: Vec<Duration>,
}

impl Polls {
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.lat.len() as f64 * p).ceil() as usize).saturating_sub(1);
        self.lat.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    fn p99_ms(&self) -> f64 {
        self.pct(0.99)
    }

    fn line(&self) -> String {
        format!(
            "{} ok, {} errors, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.ok,
            self.errors,
            self.pct(0.5),
            self.pct(0.99),
            self.pct(1.0)
        )
    }
}

async fn poll(http: &reqwest::Client, url: &str, key: &str, for_: Duration) -> Polls {
    let deadline = Instant::now() + for_;
    let mut p = Polls { ok: 0, errors: 0, lat: Vec::new() };
    while Instant::now() < deadline {
        let t = Instant::now();
        let answered = match http.get(url).bearer_auth(key).send().await {
            Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
            _ => false,
        };
        if answered {
            p.ok += 1;
            p.lat.push(t.elapsed());
        } else {
            p.errors += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.lat.sort();
    p
}
