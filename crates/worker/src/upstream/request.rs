//! One fal request's life at the upstream: take a slot, submit (moving to another account on a
//! 429 or a refused key without spending an attempt), then poll to the result.

use std::time::Duration;

use jewelshot_db::jobs::JobRow;
use jewelshot_domain::{job::error_code, metric_names as m, JobId};
use jewelshot_fal::{EditInput, FalClient, FalError, FalImage, QueuedRequest, RequestState};
use jewelshot_ratelimit::{Grant, LimitError};
use tokio_util::sync::CancellationToken;

use super::Upstream;
use crate::steps::StepFailure;

/// How many times one attempt may move to another account after a 429 or a refused key.
const MAX_REROUTES: usize = 20;

/// A status poll that fails this many times in a row (transport trouble) ends the attempt.
const MAX_TRANSIENT_POLL_ERRORS: u32 = 10;

/// Why waiting for a result ended without one, and whether the request is spent (it can no
/// longer produce a result, so only a new submit can).
#[derive(Debug)]
pub struct NoResult {
    pub failure: StepFailure,
    pub spent: bool,
}

impl NoResult {
    fn spent(failure: StepFailure) -> Self {
        Self { failure, spent: true }
    }

    fn kept(failure: StepFailure) -> Self {
        Self { failure, spent: false }
    }
}

/// What one submit answered, for the reroute loop.
enum Submitted {
    Accepted(QueuedRequest),
    /// Try the next account: this one is resting (429) or out of the pool (401/403).
    Reroute,
    Failed(StepFailure),
}

impl Upstream {
    /// The slot the dispatcher took for this job, if it did (and it has not expired).
    pub async fn claim(&self, job: JobId) -> Option<Grant> {
        match self.limiter.claim(&job.to_string()).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "could not claim the dispatched slot; waiting for one");
                None
            }
        }
    }

    /// Wait for a slot on some fal account, in submit order across the fleet (retries, resumed
    /// and requeued jobs: fresh jobs come with a slot from the dispatcher).
    pub async fn acquire(&self, job: &JobRow, shutdown: &CancellationToken) -> Result<Grant, StepFailure> {
        match self.limiter.acquire(&job.id.to_string(), job.seq as f64, shutdown).await {
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
            Err(e) => Err(StepFailure::retry(error_code::QUEUE_UNAVAILABLE, e.to_string())),
        }
    }

    /// Give back a slot that was never used (the job was canceled or ended while it waited).
    pub async fn unused(&self, grant: &Grant) {
        if let Err(e) = self.limiter.refused(grant, Duration::ZERO).await {
            tracing::warn!(error = %e, "could not return an unused upstream slot (it expires by itself)");
        }
    }

    /// Free the job's in-flight slot once fal is done with its request.
    pub async fn release(&self, key_id: &str, job: JobId) {
        if let Err(e) = self.limiter.release(key_id, &job.to_string()).await {
            tracing::warn!(error = %e, "could not free the upstream slot (it expires by itself)");
        }
    }

    /// Renew the job's in-flight slot until dropped (a dead worker's slot expires instead).
    pub async fn keep_slot(&self, key_id: &str, job: JobId) {
        let mut tick = tokio::time::interval(self.renew_every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.limiter.hold(key_id, &job.to_string()).await {
                tracing::warn!(error = %e, "could not renew the upstream slot");
            }
        }
    }

    /// Submit `input` for `job` on the account of `grant` (or of a slot acquired now), moving
    /// to another account after a 429 or a refused key. Returns fal's request and the grant it
    /// ran under; the start is confirmed with the limiter.
    pub async fn submit(
        &self,
        job: &JobRow,
        input: &EditInput,
        mut grant: Option<Grant>,
        shutdown: &CancellationToken,
    ) -> Result<(QueuedRequest, Grant), StepFailure> {
        let mut reroutes = 0;
        loop {
            let g = match grant.take() {
                Some(g) => g,
                None => self.acquire(job, shutdown).await?,
            };
            match self.submit_once(job, input, &g, reroutes < MAX_REROUTES).await {
                Submitted::Accepted(request) => return Ok((request, g)),
                Submitted::Reroute => reroutes += 1,
                Submitted::Failed(f) => return Err(f),
            }
        }
    }

    /// One submit; a 429 or a refused key moves on to another account while `may_reroute`.
    async fn submit_once(&self, job: &JobRow, input: &EditInput, g: &Grant, may_reroute: bool) -> Submitted {
        let outcome = self.client(Some(&g.key_id)).submit(input).await;
        let label = match &outcome {
            Ok(_) => "accepted",
            Err(e) => e.code(),
        };
        metrics::counter!(m::FAL_SUBMITS, "outcome" => label, "key" => g.key_id.clone(), "model" => self.model.clone())
            .increment(1);
        match outcome {
            Ok(queued) => {
                if let Err(e) = self.limiter.confirm(g).await {
                    tracing::warn!(error = %e, "could not confirm the upstream start");
                }
                tracing::info!(request_id = %queued.request_id, key = %g.key_id, "submitted to fal");
                Submitted::Accepted(queued)
            }
            Err(FalError::RateLimited { retry_after }) if may_reroute => {
                // Over this account's limit after all (another client of the account, or a
                // limit lower than configured): rest the account, try another.
                let rest = retry_after.unwrap_or(Duration::from_secs(1));
                tracing::warn!(key = %g.key_id, rest_ms = rest.as_millis() as u64, "fal answered 429; resting the account");
                if let Err(e) = self.limiter.refused(g, rest).await {
                    tracing::warn!(error = %e, "could not rest the account");
                }
                Submitted::Reroute
            }
            Err(e @ FalError::Unauthorized { .. }) if g.probe => {
                // Every account was out and this probe says fal still refuses: the job fails now
                // (requeue it once the keys are fixed).
                tracing::error!(key = %g.key_id, "fal still refuses every account's key");
                self.disable(g).await;
                Submitted::Failed(e.into())
            }
            Err(FalError::Unauthorized { status }) if may_reroute => {
                tracing::error!(key = %g.key_id, status, recheck_secs = self.disabled_recheck.as_secs(),
                    "fal refused this account's key: taking it out of the pool");
                metrics::counter!(m::UPSTREAM_KEYS_DISABLED, "key" => g.key_id.clone()).increment(1);
                self.disable(g).await;
                Submitted::Reroute
            }
            Err(e) => {
                // Nothing runs at fal for this job: free the slot (the start stays counted, as
                // fal may have counted it).
                self.release(&g.key_id, job.id).await;
                Submitted::Failed(e.into())
            }
        }
    }

    async fn disable(&self, g: &Grant) {
        if let Err(e) = self.limiter.disable(g, self.disabled_recheck).await {
            tracing::warn!(error = %e, "could not disable the account");
        }
    }
}

/// Poll until fal completes the request, then fetch its first image.
pub async fn result(fal: &FalClient, req: &QueuedRequest, shutdown: &CancellationToken) -> Result<FalImage, NoResult> {
    let cfg = fal.config();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.generation_timeout_secs);
    let poll = Duration::from_millis(cfg.poll_interval_ms.max(10));
    let mut transient_errors = 0u32;
    loop {
        match fal.status(req).await {
            Ok(s) if s.status == RequestState::Completed => break,
            Ok(_) => transient_errors = 0,
            Err(e @ (FalError::NotFound | FalError::Unauthorized { .. })) => return Err(poll_failed(e)),
            Err(e) if e.is_retryable() && transient_errors < MAX_TRANSIENT_POLL_ERRORS => {
                transient_errors += 1;
                tracing::debug!(error = %e, "status poll failed; polling on");
            }
            Err(e) => return Err(poll_failed(e)),
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = fal.cancel(req).await;
            let message = format!("fal did not finish within {} s", cfg.generation_timeout_secs);
            return Err(NoResult::spent(StepFailure::retry(error_code::UPSTREAM_UNAVAILABLE, message)));
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            // Waiting on fal can take minutes: on SIGTERM hand the job back at once; the
            // checkpoint lets the next worker poll this same request.
            _ = shutdown.cancelled() => return Err(NoResult::kept(StepFailure::Shutdown)),
        }
    }
    match fal.result(req).await {
        Ok(out) => out.images.into_iter().next().ok_or_else(|| {
            NoResult::spent(StepFailure::fatal(error_code::UPSTREAM_BAD_RESPONSE, "fal returned no image"))
        }),
        // Transport trouble: the result is still there to fetch next time.
        Err(e @ (FalError::Timeout | FalError::Network(_))) => Err(NoResult::kept(e.into())),
        Err(e) => Err(NoResult::spent(e.into())),
    }
}

/// A status poll that ends the wait.
fn poll_failed(e: FalError) -> NoResult {
    match e {
        FalError::NotFound => NoResult::spent(e.into()),
        // The account was revoked while the request ran: its result is out of reach, but the job
        // is not at fault — submit again (the next submit on this key takes it out of the pool).
        FalError::Unauthorized { .. } => {
            NoResult::spent(StepFailure::retry(error_code::UPSTREAM_UNAUTHORIZED, format!("{e} while the request ran")))
        }
        e => NoResult::kept(e.into()),
    }
}
