//! The reconciler: Postgres is the record, Redis can be lost. Every `reconcile_interval_secs`
//! one worker (whichever holds a short Redis lease) walks the open jobs in Postgres and puts back
//! what Redis no longer holds:
//!
//! - a `queued` job that has not reached fal yet, found nowhere (not in line, not scheduled, not
//!   dispatched, not in the work queue) → back in the dispatch line, at its fair place;
//! - a `queued` job past that point (a requeue, a hand-back), or a `processing` job whose worker's
//!   heartbeat went stale, found nowhere → its task is pushed again (the finished steps are kept;
//!   the run lock in `begin_attempt` keeps a live worker's job from running twice).
//!
//! It also re-registers the pool's limits (the gateway reads them for capacity and ETAs).
//! Each pass is idempotent; the lease only keeps two workers from doing the same work at once.

use std::time::Duration;

use jewelshot_db::{jobs::OpenJob, Db};
use jewelshot_domain::JobStatus;
use jewelshot_queue::{Placed, Queue};
use jewelshot_ratelimit::{Limiter, LineEntry, QueueKeys};
use tokio_util::sync::CancellationToken;

/// Open jobs read per query, and checked per Redis script.
const BATCH: i64 = 500;

/// What one pass put back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub scanned: u64,
    pub relined: u64,
    pub repushed: u64,
}

pub struct Reconciler {
    pub db: Db,
    pub limiter: Limiter,
    pub queue: Queue,
    pub keys: QueueKeys,
    pub conn: jewelshot_queue::RedisConn,
    /// `<queue>:reconciler`: who leads.
    pub lease_key: String,
    pub worker: String,
    pub interval: Duration,
    pub stale: Duration,
}

impl Reconciler {
    pub fn spawn(self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if self.interval.is_zero() {
                return;
            }
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                match self.lead().await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "reconciler: Redis unavailable");
                        continue;
                    }
                }
                if let Err(e) = self.limiter.register().await {
                    tracing::warn!(error = %e, "reconciler: could not re-register the pool");
                }
                match self.pass().await {
                    Ok(r) if r.relined + r.repushed > 0 => tracing::warn!(
                        scanned = r.scanned,
                        relined = r.relined,
                        repushed = r.repushed,
                        "reconciler: put back jobs Redis had lost"
                    ),
                    Ok(r) => tracing::debug!(scanned = r.scanned, "reconciler: Redis holds every open job"),
                    Err(e) => tracing::warn!(error = %e, "reconciler: pass failed"),
                }
            }
        })
    }

    /// Take or keep the lease (three intervals long, so a dead leader is replaced soon).
    async fn lead(&self) -> Result<bool, redis::RedisError> {
        const SCRIPT: &str = r"
            if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
            if redis.call('GET', KEYS[1]) == ARGV[1] then
              redis.call('PEXPIRE', KEYS[1], ARGV[2])
              return 1
            end
            return 0";
        let mut conn = self.conn.clone();
        let ttl = (self.interval * 3).as_millis() as u64;
        let script = redis::Script::new(SCRIPT);
        let mut inv = script.prepare_invoke();
        inv.key(&self.lease_key).arg(&self.worker).arg(ttl);
        let held: i64 = tokio::time::timeout(Duration::from_secs(3), inv.invoke_async(&mut conn))
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "timed out")))??;
        Ok(held == 1)
    }

    /// One walk over every open job.
    pub async fn pass(&self) -> anyhow::Result<Report> {
        let mut report = Report::default();
        let mut after = 0;
        loop {
            let batch = self.db.open_jobs(after, BATCH, self.stale).await?;
            let Some(last) = batch.last() else { break };
            after = last.job.seq;
            report.scanned += batch.len() as u64;
            // A job being submitted or handed over right now, or running with a live heartbeat,
            // is not a candidate.
            // A job waiting on another's fal request is in no line by design (the cache settles it).
            let sharing = |o: &OpenJob| o.job.shares_job.is_some() && o.job.status == JobStatus::Queued;
            let candidates: Vec<&OpenJob> = batch
                .iter()
                .filter(|o| o.settled && !sharing(o) && (o.job.status == JobStatus::Queued || o.stale))
                .collect();
            let entries: Vec<LineEntry> = candidates.iter().map(|o| jewelshot_queue::line_entry(&o.job)).collect();
            let by_id: std::collections::HashMap<&str, &OpenJob> =
                entries.iter().map(|e| e.job.as_str()).zip(candidates.iter().copied()).collect();
            let absent = self.limiter.absent(&self.keys, &entries).await?;
            for e in absent {
                let Some(open) = by_id.get(e.job.as_str()) else { continue };
                // A processing job is past the line whatever its steps say.
                let started = open.generate_started || open.job.status != JobStatus::Queued;
                let action = match jewelshot_queue::put_back(&self.limiter, &self.queue, &open.job, started).await? {
                    Placed::Line => {
                        report.relined += 1;
                        "line"
                    }
                    Placed::Task => {
                        report.repushed += 1;
                        "task"
                    }
                };
                metrics::counter!(jewelshot_domain::metric_names::RECONCILER_ACTIONS, "action" => action).increment(1);
                tracing::info!(job_id = %e.job, status = %open.job.status, "reconciler: job put back");
            }
            if (batch.len() as i64) < BATCH {
                break;
            }
        }
        Ok(report)
    }
}
