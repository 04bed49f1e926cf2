//! `GET /files/{key}`: the local-filesystem store, served the way a CDN would serve a bucket.
//! Keys are derived from ULIDs, so URLs are unguessable; objects are immutable once written.

use actix_web::{get, web, HttpResponse};
use jewelshot_storage::ObjectKey;

use crate::{error::ApiError, state::AppState};

#[get("/files/{key:.*}")]
pub async fn file(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    if !state.serve_files {
        return Err(ApiError::NotFound);
    }
    let key = ObjectKey::new(path.into_inner()).map_err(|_| ApiError::NotFound)?;
    let obj = state.store.get(&key).await?.ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type(obj.content_type)
        .insert_header(("Cache-Control", "public, max-age=31536000, immutable"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(obj.body))
}
