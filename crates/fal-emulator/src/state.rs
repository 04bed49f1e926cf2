//! Requests, per-key limits and counters.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Notify;

/// What to do with a request over a key's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer 429 with `Retry-After` (fal's behaviour for requests over the rate).
    Reject,
    /// Accept and hold `IN_QUEUE` until the key has capacity (fal's behaviour for concurrency).
    Queue,
}

/// Command-line flags (also readable from `FAL_EMULATOR_*` variables).
#[derive(Debug, Clone, Parser)]
#[command(name = "fal-emulator", version, about = "Emulates fal.ai's queue API for tests and demos")]
pub struct EmulatorConfig {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "FAL_EMULATOR_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// Base of the URLs handed out (status, response, images); defaults to the bound address.
    #[arg(long, env = "FAL_EMULATOR_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Requests a key may start per minute (0 = unlimited). The minute is scaled by --time-scale.
    #[arg(long, env = "FAL_EMULATOR_MAX_PER_MINUTE", default_value_t = 15)]
    pub max_per_minute: u32,
    /// Requests a key may have IN_PROGRESS at once (0 = unlimited).
    #[arg(long, env = "FAL_EMULATOR_MAX_CONCURRENT", default_value_t = 4)]
    pub max_concurrent: u32,
    /// What happens to requests over a limit.
    #[arg(long, env = "FAL_EMULATOR_MODE", value_enum, default_value_t = Mode::Queue)]
    pub mode: Mode,
    /// Shorthand for --mode reject.
    #[arg(long, conflicts_with = "mode")]
    pub reject: bool,
    /// Shorthand for --mode queue.
    #[arg(long, conflicts_with_all = ["mode", "reject"])]
    pub queue: bool,
    /// Generation time range in milliseconds, before scaling: MIN-MAX (uniform).
    #[arg(long, env = "FAL_EMULATOR_LATENCY_MS", default_value = "20000-45000")]
    pub latency_ms: String,
    /// Multiplies every duration (latency, the rate window, Retry-After): 0.01 makes 30 s into 0.3 s.
    #[arg(long, env = "FAL_EMULATOR_TIME_SCALE", default_value_t = 1.0)]
    pub time_scale: f64,
    /// Probability that a submit answers 500 (nothing is queued).
    #[arg(long, env = "FAL_EMULATOR_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Probability that a submit hangs without answering (the client must time out).
    #[arg(long, env = "FAL_EMULATOR_HANG_RATE", default_value_t = 0.0)]
    pub hang_rate: f64,
    /// Probability that an accepted request fails while generating (its result answers 500).
    #[arg(long, env = "FAL_EMULATOR_FAIL_RATE", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Seed for the random choices above and the latency draw.
    #[arg(long, env = "FAL_EMULATOR_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Delay before serving a generated image, in milliseconds (unscaled): widens the window
    /// between "generation finished" and "result saved" for crash tests.
    #[arg(long, env = "FAL_EMULATOR_FILE_DELAY_MS", default_value_t = 0)]
    pub file_delay_ms: u64,
    /// Seconds a finished request's result and its image stay available, as fal keeps a
    /// result for an hour after the request completes (not scaled: a worker that comes back
    /// after a crash reads its result in real time); 0 keeps them for the process's life.
    /// After that the request answers 404, as fal's does.
    #[arg(long, env = "FAL_EMULATOR_RETAIN_SECS", default_value_t = 3600)]
    pub retain_secs: u64,
    /// Accepted keys, comma-separated; empty accepts any non-empty key.
    #[arg(long, env = "FAL_EMULATOR_KEYS", value_delimiter = ',')]
    pub keys: Vec<String>,
}

impl EmulatorConfig {
    pub fn mode(&self) -> Mode {
        if self.reject {
            Mode::Reject
        } else if self.queue {
            Mode::Queue
        } else {
            self.mode
        }
    }

    pub fn latency_range(&self) -> anyhow::Result<(u64, u64)> {
        let (a, b) = match self.latency_ms.split_once('-') {
            Some((a, b)) => (a.trim().parse()?, b.trim().parse()?),
            None => {
                let v = self.latency_ms.trim().parse()?;
                (v, v)
            }
        };
        anyhow::ensure!(a <= b, "--latency-ms MIN-MAX needs MIN <= MAX");
        Ok((a, b))
    }

    pub fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.time_scale.max(0.0))
    }
}

/// Marker prompts for deterministic failure injection.
pub const MARKER_INVALID: &str = "[invalid]";
pub const MARKER_FAIL: &str = "[fail]";
/// The result is the input's bytes exactly as fetched, not decoded or edited: how a test makes
/// "fal" answer with a file of its choosing (an image bomb, say).
pub const MARKER_AS_IS: &str = "[as-is]";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReqState {
    InQueue,
    InProgress,
    Completed,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Image { url: String, width: u32, height: u32 },
    Failed { status: u16, detail: String },
    Canceled,
}

#[derive(Debug)]
pub struct Request {
    pub key: String,
    pub app: String,
    pub prompt: String,
    pub state: ReqState,
    pub outcome: Option<Outcome>,
    pub cancel: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct KeyStats {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub canceled: u64,
    pub rejected: u64,
    pub in_progress: u64,
    pub in_queue: u64,
    pub max_concurrent: u64,
    /// Total time requests spent IN_PROGRESS, in milliseconds (slot use = busy / (limit × period)).
    pub busy_ms: u64,
    pub injected_errors: u64,
    pub injected_hangs: u64,
}

#[derive(Debug, Default)]
pub struct KeyState {
    pub stats: KeyStats,
    /// Start instants inside the current rate window.
    pub window: VecDeque<Instant>,
    /// Requests waiting for capacity, in arrival order.
    pub waiting: VecDeque<String>,
}

#[derive(Debug)]
pub struct Inner {
    pub keys: BTreeMap<String, KeyState>,
    pub requests: HashMap<String, Request>,
    pub images: HashMap<String, Arc<Vec<u8>>>,
    pub submits_by_prompt: BTreeMap<String, u64>,
    pub revoked: HashSet<String>,
    pub rng: StdRng,
    /// Finished requests in the order they finished, for [`Inner::finish`] to forget.
    pub finished: VecDeque<(Instant, String)>,
}

impl Inner {
    /// Record that request `id` finished now, and forget every request (and its image) that
    /// finished more than `retain` ago (`None`: keep them all).
    pub fn finish(&mut self, id: &str, now: Instant, retain: Option<Duration>) {
        let Some(retain) = retain else { return };
        self.finished.push_back((now, id.to_owned()));
        while let Some((at, old)) = self.finished.front() {
            if now.duration_since(*at) < retain {
                break;
            }
            self.requests.remove(old);
            self.images.remove(&format!("{old}.jpg"));
            self.images.remove(&format!("{old}.bin"));
            self.finished.pop_front();
        }
    }
}

/// Shared emulator state.
#[derive(Debug)]
pub struct State {
    pub cfg: EmulatorConfig,
    pub mode: Mode,
    pub latency: (u64, u64),
    pub public_url: String,
    inner: Mutex<Inner>,
    /// Woken whenever capacity may have freed.
    pub capacity: Notify,
    pub http: reqwest::Client,
}

impl State {
    pub fn new(cfg: EmulatorConfig, public_url: String) -> anyhow::Result<Arc<Self>> {
        let latency = cfg.latency_range()?;
        let mode = cfg.mode();
        let inner = Inner {
            keys: BTreeMap::new(),
            requests: HashMap::new(),
            images: HashMap::new(),
            submits_by_prompt: BTreeMap::new(),
            revoked: HashSet::new(),
            rng: StdRng::seed_from_u64(cfg.seed),
            finished: VecDeque::new(),
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Arc::new(Self { cfg, mode, latency, public_url, inner: Mutex::new(inner), capacity: Notify::new(), http }))
    }

    /// How long a finished request is kept (`--retain-secs`; `None` = for ever).
    pub fn retain(&self) -> Option<Duration> {
        (self.cfg.retain_secs > 0).then(|| Duration::from_secs(self.cfg.retain_secs))
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counters only; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn window(&self) -> Duration {
        self.cfg.scaled(Duration::from_secs(60))
    }

    pub fn key_allowed(&self, key: &str) -> bool {
        !key.is_empty()
            && (self.cfg.keys.is_empty() || self.cfg.keys.iter().any(|k| k == key))
            && !self.lock().revoked.contains(key)
    }

    pub fn draw_latency(&self) -> Duration {
        let (lo, hi) = self.latency;
        let ms = if hi > lo { self.lock().rng.random_range(lo..=hi) } else { lo };
        self.cfg.scaled(Duration::from_millis(ms))
    }

    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.lock().rng.random_bool(p.min(1.0))
    }
}

impl Inner {
    pub fn key(&mut self, key: &str) -> &mut KeyState {
        self.keys.entry(key.to_owned()).or_default()
    }
}

impl KeyState {
    /// Drop window entries older than `window`; return how long until the oldest leaves.
    pub fn trim_window(&mut self, now: Instant, window: Duration) -> Option<Duration> {
        while self.window.front().is_some_and(|t| now.duration_since(*t) >= window) {
            self.window.pop_front();
        }
        self.window.front().map(|t| window.saturating_sub(now.duration_since(*t)))
    }

    /// Whether one more request may start now under both limits.
    pub fn has_capacity(&mut self, now: Instant, window: Duration, per_minute: u32, concurrent: u32) -> bool {
        self.trim_window(now, window);
        let rate_ok = per_minute == 0 || self.window.len() < per_minute as usize;
        let conc_ok = concurrent == 0 || self.stats.in_progress < u64::from(concurrent);
        rate_ok && conc_ok
    }

    pub fn start(&mut self, now: Instant) {
        self.window.push_back(now);
        self.stats.in_progress += 1;
        self.stats.max_concurrent = self.stats.max_concurrent.max(self.stats.in_progress);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished_request() -> Request {
        Request {
            key: "k".into(),
            app: "fal-ai/flux-pro".into(),
            prompt: "p".into(),
            state: ReqState::Completed,
            outcome: None,
            cancel: false,
        }
    }

    fn state(retain_secs: &str) -> Arc<State> {
        let cfg = EmulatorConfig::parse_from(["fal-emulator", "--retain-secs", retain_secs]);
        State::new(cfg, "http://127.0.0.1:1".into()).expect("state")
    }

    #[test]
    fn a_finished_request_and_its_image_are_forgotten_after_the_retention() {
        let state = state("60");
        let retain = state.retain();
        assert_eq!(retain, Some(Duration::from_secs(60)));
        let mut inner = state.lock();
        let t0 = Instant::now();
        for id in ["a", "b", "c"] {
            inner.requests.insert(id.into(), finished_request());
            inner.images.insert(format!("{id}.jpg"), Arc::new(vec![1]));
        }
        inner.finish("a", t0, retain);
        inner.finish("b", t0 + Duration::from_secs(30), retain);
        assert!(inner.requests.contains_key("a"), "not yet a minute");
        inner.finish("c", t0 + Duration::from_secs(61), retain);
        assert!(!inner.requests.contains_key("a") && !inner.images.contains_key("a.jpg"), "a is past the minute");
        for id in ["b", "c"] {
            assert!(inner.requests.contains_key(id) && inner.images.contains_key(&format!("{id}.jpg")), "{id}");
        }
        assert_eq!(inner.finished.len(), 2);
    }

    #[test]
    fn retention_zero_keeps_every_result() {
        let state = state("0");
        assert_eq!(state.retain(), None);
        let mut inner = state.lock();
        inner.requests.insert("a".into(), finished_request());
        let t0 = Instant::now();
        inner.finish("a", t0, state.retain());
        inner.finish("b", t0 + Duration::from_secs(86_400), state.retain());
        assert!(inner.requests.contains_key("a") && inner.finished.is_empty());
    }
}
