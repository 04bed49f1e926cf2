//! Poll snapshots: each job's [`JobSnapshot`] kept in Redis beside the dispatch line, so
//! `GET /api/jobs/{id}` is one Redis round trip (the snapshot and the job's place in line
//! together) and no Postgres statement.
//!
//! Who writes: the gateway on submit (with the line entry, one script) and on cancel; the
//! worker running the job, its delivery loop and the CLI through a [`Publisher`] told of every
//! change by [`jewelshot_db::Db`]; and a gateway that had to read a job from Postgres (read
//! repair). Each write carries the snapshot's revision and Redis keeps only the newest, so
//! writers never need to agree on an order. A snapshot lives [`SnapshotConfig`]'s TTL for the
//! job's state; a running job's is renewed by its worker's heartbeat, so a worker that dies
//! mid-write leaves a stale one for at most `processing_ttl_secs`. Without one, a poll reads
//! Postgres — the answer is the same either way.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use jewelshot_db::{
    snapshot::{ChangeSink, JobSnapshot},
    Db,
};
use jewelshot_domain::{JobId, JobStatus, Priority};
use jewelshot_ratelimit::{JobRecord, Limiter, LineEntry, LinePlace};
use serde::{Deserialize, Serialize};

/// How long Redis keeps a job's snapshot after each write (`JEWELSHOT_QUEUE__SNAPSHOTS__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotConfig {
    /// Waiting jobs (nobody renews them; a poll after this reads Postgres once and writes it back).
    pub queued_ttl_secs: u64,
    /// Running jobs: renewed by their worker's heartbeat, so a dead worker's lapses this soon.
    pub processing_ttl_secs: u64,
    /// After the job ended.
    pub final_ttl_secs: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self { queued_ttl_secs: 86_400, processing_ttl_secs: 120, final_ttl_secs: 3_600 }
    }
}

impl SnapshotConfig {
    fn ttl(&self, status: JobStatus) -> Duration {
        Duration::from_secs(match status {
            JobStatus::Queued => self.queued_ttl_secs,
            JobStatus::Processing => self.processing_ttl_secs,
            _ => self.final_ttl_secs,
        })
    }
}

/// The job's dispatch-line entry, read off its snapshot — for a job sharing another's fal
/// request, that job's entry: its place in line is the sharer's.
pub fn entry_of(snap: &JobSnapshot) -> LineEntry {
    if let Some(s) = &snap.shares {
        return LineEntry {
            seq: s.seq,
            high: s.priority == Priority::High,
            user: s.user_id.to_string(),
            job: s.job_id.clone(),
        };
    }
    LineEntry {
        seq: snap.seq,
        high: snap.priority() == Priority::High,
        user: snap.user_id.to_string(),
        job: snap.view.job_id.clone(),
    }
}

/// The Redis record of a snapshot.
pub fn record_of(snap: &JobSnapshot, cfg: &SnapshotConfig) -> Result<JobRecord, serde_json::Error> {
    Ok(JobRecord {
        job: snap.view.job_id.clone(),
        rev: snap.rev,
        data: serde_json::to_vec(snap)?,
        entry: (snap.status() == JobStatus::Queued).then(|| entry_of(snap)),
        ttl: cfg.ttl(snap.status()),
    })
}

/// Why a snapshot could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Db(#[from] jewelshot_db::DbError),
    #[error(transparent)]
    Redis(#[from] jewelshot_ratelimit::LimitError),
    #[error("snapshot not serialisable: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Read these jobs from Postgres (one statement) and keep their snapshots in Redis (one
/// pipeline). Jobs that no longer exist lose theirs.
pub async fn publish(limiter: &Limiter, db: &Db, cfg: &SnapshotConfig, jobs: &[JobId]) -> Result<(), PublishError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let snaps = db.job_snapshots(jobs).await?;
    write(limiter, cfg, &snaps).await?;
    for gone in jobs.iter().filter(|j| !snaps.iter().any(|s| s.view.job_id == j.to_string())) {
        limiter.invalidate_record(&gone.to_string()).await?;
    }
    Ok(())
}

/// Keep snapshots already read (each unless Redis holds a newer one).
pub async fn write(limiter: &Limiter, cfg: &SnapshotConfig, snaps: &[JobSnapshot]) -> Result<(), PublishError> {
    let records = snaps.iter().map(|s| record_of(s, cfg)).collect::<Result<Vec<_>, _>>()?;
    limiter.write_records(&records).await?;
    Ok(())
}

/// A job's snapshot from Redis and, while it waits, its place in line: one round trip.
/// `Ok(None)` when Redis holds none (or one this build cannot read: the caller reads Postgres).
pub async fn read(
    limiter: &Limiter,
    job: JobId,
    high_burst: u32,
) -> Result<Option<(JobSnapshot, Option<LinePlace>)>, jewelshot_ratelimit::LimitError> {
    let Some((data, place)) = limiter.read_record(&job.to_string(), high_burst).await? else { return Ok(None) };
    match serde_json::from_slice::<JobSnapshot>(&data) {
        Ok(snap) => Ok(Some((snap, place))),
        Err(e) => {
            tracing::warn!(job_id = %job, error = %e, "unreadable job snapshot; reading Postgres");
            Ok(None)
        }
    }
}

/// Publishes the snapshots of the jobs a [`Db`] reports changed, in the background: changes
/// that arrive while a batch is written are coalesced into the next one, and a batch that fails
/// (Redis away) is retried with backoff until it lands or the job is gone. Install it with
/// [`Db::with_changes`] and run [`Publisher::run`] as a task of its own.
pub struct Publisher {
    limiter: Limiter,
    cfg: SnapshotConfig,
    state: Mutex<Pending>,
    wake: tokio::sync::Notify,
    idle: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    dirty: HashSet<JobId>,
    /// A batch is being written.
    busy: bool,
}

impl Publisher {
    pub fn new(limiter: Limiter, cfg: SnapshotConfig) -> Arc<Self> {
        Arc::new(Self {
            limiter,
            cfg,
            state: Mutex::new(Pending::default()),
            wake: tokio::sync::Notify::new(),
            idle: tokio::sync::Notify::new(),
        })
    }

    /// The snapshot settings.
    pub fn config(&self) -> &SnapshotConfig {
        &self.cfg
    }

    /// Publish until dropped (abort the task after [`Publisher::flush`] to stop without losing
    /// what is pending), reading snapshots through `db` (which may itself report to this
    /// publisher: reads report nothing).
    pub async fn run(self: Arc<Self>, db: Db) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let batch = self.take();
            if batch.is_empty() {
                self.idle.notify_waiters();
                self.wake.notified().await;
                continue;
            }
            match publish(&self.limiter, &db, &self.cfg, &batch).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    self.done(&[]);
                }
                Err(e) => {
                    tracing::warn!(error = %e, jobs = batch.len(), "job snapshots not published; retrying");
                    self.done(&batch);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn take(&self) -> Vec<JobId> {
        let Ok(mut st) = self.state.lock() else { return Vec::new() };
        st.busy = !st.dirty.is_empty();
        st.dirty.drain().collect()
    }

    /// The batch ended; `failed` go back to be retried.
    fn done(&self, failed: &[JobId]) {
        if let Ok(mut st) = self.state.lock() {
            st.busy = false;
            st.dirty.extend(failed.iter().copied());
        }
    }

    /// Wait until everything reported so far is published (tests; a graceful stop).
    pub async fn flush(&self) {
        loop {
            let idle = self.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            {
                let Ok(st) = self.state.lock() else { return };
                if st.dirty.is_empty() && !st.busy {
                    return;
                }
            }
            self.wake.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(50), idle).await;
        }
    }

    /// Renew the snapshots of the jobs this process runs (the worker's heartbeat).
    pub async fn renew(&self, jobs: &[JobId]) -> Result<(), jewelshot_ratelimit::LimitError> {
        let ids: Vec<String> = jobs.iter().map(|j| j.to_string()).collect();
        self.limiter.touch_records(&ids, self.cfg.ttl(JobStatus::Processing)).await
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.state.lock().map(|s| s.dirty.len()).unwrap_or_default();
        f.debug_struct("Publisher").field("pending", &pending).finish()
    }
}

impl ChangeSink for Publisher {
    fn changed(&self, jobs: &[JobId]) {
        if let Ok(mut st) = self.state.lock() {
            st.dirty.extend(jobs.iter().copied());
        }
        self.wake.notify_one();
    }
}
