//! `jewelshot queue stats`: job counts (Postgres), queue depths and the fal pool (Redis). Redis
//! not answering is a failure (exit 3): an operator asking for the queue's state must not read
//! a partial answer as "empty".

use jewelshot_db::jobs::QueueCounts;
use jewelshot_queue::QueueDepths;
use jewelshot_ratelimit::KeyStatus;
use serde::Serialize;

use crate::{
    app::{print, App, Failure, Report},
    cli::QueueCmd,
};

pub async fn run(cmd: QueueCmd, app: &App) -> Result<(), Failure> {
    match cmd {
        QueueCmd::Stats => stats(app).await,
    }
}

async fn stats(app: &App) -> Result<(), Failure> {
    let counts = app.db.queue_counts().await?;
    let queue = app.queue().await?;
    let redis = queue.depths().await?;
    let (high, normal, scheduled) =
        app.line(&queue).line_lengths().await.map_err(|e| Failure::unreachable(format!("Redis: {e}")))?;
    let upstream = app.line(&queue).snapshot().await.map_err(|e| Failure::unreachable(format!("Redis: {e}")))?;
    let stats = Stats {
        jobs: Counts::of(&counts),
        line: Line { high, normal, scheduled },
        redis,
        upstream,
        queue: app.cfg.queue.name.clone(),
    };
    print(&stats, app.json)
}

#[derive(Serialize)]
struct Stats {
    jobs: Counts,
    /// The dispatch line: jobs waiting per class, and scheduled for later.
    line: Line,
    redis: QueueDepths,
    upstream: Vec<KeyStatus>,
    #[serde(skip)]
    queue: String,
}

#[derive(Serialize)]
struct Counts {
    queued: i64,
    scheduled: i64,
    processing: i64,
    complete: i64,
    failed: i64,
    canceled: i64,
}

impl Counts {
    fn of(c: &QueueCounts) -> Self {
        Self {
            queued: c.queued,
            scheduled: c.scheduled,
            processing: c.processing,
            complete: c.complete,
            failed: c.failed,
            canceled: c.canceled,
        }
    }
}

#[derive(Serialize)]
struct Line {
    high: u64,
    normal: u64,
    scheduled: u64,
}

impl Report for Stats {
    fn text(&self) -> String {
        let c = &self.jobs;
        let mut out = format!(
            "jobs (postgres): queued={} scheduled={} processing={} complete={} failed={} canceled={}\n",
            c.queued, c.scheduled, c.processing, c.complete, c.failed, c.canceled
        );
        out += &format!(
            "line (redis): high={} normal={} scheduled={}\n",
            self.line.high, self.line.normal, self.line.scheduled
        );
        let d = &self.redis;
        out += &format!(
            "queue (redis {}): ready={} scheduled={} in-flight={}\n",
            self.queue, d.active, d.scheduled, d.inflight
        );
        for k in &self.upstream {
            out += &format!(
                "fal account {}: {} | {}/{} started this window, {}/{} in flight{}\n",
                k.id,
                if k.healthy { "healthy" } else { "DISABLED (fal refused its key)" },
                k.started_in_window,
                k.max_per_minute,
                k.in_flight,
                k.max_concurrent,
                if k.cooling_down { ", resting after a 429" } else { "" }
            );
        }
        out
    }
}
