//! `/api/uploads`, `/api/gallery`, `/api/storage`.

use std::time::Duration;

use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use jewelshot_domain::error_code as codes;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::{
    auth::AuthUser,
    error::ApiError,
    openapi::ErrorBody,
    state::AppState,
    uploads::{self, GalleryPage, StorageView, UploadView},
};

/// Upload a photo (raw body or multipart `file`); it is compressed and stored.
#[utoipa::path(
    post, path = "/api/uploads", tag = "images",
    request_body(content = Vec<u8>, content_type = "image/jpeg", description = "JPEG, PNG, WebP or a still GIF, raw or as multipart/form-data `file`"),
    responses(
        (status = 201, description = "Stored", body = UploadView),
        (status = 400, description = "Empty, truncated or corrupt image, or too many pixels", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "Storage quota exceeded (checked before the body is read)", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `body_timeout_ms`", body = ErrorBody),
        (status = 413, description = "Body over the limit (25 MB)", body = ErrorBody),
        (status = 415, description = "Not an image, or an unsupported format", body = ErrorBody),
        (status = 429, description = "Too many uploads in progress for this user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/api/uploads")]
pub async fn upload(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // Everything that can refuse the upload does so before a byte of the body is read.
    let _slot = state.upload_slot(user.0.id).ok_or_else(|| ApiError::TooManyRequests {
        code: codes::TOO_MANY_UPLOADS,
        message: format!(
            "you already have {} uploads in progress; send the next when one finishes",
            state.cfg.uploads.max_concurrent_per_user
        ),
        retry_after_secs: 1,
        rate: None,
    })?;
    uploads::check_quota(&state, &user.0).await?;
    let limits = &state.cfg.uploads;
    let read = uploads::read_body(&req, payload, state.cfg.images.max_input_bytes, limits.max_multipart_parts);
    let body = tokio::time::timeout(Duration::from_millis(limits.body_timeout_ms), read)
        .await
        .map_err(|_| ApiError::BodyTimeout(limits.body_timeout_ms))??;
    let stored = uploads::upload(&state, &user.0, body).await?;
    Ok(HttpResponse::Created().insert_header(("Location", stored.url.clone())).json(stored))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GalleryQuery {
    /// Page size, 1-100 (default 20).
    #[serde(default, deserialize_with = "jewelshot_domain::edit::integral_text")]
    pub limit: Option<i64>,
    /// `nextCursor` from the previous page.
    pub cursor: Option<String>,
}

/// The caller's saved images (edit results), newest first.
#[utoipa::path(
    get, path = "/api/gallery", tag = "images",
    params(GalleryQuery),
    responses(
        (status = 200, description = "A page of images", body = GalleryPage),
        (status = 400, description = "`invalid-limit` or `invalid-cursor`", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/gallery")]
pub async fn gallery(
    state: web::Data<AppState>,
    user: AuthUser,
    q: web::Query<GalleryQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(uploads::gallery(&state, &user.0, q.limit, q.cursor.as_deref()).await?))
}

/// Delete one of the caller's gallery images. The stored image goes only when nothing else
/// refers to it (a cache hit of another job keeps it).
#[utoipa::path(
    delete, path = "/api/gallery/{image_id}", tag = "images",
    params(("image_id" = String, Path, description = "The image's `id` from the gallery")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 404, description = "`image-not-found`: no such image of the caller's", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/api/gallery/{image_id}")]
pub async fn delete_image(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    uploads::delete_gallery_image(&state, &user.0, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller's storage use and quota.
#[utoipa::path(
    get, path = "/api/storage", tag = "images",
    responses((status = 200, description = "Usage", body = StorageView), (status = 401, description = "No or bad API key", body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/api/storage")]
pub async fn storage(state: web::Data<AppState>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(uploads::storage(&state, &user.0).await?))
}
