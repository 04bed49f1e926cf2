//! `notify-user`: record the webhook delivery the job's end owes, if the job has a webhook. The
//! delivery itself is separate queued work ([`crate::deliveries`]) with its own slots, so an
//! endpoint that never answers holds no job slot; this step only writes the outbox row (one
//! statement) and wakes this process's delivery loop. The message id is stable for one end of
//! the job (receivers deduplicate on it) and new for the next end after a requeue.

use jewelshot_db::{deliveries::NewDelivery, jobs::JobRow};
use jewelshot_domain::{DeliveryState, JobStatus, StepName};
use serde::{Deserialize, Serialize};

use super::{run_step, StepFailure};
use crate::pipeline::Ctx;

const STEP: StepName = StepName::NotifyUser;

/// What `notify-user` produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Notified {
    /// `None` when the job has no webhook.
    pub webhook: Option<Queued>,
}

/// The delivery this step recorded (its progress is the delivery's row, `notification` in a
/// poll).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queued {
    /// The Standard Webhooks message id.
    pub id: String,
    /// Absent in outputs recorded before deliveries were queued (they held the outcome).
    #[serde(default)]
    pub event: String,
    #[serde(default)]
    pub state: Option<DeliveryState>,
}

/// The event a final job announces.
pub fn event_kind(job: &JobRow) -> &'static str {
    if job.status == JobStatus::Complete {
        "job.completed"
    } else {
        "job.failed"
    }
}

/// Run `notify-user` for a final (`complete` or `failed`) job.
#[tracing::instrument(name = "notify-user", skip_all, fields(step = "notify-user"))]
pub async fn notify(ctx: &Ctx, job: &JobRow) -> Result<Notified, StepFailure> {
    let notified = run_step(ctx, job.id, STEP, |_| async move {
        let Some(url) = &job.webhook_url else { return Ok(Notified::default()) };
        let kind = event_kind(job);
        let ended = job.finished_at.map_or(0, |t| t.timestamp_millis());
        let msg_id = format!("msg_{}_{}_{ended}", job.id, kind.replace('.', "_"));
        let row = ctx
            .db
            .enqueue_delivery(&NewDelivery {
                job_id: job.id,
                user_id: job.user_id,
                message_id: &msg_id,
                event: kind,
                url,
                max_attempts: ctx.deliveries.max_attempts(),
            })
            .await?;
        Ok(Notified { webhook: Some(Queued { id: row.message_id, event: row.event, state: Some(row.state) }) })
    })
    .await?;
    if notified.webhook.is_some() {
        ctx.deliveries.wake();
    }
    Ok(notified)
}
