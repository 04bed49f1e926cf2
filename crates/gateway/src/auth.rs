//! Bearer API-key authentication as an extractor: a handler that takes [`AuthUser`] is
//! authenticated before its body is even read.

use std::{future::Future, pin::Pin};

use actix_web::{dev::Payload, web::Data, FromRequest, HttpRequest};
use jewelshot_db::users::User;

use crate::{error::ApiError, state::AppState};

/// The caller, resolved from `Authorization: Bearer <key>`.
#[derive(Debug, Clone)]
pub struct AuthUser(pub User);

fn bearer(req: &HttpRequest) -> Option<String> {
    let h = req.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 256).then(|| token.to_owned())
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer(req);
        let state = req.app_data::<Data<AppState>>().cloned();
        Box::pin(async move {
            let (Some(token), Some(state)) = (token, state) else {
                return Err(ApiError::Unauthorized);
            };
            match state.db.user_by_api_key(&token).await? {
                Some(user) => Ok(AuthUser(user)),
                None => Err(ApiError::Unauthorized),
            }
        })
    }
}
