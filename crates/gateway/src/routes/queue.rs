//! `GET /api/queue`.

use actix_web::{get, web, HttpResponse};
use jewelshot_domain::view::{QueueView, UpstreamKeyView, UpstreamView};

use jewelshot_ratelimit::Capacity;

use crate::{auth::AuthUser, error::ApiError, openapi::ErrorBody, state::AppState};

/// Queue depth, the wait a new job would face, and the upstream capacity (fal accounts healthy
/// and total, their combined limits, slots in use).
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
    let counts = state.db.open_counts().await?;
    let mean = state.observed_generation_secs().await;
    let keys = state.upstream_keys().await;
    // No healthy account, or one unlimited one: reported as 0 (unlimited / unknown).
    let cap = Capacity::of(&keys);
    let upstream = UpstreamView {
        model: state.cfg.jobs.model.clone(),
        mean_generation_seconds: mean,
        keys_total: keys.len() as u32,
        keys_healthy: keys.iter().filter(|k| k.healthy).count() as u32,
        per_minute_limit: cap.as_ref().and_then(|c| c.per_minute).unwrap_or(0),
        concurrent_limit: cap.as_ref().and_then(|c| c.concurrent).unwrap_or(0),
        slots_in_use: keys.iter().map(|k| k.in_flight).sum(),
        keys: keys
            .iter()
            .map(|k| UpstreamKeyView {
                id: k.id.clone(),
                healthy: k.healthy,
                cooling_down: k.cooling_down,
                max_per_minute: k.max_per_minute,
                max_concurrent: k.max_concurrent,
                started_in_window: k.started_in_window,
                in_flight: k.in_flight,
            })
            .collect(),
    };
    Ok(HttpResponse::Ok().json(QueueView {
        queued: counts.queued,
        processing: counts.processing,
        scheduled: counts.scheduled,
        eta_seconds_for_new_job: state.eta_seconds(counts.queued + 1).await,
        upstream,
        cache: state.cache_view().await,
    }))
}
