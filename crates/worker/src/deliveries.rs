//! Webhook delivery as its own queued work, beside the jobs and never in their slots.
//!
//! `notify-user` records a delivery in Postgres (`webhook_deliveries`, an outbox that survives
//! Redis loss like every job record) and wakes this process's loop. The loop claims due
//! deliveries — as many as it has free delivery slots (`webhook.concurrency`), never more than
//! `webhook.per_user_concurrency` attempts in flight for one user across the fleet — and makes
//! one signed attempt per claim under a lease. A failed attempt is rescheduled with backoff until
//! `max_attempts`, then the delivery is `failed` (visible as `notification` in a poll; an operator
//! resends it with `jewelshot webhooks resend`). A worker that dies mid-attempt loses its lease and
//! another worker claims the delivery again: at least once, under one message id.

use std::{sync::Arc, time::Duration};

use jewelshot_db::{
    deliveries::{AttemptEnd, DeliveryRow},
    jobs::JobRow,
};
use jewelshot_domain::{job::error_code, metric_names as m, view::WebhookEvent, StepName, StepStatus};
use jewelshot_storage::ObjectKey;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    backoff::backoff,
    config::WebhookConfig,
    pipeline::Ctx,
    webhook::{WebhookError, WebhookSender},
};

/// The process's delivery settings, sender and wake-up; shared through [`Ctx`].
#[derive(Debug)]
pub struct Deliveries {
    sender: WebhookSender,
    cfg: WebhookConfig,
    wake: tokio::sync::Notify,
}

impl Deliveries {
    pub fn new(cfg: WebhookConfig) -> anyhow::Result<Self> {
        Ok(Self { sender: WebhookSender::new(cfg.clone())?, cfg, wake: tokio::sync::Notify::new() })
    }

    /// Attempts a new delivery gets.
    pub fn max_attempts(&self) -> i32 {
        i32::try_from(self.cfg.max_attempts.max(1)).unwrap_or(i32::MAX)
    }

    /// Look for due deliveries now (a job just ended here, or a slot freed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// How long a claim holds a delivery: one attempt's timeout and room to build its body.
    fn lease(&self) -> Duration {
        self.sender.timeout() + Duration::from_secs(30)
    }
}

/// Work deliveries until `token` is cancelled, then let attempts in flight end (each is bounded
/// by the webhook timeout).
pub fn spawn(ctx: Arc<Ctx>, token: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let d = &ctx.deliveries;
        let slots = Arc::new(Semaphore::new(d.cfg.concurrency.max(1)));
        let every = Duration::from_millis(d.cfg.poll_interval_ms.max(1));
        let mut inflight = JoinSet::new();
        while !token.is_cancelled() {
            while inflight.try_join_next().is_some() {}
            claim_and_start(&ctx, &slots, &mut inflight).await;
            tokio::select! {
                _ = d.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
                _ = token.cancelled() => {}
            }
        }
        let drain = d.sender.timeout() + Duration::from_secs(1);
        if tokio::time::timeout(drain, async { while inflight.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!(left = inflight.len(), "webhook attempts still running at shutdown; their leases lapse");
        }
    })
}

/// Claim as many due deliveries as there are free slots and start an attempt for each.
async fn claim_and_start(ctx: &Arc<Ctx>, slots: &Arc<Semaphore>, inflight: &mut JoinSet<()>) {
    let free = slots.available_permits();
    if free == 0 {
        return;
    }
    let d = &ctx.deliveries;
    let per_user = i64::from(d.cfg.per_user_concurrency.max(1));
    let claimed = match ctx.db.claim_deliveries(&ctx.worker_id, free as i64, per_user, d.lease()).await {
        Ok(claimed) => claimed,
        Err(e) => {
            tracing::warn!(error = %e, "could not claim webhook deliveries");
            return;
        }
    };
    for row in claimed {
        let Ok(permit) = slots.clone().try_acquire_owned() else { break };
        let ctx = ctx.clone();
        let span = tracing::info_span!(target: "jewelshot_worker::untraced", "delivery", job_id = %row.job_id, attempt = row.attempts);
        inflight.spawn(
            async move {
                attempt(&ctx, row).await;
                drop(permit);
                ctx.deliveries.wake();
            }
            .instrument(span),
        );
    }
}

/// Why an attempt failed: what the delivery records (a code and our sentence) and the detail
/// that goes to the log.
struct Failed {
    code: &'static str,
    message: String,
    permanent: bool,
    detail: String,
}

impl Failed {
    fn ours(detail: impl std::fmt::Display, permanent: bool) -> Self {
        let message = error_code::lookup(error_code::INTERNAL).map_or("", |c| c.meaning).to_owned();
        Self { code: error_code::INTERNAL, message, permanent, detail: detail.to_string() }
    }

    fn of(e: WebhookError, timeout: Duration) -> Self {
        let detail = e.to_string();
        let (code, message, permanent) = match e {
            WebhookError::Status(s) => {
                (error_code::WEBHOOK_REJECTED, format!("The endpoint answered HTTP {s}."), false)
            }
            WebhookError::Transport(_) => (
                error_code::WEBHOOK_UNREACHABLE,
                format!(
                    "The endpoint could not be reached, or did not answer within {} s.",
                    timeout.as_secs_f64().ceil()
                ),
                false,
            ),
            WebhookError::Forbidden(_) => (
                error_code::WEBHOOK_FORBIDDEN,
                "The webhook URL resolves to an address the system never calls.".to_owned(),
                true,
            ),
            WebhookError::BadSecret => return Self::ours("the user's webhook secret is malformed", true),
        };
        Self { code, message, permanent, detail }
    }
}

/// One claimed attempt, recorded however it ends.
async fn attempt(ctx: &Ctx, d: DeliveryRow) {
    let outcome = send(ctx, &d).await;
    let (label, end) = match &outcome {
        Ok(()) => ("delivered", AttemptEnd::Delivered),
        Err(f) => {
            let last = f.permanent || d.attempts >= d.max_attempts;
            tracing::warn!(code = f.code, detail = %f.detail, last, "webhook attempt failed");
            let cfg = &ctx.deliveries.cfg;
            let retry_in = backoff(d.attempts.max(1) as u32, cfg.backoff_base_ms, cfg.backoff_base_ms * 64, None);
            let end = AttemptEnd::Failed { code: f.code, message: &f.message, retry_in, permanent: f.permanent };
            (if last { "failed" } else { "retrying" }, end)
        }
    };
    metrics::counter!(m::WEBHOOK_DELIVERIES, "outcome" => label).increment(1);
    match ctx.db.end_attempt(d.job_id, &ctx.worker_id, end).await {
        Ok(true) => tracing::info!(outcome = label, "webhook attempt recorded"),
        Ok(false) => tracing::info!(outcome = label, "the delivery's claim lapsed before the attempt ended"),
        // The lease lapses and another claim makes the attempt again (same message id).
        Err(e) => tracing::warn!(error = %e, outcome = label, "could not record the webhook attempt"),
    }
}

/// Build the body as the job is now (a fresh signed `imageUrl`) and send it once.
async fn send(ctx: &Ctx, d: &DeliveryRow) -> Result<(), Failed> {
    let retry = |e: jewelshot_db::DbError| Failed::ours(e, false);
    let job = ctx.db.job(d.job_id).await.map_err(retry)?.ok_or_else(|| Failed::ours("the job is gone", true))?;
    // Every secret that signs now (two while a rotation overlaps). One that does not open (its
    // key not configured here) is retried: an operator may yet add the key.
    let secrets = ctx.db.signing_secrets(d.user_id).await.map_err(retry)?;
    if secrets.is_empty() {
        return Err(Failed::ours("the user is gone, or has no webhook secret", true));
    }
    let body = body(ctx, &job, &d.event).await?;
    let sender = &ctx.deliveries.sender;
    let secrets: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
    sender.attempt(&d.url, &secrets, &d.message_id, &body).await.map_err(|e| Failed::of(e, sender.timeout()))
}

/// The webhook body: the job as a poll would show it, `notify-user` included as done.
async fn body(ctx: &Ctx, job: &JobRow, kind: &str) -> Result<Vec<u8>, Failed> {
    let steps = ctx.db.steps(job.id).await.map_err(|e| Failed::ours(e, false))?;
    let mut view = job.to_view(&steps, 0, None);
    if let Some(key) = job.result_key.as_deref().and_then(|k| ObjectKey::new(k).ok()) {
        view.image_url = Some(ctx.store.url(&key).await.map_err(|e| Failed::ours(e, false))?);
    }
    if let Some(s) = view.steps.iter_mut().find(|s| s.name == StepName::NotifyUser) {
        s.status = StepStatus::Complete;
    }
    serde_json::to_vec(&WebhookEvent { kind: kind.into(), data: view }).map_err(|e| Failed::ours(e, true))
}
