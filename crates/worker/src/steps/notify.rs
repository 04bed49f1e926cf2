//! `notify-user`: POST the signed webhook, if the job has one. It runs once the job is final, so
//! a client polling sees the result without waiting for webhook retries; the message id is
//! stable across retries and re-deliveries (receivers deduplicate on it).

use jewelshot_db::jobs::JobRow;
use jewelshot_domain::{job::error_code, metric_names as m, view::WebhookEvent, JobStatus, StepName, StepStatus};
use jewelshot_storage::ObjectKey;
use serde::{Deserialize, Serialize};

use super::{run_step, StepFailure};
use crate::pipeline::Ctx;

const STEP: StepName = StepName::NotifyUser;

/// What `notify-user` produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Notified {
    /// `None` when the job has no webhook.
    pub webhook: Option<Delivery>,
}

/// One webhook's delivery, over all its attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// The Standard Webhooks message id.
    pub id: String,
    pub delivered: bool,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Run `notify-user` for a final (`complete` or `failed`) job.
#[tracing::instrument(skip_all, fields(step = "notify-user"))]
pub async fn notify(ctx: &Ctx, job: &JobRow) -> Result<Notified, StepFailure> {
    run_step(ctx, job.id, STEP, |_| async move {
        let Some(url) = &job.webhook_url else { return Ok(Notified::default()) };
        let kind = if job.status == JobStatus::Complete { "job.completed" } else { "job.failed" };
        let msg_id = format!("msg_{}_{}", job.id, kind.replace('.', "_"));
        let body = event(ctx, job, kind).await?;
        let Some(user) = ctx.db.user(job.user_id).await? else {
            let error = Some("the job's user no longer exists".to_owned());
            return Ok(Notified { webhook: Some(Delivery { id: msg_id, delivered: false, attempts: 0, error }) });
        };
        let outcome = ctx.webhooks.deliver(url, &user.webhook_secret, &msg_id, &body).await;
        let label = if outcome.is_ok() { "delivered" } else { "undelivered" };
        metrics::counter!(m::WEBHOOK_DELIVERIES, "outcome" => label).increment(1);
        let delivery = match outcome {
            Ok(attempts) => Delivery { id: msg_id, delivered: true, attempts, error: None },
            Err((attempts, e)) => {
                tracing::warn!(error = %e, "webhook not delivered");
                Delivery { id: msg_id, delivered: false, attempts, error: Some(e.to_string()) }
            }
        };
        Ok(Notified { webhook: Some(delivery) })
    })
    .await
}

/// The webhook body: the job as a poll would show it, this step included as done.
async fn event(ctx: &Ctx, job: &JobRow, kind: &str) -> Result<Vec<u8>, StepFailure> {
    let steps = ctx.db.steps(job.id).await?;
    let mut view = job.to_view(&steps, 0, None);
    if let Some(key) = job.result_key.as_deref().and_then(|k| ObjectKey::new(k).ok()) {
        view.image_url = Some(ctx.store.url(&key).await?);
    }
    if let Some(s) = view.steps.iter_mut().find(|s| s.name == STEP) {
        s.status = StepStatus::Complete;
    }
    serde_json::to_vec(&WebhookEvent { kind: kind.into(), data: view })
        .map_err(|e| StepFailure::fatal(error_code::INTERNAL, format!("webhook body could not be written: {e}")))
}
