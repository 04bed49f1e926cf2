//! Bearer authentication: API keys, or identity-provider JWTs ([`crate::jwt`]). A middleware resolves the key before any extractor runs (so
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
    let fits = !token.is_empty() && token.len() <= crate::jwt::MAX_TOKEN_BYTES;
    (scheme.eq_ignore_ascii_case("bearer") && fits).then(|| token.to_owned())
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

/// What a bearer token can be, judged from its shape alone (no I/O).
enum Credential {
    ApiKey(String),
    Jwt(String),
}

fn credential(req: &ServiceRequest, state: &AppState) -> Option<Credential> {
    let token = bearer(req)?;
    if is_key_shaped(&token) {
        Some(Credential::ApiKey(token))
    } else if state.jwt.is_some() && crate::jwt::looks_like_jwt(&token) {
        Some(Credential::Jwt(token))
    } else {
        None
    }
}

/// The user a credential names: `None` when it names nobody (unknown or revoked key, a token
/// that does not verify).
async fn resolve(state: &AppState, credential: Credential) -> Result<Option<User>, ApiError> {
    match credential {
        Credential::ApiKey(key) => {
            let hash = jewelshot_db::users::hash_key(&key);
            let known = match state.auth_cache.single_flight(&hash, || state.db.user_by_api_key(&key)).await {
                Ok(known) => known,
                Err(Some(e)) => return Err(e.into()),
                Err(None) => {
                    return Err(ApiError::Unavailable {
                        code: codes::DATABASE_UNAVAILABLE,
                        what: "the database",
                        retry_after_secs: 2,
                        cause: "a concurrent lookup of this key just failed".into(),
                    })
                }
            };
            Ok(match known {
                crate::auth_cache::Cached::User(u) => Some(u),
                crate::auth_cache::Cached::Unknown => None,
            })
        }
        Credential::Jwt(token) => {
            let Some(verifier) = &state.jwt else { return Ok(None) };
            let identity = match verifier.verify(&token).await {
                Ok(identity) => identity,
                Err(crate::jwt::JwtError::KeysUnavailable(cause)) => {
                    return Err(ApiError::Unavailable {
                        code: codes::SERVICE_UNAVAILABLE,
                        what: "the identity provider's keys",
                        retry_after_secs: 5,
                        cause,
                    })
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bearer JWT refused");
                    return Ok(None);
                }
            };
            let s = verifier.settings();
            let plan = identity.plan.as_deref().unwrap_or(&s.default_plan);
            // The token was verified here; only the user it maps to is cached (by issuer,
            // subject and the plan it claims, so a plan change at the provider is seen).
            let cache_key = format!("jwt\u{0}{}\u{0}{}\u{0}{plan}", identity.issuer, identity.subject);
            if let Some(crate::auth_cache::Cached::User(u)) = state.auth_cache.get(&cache_key) {
                return Ok(Some(u));
            }
            let user = state
                .db
                .user_for_identity(
                    &identity.issuer,
                    &identity.subject,
                    identity.email.as_deref(),
                    plan,
                    identity.plan.is_some(),
                )
                .await?;
            state.auth_cache.put_user(cache_key, user.clone(), String::new());
            Ok(Some(user))
        }
    }
}

/// Middleware: resolve the bearer credential for `/api/…` routes or answer 401. A token that
/// can be neither a key nor a JWT is refused before any I/O; an address that failed too often
/// is refused before the lookup (429), so guessing keys costs the database nothing.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if needs_auth(req.path()) {
        let state =
            req.app_data::<Data<AppState>>().cloned().ok_or_else(|| ApiError::Internal("no app state".into()))?;
        let Some(credential) = credential(&req, &state) else {
            return Err(refuse(&state).await.into());
        };
        let ip = client_ip(&req, &state.trusted_proxies);
        if let Some(wait) = ip.and_then(|ip| state.auth_blocked(ip)) {
            // As late as a 401: a blocked address must not flood at full speed instead.
            refusal_delay(&state).await;
            return Err(ApiError::TooManyRequests {
                code: codes::TOO_MANY_AUTH_FAILURES,
                message: "too many unknown keys from your address; try again later".into(),
                retry_after_secs: wait.as_secs().max(1),
                rate: None,
            }
            .into());
        }
        let Some(user) = resolve(&state, credential).await? else {
            if let Some(ip) = ip {
                state.auth_failed(ip).await;
            }
            return Err(refuse(&state).await.into());
        };
        req.extensions_mut().insert(AuthUser(user));
    }
    next.call(req).await
}

/// Wait `refused_auth_delay_ms` before a refusal is answered.
pub async fn refusal_delay(state: &AppState) {
    let delay = state.cfg.limits.refused_auth_delay_ms;
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
}

/// A 401, after [`refusal_delay`].
async fn refuse(state: &AppState) -> ApiError {
    refusal_delay(state).await;
    ApiError::Unauthorized
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(req.extensions().get::<AuthUser>().cloned().ok_or(ApiError::Unauthorized))
    }
}
