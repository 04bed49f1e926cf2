//! Bearer API-key authentication. A middleware resolves the key before any extractor runs (so
//! an unauthenticated request gets 401, never a body-parsing error), and [`AuthUser`] hands the
//! resolved user to handlers.

use std::{
    future::{ready, Ready},
    net::IpAddr,
};

use actix_web::{
    body::MessageBody,
    dev::{Payload, ServiceRequest, ServiceResponse},
    middleware::Next,
    web::Data,
    FromRequest, HttpMessage, HttpRequest,
};
use jewelshot_db::users::{is_key_shaped, User};
use jewelshot_domain::error_code as codes;

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

/// The client's address: the peer's, or — when the peer is a trusted proxy — the nearest
/// address in `X-Forwarded-For` that is not one of ours (walking from the right: the left end is
/// whatever the client chose to write).
pub fn client_ip(req: &ServiceRequest, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let forwarded = req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
    let hops = forwarded.iter().flat_map(|v| v.split(',')).map(str::trim).collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(peer)
}

/// Middleware: resolve the bearer key for `/api/…` routes or answer 401. A token that cannot be
/// a key is refused before any I/O; an address that failed too often is refused before the
/// lookup (429), so guessing keys costs the database nothing.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if needs_auth(req.path()) {
        let token = bearer(&req).filter(|t| is_key_shaped(t)).ok_or(ApiError::Unauthorized)?;
        let state =
            req.app_data::<Data<AppState>>().cloned().ok_or_else(|| ApiError::Internal("no app state".into()))?;
        let ip = client_ip(&req, &state.trusted_proxies);
        if let Some(wait) = ip.and_then(|ip| state.auth_blocked(ip)) {
            return Err(ApiError::TooManyRequests {
                code: codes::TOO_MANY_AUTH_FAILURES,
                message: "too many unknown keys from your address; try again later".into(),
                retry_after_secs: wait.as_secs().max(1),
                rate: None,
            }
            .into());
        }
        let Some(user) = state.db.user_by_api_key(&token).await.map_err(ApiError::from)? else {
            if let Some(ip) = ip {
                state.auth_failed(ip).await;
            }
            return Err(ApiError::Unauthorized.into());
        };
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
