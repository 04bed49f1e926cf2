//! `/api/ai/edit` and `/api/jobs…`.

use actix_web::{delete, get, post, web, HttpMessage, HttpRequest, HttpResponse};
use jewelshot_domain::{
    view::{JobPage, JobView, SubmittedView},
    EditRequest,
};
use serde::Deserialize;
use tracing::Instrument;
use utoipa::IntoParams;

use crate::{auth::AuthUser, error::ApiError, openapi::ErrorBody, service, state::AppState};

/// Submit an edit. Answers at once with the job id and its place in line.
#[utoipa::path(
    post, path = "/api/ai/edit", tag = "jobs",
    request_body = EditRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "The same key from the same user within 24 h returns the first job"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context: when traces are exported, the job's trace continues the caller's (a malformed value is ignored)"),
    ),
    responses(
        (status = 202, description = "Accepted and queued", body = SubmittedView,
            headers(("Location" = String, description = "The job's status URL"))),
        (status = 400, description = "Invalid input; `error.field` names the field", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 409, description = "`Idempotency-Key` reused with a different request", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 403, description = "`priority-not-allowed`: the user's plan does not include high priority", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 429, description = "`rate-limited` (submissions per minute) or `too-many-queued-jobs`; nothing was queued. `Retry-After` and the IETF `RateLimit`/`RateLimit-Policy` headers say when", body = ErrorBody),
        (status = 503, description = "A dependency is down; retry after `Retry-After`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/api/ai/edit")]
pub async fn submit(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    body: web::Json<EditRequest>,
) -> Result<HttpResponse, ApiError> {
    let header = req.headers().get("idempotency-key").map(|v| v.to_str().unwrap_or("\u{0}"));
    let key = service::parse_idempotency_key(header)?;
    // The job's trace begins here, inside the client's when it sent a W3C `traceparent`.
    let span = tracing::info_span!("submit", user_id = %user.0.id);
    jewelshot_runtime::telemetry::follow(&span, req.headers().get("traceparent").and_then(|v| v.to_str().ok()));
    let submitted = service::submit(&state, &user.0, body.into_inner(), key).instrument(span).await?;
    let (rate, view, replayed) = match submitted {
        service::Submitted::Created(r, v) => (r, v, false),
        service::Submitted::Replayed(r, v) => (r, v, true),
    };
    req.extensions_mut().insert(crate::telemetry::LoggedJob(view.job_id.clone()));
    let mut resp = HttpResponse::Accepted();
    resp.insert_header(("Location", view.status_url.clone()));
    if let Some(r) = rate {
        r.apply(&mut resp);
    }
    if replayed {
        resp.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(resp.json(view))
}

/// Poll one job.
#[utoipa::path(
    get, path = "/api/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such job, or not yours", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/jobs/{job_id}")]
pub async fn get(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = service::parse_job_id(&path)?;
    Ok(HttpResponse::Ok().json(service::get(&state, &user.0, id).await?))
}

/// Follow a job live, as Server-Sent Events: each event (`event: job`) carries the whole job as
/// `GET /api/jobs/{jobId}` answers it, sent when it changes — the place in line counting down,
/// `processing`, the steps, the final state — and the stream ends after a final state. Its `id`
/// names the state: reconnecting with `Last-Event-ID` sends the current state at once unless
/// the client already has it (a state carries its steps, so nothing is missed). A `: keep-alive`
/// comment comes every 15 s; a stream ends after an hour (reconnect). Any gateway serves any job.
#[utoipa::path(
    get, path = "/api/jobs/{job_id}/events", tag = "jobs",
    params(
        ("job_id" = String, Path, description = "The job's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The `id` of the last event received"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`; each event's `data` is a job", content_type = "text/event-stream", body = JobView),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such job, or not yours", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/jobs/{job_id}/events")]
pub async fn events(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = service::parse_job_id(&path)?;
    let last =
        req.headers().get("Last-Event-ID").and_then(|v| v.to_str().ok()).filter(|v| v.len() <= 64).map(str::to_owned);
    let (stream, view) = crate::events::Stream::open(state, user.0, id, last).await?;
    let body = futures::stream::unfold((stream, Some(view)), |(mut stream, view)| async move {
        let bytes = stream.next(view).await?;
        Some((Ok::<_, actix_web::Error>(bytes), (stream, None)))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this state.
    pub status: Option<String>,
    /// Page size, 1-100 (default 20).
    #[serde(default, deserialize_with = "jewelshot_domain::edit::integral_text")]
    pub limit: Option<i64>,
    /// `nextCursor` from the previous page.
    pub cursor: Option<String>,
}

/// The caller's jobs, newest first.
#[utoipa::path(
    get, path = "/api/jobs", tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Bad filter or cursor", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/jobs")]
pub async fn list(
    state: web::Data<AppState>,
    user: AuthUser,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = service::list(&state, &user.0, q.status.as_deref(), q.limit, q.cursor.as_deref()).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// Cancel a queued or processing job. A processing one ends `canceled` at once; its worker
/// cancels the request at fal within a few seconds and stores nothing.
#[utoipa::path(
    delete, path = "/api/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "Canceled", body = JobView),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "No such job, or not yours", body = ErrorBody),
        (status = 409, description = "`job-not-cancelable`: already finished", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/api/jobs/{job_id}")]
pub async fn cancel(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = service::parse_job_id(&path)?;
    Ok(HttpResponse::Ok().json(service::cancel(&state, &user.0, id).await?))
}
