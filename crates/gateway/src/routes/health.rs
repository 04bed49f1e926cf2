//! Liveness and readiness.

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

/// 200 while the process lives.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive")))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// 200 only when Postgres, Redis and storage all answer; otherwise 503 naming the failing part.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "A dependency is down; `error.message` names it"),
))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let t = Duration::from_millis(state.cfg.gateway.ready_timeout_ms);
    let timed = |r: Result<Result<(), String>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("timed out".to_owned()),
    };
    let (pg, redis, storage) = tokio::join!(
        tokio::time::timeout(t, async { state.db.ping().await.map_err(|e| e.to_string()) }),
        tokio::time::timeout(t, async { state.queue.ping().await.map_err(|e| e.to_string()) }),
        tokio::time::timeout(t, async { state.store.health().await.map_err(|e| e.to_string()) }),
    );
    let checks = [("postgres", timed(pg)), ("redis", timed(redis)), ("storage", timed(storage))];
    let failing: Vec<&str> = checks.iter().filter(|(_, e)| e.is_some()).map(|(n, _)| *n).collect();
    let detail: serde_json::Map<String, serde_json::Value> =
        checks.iter().map(|(n, e)| (n.to_string(), json!(if e.is_some() { "down" } else { "ok" }))).collect();
    if failing.is_empty() {
        return HttpResponse::Ok().json(json!({ "status": "ready", "checks": detail }));
    }
    for (name, err) in &checks {
        if let Some(err) = err {
            tracing::warn!(dependency = name, error = %err, "not ready");
        }
    }
    HttpResponse::ServiceUnavailable().insert_header(("Retry-After", "5")).json(json!({
        "error": { "code": jewelshot_domain::error_code::NOT_READY, "message": format!("unavailable: {}", failing.join(", ")) },
        "checks": detail,
    }))
}
