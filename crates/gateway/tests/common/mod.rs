//! Shared helper: the gateway in-process on port 0, over a fresh database and an isolated
//! Redis queue.
#![allow(dead_code)]

use std::time::Duration;

use jewelshot_gateway::{Application, Config};
use jewelshot_queue::Queue;
use jewelshot_testkit::TestDb;
use serde_json::Value;

pub struct Api {
    pub base: String,
    /// The metrics listener's base URL.
    pub metrics: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    pub queue: Queue,
    /// The dispatch line the gateway puts jobs in.
    pub line: jewelshot_ratelimit::Limiter,
    pub files: tempfile::TempDir,
    /// The gateway's configuration (replicas start from it).
    pub cfg: Config,
}

impl Api {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(&jewelshot_testkit::admin_database_url(), tune).await
    }

    /// The same, with the database on the server `admin_url` points at.
    pub async fn start_on(admin_url: &str, tune: impl FnOnce(&mut Config)) -> Self {
        let db = jewelshot_testkit::fresh_database_on(admin_url).await.expect("database");
        let files = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config::default();
        cfg.gateway.listen = "127.0.0.1:0".into();
        cfg.gateway.workers = 2;
        cfg.gateway.metrics_listen = "127.0.0.1:0".into();
        cfg.database.url = db.url.clone();
        cfg.database.max_connections = 4;
        cfg.database.pooler = jewelshot_testkit::db::pooler();
        cfg.queue = jewelshot_testkit::db::queue_config();
        cfg.storage.local.root = files.path().to_path_buf();
        // Tests submit freely; the limit tests turn the limits back on.
        cfg.limits.submits_per_minute = 0;
        cfg.limits.max_queued_per_user = 0;
        // Refusals answer at once here; the test of the delay turns it back on.
        cfg.limits.refused_auth_delay_ms = 0;
        // The fleet gauges are sampled once, at start: their background reads would otherwise
        // show in the tests that count Postgres's transactions.
        cfg.monitoring.sample_interval_ms = 3_600_000;
        tune(&mut cfg);
        let queue = Queue::connect(&cfg.queue).await.expect("queue");
        let line = jewelshot_ratelimit::Limiter::new(
            queue.connection(),
            jewelshot_ratelimit::LimiterConfig::new(cfg.fal.prefix(&cfg.queue.name)),
            Vec::new(),
        );
        let (base, metrics) = serve(cfg.clone()).await;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        Self { base, metrics, http, db, queue, line, files, cfg }
    }

    /// Another gateway over the same database, queue and storage, `tune`d; its base URL.
    pub async fn replica(&self, tune: impl FnOnce(&mut Config)) -> String {
        let mut cfg = self.cfg.clone();
        tune(&mut cfg);
        serve(cfg).await.0
    }

    /// GET `path` from the gateway at `base` as `key`.
    pub async fn get_from(&self, base: &str, path: &str, key: &str) -> (u16, Value) {
        let r = self.http.get(format!("{base}{path}")).bearer_auth(key).send().await.expect("send");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn key(&self, email: &str) -> String {
        let u = self.db.db.create_user(email, "free").await.expect("user");
        self.db.db.create_api_key(u.id, "t").await.expect("key").key
    }

    /// POST a raw body to `path` as `key`; the status and the JSON answer.
    pub async fn post_raw(&self, path: &str, key: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("send");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn submit_raw(&self, key: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        self.post_raw("/api/ai/edit", key, content_type, body).await
    }

    /// `POST /api/uploads` with a raw body.
    pub async fn upload(&self, key: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        self.post_raw("/api/uploads", key, content_type, body).await
    }

    pub async fn submit(&self, key: &str, body: Value) -> (u16, Value) {
        self.submit_raw(key, "application/json", serde_json::to_vec(&body).expect("json")).await
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        let r = rb.send().await.expect("send");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Nothing was recorded or enqueued.
    pub async fn assert_nothing_written(&self) {
        let c = self.db.db.queue_counts().await.expect("counts");
        assert_eq!((c.queued, c.scheduled, c.processing, c.canceled), (0, 0, 0, 0), "no job row may be left behind");
        let d = self.queue.depths().await.expect("depths");
        assert_eq!((d.active, d.scheduled), (0, 0), "no queue entry may be left behind");
        assert_eq!(self.in_line().await, 0, "no place in line may be left behind");
    }

    /// Jobs in the dispatch line, scheduled ones included.
    pub async fn in_line(&self) -> u64 {
        let (high, normal, scheduled) = self.line.line_lengths().await.expect("line");
        high + normal + scheduled
    }
}

/// Start a gateway on `cfg` (port 0): its base URL and its metrics URL.
async fn serve(cfg: Config) -> (String, String) {
    let app = Application::build(cfg).await.expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    let metrics = format!("http://127.0.0.1:{}", app.metrics_port().expect("metrics listener"));
    tokio::spawn(app.run_until(std::future::pending()));
    (base, metrics)
}
