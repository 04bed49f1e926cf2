//! One job, as three steps: `generate-image` → `save-to-gallery` → `notify-user`.
//!
//! Every step records its outcome in Postgres. A step marked complete is never run again (its
//! output is reused), and `generate-image` checkpoints fal's request id right after submitting,
//! so a retry or another worker resumes polling the same fal request instead of paying again.
//! Attempts are counted in the job row and capped by the job's `max_attempts`.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use jewelshot_db::{
    gallery::NewGalleryImage,
    jobs::{Begun, JobRow},
    Db, DbError,
};
use jewelshot_domain::{job::error_code, view::WebhookEvent, JobId, JobStatus, StepName, StepStatus};
use jewelshot_fal::{EditInput, FalClient, FalError, FalImage, QueuedRequest, RequestState};
use jewelshot_ratelimit::{Grant, LimitError};
use jewelshot_storage::{job_result_key, ObjectStore, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use jewelshot_domain::metric_names as m;

use crate::{backoff::backoff, config::WorkerSettings, upstream::Upstream, webhook::WebhookSender};

/// Everything a job needs; shared by all of a worker's tasks.
#[derive(Debug)]
pub struct Ctx {
    pub db: Db,
    /// fal accounts and the fleet-wide limiter in front of them.
    pub upstream: Upstream,
    pub store: Arc<dyn ObjectStore>,
    pub webhooks: WebhookSender,
    pub settings: WorkerSettings,
    pub images: jewelshot_imaging::Limits,
    pub worker_id: String,
    /// Downloads generated images.
    pub http: reqwest::Client,
    /// Cancelled on SIGTERM: waiting retries hand their job back at once.
    pub shutdown: CancellationToken,
    /// Jobs this process is running, whose heartbeats it keeps.
    pub running: Running,
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
        self.0.lock().map(|s| s.iter().copied().collect()).unwrap_or_default()
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
}

/// How a step failed.
#[derive(Debug)]
enum StepFailure {
    /// Retrying cannot help: the job fails now.
    Fatal { code: &'static str, message: String },
    /// May pass: retry the job (resuming after its last finished step).
    Retry { code: &'static str, message: String, retry_after: Option<Duration> },
    /// The worker is stopping: hand the job back now (checkpoints kept, nothing lost).
    Shutdown,
    /// The job was canceled while it ran: stop, write nothing more.
    Canceled,
}

impl From<FalError> for StepFailure {
    fn from(e: FalError) -> Self {
        let message = e.to_string();
        match e {
            FalError::InvalidInput { .. } => Self::Fatal { code: error_code::UPSTREAM_INVALID_INPUT, message },
            FalError::Unauthorized { .. } => Self::Fatal { code: error_code::UPSTREAM_UNAUTHORIZED, message },
            FalError::BadResponse(_) => Self::Fatal { code: error_code::UPSTREAM_BAD_RESPONSE, message },
            other => Self::Retry { code: error_code::UPSTREAM_UNAVAILABLE, message, retry_after: other.retry_after() },
        }
    }
}

impl From<DbError> for StepFailure {
    fn from(e: DbError) -> Self {
        Self::Retry { code: error_code::INTERNAL, message: e.to_string(), retry_after: None }
    }
}

impl From<StorageError> for StepFailure {
    fn from(e: StorageError) -> Self {
        Self::Retry { code: error_code::STORAGE_FAILED, message: e.to_string(), retry_after: None }
    }
}

/// What `generate-image` produced (stored as its output).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generated {
    pub request_id: String,
    pub image: FalImage,
    /// The fal account that ran it.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Its number in the fleet-wide dispatch order (the limiter's count of starts).
    #[serde(default)]
    pub dispatch: Option<u64>,
}

/// While `generate-image` runs: the fal request to resume, and the account it runs under.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    request: QueuedRequest,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    dispatch: Option<u64>,
}

/// What `save-to-gallery` produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub key: String,
    pub url: String,
    pub bytes: u64,
    pub content_type: String,
    /// fal's result size, before compression.
    #[serde(default)]
    pub original_bytes: u64,
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
}

/// Run one delivery of a job's task. `Ok` means the queue task is done (the job finished, failed,
/// or was already final); `Err` hands the task back to the queue.
pub async fn run_job(ctx: &Ctx, job_id: JobId) -> Result<(), HandBack> {
    // A job that will start a fal request waits for upstream capacity first, while it is still
    // `queued`: it keeps its place in line and spends no attempt.
    // A job the dispatcher handed out comes with its slot.
    let mut grant = claim_slot(ctx, job_id).await;
    if let Some(waiting) = needs_submit(ctx, job_id).await? {
        if grant.is_none() {
            match acquire_slot(ctx, &waiting).await {
                Ok(g) => grant = Some(g),
                Err(StepFailure::Shutdown) => return Err(HandBack::Shutdown),
                // generate-image meets the same trouble again and handles it as a step failure.
                Err(_) => {}
            }
        }
    } else if let Some(g) = grant.take() {
        unused_slot(ctx, &g).await;
    }
    let stale = Duration::from_secs(ctx.settings.orphan_after_secs);
    let mut job = match ctx.db.begin_attempt(job_id, &ctx.worker_id, stale).await? {
        Begun::Started(job) => *job,
        Begun::Busy(other) => {
            if let Some(g) = grant.take() {
                unused_slot(ctx, &g).await;
            }
            // A second delivery while the job's heartbeat is fresh: never run it twice at once.
            let owner = other.worker_id.clone().unwrap_or_default();
            tracing::info!(running_on = %owner, "job's heartbeat is fresh elsewhere; handing it back");
            return Err(HandBack::Busy(owner));
        }
        Begun::Final(job) => {
            if let Some(g) = grant.take() {
                unused_slot(ctx, &g).await;
            }
            // Gone or final. A final job may still owe its notification if its worker died
            // between finishing the job and notifying.
            if let Some(job) = job.filter(|j| matches!(j.status, JobStatus::Complete | JobStatus::Failed)) {
                notify(ctx, &job).await?;
            }
            return Ok(());
        }
    };
    let _running = ctx.running.hold(job.id);
    if job.attempts > job.max_attempts {
        if let Some(g) = grant.take() {
            unused_slot(ctx, &g).await;
        }
        // Our own retries stop at the maximum, so only re-deliveries after a dead worker get here.
        let msg = format!("the job's worker stopped during each of {} attempts", job.max_attempts);
        return end_failed(ctx, &job, error_code::POISON_JOB, &msg).await;
    }
    loop {
        metrics::counter!(m::JOB_ATTEMPTS).increment(1);
        tracing::info!(attempt = job.attempts, max = job.max_attempts, "running job");
        match run_steps(ctx, &job, &mut grant).await {
            Ok(()) => return Ok(()),
            Err(StepFailure::Fatal { code, message }) => return end_failed(ctx, &job, code, &message).await,
            Err(StepFailure::Canceled) => return Ok(()),
            Err(StepFailure::Shutdown) => {
                // Back in line without spending the attempt; another worker resumes it at once.
                ctx.db.release_job(job.id).await?;
                tracing::info!("worker stopping: job handed back");
                return Err(HandBack::Shutdown);
            }
            Err(StepFailure::Retry { code, message, retry_after }) => {
                tracing::warn!(attempt = job.attempts, code, %message, "job attempt failed");
                ctx.db.note_job_error(job.id, code, &message).await?;
                if job.attempts >= job.max_attempts {
                    let msg = format!("gave up after {} attempts: {message}", job.attempts);
                    return end_failed(ctx, &job, code, &msg).await;
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
    }
}

/// Run a step and record how long it took and how it ended.
async fn timed<T>(
    step: StepName,
    f: impl std::future::Future<Output = Result<T, StepFailure>>,
) -> Result<T, StepFailure> {
    let start = std::time::Instant::now();
    let out = f.await;
    let outcome = if out.is_ok() { "ok" } else { "error" };
    metrics::histogram!(m::STEP_DURATION, "step" => step.as_str(), "outcome" => outcome)
        .record(start.elapsed().as_secs_f64());
    out
}

async fn run_steps(ctx: &Ctx, job: &JobRow, grant: &mut Option<Grant>) -> Result<(), StepFailure> {
    let generated = timed(StepName::GenerateImage, generate_image(ctx, job, grant)).await?;
    let saved = timed(StepName::SaveToGallery, save_to_gallery(ctx, job, &generated)).await?;
    let Some(done) = ctx.db.complete_job(job.id, &saved.key, &saved.url).await? else {
        return Ok(()); // canceled meanwhile: nothing to announce
    };
    metrics::counter!(m::JOBS_FINISHED, "status" => "complete", "code" => "").increment(1);
    notify(ctx, &done).await?;
    Ok(())
}

/// Record a step failure, then pass it on.
async fn failed_step<T>(ctx: &Ctx, job: JobId, step: StepName, f: StepFailure) -> Result<T, StepFailure> {
    let msg = match &f {
        StepFailure::Fatal { message, .. } | StepFailure::Retry { message, .. } => message.clone(),
        StepFailure::Shutdown | StepFailure::Canceled => return Err(f),
    };
    ctx.db.fail_step(job, step, &msg).await?;
    Err(f)
}

fn output_of<T: serde::de::DeserializeOwned>(v: Option<serde_json::Value>) -> Result<T, StepFailure> {
    serde_json::from_value(v.unwrap_or_default()).map_err(|e| StepFailure::Fatal {
        code: error_code::INTERNAL,
        message: format!("stored step output unreadable: {e}"),
    })
}

/// The job if it is waiting and its next step submits to fal (no finished or checkpointed
/// `generate-image`): only such jobs need upstream capacity.
async fn needs_submit(ctx: &Ctx, job_id: JobId) -> Result<Option<JobRow>, DbError> {
    let Some(job) = ctx.db.job(job_id).await? else { return Ok(None) };
    if !matches!(job.status, JobStatus::Queued | JobStatus::Processing) {
        return Ok(None);
    }
    if job.status == JobStatus::Queued {
        wait_until_due(ctx, &job).await?;
    }
    let steps = ctx.db.steps(job_id).await?;
    let generate = steps.iter().find(|s| s.name == StepName::GenerateImage);
    let started = generate.is_some_and(|s| {
        s.status == StepStatus::Complete
            || s.output.clone().and_then(|o| serde_json::from_value::<Checkpoint>(o).ok()).is_some()
    });
    Ok((!started).then_some(job))
}

/// apalis schedules in whole seconds (a task may arrive up to a second before its `run_at`):
/// a scheduled job never starts early.
async fn wait_until_due(ctx: &Ctx, job: &JobRow) -> Result<(), DbError> {
    let Some(run_at) = job.run_at else { return Ok(()) };
    let Ok(early) = (run_at - chrono::Utc::now()).to_std() else { return Ok(()) };
    tracing::debug!(early_ms = early.as_millis() as u64, "task arrived before its run_at; waiting");
    tokio::select! {
        _ = tokio::time::sleep(early) => {}
        _ = ctx.shutdown.cancelled() => {}
    }
    Ok(())
}

/// The slot the dispatcher took for this job, if it did (and it has not expired).
async fn claim_slot(ctx: &Ctx, job: JobId) -> Option<Grant> {
    match ctx.upstream.limiter.claim(&job.to_string()).await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "could not claim the dispatched slot; waiting for one");
            None
        }
    }
}

/// Wait for a slot on some fal account, in submit order across the fleet (retries, resumed
/// and requeued jobs: fresh jobs come with a slot from the dispatcher).
async fn acquire_slot(ctx: &Ctx, job: &JobRow) -> Result<Grant, StepFailure> {
    let lease = job.id.to_string();
    match ctx.upstream.limiter.acquire(&lease, job.seq as f64, &ctx.shutdown).await {
        Ok(g) => {
            metrics::histogram!(m::UPSTREAM_WAIT).record(g.waited.as_secs_f64());
            tracing::debug!(key = %g.key_id, waited_ms = g.waited.as_millis() as u64, "upstream slot granted");
            Ok(g)
        }
        Err(LimitError::Canceled) => Err(StepFailure::Shutdown),
        Err(LimitError::NoHealthyKeys) => Err(StepFailure::Retry {
            code: error_code::UPSTREAM_UNAUTHORIZED,
            message: "every fal account in the pool is refusing its key".into(),
            retry_after: Some(Duration::from_secs(30)),
        }),
        Err(e) => {
            Err(StepFailure::Retry { code: error_code::QUEUE_UNAVAILABLE, message: e.to_string(), retry_after: None })
        }
    }
}

/// Give back a slot that was never used (the job was canceled or ended while it waited).
async fn unused_slot(ctx: &Ctx, grant: &Grant) {
    if let Err(e) = ctx.upstream.limiter.refused(grant, Duration::ZERO).await {
        tracing::warn!(error = %e, "could not return an unused upstream slot (it expires by itself)");
    }
}

/// Free the job's in-flight slot once fal is done with its request.
async fn release_slot(ctx: &Ctx, key_id: &str, job: JobId) {
    if let Err(e) = ctx.upstream.limiter.release(key_id, &job.to_string()).await {
        tracing::warn!(error = %e, "could not free the upstream slot (it expires by itself)");
    }
}

/// How many times one attempt may move to another account after a 429 or a refused key.
const MAX_REROUTES: usize = 20;

#[tracing::instrument(skip_all, fields(step = "generate-image"))]
async fn generate_image(ctx: &Ctx, job: &JobRow, grant: &mut Option<Grant>) -> Result<Generated, StepFailure> {
    const STEP: StepName = StepName::GenerateImage;
    let rec = ctx.db.start_step(job.id, STEP).await?;
    if rec.status == StepStatus::Complete {
        return output_of(rec.output);
    }
    let up = &ctx.upstream;
    let resumed = rec.output.and_then(|o| serde_json::from_value::<Checkpoint>(o).ok());
    let (request, key_id, dispatch) = match resumed {
        Some(cp) => {
            tracing::info!(request_id = %cp.request.request_id, "resuming fal request");
            let key_id =
                cp.key_id.unwrap_or_else(|| up.limiter.keys().first().map(|k| k.id.clone()).unwrap_or_default());
            // The request is in flight at fal whatever our count says: hold its slot again.
            if let Err(e) = up.limiter.hold(&key_id, &job.id.to_string()).await {
                tracing::warn!(error = %e, "could not re-take the upstream slot");
            }
            (cp.request, key_id, cp.dispatch)
        }
        None => {
            let input = EditInput { image_url: job.input_url.clone(), prompt: job.prompt.clone() };
            let mut reroutes = 0;
            loop {
                let g = match grant.take() {
                    Some(g) => g,
                    None => match acquire_slot(ctx, job).await {
                        Ok(g) => g,
                        Err(f) => return failed_step(ctx, job.id, STEP, f).await,
                    },
                };
                let outcome = up.client(Some(&g.key_id)).submit(&input).await;
                let label = match &outcome {
                    Ok(_) => "accepted",
                    Err(e) => e.code(),
                };
                metrics::counter!(m::FAL_SUBMITS, "outcome" => label, "key" => g.key_id.clone()).increment(1);
                match outcome {
                    Ok(queued) => {
                        if let Err(e) = up.limiter.confirm(&g).await {
                            tracing::warn!(error = %e, "could not confirm the upstream start");
                        }
                        tracing::info!(request_id = %queued.request_id, key = %g.key_id, "submitted to fal");
                        let cp = Checkpoint {
                            request: queued.clone(),
                            key_id: Some(g.key_id.clone()),
                            dispatch: Some(g.dispatch),
                        };
                        ctx.db.checkpoint_step(job.id, STEP, &serde_json::to_value(cp).unwrap_or_default()).await?;
                        break (queued, g.key_id, Some(g.dispatch));
                    }
                    // Over this account's limit after all (another client of the account, or a
                    // limit lower than configured): rest the account, try another; no attempt spent.
                    Err(FalError::RateLimited { retry_after }) if reroutes < MAX_REROUTES => {
                        reroutes += 1;
                        let rest = retry_after.unwrap_or(Duration::from_secs(1));
                        tracing::warn!(key = %g.key_id, rest_ms = rest.as_millis() as u64, "fal answered 429; resting the account");
                        if let Err(e) = up.limiter.refused(&g, rest).await {
                            tracing::warn!(error = %e, "could not rest the account");
                        }
                    }
                    // Every account was out and this probe says fal still refuses: the job fails
                    // now (requeue it once the keys are fixed).
                    Err(e @ FalError::Unauthorized { .. }) if g.probe => {
                        tracing::error!(key = %g.key_id, "fal still refuses every account's key");
                        if let Err(le) = up.limiter.disable(&g, up.disabled_recheck).await {
                            tracing::warn!(error = %le, "could not disable the account");
                        }
                        return failed_step(ctx, job.id, STEP, e.into()).await;
                    }
                    Err(FalError::Unauthorized { status }) if reroutes < MAX_REROUTES => {
                        reroutes += 1;
                        tracing::error!(key = %g.key_id, status, recheck_secs = up.disabled_recheck.as_secs(),
                            "fal refused this account's key: taking it out of the pool");
                        metrics::counter!(m::UPSTREAM_KEYS_DISABLED, "key" => g.key_id.clone()).increment(1);
                        if let Err(e) = up.limiter.disable(&g, up.disabled_recheck).await {
                            tracing::warn!(error = %e, "could not disable the account");
                        }
                    }
                    Err(e) => {
                        // Nothing runs at fal for this job: free the slot (the start stays counted,
                        // as fal may have counted it).
                        release_slot(ctx, &g.key_id, job.id).await;
                        return failed_step(ctx, job.id, STEP, e.into()).await;
                    }
                }
            }
        }
    };
    let client = up.client(Some(&key_id));
    // Renew the in-flight slot while fal works; a dead worker's slot expires instead.
    let renew = async {
        let mut tick = tokio::time::interval(up.renew_every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = up.limiter.hold(&key_id, &job.id.to_string()).await {
                tracing::warn!(error = %e, "could not renew the upstream slot");
            }
        }
    };
    // A job canceled while fal works on it: cancel the request at fal and stop (every 2 s).
    let canceled = async {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        loop {
            tick.tick().await;
            if ctx.db.is_canceled(job.id).await.unwrap_or(false) {
                return;
            }
        }
    };
    let outcome = tokio::select! {
        r = wait_for_result(client, &request, &ctx.shutdown) => r,
        () = renew => unreachable!("the renewal loop never ends"),
        () = canceled => {
            let answer = client.cancel(&request).await;
            tracing::info!(request_id = %request.request_id, ?answer, "job canceled: fal request canceled");
            release_slot(ctx, &key_id, job.id).await;
            return Err(StepFailure::Canceled);
        }
    };
    match outcome {
        Ok(image) => {
            release_slot(ctx, &key_id, job.id).await;
            let out =
                Generated { request_id: request.request_id.clone(), image, key_id: Some(key_id.clone()), dispatch };
            ctx.db.complete_step(job.id, STEP, &serde_json::to_value(&out).unwrap_or_default()).await?;
            Ok(out)
        }
        Err((e, request_is_spent)) => {
            if request_is_spent {
                release_slot(ctx, &key_id, job.id).await;
                // fal finished (or lost) this request without a usable result: the next attempt
                // must submit anew.
                ctx.db.checkpoint_step(job.id, STEP, &serde_json::Value::Null).await?;
            }
            // Otherwise (shutdown, transport trouble) the request still runs at fal and keeps
            // its slot until the next attempt resumes it or the lease runs out.
            failed_step(ctx, job.id, STEP, e).await
        }
    }
}

/// Poll until fal completes the request, then fetch its first image. The flag says whether the
/// request can no longer produce a result (so resubmitting is the only way forward).
async fn wait_for_result(
    fal: &FalClient,
    req: &QueuedRequest,
    shutdown: &CancellationToken,
) -> Result<FalImage, (StepFailure, bool)> {
    let cfg = fal.config();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.generation_timeout_secs);
    let poll = Duration::from_millis(cfg.poll_interval_ms.max(10));
    let mut transient_errors = 0u32;
    loop {
        match fal.status(req).await {
            Ok(s) if s.status == RequestState::Completed => break,
            Ok(_) => transient_errors = 0,
            Err(FalError::NotFound) => return Err((FalError::NotFound.into(), true)),
            // The account was revoked while the request ran: its result is out of reach, but
            // the job is not at fault — submit again (the next submit on this key takes the
            // key out of the pool).
            Err(e @ FalError::Unauthorized { .. }) => {
                let f = StepFailure::Retry {
                    code: error_code::UPSTREAM_UNAUTHORIZED,
                    message: format!("{e} while the request ran"),
                    retry_after: None,
                };
                return Err((f, true));
            }
            Err(e) if e.is_retryable() && transient_errors < 10 => {
                transient_errors += 1;
                tracing::debug!(error = %e, "status poll failed; polling on");
            }
            Err(e) => return Err((e.into(), false)),
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = fal.cancel(req).await;
            let f = StepFailure::Retry {
                code: error_code::UPSTREAM_UNAVAILABLE,
                message: format!("fal did not finish within {} s", cfg.generation_timeout_secs),
                retry_after: None,
            };
            return Err((f, true));
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            // Waiting on fal can take minutes: on SIGTERM hand the job back at once; the
            // checkpoint lets the next worker poll this same request.
            _ = shutdown.cancelled() => return Err((StepFailure::Shutdown, false)),
        }
    }
    match fal.result(req).await {
        Ok(out) => out.images.into_iter().next().ok_or_else(|| {
            (
                StepFailure::Fatal { code: error_code::UPSTREAM_BAD_RESPONSE, message: "fal returned no image".into() },
                true,
            )
        }),
        // Transport trouble: the result is still there to fetch next time.
        Err(e @ (FalError::Timeout | FalError::Network(_))) => Err((e.into(), false)),
        Err(e) => Err((e.into(), true)),
    }
}

#[tracing::instrument(skip_all, fields(step = "save-to-gallery"))]
async fn save_to_gallery(ctx: &Ctx, job: &JobRow, generated: &Generated) -> Result<Saved, StepFailure> {
    const STEP: StepName = StepName::SaveToGallery;
    let rec = ctx.db.start_step(job.id, STEP).await?;
    if rec.status == StepStatus::Complete {
        return output_of(rec.output);
    }
    let body = match download(ctx, &generated.image.url).await {
        Ok(b) => b,
        Err(f) => return failed_step(ctx, job.id, STEP, f).await,
    };
    // The gallery copy is the compressed one (≤ 1920 px, ≤ 500 KB): fal's results are several MB.
    let limits = ctx.images;
    let original_bytes = body.len() as u64;
    let compressed = tokio::task::spawn_blocking(move || jewelshot_imaging::compress(&body, &limits))
        .await
        .map_err(|e| StepFailure::Retry { code: error_code::INTERNAL, message: e.to_string(), retry_after: None })?;
    let image = match compressed {
        Ok(c) => c,
        Err(e) => {
            let f = StepFailure::Fatal {
                code: error_code::UPSTREAM_BAD_RESPONSE,
                message: format!("fal's result could not be processed: {e}"),
            };
            return failed_step(ctx, job.id, STEP, f).await;
        }
    };
    // The key depends on the job only, so a repeated save overwrites rather than duplicates.
    let key = job_result_key(&job.user_id.to_string(), &job.id.to_string(), image.extension)?;
    let stored = match ctx.store.put(&key, image.bytes.into(), image.content_type).await {
        Ok(s) => s,
        Err(e) => return failed_step(ctx, job.id, STEP, e.into()).await,
    };
    let url = ctx.store.url(&key).await?;
    let row = ctx
        .db
        .save_gallery_image(&NewGalleryImage {
            user_id: job.user_id,
            job_id: job.id,
            storage_key: key.as_str(),
            url: &url,
            content_type: image.content_type,
            bytes: stored.bytes as i64,
            width: Some(image.width as i32),
            height: Some(image.height as i32),
        })
        .await?;
    let saved = Saved {
        key: row.storage_key,
        url: row.url,
        bytes: stored.bytes,
        content_type: image.content_type.to_owned(),
        original_bytes,
        width: image.width,
        height: image.height,
    };
    ctx.db.complete_step(job.id, STEP, &serde_json::to_value(&saved).unwrap_or_default()).await?;
    Ok(saved)
}

/// Fetch a generated image, refusing anything larger than `max_result_bytes`.
async fn download(ctx: &Ctx, url: &str) -> Result<Bytes, StepFailure> {
    let retry = |message: String| StepFailure::Retry { code: error_code::STORAGE_FAILED, message, retry_after: None };
    let mut resp = ctx.http.get(url).send().await.map_err(|e| retry(format!("downloading the result failed: {e}")))?;
    if !resp.status().is_success() {
        return Err(retry(format!("downloading the result answered {}", resp.status())));
    }
    let cap = ctx.settings.max_result_bytes;
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(StepFailure::Fatal {
            code: error_code::UPSTREAM_BAD_RESPONSE,
            message: format!("result is larger than {cap} bytes"),
        });
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| retry(format!("downloading the result failed: {e}")))? {
        buf.extend_from_slice(&chunk);
        if buf.len() as u64 > cap {
            return Err(StepFailure::Fatal {
                code: error_code::UPSTREAM_BAD_RESPONSE,
                message: format!("result is larger than {cap} bytes"),
            });
        }
    }
    Ok(buf.into())
}

/// End the job as failed (if it is not final already) and announce it.
async fn end_failed(ctx: &Ctx, job: &JobRow, code: &str, message: &str) -> Result<(), HandBack> {
    tracing::warn!(code, %message, "job failed");
    if let Some(failed) = ctx.db.fail_job(job.id, code, message).await? {
        metrics::counter!(m::JOBS_FINISHED, "status" => "failed", "code" => code.to_owned()).increment(1);
        notify(ctx, &failed).await?;
    }
    Ok(())
}

/// The `notify-user` step: POST the signed webhook, if the job has one. The job is already in
/// its final state, so a client polling sees it without waiting for webhook retries.
#[tracing::instrument(skip_all, fields(step = "notify-user"))]
async fn notify(ctx: &Ctx, job: &JobRow) -> Result<(), DbError> {
    const STEP: StepName = StepName::NotifyUser;
    let rec = ctx.db.start_step(job.id, STEP).await?;
    if rec.status == StepStatus::Complete {
        return Ok(());
    }
    let output = match &job.webhook_url {
        None => json!({ "webhook": null }),
        Some(url) => {
            let kind = if job.status == JobStatus::Complete { "job.completed" } else { "job.failed" };
            let steps = ctx.db.steps(job.id).await?;
            let mut view = job.to_view(&steps, 0, None);
            if let Some(key) = job.result_key.as_deref().and_then(|k| jewelshot_storage::ObjectKey::new(k).ok()) {
                view.image_url = Some(ctx.store.url(&key).await.map_err(|e| DbError::Corrupt(e.to_string()))?);
            }
            // This notification is the step finishing; describe it as done.
            if let Some(s) = view.steps.iter_mut().find(|s| s.name == STEP) {
                s.status = StepStatus::Complete;
            }
            let body = serde_json::to_vec(&WebhookEvent { kind: kind.into(), data: view }).unwrap_or_default();
            let secret = ctx.db.user(job.user_id).await?.map(|u| u.webhook_secret).unwrap_or_default();
            // Stable across retries and re-deliveries: receivers deduplicate on it.
            let msg_id = format!("msg_{}_{}", job.id, kind.replace('.', "_"));
            let outcome = ctx.webhooks.deliver(url, &secret, &msg_id, &body).await;
            let label = if outcome.is_ok() { "delivered" } else { "undelivered" };
            metrics::counter!(m::WEBHOOK_DELIVERIES, "outcome" => label).increment(1);
            match outcome {
                Ok(attempts) => json!({ "webhook": { "id": msg_id, "delivered": true, "attempts": attempts } }),
                Err((attempts, e)) => {
                    tracing::warn!(error = %e, "webhook not delivered");
                    json!({ "webhook": { "id": msg_id, "delivered": false, "attempts": attempts, "error": e.to_string() } })
                }
            }
        }
    };
    ctx.db.complete_step(job.id, STEP, &output).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_fal_errors() {
        assert!(matches!(
            StepFailure::from(FalError::InvalidInput { detail: String::new() }),
            StepFailure::Fatal { .. }
        ));
        assert!(matches!(StepFailure::from(FalError::Timeout), StepFailure::Retry { .. }));
        let ra = Some(Duration::from_secs(7));
        match StepFailure::from(FalError::RateLimited { retry_after: ra }) {
            StepFailure::Retry { retry_after, .. } => assert_eq!(retry_after, ra),
            other => panic!("{other:?}"),
        }
    }
}
