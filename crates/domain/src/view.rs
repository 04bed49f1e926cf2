//! Response shapes, camelCase as the web client reads them. The webhook carries the same
//! [`JobView`] a poll returns, so one type serves both.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::job::{DeliveryState, JobStatus, Priority, StepName, StepStatus};

/// A job as `GET /api/jobs/{jobId}` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: String,
    pub status: JobStatus,
    /// The job's rank in the real dispatch order (fair between users, `high` first at a share):
    /// 1 = next to run; 0 once no longer waiting (or while scheduled for later). With no new
    /// arrivals it only falls; it can rise when higher-priority or fair-share work arrives.
    pub queue_position: i64,
    /// Estimated seconds until the job completes; absent when unknown.
    pub eta_seconds: Option<i64>,
    /// The saved gallery copy, once complete.
    pub image_url: Option<String>,
    pub error: Option<ErrorView>,
    pub attempts: i32,
    pub prompt: String,
    pub priority: Priority,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub steps: Vec<StepView>,
    /// Completed from an identical earlier request's result (the result cache), without a fal
    /// request of its own.
    #[serde(default)]
    pub cached: bool,
    /// The job's webhook delivery, once the job has ended with a `webhook_url`; `null` otherwise
    /// (and inside webhook bodies).
    pub notification: Option<NotificationView>,
}

/// A webhook delivery, as `GET /api/jobs/{jobId}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    pub state: DeliveryState,
    /// The Standard Webhooks `webhook-id`, the same on every attempt.
    pub message_id: String,
    /// `job.completed` or `job.failed`.
    pub event: String,
    pub attempts: i32,
    pub max_attempts: i32,
    /// When the next attempt is due (`pending` only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed (a stable code, one sentence).
    pub error: Option<ErrorView>,
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub name: StepName,
    pub status: StepStatus,
    pub attempts: i32,
    pub finished_at: Option<DateTime<Utc>>,
}

/// `{"code", "message"}`: the body of every error and the reason a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
}

/// The 202 answer to a submit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubmittedView {
    pub job_id: String,
    pub status: JobStatus,
    /// As in [`JobView::queue_position`].
    pub queue_position: i64,
    pub eta_seconds: Option<i64>,
    pub status_url: String,
    /// `true` when an identical request's cached result completed the job at once (`status`
    /// is then `complete` and `imageUrl` is set).
    #[serde(default)]
    pub cached: bool,
    /// The result, when the job is already complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /api/queue`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueView {
    pub queued: i64,
    pub processing: i64,
    /// Jobs waiting for their `run_at`.
    pub scheduled: i64,
    pub eta_seconds_for_new_job: Option<i64>,
    pub upstream: UpstreamView,
    pub cache: CacheView,
}

/// The result cache, as `GET /api/queue` and the console show it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheView {
    pub enabled: bool,
    /// `user` (a user's own results) or `shared` (anyone's).
    pub scope: String,
    /// Seconds a result is reused after it was made.
    pub ttl_seconds: u64,
    /// Over the last hour: hits ÷ jobs that could use the cache; absent before any.
    pub hit_rate: Option<f64>,
    /// Jobs of the last hour completed from a stored result, without a fal request.
    pub hits: i64,
    /// Jobs of the last hour that could use the cache.
    pub lookups: i64,
    /// Jobs waiting on an identical job's fal request now (not counted in `queued`).
    pub sharing: i64,
    /// Results stored and reusable.
    pub entries: i64,
}

/// What we know of the upstream (fal) capacity.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamView {
    pub model: String,
    /// Mean seconds a generation took over the last hour, if any completed.
    pub mean_generation_seconds: Option<f64>,
    /// fal accounts the workers registered, and how many of them fal currently accepts.
    pub keys_total: u32,
    pub keys_healthy: u32,
    /// Requests the healthy accounts may start per minute together (0 = unlimited).
    pub per_minute_limit: u32,
    /// Requests the healthy accounts may run at once together (0 = unlimited).
    pub concurrent_limit: u32,
    /// Requests in progress at fal now, over all accounts.
    pub slots_in_use: u64,
    /// Per account.
    pub keys: Vec<UpstreamKeyView>,
}

/// One fal account of the pool (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamKeyView {
    pub id: String,
    pub healthy: bool,
    /// Resting after fal answered 429.
    pub cooling_down: bool,
    pub max_per_minute: u32,
    pub max_concurrent: u32,
    /// Requests started in the last rate window.
    pub started_in_window: u64,
    pub in_flight: u64,
}

/// The webhook body: `{"type": "job.completed"|"job.failed", "data": <JobView>}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub data: JobView,
}
