//! The operator console at `/admin`: what an on-call engineer looks at, and the two actions the
//! CLI has for a job — requeue and cancel — through the same code ([`jewelshot_queue::requeue`],
//! [`jewelshot_queue::cancel`]).
//!
//! Operators sign in with an **operator token**, never a user's key: the gateway keeps only
//! SHA-256 digests of the tokens (`JEWELSHOT_CONSOLE__TOKEN_HASHES`; `jewelshot console-token`
//! makes a token and its digest). With no digest configured the console answers 404. In
//! `read_only` mode it shows everything and changes nothing (403 `console-read-only`).

use std::collections::BTreeMap;

use actix_web::{dev::Payload, FromRequest, HttpRequest};
use chrono::{DateTime, Utc};
use jewelshot_domain::{error_code as codes, JobId, JobStatus};
use jewelshot_ratelimit::KeyStatus;
use serde::{Deserialize, Serialize};

use crate::{error::ApiError, state::AppState};

/// `JEWELSHOT_CONSOLE__*`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConsoleSettings {
    /// SHA-256 digests (hex) of the operator tokens; empty = no console.
    pub token_hashes: Vec<String>,
    /// Show, never change: requeue and cancel are refused.
    pub read_only: bool,
}

impl ConsoleSettings {
    pub fn enabled(&self) -> bool {
        !self.token_hashes.is_empty()
    }

    /// Whether `token` is an operator's.
    pub fn admits(&self, token: &str) -> bool {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(token.as_bytes()));
        self.token_hashes.iter().any(|h| h.trim().eq_ignore_ascii_case(&digest))
    }
}

/// An operator, signed in with a token the console admits.
pub struct Operator;

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<actix_web::web::Data<AppState>>().cloned();
        let token = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 512)
            .map(str::to_owned);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("no app state".into()))?;
            let console = &state.cfg.console;
            if !console.enabled() {
                return Err(ApiError::NotFound);
            }
            match token {
                Some(t) if console.admits(&t) => Ok(Operator),
                _ => {
                    // As late as any refused credential (a token flood gains nothing).
                    crate::auth::refusal_delay(&state).await;
                    Err(ApiError::Unauthorized)
                }
            }
        })
    }
}

/// Everything the console shows, in one read.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub read_only: bool,
    pub queue: QueueView,
    /// The next jobs to be dispatched, in the real (fair) order.
    pub line_head: Vec<HeadEntry>,
    pub accounts: Vec<KeyStatus>,
    pub workers: Vec<WorkerView>,
    pub processing: Vec<JobBrief>,
    /// Failed jobs of the last 24 h by error code, newest first within each.
    pub failures: BTreeMap<String, Vec<JobBrief>>,
    /// The seven critical metrics as this gateway's `/metrics` renders them (buckets left out).
    pub metrics: Vec<String>,
    /// The result cache: hit rate over the last hour, jobs sharing a request, stored results.
    pub cache: jewelshot_domain::view::CacheView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueView {
    pub waiting_high: u64,
    pub waiting_normal: u64,
    pub scheduled: u64,
    /// Dispatched to the work queue, not yet fetched by a worker.
    pub dispatched: u64,
    /// Fetched by a worker.
    pub processing: u64,
    pub oldest_waiting_secs: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadEntry {
    pub position: i64,
    pub job: JobBrief,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerView {
    pub name: String,
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Jobs this worker is running (by the job rows' `worker_id`).
    pub jobs: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobBrief {
    pub job_id: String,
    pub user_id: String,
    pub status: JobStatus,
    pub priority: String,
    pub attempts: i32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub worker_id: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl From<&jewelshot_db::jobs::JobRow> for JobBrief {
    fn from(j: &jewelshot_db::jobs::JobRow) -> Self {
        Self {
            job_id: j.id.to_string(),
            user_id: j.user_id.to_string(),
            status: j.status,
            priority: j.priority.as_str().to_owned(),
            attempts: j.attempts,
            error_code: j.error_code.clone(),
            error_message: j.error_message.clone(),
            worker_id: j.worker_id.clone(),
            updated_at: j.updated_at,
        }
    }
}

/// Read the overview: Redis (line, accounts, workers) and Postgres (jobs), a handful of reads.
pub async fn overview(state: &AppState) -> Result<Overview, ApiError> {
    let (high, normal, scheduled) =
        state.limiter.line_lengths().await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let depths = state.queue.depths().await?;
    let queued = state.db.list_jobs(None, Some(JobStatus::Queued), None, 200).await?;
    let positions = jewelshot_queue::positions(&state.limiter, &state.db, &queued, state.cfg.fal.high_burst).await?;
    let mut head: Vec<HeadEntry> = queued
        .iter()
        .zip(positions)
        .filter(|(_, position)| *position > 0)
        .map(|(job, position)| HeadEntry { position, job: job.into() })
        .collect();
    head.sort_by_key(|h| h.position);
    head.truncate(10);
    let processing = state.db.list_jobs(None, Some(JobStatus::Processing), None, 100).await?;
    let workers = state
        .queue
        .workers()
        .await?
        .into_iter()
        .map(|(name, seen)| WorkerView {
            jobs: processing
                .iter()
                .filter(|j| j.worker_id.as_deref().is_some_and(|w| name.contains(w) || w.contains(&name)))
                .map(|j| j.id.to_string())
                .collect(),
            last_heartbeat: DateTime::from_timestamp(seen as i64, 0),
            name,
        })
        .collect();
    let mut failures: BTreeMap<String, Vec<JobBrief>> = BTreeMap::new();
    let day_ago = Utc::now() - chrono::Duration::hours(24);
    for job in state.db.list_jobs(None, Some(JobStatus::Failed), None, 200).await? {
        if job.finished_at.unwrap_or(job.updated_at) >= day_ago {
            failures.entry(job.error_code.clone().unwrap_or_else(|| "unknown".into())).or_default().push((&job).into());
        }
    }
    Ok(Overview {
        read_only: state.cfg.console.read_only,
        queue: QueueView {
            waiting_high: high,
            waiting_normal: normal,
            scheduled,
            dispatched: depths.active,
            processing: depths.inflight,
            oldest_waiting_secs: state.db.oldest_waiting_secs().await?,
        },
        line_head: head,
        accounts: state.limiter.snapshot().await.map_err(|e| ApiError::Internal(e.to_string()))?,
        workers,
        processing: processing.iter().map(JobBrief::from).collect(),
        failures,
        metrics: seven_metrics(),
        cache: state.cache_view().await,
    })
}

/// This process's samples of the seven critical metrics.
fn seven_metrics() -> Vec<String> {
    let names: Vec<&str> = jewelshot_domain::metric_names::SEVEN.iter().flat_map(|(_, n)| n.iter().copied()).collect();
    crate::telemetry::prometheus()
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
        .filter(|l| names.iter().any(|n| l.starts_with(n)))
        .map(str::to_owned)
        .collect()
}

/// What an action on a job did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionResult {
    pub job_id: String,
    pub outcome: String,
}

fn writable(state: &AppState) -> Result<(), ApiError> {
    if state.cfg.console.read_only {
        return Err(ApiError::Forbidden {
            code: codes::CONSOLE_READ_ONLY,
            message: "the console is read-only (JEWELSHOT_CONSOLE__READ_ONLY)".into(),
        });
    }
    Ok(())
}

/// Requeue a failed or stuck job, as `jewelshot requeue --job ID` does.
pub async fn requeue(state: &AppState, id: JobId) -> Result<ActionResult, ApiError> {
    writable(state)?;
    let job = state.db.job(id).await?.ok_or(ApiError::JobNotFound)?;
    if !matches!(job.status, JobStatus::Failed | JobStatus::Processing) {
        return Err(ApiError::Conflict {
            code: codes::JOB_NOT_REQUEUEABLE,
            message: format!("only failed or stuck jobs are requeued; this one is {}", job.status.as_str()),
        });
    }
    let outcome = match jewelshot_queue::requeue(&state.db, &state.limiter, &state.queue, &job, false).await? {
        jewelshot_queue::Requeued::Done(placed) => {
            // Polls read the snapshot in Redis: it must say `queued` now, not `failed` until a
            // worker picks the job up (the CLI's publisher does the same for `jewelshot requeue`).
            let snapshots = &state.cfg.queue.snapshots;
            if let Err(e) = jewelshot_queue::snapshots::publish(&state.limiter, &state.db, snapshots, &[id]).await {
                tracing::warn!(job_id = %id, error = %e, "requeued, but its poll snapshot was not updated");
            }
            format!("requeued ({placed:?})").to_lowercase()
        }
        jewelshot_queue::Requeued::Skipped => "skipped: it changed meanwhile".into(),
        jewelshot_queue::Requeued::NotEnqueued(e) => return Err(e.into()),
    };
    tracing::info!(job_id = %id, outcome, "console: requeue");
    Ok(ActionResult { job_id: id.to_string(), outcome })
}

/// Cancel a job, as `jewelshot jobs cancel ID` does.
pub async fn cancel(state: &AppState, id: JobId) -> Result<ActionResult, ApiError> {
    writable(state)?;
    let snapshots = &state.cfg.queue.snapshots;
    let outcome = match jewelshot_queue::cancel(Some((&state.limiter, snapshots)), &state.db, id, None).await? {
        jewelshot_db::jobs::CancelOutcome::Canceled(_) => "canceled".to_owned(),
        jewelshot_db::jobs::CancelOutcome::NotFound => return Err(ApiError::JobNotFound),
        jewelshot_db::jobs::CancelOutcome::NotCancelable(status) => {
            return Err(ApiError::Conflict {
                code: codes::JOB_NOT_CANCELABLE,
                message: format!("the job is {}; only queued or processing jobs can be canceled", status.as_str()),
            })
        }
    };
    tracing::info!(job_id = %id, outcome, "console: cancel");
    Ok(ActionResult { job_id: id.to_string(), outcome })
}
