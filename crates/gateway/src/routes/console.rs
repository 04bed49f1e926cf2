//! `/admin`: the operator console (see [`crate::console`]) — its page and its JSON API, which
//! takes an operator token, never a user's key.

use actix_web::{get, http::header, post, web, HttpResponse};

use super::client::asset;
use crate::{console, console::Operator, error::ApiError, service, state::AppState};

const PAGE: &str = include_str!("../../assets/web/console.html");
const SCRIPT: &str = include_str!("../../assets/web/console.js");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console page (it asks for the operator token; nothing is shown without one).
#[get("/admin")]
pub async fn page(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.cfg.console.enabled() {
        return Err(ApiError::NotFound);
    }
    Ok(asset("text/html; charset=utf-8", CSP, PAGE))
}

#[get("/admin/console.js")]
pub async fn script() -> HttpResponse {
    asset("application/javascript; charset=utf-8", CSP, SCRIPT)
}

/// Queue depths, the line's head, accounts, workers, running jobs, recent failures, the seven
/// metrics.
#[get("/admin/api/overview")]
pub async fn overview(state: web::Data<AppState>, _: Operator) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(console::overview(&state).await?))
}

/// Requeue a failed (or stuck) job: `jewelshot requeue --job ID`.
#[post("/admin/api/jobs/{job_id}/requeue")]
pub async fn requeue(
    state: web::Data<AppState>,
    _: Operator,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = service::parse_job_id(&path)?;
    Ok(HttpResponse::Ok().json(console::requeue(&state, id).await?))
}

/// Cancel a job: `jewelshot jobs cancel ID`.
#[post("/admin/api/jobs/{job_id}/cancel")]
pub async fn cancel(
    state: web::Data<AppState>,
    _: Operator,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = service::parse_job_id(&path)?;
    Ok(HttpResponse::Ok().json(console::cancel(&state, id).await?))
}
