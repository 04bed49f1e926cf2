//! Bearer API-key authentication. A middleware resolves the key before any extractor runs (so
//! an unauthenticated request gets 401, never a body-parsing error), and [`AuthUser`] hands the
//! resolved user to handlers.

use std::future::{ready, Ready};

use actix_web::{
    body::MessageBody,
    dev::{Payload, ServiceRequest, ServiceResponse},
    middleware::Next,
    web::Data,
    FromRequest, HttpMessage, HttpRequest,
};
use jewelshot_db::users::{is_key_shaped, User};

use crate::{error::ApiError, state::AppState};

/// The caller, resolved from `Authorization: Bearer <key>`.
#[derive(Debug, Clone)]
pub struct AuthUser(pub User);

fn bearer(req: &ServiceRequest) -> Option<String> {
    let h = req.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 256).then(|| token.to_owned())
}

/// Routes under `/api/` need a key, except the API description.
fn needs_auth(path: &str) -> bool {
    path.starts_with("/api/") && path != "/api/openapi.json"
}

/// Middleware: resolve the bearer key for `/api/…` routes or answer 401.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if needs_auth(req.path()) {
        // A token that cannot be a key is refused here, before any I/O.
        let token = bearer(&req).filter(|t| is_key_shaped(t)).ok_or(ApiError::Unauthorized)?;
        let state =
            req.app_data::<Data<AppState>>().cloned().ok_or_else(|| ApiError::Internal("no app state".into()))?;
        let user = state.db.user_by_api_key(&token).await.map_err(ApiError::from)?.ok_or(ApiError::Unauthorized)?;
        req.extensions_mut().insert(AuthUser(user));
    }
    next.call(req).await
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(req.extensions().get::<AuthUser>().cloned().ok_or(ApiError::Unauthorized))
    }
}
