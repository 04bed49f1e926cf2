//! `GET /api/queue`.

use actix_web::{get, web, HttpResponse};
use jewelshot_domain::view::{QueueView, UpstreamView};

use crate::{auth::AuthUser, error::ApiError, openapi::ErrorBody, state::AppState};

/// Queue depth and the wait a new job would face.
#[utoipa::path(
    get, path = "/api/queue", tag = "queue",
    responses(
        (status = 200, description = "Queue state", body = QueueView),
        (status = 401, description = "No or bad API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/queue")]
pub async fn queue(state: web::Data<AppState>, _user: AuthUser) -> Result<HttpResponse, ApiError> {
    let counts = state.db.queue_counts().await?;
    let mean = state.db.mean_generation_seconds().await?;
    Ok(HttpResponse::Ok().json(QueueView {
        queued: counts.queued,
        processing: counts.processing,
        scheduled: counts.scheduled,
        eta_seconds_for_new_job: state.eta_seconds(counts.queued + 1).await,
        upstream: UpstreamView { model: state.cfg.jobs.model.clone(), mean_generation_seconds: mean },
    }))
}
