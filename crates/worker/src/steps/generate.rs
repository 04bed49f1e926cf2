//! `generate-image`: one fal request per job. The request is checkpointed the moment fal accepts
//! it, so a retry — or another worker after a crash — resumes polling that request instead of
//! paying for a second one. Phases: [`Checkpoint`] (submitted or resumed) → polled → [`Generated`].

use std::time::Duration;

use jewelshot_db::{jobs::JobRow, steps::FAL_REQUEST_FIELD};
use jewelshot_domain::StepName;
use jewelshot_fal::{EditInput, FalImage, QueuedRequest};
use jewelshot_ratelimit::Grant;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{checkpoint, run_step, StepFailure};
use crate::{pipeline::Ctx, upstream::request};

const STEP: StepName = StepName::GenerateImage;

/// How often a worker waiting on fal looks whether its job was canceled.
const CANCEL_CHECK: Duration = Duration::from_secs(2);

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

/// While `generate-image` runs: the fal request to resume, and the account it runs under. Its
/// `request` field is what `jewelshot_db`'s "generate started" rule looks for
/// ([`FAL_REQUEST_FIELD`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub request: QueuedRequest,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub dispatch: Option<u64>,
    /// When fal accepted the request (Unix ms): the generation is timed from here, across
    /// retries and crashes.
    #[serde(default)]
    pub submitted_at_ms: Option<i64>,
}

impl Checkpoint {
    /// The checkpoint a running step left, if it holds a fal request.
    fn from_saved(saved: Option<Value>) -> Option<Self> {
        saved.filter(|v| v.get(FAL_REQUEST_FIELD).is_some()).and_then(|v| serde_json::from_value(v).ok())
    }
}

/// Run `generate-image` for `job`: resume its fal request, or submit one on `grant`'s account
/// (a slot is acquired when there is none), then wait for the image.
#[tracing::instrument(name = "generate-image", skip_all, fields(step = "generate-image"))]
pub async fn generate(ctx: &Ctx, job: &JobRow, grant: &mut Option<Grant>) -> Result<Generated, StepFailure> {
    run_step(ctx, job.id, STEP, |saved| async move {
        let (cp, key_id) = match Checkpoint::from_saved(saved) {
            Some(cp) => resume(ctx, job, cp).await,
            None => submit(ctx, job, grant.take()).await?,
        };
        let image = wait(ctx, job, &cp, &key_id).await?;
        record_generation(ctx, &cp).await;
        Ok(Generated { request_id: cp.request.request_id, image, key_id: Some(key_id), dispatch: cp.dispatch })
    })
    .await
}

/// Submit the job to fal and checkpoint the request at once. Returns it with its account.
async fn submit(ctx: &Ctx, job: &JobRow, grant: Option<Grant>) -> Result<(Checkpoint, String), StepFailure> {
    let input = EditInput { image_url: job.input_url.clone(), prompt: job.prompt.clone() };
    let (request, g) = ctx.upstream.submit(job, &input, grant, &ctx.shutdown).await?;
    let cp = Checkpoint {
        request,
        key_id: Some(g.key_id.clone()),
        dispatch: Some(g.dispatch),
        submitted_at_ms: Some(chrono::Utc::now().timestamp_millis()),
    };
    checkpoint(ctx, job.id, STEP, &cp).await?;
    Ok((cp, g.key_id))
}

/// A request submitted by an earlier attempt: it is in flight at fal whatever our count says,
/// so its slot is held again. A checkpoint from before accounts were recorded runs under the
/// pool's first account.
async fn resume(ctx: &Ctx, job: &JobRow, cp: Checkpoint) -> (Checkpoint, String) {
    tracing::info!(request_id = %cp.request.request_id, "resuming fal request");
    let up = &ctx.upstream;
    let key_id = cp.key_id.clone().unwrap_or_else(|| up.first_key_id().to_owned());
    if let Err(e) = up.limiter.hold(&key_id, &job.id.to_string()).await {
        tracing::warn!(error = %e, "could not re-take the upstream slot");
    }
    (cp, key_id)
}

/// Wait for the request's image while renewing its slot; a job canceled meanwhile cancels the
/// request at fal. The slot is freed once fal is done with the request; a request that can no
/// longer produce a result loses its checkpoint, so the next attempt submits anew.
async fn wait(ctx: &Ctx, job: &JobRow, cp: &Checkpoint, key_id: &str) -> Result<FalImage, StepFailure> {
    let up = &ctx.upstream;
    let client = up.client(Some(key_id));
    let outcome = tokio::select! {
        r = request::result(client, &cp.request, &ctx.shutdown) => r,
        () = up.keep_slot(key_id, job.id) => unreachable!("the renewal loop never ends"),
        () = canceled(ctx, job) => {
            let answer = client.cancel(&cp.request).await;
            tracing::info!(request_id = %cp.request.request_id, ?answer, "job canceled: fal request canceled");
            up.release(key_id, job.id).await;
            return Err(StepFailure::Canceled);
        }
    };
    match outcome {
        Ok(image) => {
            up.release(key_id, job.id).await;
            Ok(image)
        }
        Err(no) => {
            if no.spent {
                up.release(key_id, job.id).await;
                ctx.db.clear_checkpoint(job.id, STEP).await?;
            }
            // Otherwise (shutdown, transport trouble) the request still runs at fal and keeps
            // its slot until the next attempt resumes it or the lease runs out.
            Err(no.failure)
        }
    }
}

/// How long fal took with the request, from its acceptance to its image: what ETAs are made of
/// (the gateways read the mean over the last hour from Redis). Samples over the window itself
/// (a request resumed long after) would say nothing about fal's speed and are left out.
async fn record_generation(ctx: &Ctx, cp: &Checkpoint) {
    let Some(at) = cp.submitted_at_ms else { return };
    let window = Duration::from_secs(jewelshot_ratelimit::GENERATION_WINDOW_SECS);
    let took = Duration::from_millis((chrono::Utc::now().timestamp_millis() - at).max(0) as u64);
    if took >= window {
        return;
    }
    metrics::histogram!(jewelshot_domain::metric_names::GENERATION_DURATION).record(took.as_secs_f64());
    if let Err(e) = ctx.upstream.limiter.record_generation(took, window).await {
        tracing::debug!(error = %e, "generation time not recorded for ETAs");
    }
}

/// Resolves once the job is canceled (looked at every [`CANCEL_CHECK`]).
async fn canceled(ctx: &Ctx, job: &JobRow) {
    let mut tick = tokio::time::interval(CANCEL_CHECK);
    tick.tick().await;
    loop {
        tick.tick().await;
        if ctx.db.is_canceled(job.id).await.unwrap_or(false) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> QueuedRequest {
        serde_json::from_value(serde_json::json!({
            "request_id": "r1",
            "status_url": "https://queue.fal.run/m/requests/r1/status",
            "response_url": "https://queue.fal.run/m/requests/r1",
            "cancel_url": "https://queue.fal.run/m/requests/r1/cancel",
        }))
        .expect("a queued request")
    }

    #[test]
    fn the_checkpoint_stores_its_request_where_the_started_rule_looks() {
        let cp =
            Checkpoint { request: request(), key_id: Some("a".into()), dispatch: Some(3), submitted_at_ms: Some(1) };
        let stored = serde_json::to_value(&cp).expect("stored");
        assert!(stored.get(FAL_REQUEST_FIELD).is_some(), "{stored}");
        let back = Checkpoint::from_saved(Some(stored)).expect("resumable");
        assert_eq!((back.request.request_id.as_str(), back.dispatch), ("r1", Some(3)));
        // A cleared checkpoint (or none) means "submit": never a request out of nothing.
        assert!(Checkpoint::from_saved(None).is_none());
        assert!(Checkpoint::from_saved(Some(Value::Null)).is_none());
        assert!(Checkpoint::from_saved(Some(serde_json::json!({"key_id": "a"}))).is_none());
    }
}
