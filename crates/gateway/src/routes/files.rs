//! `GET /files/{key}?expires=…&sig=…`: the local-filesystem store, served the way a CDN serves a
//! private bucket — only with a signed URL that has not expired (the URLs clients get are
//! signed: upload answers, job views, the gallery, webhooks). Objects are immutable once written;
//! `Cache-Control` lasts as long as the URL does.

use actix_web::{get, web, HttpResponse};
use jewelshot_domain::error_code as codes;
use jewelshot_storage::ObjectKey;
use serde::Deserialize;

use crate::{error::ApiError, state::AppState};

#[derive(Debug, Deserialize)]
pub struct Signed {
    expires: Option<u64>,
    sig: Option<String>,
}

#[get("/files/{key:.*}")]
pub async fn file(
    state: web::Data<AppState>,
    path: web::Path<String>,
    signed: web::Query<Signed>,
) -> Result<HttpResponse, ApiError> {
    if !state.serve_files {
        return Err(ApiError::NotFound);
    }
    let key = ObjectKey::new(path.into_inner()).map_err(|_| ApiError::NotFound)?;
    let valid_for = match (signed.expires, signed.sig.as_deref()) {
        (Some(expires), Some(sig)) => state.file_urls.verify(key.as_str(), expires, sig),
        _ => None,
    };
    let Some(valid_for) = valid_for else {
        return Err(ApiError::Forbidden {
            code: codes::INVALID_FILE_URL,
            message: "this file URL is unsigned, altered or expired; fetch the job or the gallery again".into(),
        });
    };
    let obj = state.store.get(&key).await?.ok_or(ApiError::NotFound)?;
    metrics::counter!(jewelshot_domain::metric_names::BANDWIDTH, "direction" => "files_served")
        .increment(obj.body.len() as u64);
    Ok(HttpResponse::Ok()
        .content_type(obj.content_type)
        .insert_header(("Cache-Control", format!("private, max-age={valid_for}, immutable")))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(obj.body))
}
