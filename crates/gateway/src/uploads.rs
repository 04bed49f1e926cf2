//! Uploads and the gallery: read a body with a hard cap (raw or multipart), compress it on the
//! bounded image pool, account it against the user's quota, store it.

use jewelshot_domain::error_code as codes;
use std::time::Duration;

use actix_web::{http::header, web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use jewelshot_db::users::User;
use jewelshot_storage::{upload_key, ObjectKey};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{error::ApiError, state::AppState};

/// `POST /api/uploads` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadView {
    pub id: String,
    /// Pass this as `image_url` to `POST /api/ai/edit`.
    pub url: String,
    pub width: u32,
    pub height: u32,
    /// Stored size after compression.
    pub bytes: u64,
    /// Size as uploaded.
    pub original_bytes: u64,
    pub content_type: String,
}

/// One saved image. An image a job's own request made has an id of its own; a job completed from
/// the result cache is its own entry (its `id` is the job's, its `createdAt` the submit's).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GalleryItem {
    pub id: String,
    pub job_id: Option<String>,
    pub url: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub bytes: i64,
    pub content_type: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A page of the gallery, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GalleryPage {
    pub images: Vec<GalleryItem>,
    pub next_cursor: Option<String>,
}

/// The caller's storage use.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageView {
    pub bytes: i64,
    pub objects: i64,
    /// Absent when unlimited.
    pub quota_bytes: Option<i64>,
}

/// Read the image bytes of an upload: a raw body (`image/*` or `application/octet-stream`) or
/// the first file part of `multipart/form-data`. Never buffers more than `max` bytes, nor reads
/// more than `max` bytes of other parts or more than `max_parts` parts before the file.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
    max_parts: usize,
) -> Result<Bytes, ApiError> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max + 64 * 1024) {
        return Err(ApiError::TooLarge(max));
    }
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("multipart/form-data") {
        let mut form = actix_multipart::Multipart::new(req.headers(), payload);
        let (mut parts, mut skipped) = (0usize, 0usize);
        while let Some(field) = form.next().await {
            let mut field =
                field.map_err(|e| ApiError::BadRequest { code: codes::INVALID_MULTIPART, message: e.to_string() })?;
            parts += 1;
            if parts > max_parts {
                return Err(ApiError::BadRequest {
                    code: codes::INVALID_MULTIPART,
                    message: format!("the form has more than {max_parts} parts"),
                });
            }
            let is_file =
                field.content_disposition().and_then(|d| d.get_filename()).is_some() || field.name() == Some("file");
            if !is_file {
                // Read and dropped, but counted: other parts cannot stream without end.
                while let Some(chunk) = field.next().await {
                    let chunk = chunk
                        .map_err(|e| ApiError::BadRequest { code: codes::INVALID_MULTIPART, message: e.to_string() })?;
                    skipped += chunk.len();
                    if skipped > max {
                        return Err(ApiError::TooLarge(max));
                    }
                }
                continue;
            }
            let mut buf = BytesMut::new();
            while let Some(chunk) = field.next().await {
                let chunk = chunk
                    .map_err(|e| ApiError::BadRequest { code: codes::INVALID_MULTIPART, message: e.to_string() })?;
                if buf.len() + chunk.len() > max {
                    return Err(ApiError::TooLarge(max));
                }
                buf.extend_from_slice(&chunk);
            }
            return Ok(buf.freeze());
        }
        return Err(ApiError::BadRequest {
            code: codes::MISSING_FILE,
            message: "the form has no file part (name it `file`)".into(),
        });
    }
    if !(ct.is_empty() || ct.starts_with("image/") || ct.starts_with("application/octet-stream")) {
        return Err(ApiError::UnsupportedMediaType(
            "send the image as the raw body (image/*) or as multipart/form-data with a `file` part".into(),
        ));
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(max));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest { code: codes::INVALID_BODY, message: e.to_string() })?;
        if buf.len() + chunk.len() > max {
            return Err(ApiError::TooLarge(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Refuse an upload from a user already at their quota, before reading or compressing anything
/// (the exact size is reserved after compression, in [`upload`]).
pub async fn check_quota(state: &AppState, user: &User) -> Result<(), ApiError> {
    let Some(quota) = state.cfg.uploads.quota() else { return Ok(()) };
    let usage = state.db.storage_usage(user.id).await?;
    if usage.bytes >= quota {
        return Err(ApiError::Forbidden {
            code: codes::STORAGE_QUOTA_EXCEEDED,
            message: format!("your storage quota of {quota} bytes is used up; delete images to upload more"),
        });
    }
    Ok(())
}

/// Compress on the bounded pool (never on an async thread), reserve quota, store, record.
pub async fn upload(state: &AppState, user: &User, body: Bytes) -> Result<UploadView, ApiError> {
    metrics::counter!(jewelshot_domain::metric_names::BANDWIDTH, "direction" => "uploads_received")
        .increment(body.len() as u64);
    let limits = state.cfg.images;
    let wait = Duration::from_millis(state.cfg.uploads.queue_timeout_ms);
    let permit = tokio::time::timeout(wait, state.image_slots.acquire())
        .await
        .map_err(|_| ApiError::Unavailable {
            code: codes::SERVICE_UNAVAILABLE,
            what: "image processing",
            retry_after_secs: 5,
            cause: "all image slots busy".into(),
        })?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let image = tokio::task::spawn_blocking(move || jewelshot_imaging::compress(&body, &limits))
        .await
        .map_err(|e| ApiError::Internal(format!("image task: {e}")))??;
    drop(permit);

    let size = image.bytes.len() as i64;
    // What fal will read when a job names this upload: the result cache's content key.
    let digest = jewelshot_domain::cache::content_digest(&image.bytes);
    if !state.db.reserve_storage(user.id, size, state.cfg.uploads.quota()).await? {
        return Err(ApiError::Forbidden {
            code: codes::STORAGE_QUOTA_EXCEEDED,
            message: format!(
                "storing this image ({size} bytes) would exceed your storage quota of {} bytes",
                state.cfg.uploads.quota_bytes_per_user
            ),
        });
    }
    let id = ulid::Ulid::generate().to_string();
    let key = upload_key(&user.id.to_string(), &id, image.extension)?;
    let stored = async {
        state.store.put(&key, Bytes::from(image.bytes), image.content_type).await?;
        let row = state
            .db
            .insert_upload(
                &id,
                user.id,
                key.as_str(),
                image.content_type,
                size,
                image.original_bytes as i64,
                image.width as i32,
                image.height as i32,
                &digest,
            )
            .await;
        if row.is_err() {
            // Nothing half-written: the object goes with its record.
            let _ = state.store.delete(&key).await;
        }
        row?;
        Ok::<_, ApiError>(())
    }
    .await;
    if let Err(e) = stored {
        let _ = state.db.release_storage(user.id, size).await;
        return Err(e);
    }
    Ok(UploadView {
        url: state.store.url(&key).await?,
        id,
        width: image.width,
        height: image.height,
        bytes: size as u64,
        original_bytes: image.original_bytes as u64,
        content_type: image.content_type.to_owned(),
    })
}

pub async fn gallery(
    state: &AppState,
    user: &User,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<GalleryPage, ApiError> {
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest {
            code: codes::INVALID_LIMIT,
            message: "`limit` must be between 1 and 100".into(),
        });
    }
    let cursor = cursor.filter(|c| !c.is_empty());
    if jewelshot_domain::edit::grammar::parse_cursor(cursor).is_err() {
        return Err(ApiError::BadRequest {
            code: codes::INVALID_CURSOR,
            message: "`cursor` is not a cursor this API returned".into(),
        });
    }
    let rows = state.db.list_gallery(user.id, cursor, limit).await?;
    let mut images = Vec::with_capacity(rows.len());
    for r in &rows {
        let url = match ObjectKey::new(r.storage_key.clone()) {
            Ok(k) => state.store.url(&k).await?,
            Err(_) => r.url.clone(),
        };
        images.push(GalleryItem {
            id: r.id.clone(),
            job_id: r.job_id.clone(),
            url,
            width: r.width,
            height: r.height,
            bytes: r.bytes,
            content_type: r.content_type.clone(),
            created_at: r.created_at,
        });
    }
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id.clone())).flatten();
    Ok(GalleryPage { images, next_cursor })
}

/// Delete one of the caller's gallery images. Its object is deleted (by the workers' upkeep,
/// after a grace period) only when no other gallery entry and no cache entry refers to it: a
/// cache hit of another job — another user's, with a shared cache — keeps its image.
pub async fn delete_gallery_image(state: &AppState, user: &User, id: &str) -> Result<(), ApiError> {
    if jewelshot_domain::edit::grammar::parse_cursor(Some(id)).ok().flatten().is_none() {
        return Err(ApiError::ImageNotFound);
    }
    let deleted = state.db.delete_gallery_image(user.id, id).await?.ok_or(ApiError::ImageNotFound)?;
    tracing::debug!(image = id, key = %deleted.storage_key, orphaned = deleted.orphaned, "gallery image deleted");
    Ok(())
}

pub async fn storage(state: &AppState, user: &User) -> Result<StorageView, ApiError> {
    let u = state.db.storage_usage(user.id).await?;
    Ok(StorageView { bytes: u.bytes, objects: u.objects, quota_bytes: state.cfg.uploads.quota() })
}
