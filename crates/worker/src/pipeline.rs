//! One job, as three steps: `generate-image` → `save-to-gallery` → `notify-user` (each in
//! [`crate::steps`]). This module is the job's life around them: the upstream slot it waits for
//! while still `queued`, the attempt it begins (the run lock), retries with backoff up to the
//! job's `max_attempts`, and how it ends — complete, failed, canceled, or handed back — and is
//! announced (`notify-user` records the webhook delivery; [`crate::deliveries`] sends it).

use std::{sync::Arc, time::Duration};
use tracing::Instrument;

use jewelshot_db::{
    jobs::{Begun, JobRow},
    Db, DbError,
};
use jewelshot_domain::{job::error_code, metric_names as m, JobId, JobStatus};
use jewelshot_ratelimit::Grant;
use jewelshot_storage::ObjectStore;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::backoff,
    config::WorkerSettings,
    steps::{generate::generate, notify::notify, save::save, StepFailure},
    upstream::Upstream,
};

/// Everything a job needs; shared by all of a worker's tasks.
#[derive(Debug)]
pub struct Ctx {
    pub db: Db,
    /// fal accounts and the fleet-wide limiter in front of them.
    pub upstream: Upstream,
    pub store: Arc<dyn ObjectStore>,
    /// Webhook deliveries: their settings, and the wake-up of this process's delivery loop.
    pub deliveries: crate::deliveries::Deliveries,
    pub settings: WorkerSettings,
    pub images: jewelshot_imaging::Limits,
    pub worker_id: String,
    /// Downloads generated images (SSRF-guarded, like webhooks).
    pub downloads: crate::egress::Egress,
    /// Cancelled on SIGTERM: waiting retries hand their job back at once.
    pub shutdown: CancellationToken,
    /// Jobs this process is running, whose heartbeats it keeps.
    pub running: Running,
    /// Publishes the poll snapshots of the jobs `db` reports changed.
    pub snapshots: Arc<jewelshot_queue::snapshots::Publisher>,
    /// The work queue: tasks for jobs the result cache settled (their notifications).
    pub queue: jewelshot_queue::Queue,
    /// `JEWELSHOT_CACHE__*`.
    pub cache: jewelshot_domain::cache::CacheSettings,
}

/// The jobs a worker process is running (their heartbeats are refreshed together).
#[derive(Debug, Clone, Default)]
pub struct Running(Arc<std::sync::Mutex<std::collections::HashSet<JobId>>>);

impl Running {
    /// Mark `job` running until the guard drops.
    pub fn hold(&self, job: JobId) -> RunningGuard {
        if let Ok(mut set) = self.0.lock() {
            set.insert(job);
        }
        RunningGuard { set: self.clone(), job }
    }

    pub fn ids(&self) -> Vec<JobId> {
        match self.0.lock() {
            Ok(s) => s.iter().copied().collect(),
            Err(poisoned) => poisoned.into_inner().iter().copied().collect(),
        }
    }
}

/// Ends a job's heartbeat when its run ends, however it ends.
#[derive(Debug)]
pub struct RunningGuard {
    set: Running,
    job: JobId,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.0.lock() {
            set.remove(&self.job);
        }
    }
}

/// Why a job goes back to the queue instead of finishing here.
#[derive(Debug, thiserror::Error)]
pub enum HandBack {
    #[error("database unavailable: {0}")]
    Db(#[from] DbError),
    #[error("worker shutting down")]
    Shutdown,
    /// Another worker's heartbeat on the job is fresh: it may be running it, or it may just have
    /// died. The queue offers the task again shortly; by then the heartbeat has either gone
    /// stale (the job is ours) or the job is final.
    #[error("the job is running on {0}")]
    Busy(String),
    /// The job is final but its notification could not be sent or recorded yet.
    #[error("the job's notification is owed: {0}")]
    Notify(String),
}

/// Run one delivery of a job's task. `Ok` means the queue task is done (the job finished, failed,
/// or was already final); `Err` hands the task back to the queue.
pub async fn run_job(ctx: &Ctx, job_id: JobId) -> Result<(), HandBack> {
    let mut grant = take_slot(ctx, job_id).await?;
    let job = match begin(ctx, job_id, &mut grant).await? {
        Some(job) => job,
        None => return Ok(()),
    };
    let _running = ctx.running.hold(job.id);
    if job.attempts > job.max_attempts {
        return_slot(ctx, &mut grant).await;
        // Our own retries stop at the maximum, so only re-deliveries after a dead worker get here.
        let detail = format!("the job's worker stopped during each of {} attempts", job.max_attempts);
        return end_failed(ctx, &job, error_code::POISON_JOB, &detail, "").await;
    }
    // This delivery's part of the job's trace, under the submit that began it (the steps are
    // its children).
    let span = tracing::info_span!("run-job", job_id = %job.id, attempt = job.attempts, worker = %ctx.worker_id);
    jewelshot_runtime::telemetry::follow(&span, job.trace_parent.as_deref());
    attempts(ctx, job, grant).instrument(span).await
}

/// A job that will start a fal request needs an upstream slot, and waits for it *before* its
/// attempt begins: it stays `queued`, keeps its place and spends nothing. A job the dispatcher
/// handed out comes with its slot; one that will not submit gives a claimed slot back.
async fn take_slot(ctx: &Ctx, job_id: JobId) -> Result<Option<Grant>, HandBack> {
    let mut grant = ctx.upstream.claim(job_id).await;
    let Some(waiting) = will_submit(ctx, job_id).await? else {
        return_slot(ctx, &mut grant).await;
        return Ok(None);
    };
    if grant.is_none() {
        match ctx.upstream.acquire(&waiting, &ctx.shutdown).await {
            Ok(g) => grant = Some(g),
            Err(StepFailure::Shutdown) => return Err(HandBack::Shutdown),
            // generate-image meets the same trouble again and handles it as a step failure.
            Err(_) => {}
        }
    }
    Ok(grant)
}

/// The job if it is waiting and its `generate-image` has not started (see
/// `jewelshot_db::steps::generate_started!`): only such jobs need upstream capacity.
async fn will_submit(ctx: &Ctx, job_id: JobId) -> Result<Option<JobRow>, DbError> {
    let Some(job) = ctx.db.job(job_id).await? else { return Ok(None) };
    if !matches!(job.status, JobStatus::Queued | JobStatus::Processing) {
        return Ok(None);
    }
    if job.status == JobStatus::Queued {
        wait_until_due(ctx, &job).await;
    }
    Ok((!ctx.db.generate_started(job_id).await?).then_some(job))
}

/// apalis schedules in whole seconds (a task may arrive up to a second before its `run_at`):
/// a scheduled job never starts early.
async fn wait_until_due(ctx: &Ctx, job: &JobRow) {
    let Some(run_at) = job.run_at else { return };
    let Ok(early) = (run_at - chrono::Utc::now()).to_std() else { return };
    tracing::debug!(early_ms = early.as_millis() as u64, "task arrived before its run_at; waiting");
    tokio::select! {
        _ = tokio::time::sleep(early) => {}
        _ = ctx.shutdown.cancelled() => {}
    }
}

/// Give back a slot the job will not use.
async fn return_slot(ctx: &Ctx, grant: &mut Option<Grant>) {
    if let Some(g) = grant.take() {
        ctx.upstream.unused(&g).await;
    }
}

/// Begin an attempt (the run lock). `None`: nothing to run — the job is gone or final (a final
/// job whose worker died before notifying is notified now).
async fn begin(ctx: &Ctx, job_id: JobId, grant: &mut Option<Grant>) -> Result<Option<JobRow>, HandBack> {
    let stale = Duration::from_secs(ctx.settings.orphan_after_secs);
    match ctx.db.begin_attempt(job_id, &ctx.worker_id, stale).await? {
        Begun::Started(job) => Ok(Some(*job)),
        Begun::Busy(other) => {
            return_slot(ctx, grant).await;
            // A second delivery while the job's heartbeat is fresh: never run it twice at once.
            let owner = other.worker_id.clone().unwrap_or_else(|| "another worker".into());
            tracing::info!(running_on = %owner, "job's heartbeat is fresh elsewhere; handing it back");
            Err(HandBack::Busy(owner))
        }
        Begun::Final(job) => {
            return_slot(ctx, grant).await;
            // Its snapshot may predate the end (e.g. canceled while Redis was away).
            ctx.db.changed(job_id);
            if let Some(job) = job.filter(|j| matches!(j.status, JobStatus::Complete | JobStatus::Failed)) {
                announce(ctx, &job).await?;
            }
            Ok(None)
        }
    }
}

/// Attempt the job's steps until they pass, fail for good, or the attempts run out.
async fn attempts(ctx: &Ctx, mut job: JobRow, mut grant: Option<Grant>) -> Result<(), HandBack> {
    loop {
        metrics::counter!(m::JOB_ATTEMPTS).increment(1);
        tracing::info!(attempt = job.attempts, max = job.max_attempts, "running job");
        let (code, message, retry_after) = match run_steps(ctx, &job, &mut grant).await {
            Ok(Some(done)) => {
                // Jobs that were sharing its request complete from the same image now.
                crate::cache::settle(ctx, &done).await;
                return announce(ctx, &done).await;
            }
            Ok(None) | Err(StepFailure::Canceled) => return Ok(()),
            Err(StepFailure::Fatal { code, message }) => return end_failed(ctx, &job, code, &message, "").await,
            Err(StepFailure::Shutdown) => {
                // Back in line without spending the attempt; another worker resumes it at once.
                ctx.db.release_job(job.id).await?;
                tracing::info!("worker stopping: job handed back");
                return Err(HandBack::Shutdown);
            }
            Err(StepFailure::Retry { code, message, retry_after }) => (code, message, retry_after),
        };
        tracing::warn!(attempt = job.attempts, code, detail = %message, "job attempt failed");
        ctx.db.note_job_error(job.id, code, &public_message(code, "")).await?;
        if job.attempts >= job.max_attempts {
            let note = format!(" (gave up after {} attempts)", job.attempts);
            return end_failed(ctx, &job, code, &message, &note).await;
        }
        let s = &ctx.settings;
        let delay = backoff(job.attempts.max(1) as u32, s.backoff_base_ms, s.backoff_max_ms, retry_after);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctx.shutdown.cancelled() => return Err(HandBack::Shutdown),
        }
        match ctx.db.next_attempt(job.id).await? {
            Some(next) => job = next,
            None => return Ok(()), // canceled or finished meanwhile
        }
    }
}

/// The steps of one attempt up to the job's completion; finished steps are skipped with their
/// stored output. The completed job (to announce), or `None` when it was canceled meanwhile.
/// A job whose input was not hashed at submit meets the result cache first (see
/// [`crate::cache::meet`]): a hit is complete now, and a job identical to one in flight waits on
/// that job's request (`None` here: its task is done).
async fn run_steps(ctx: &Ctx, job: &JobRow, grant: &mut Option<Grant>) -> Result<Option<JobRow>, StepFailure> {
    match crate::cache::meet(ctx, job, grant).await? {
        crate::cache::Met::Proceed => {}
        crate::cache::Met::Hit(done) => return Ok(Some(*done)),
        crate::cache::Met::Shared => return Ok(None),
    }
    let generated = generate(ctx, job, grant).await?;
    let saved = save(ctx, job, &generated).await?;
    let done = ctx.db.complete_job(job.id, &saved.key, &saved.url).await?;
    if done.is_some() {
        metrics::counter!(m::JOBS_FINISHED, "status" => "complete", "code" => "").increment(1);
    }
    Ok(done)
}

/// End the job as failed (if it is not final already) and announce it. Clients (the job's
/// `error.message`, the webhook) get the code's sentence; the `detail` — raw database, storage
/// or upstream text — goes to the log, under the job's span.
async fn end_failed(ctx: &Ctx, job: &JobRow, code: &str, detail: &str, note: &str) -> Result<(), HandBack> {
    tracing::warn!(code, %detail, "job failed");
    if let Some(failed) = ctx.db.fail_job(job.id, code, &public_message(code, note)).await? {
        metrics::counter!(m::JOBS_FINISHED, "status" => "failed", "code" => code.to_owned()).increment(1);
        crate::cache::settle(ctx, &failed).await;
        announce(ctx, &failed).await?;
    }
    Ok(())
}

/// What a client reads about a failure: the code's one sentence, and a note of ours.
fn public_message(code: &str, note: &str) -> String {
    let sentence = error_code::lookup(code).map_or("The job failed.", |c| c.meaning);
    match sentence.strip_suffix('.') {
        Some(s) if !note.is_empty() => format!("{s}{note}."),
        _ => format!("{sentence}{note}"),
    }
}

/// `notify-user` for a final job (it records the webhook delivery owed, if any): a failure hands
/// the task back, and the next delivery of the task finds the job final and notifies again (the
/// step is skipped once it completed).
async fn announce(ctx: &Ctx, job: &JobRow) -> Result<(), HandBack> {
    match notify(ctx, job).await {
        Ok(_) => Ok(()),
        Err(StepFailure::Shutdown) => Err(HandBack::Shutdown),
        Err(StepFailure::Canceled) => Ok(()),
        Err(StepFailure::Fatal { message, .. } | StepFailure::Retry { message, .. }) => Err(HandBack::Notify(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_read_the_codes_sentence_never_the_detail() {
        let m = public_message(error_code::UPSTREAM_UNAVAILABLE, " (gave up after 5 attempts)");
        assert_eq!(m, "fal kept failing (5xx, timeouts, 429) until the attempts ran out (gave up after 5 attempts).");
        assert_eq!(
            public_message(error_code::STORAGE_FAILED, ""),
            "The generated image could not be fetched or stored."
        );
        assert_eq!(public_message("not-a-code", ""), "The job failed.");
    }
}
