//! What the routes do, apart from HTTP: submit, view, list, cancel.

use jewelshot_domain::error_code as codes;
use std::{net::IpAddr, time::Duration};

use chrono::Utc;
use jewelshot_db::snapshot::JobSnapshot;
use jewelshot_db::{
    jobs::{CancelOutcome, JobRow, Submission},
    users::User,
};
use jewelshot_domain::{
    edit::{forbidden_webhook, webhook_ip_allowed, WebhookPolicy},
    view::{JobPage, JobView, SubmittedView},
    EditRequest, JobId, JobStatus, NewEdit, Priority, ValidationError,
};
use jewelshot_queue::{line_entry, snapshots};

use crate::{
    error::{ApiError, RateHeaders},
    state::AppState,
};

/// Longest a webhook host lookup may take at submit.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// An `Idempotency-Key` header: 1-255 visible ASCII characters.
pub fn parse_idempotency_key(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let ok = !raw.is_empty() && raw.len() <= 255 && raw.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(ApiError::BadRequest {
            code: codes::INVALID_IDEMPOTENCY_KEY,
            message: "`Idempotency-Key` must be 1-255 visible ASCII characters".into(),
        });
    }
    Ok(Some(raw.to_owned()))
}

/// Whether a submit created a job or replayed an earlier one (same `Idempotency-Key`).
/// Each carries the caller's submit quota, for the `RateLimit` headers.
pub enum Submitted {
    Created(Option<RateHeaders>, SubmittedView),
    Replayed(Option<RateHeaders>, SubmittedView),
}

/// What an `Idempotency-Key` is bound to: the request as parsed (aliases folded), so `imageUrl`
/// and `image_url` hash alike. One that cannot be written back is an error, never the hash of
/// nothing (every such request's).
fn request_hash(raw: &EditRequest) -> Result<String, ApiError> {
    use sha2::Digest;
    let canonical = serde_json::to_vec(raw).map_err(|e| ApiError::Internal(format!("hashing the request: {e}")))?;
    Ok(hex::encode(sha2::Sha256::digest(canonical)))
}

/// Count this submission against the user's per-minute quota (shared by every gateway). If Redis
/// cannot answer, the submission is let through: the queue's own trouble answers it next.
async fn submit_rate(state: &AppState, user: &User) -> Result<Option<RateHeaders>, ApiError> {
    let limit = state.cfg.limits.submits_per_minute;
    if limit == 0 {
        return Ok(None);
    }
    let window = Duration::from_secs(60);
    let hit = match state.submits.hit(&user.id.to_string(), limit, window).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "submit rate unavailable; letting the submission through");
            return Ok(None);
        }
    };
    let rate = RateHeaders {
        policy: "submits",
        limit,
        window_secs: window.as_secs(),
        remaining: hit.remaining,
        reset_secs: hit.reset.as_secs_f64().ceil() as u64,
    };
    if hit.allowed {
        Ok(Some(rate))
    } else {
        Err(ApiError::TooManyRequests {
            code: codes::RATE_LIMITED,
            message: format!("at most {limit} submissions a minute; try again in {} s", rate.reset_secs.max(1)),
            retry_after_secs: rate.reset_secs,
            rate: Some(rate),
        })
    }
}

/// Validate, record, enqueue. Never calls fal, never waits on the job. The current span (the
/// route's `submit`) is stored with the row as the job's trace when traces are exported.
pub async fn submit(
    state: &AppState,
    user: &User,
    raw: EditRequest,
    idempotency_key: Option<String>,
) -> Result<Submitted, ApiError> {
    let request_hash = idempotency_key.as_ref().map(|_| request_hash(&raw)).transpose()?;
    let policy = WebhookPolicy { allow_insecure: state.cfg.webhook.allow_insecure };
    let edit = NewEdit::parse(raw, policy, Utc::now())?;
    let limits = &state.cfg.limits;
    if edit.priority == Priority::High && !limits.high_priority_plans.contains(&user.plan) {
        return Err(ApiError::Forbidden {
            code: codes::PRIORITY_NOT_ALLOWED,
            message: format!("the {} plan does not include priority \"high\"", user.plan),
        });
    }
    // The rate limit first: resolving a name is work a stranger could make us do at will.
    let rate = submit_rate(state, user).await?;
    if let Some(url) = &edit.webhook_url {
        check_webhook_resolution(url, policy).await?;
    }
    let id = JobId::generate();
    let max_attempts = state.cfg.jobs.max_attempts;
    let cap = (limits.max_queued_per_user > 0).then_some(limits.max_queued_per_user);
    let idempotency = idempotency_key.as_deref().zip(request_hash.as_deref());
    let trace = jewelshot_runtime::telemetry::traceparent();
    let cache_basis = cache_basis(state, user, &edit).await;
    // One of the caller's uploads: its bytes were hashed when stored, so the submit itself
    // meets the cache. Any other URL is hashed by the worker that fetches it.
    let input_key = cache_basis
        .as_ref()
        .and_then(|_| state.store.key_of(edit.image_url.as_str()))
        .filter(|k| k.as_str().starts_with(&format!("uploads/{}/", user.id)));
    let how = Submission {
        max_attempts,
        queued_cap: cap,
        idempotency,
        trace_parent: trace.as_deref(),
        cache_basis: cache_basis.as_deref(),
        input_key: input_key.as_ref().map(|k| k.as_str()),
    };
    let lookup = |outcome: &'static str| {
        metrics::counter!(jewelshot_domain::metric_names::CACHE_LOOKUPS, "outcome" => outcome).increment(1);
    };
    if let Some(job) = recent_hit(state, id, user, &edit, &how).await? {
        lookup("hit");
        announce_cached(state, &job).await;
        return Ok(Submitted::Created(rate, submitted_view(state, &job, 0).await?));
    }
    let (job, position) = match state.db.submit_job(id, user.id, &edit, &how).await? {
        jewelshot_db::jobs::Inserted::New(job) => {
            match (&cache_basis, &input_key) {
                (None, _) => lookup("bypass"),
                (Some(_), Some(_)) if job.cache_key.as_deref().is_some_and(|k| !k.ends_with(':')) => lookup("miss"),
                _ => {} // the worker that hashes the input counts it
            }
            let position = enqueue(state, &job).await?;
            (*job, position)
        }
        jewelshot_db::jobs::Inserted::Cached(job) => {
            lookup("hit");
            if let (Some(key), Some(basis), Some(entry)) = (how.input_key, how.cache_basis, job.cache_key.as_deref()) {
                state.recent_hits.remember(key, basis, entry);
            }
            announce_cached(state, &job).await;
            (*job, 0)
        }
        jewelshot_db::jobs::Inserted::Shared(job) => {
            lookup("shared");
            // Not in the line: it runs when the job it shares does. Its place is counted among
            // the jobs that call fal (Postgres), until it completes with them.
            let position = state.db.queue_position_of(job.status, job.run_at, job.seq).await?;
            (*job, position)
        }
        jewelshot_db::jobs::Inserted::Existing { job, same_request: true } => {
            let position = position(state, &job).await?;
            return Ok(Submitted::Replayed(rate, submitted_view(state, &job, position).await?));
        }
        jewelshot_db::jobs::Inserted::Existing { same_request: false, .. } => {
            return Err(ApiError::Conflict {
                code: codes::IDEMPOTENCY_KEY_REUSED,
                message: "this Idempotency-Key was used in the last 24 h with a different request".into(),
            });
        }
    };
    metrics::counter!(jewelshot_domain::metric_names::JOBS_SUBMITTED, "priority" => edit.priority.as_str())
        .increment(1);
    // The access log already has a line for the request: this one is for debugging.
    tracing::debug!(job_id = %id, user_id = %user.id, position, cached = job.cached, "job submitted");
    Ok(Submitted::Created(rate, submitted_view(state, &job, position).await?))
}

/// A request that hit lately is tried as a hit first, in one plain statement (the job complete,
/// its own gallery entry) on the entry key it hit with: no function, no cap, no line. Not a hit
/// any more → forgotten, and the caller submits the usual way. Requests with an `Idempotency-Key` always go the usual way.
async fn recent_hit(
    state: &AppState,
    id: JobId,
    user: &User,
    edit: &NewEdit,
    how: &Submission<'_>,
) -> Result<Option<JobRow>, ApiError> {
    let (Some(key), Some(basis), None) = (how.input_key, how.cache_basis, how.idempotency) else { return Ok(None) };
    let Some(entry) = state.recent_hits.entry(key, basis).filter(|_| edit.run_at.is_none()) else { return Ok(None) };
    let job = state.db.submit_hit(id, user.id, edit, how.max_attempts, how.trace_parent, &entry).await?;
    if job.is_none() {
        state.recent_hits.forget(key, basis);
    }
    Ok(job)
}

/// The result cache's basis of this request, when it may use the cache (on, not
/// `cache: false`, and the live workers agree on their model: `AppState::cache_model`).
async fn cache_basis(state: &AppState, user: &User, edit: &NewEdit) -> Option<String> {
    let cfg = &state.cfg.cache;
    if !(cfg.enabled && edit.cache) {
        return None;
    }
    let model = state.cache_model().await?;
    Some(jewelshot_domain::cache::basis(cfg.scope, user.id, &model, &edit.prompt))
}

/// A job completed from the cache at submit: polls read it from Postgres (no snapshot is
/// written here; the first poll writes it back), and a job with a webhook gets a task of its
/// own, whose worker finds it final and runs `notify-user` as for any finished job.
async fn announce_cached(state: &AppState, job: &JobRow) {
    if job.webhook_url.is_some() {
        if let Err(e) = state.queue.push(job.id, None).await {
            // The reconciler cannot see a final job: the webhook is owed until a requeue.
            tracing::warn!(job_id = %job.id, error = %e, "could not hand a cached job's notification to a worker");
        }
    }
}

/// The 202 body: the job as it stands, its place and ETA while waiting, its image once complete.
async fn submitted_view(state: &AppState, job: &JobRow, position: i64) -> Result<SubmittedView, ApiError> {
    let image_url = match job.result_key.as_deref().filter(|_| job.status == JobStatus::Complete) {
        Some(key) => match jewelshot_storage::ObjectKey::new(key) {
            Ok(key) => Some(state.store.url(&key).await?),
            Err(_) => job.result_url.clone(),
        },
        None => None,
    };
    Ok(SubmittedView {
        job_id: job.id.to_string(),
        status: job.status,
        queue_position: position,
        eta_seconds: state.eta_seconds(position).await,
        status_url: format!("/api/jobs/{}", job.id),
        cached: job.cached,
        image_url,
    })
}

/// Put a recorded job in line with its poll snapshot and read its place: one Redis round trip.
async fn enqueue(state: &AppState, job: &JobRow) -> Result<i64, ApiError> {
    let due = job.run_at.map(|t| t.timestamp_millis());
    let snapshot = JobSnapshot::of_new(job);
    let record = snapshots::record_of(&snapshot, &state.cfg.queue.snapshots)
        .map_err(|e| ApiError::Internal(format!("encoding a snapshot: {e}")))?;
    let burst = state.cfg.fal.high_burst;
    let place = match state.limiter.submit(&line_entry(job), due, &record, burst).await {
        Ok((_, place)) => Ok(place),
        Err(e) => {
            // Postgres is the record and the row is complete: the workers' reconciler puts the
            // job in line once Redis answers again. The client gets its job id now, and polls
            // are answered from Postgres meanwhile.
            tracing::warn!(job_id = %job.id, error = %e, "dispatch line unavailable; the reconciler will enqueue the job");
            metrics::counter!(jewelshot_domain::metric_names::JOBS_ENQUEUE_DEFERRED).increment(1);
            Err(e)
        }
    };
    Ok(jewelshot_queue::position_from(place, &state.db, job.status, job.run_at, job.seq).await?)
}

/// Names are resolved now to refuse obviously internal targets early; the worker checks again
/// at connect time, which is what defeats DNS rebinding. A name that does not resolve gets the
/// same answer as one that resolves inward, so the answer does not reveal which internal names
/// exist.
async fn check_webhook_resolution(url: &url::Url, policy: WebhookPolicy) -> Result<(), ValidationError> {
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(()); // literal addresses were checked by NewEdit::parse
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    let addrs: Vec<IpAddr> = match lookup {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        _ => Vec::new(),
    };
    if addrs.is_empty() || addrs.iter().any(|ip| !webhook_ip_allowed(*ip, policy)) {
        return Err(forbidden_webhook());
    }
    Ok(())
}

/// Parse a path id; a malformed id is simply not found.
pub fn parse_job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::JobNotFound)
}

/// The job's place in the real dispatch order (see [`jewelshot_queue::position`]).
pub async fn position(state: &AppState, job: &JobRow) -> Result<i64, ApiError> {
    Ok(jewelshot_queue::position(&state.limiter, &state.db, job, state.cfg.fal.high_burst).await?)
}

/// A snapshot as the client sees it: its place in line, the ETA, a fresh image URL.
async fn render(state: &AppState, snap: JobSnapshot, position: i64) -> Result<JobView, ApiError> {
    let eta = match snap.status() {
        JobStatus::Queued if position > 0 => state.eta_seconds(position).await,
        _ => None,
    };
    let mut v = snap.view;
    v.queue_position = position;
    v.eta_seconds = eta;
    // URLs are made when served: presigned ones expire, so the stored one may be stale.
    if let Some(key) = snap.result_key.as_deref().filter(|_| v.image_url.is_some()) {
        if let Ok(key) = jewelshot_storage::ObjectKey::new(key) {
            v.image_url = Some(state.store.url(&key).await?);
        }
    }
    Ok(v)
}

/// A job read from Postgres, as the client sees it.
async fn render_from_postgres(state: &AppState, snap: JobSnapshot) -> Result<JobView, ApiError> {
    let position =
        jewelshot_queue::snapshot_position(&state.limiter, &state.db, &snap, state.cfg.fal.high_burst).await?;
    render(state, snap, position).await
}

/// Poll one job: its snapshot and place in line from Redis in one round trip, no Postgres. A
/// job Redis holds no snapshot of (or Redis away) is read from Postgres — the same answer —
/// and its snapshot written back for the next poll.
pub async fn get(state: &AppState, user: &User, id: JobId) -> Result<JobView, ApiError> {
    let burst = state.cfg.fal.high_burst;
    let mut redis_up = state.cfg.gateway.poll_snapshots;
    if redis_up {
        match snapshots::read(&state.limiter, id, burst).await {
            Ok(Some((snap, _))) if snap.user_id != user.id => return Err(ApiError::JobNotFound),
            Ok(Some((snap, place))) => {
                let position = match place {
                    None => 0,
                    // A job sharing a request that left the line (it is at fal now): no wait of
                    // its own, and no Postgres count for it.
                    Some(jewelshot_ratelimit::LinePlace::Absent) if snap.shares.is_some() => 0,
                    Some(place) => {
                        jewelshot_queue::position_from(
                            Ok(place),
                            &state.db,
                            snap.status(),
                            snap.view.scheduled_for,
                            snap.seq,
                        )
                        .await?
                    }
                };
                return render(state, snap, position).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(job_id = %id, error = %e, "job snapshots unavailable; reading Postgres");
                redis_up = false;
            }
        }
    }
    let snap = state.db.job_snapshot(id, Some(user.id)).await?.ok_or(ApiError::JobNotFound)?;
    if redis_up {
        if let Err(e) = snapshots::write(&state.limiter, &state.cfg.queue.snapshots, std::slice::from_ref(&snap)).await
        {
            tracing::debug!(job_id = %id, error = %e, "job snapshot not written back");
        }
    }
    render_from_postgres(state, snap).await
}

pub async fn list(
    state: &AppState,
    user: &User,
    status: Option<&str>,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<JobPage, ApiError> {
    let status = status
        .map(|s| {
            s.parse::<JobStatus>().map_err(|_| ApiError::BadRequest {
                code: codes::INVALID_STATUS,
                message: format!("`status` must be one of queued, processing, complete, failed, canceled; not `{s}`"),
            })
        })
        .transpose()?;
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest {
            code: codes::INVALID_LIMIT,
            message: "`limit` must be between 1 and 100".into(),
        });
    }
    let cursor = jewelshot_domain::edit::grammar::parse_cursor(cursor)
        .map_err(|_| ApiError::BadRequest {
            code: codes::INVALID_CURSOR,
            message: "`cursor` is not a cursor this API returned".into(),
        })?
        .map(JobId);
    let snaps = state.db.list_snapshots(user.id, status, cursor, limit).await?;
    let next_cursor = (snaps.len() as i64 == limit).then(|| snaps.last().map(|s| s.view.job_id.clone())).flatten();
    let mut jobs = Vec::with_capacity(snaps.len());
    for snap in snaps {
        jobs.push(render_from_postgres(state, snap).await?);
    }
    Ok(JobPage { jobs, next_cursor })
}

pub async fn cancel(state: &AppState, user: &User, id: JobId) -> Result<JobView, ApiError> {
    let line = Some((&state.limiter, &state.cfg.queue.snapshots));
    match jewelshot_queue::cancel(line, &state.db, id, Some(user.id)).await? {
        CancelOutcome::Canceled(_) => {
            let snap = state.db.job_snapshot(id, Some(user.id)).await?.ok_or(ApiError::JobNotFound)?;
            render_from_postgres(state, snap).await
        }
        CancelOutcome::NotFound => Err(ApiError::JobNotFound),
        CancelOutcome::NotCancelable(status) => Err(ApiError::Conflict {
            code: codes::JOB_NOT_CANCELABLE,
            message: format!("the job is {status}; only queued or processing jobs can be canceled"),
        }),
    }
}
