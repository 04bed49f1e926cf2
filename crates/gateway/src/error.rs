//! One error shape for every 4xx/5xx: `{"error": {"code", "message"}}` (plus `field` for
//! validation errors). 5xx bodies never carry internals; the cause is logged instead.

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use jewelshot_domain::{error_code as codes, ValidationError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("a valid API key or sign-in token is required (Authorization: Bearer <credential>)")]
    Unauthorized,
    #[error("job not found")]
    JobNotFound,
    #[error("gallery image not found")]
    ImageNotFound,
    #[error("not found")]
    NotFound,
    /// The path exists, not the method; the methods it has, for `Allow`.
    #[error("this route does not take that method; it takes {0}")]
    MethodNotAllowed(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Image(#[from] jewelshot_imaging::ImageError),
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{message}")]
    TooManyRequests { code: &'static str, message: String, retry_after_secs: u64, rate: Option<RateHeaders> },
    #[error("{what} is unavailable; try again shortly")]
    Unavailable { code: &'static str, what: &'static str, retry_after_secs: u32, cause: String },
    #[error("internal error")]
    Internal(String),
}

/// A per-user quota as the IETF RateLimit headers describe it
/// (draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy: "name";q=;w=`, `RateLimit: "name";r=;t=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    pub policy: &'static str,
    pub limit: u32,
    pub window_secs: u64,
    pub remaining: u32,
    pub reset_secs: u64,
}

impl RateHeaders {
    pub fn apply(&self, resp: &mut actix_web::HttpResponseBuilder) {
        resp.insert_header((
            "RateLimit-Policy",
            format!("\"{}\";q={};w={}", self.policy, self.limit, self.window_secs),
        ));
        resp.insert_header(("RateLimit", format!("\"{}\";r={};t={}", self.policy, self.remaining, self.reset_secs)));
    }
}

impl ApiError {
    /// The stable code; its HTTP status comes from the one table of codes
    /// ([`jewelshot_domain::error_code`]).
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooManyRequests { code, .. } => code,
            Self::Invalid(v) => v.code,
            Self::BadRequest { code, .. } | Self::Conflict { code, .. } | Self::Forbidden { code, .. } => code,
            Self::Unavailable { code, .. } => code,
            Self::Unauthorized => codes::UNAUTHORIZED,
            Self::JobNotFound => codes::JOB_NOT_FOUND,
            Self::ImageNotFound => codes::IMAGE_NOT_FOUND,
            Self::NotFound => codes::NOT_FOUND,
            Self::MethodNotAllowed(_) => codes::METHOD_NOT_ALLOWED,
            Self::TooLarge(_) => codes::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => codes::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => codes::UNSUPPORTED_MEDIA_TYPE,
            Self::Image(e) => e.code(),
            Self::Internal(_) => codes::INTERNAL,
        }
    }
}

impl From<jewelshot_db::DbError> for ApiError {
    fn from(e: jewelshot_db::DbError) -> Self {
        if let jewelshot_db::DbError::QueuedCapReached { cap } = e {
            return Self::TooManyRequests {
                code: codes::TOO_MANY_QUEUED_JOBS,
                message: format!("you already have {cap} jobs waiting; submit more as they finish"),
                retry_after_secs: 30,
                rate: None,
            };
        }
        if e.is_unavailable() {
            Self::Unavailable {
                code: codes::DATABASE_UNAVAILABLE,
                what: "the database",
                retry_after_secs: 2,
                cause: e.to_string(),
            }
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl From<jewelshot_queue::QueueError> for ApiError {
    fn from(e: jewelshot_queue::QueueError) -> Self {
        Self::Unavailable {
            code: codes::QUEUE_UNAVAILABLE,
            what: "the queue",
            retry_after_secs: 2,
            cause: e.to_string(),
        }
    }
}

impl From<jewelshot_storage::StorageError> for ApiError {
    fn from(e: jewelshot_storage::StorageError) -> Self {
        Self::Unavailable {
            code: codes::SERVICE_UNAVAILABLE,
            what: "storage",
            retry_after_secs: 2,
            cause: e.to_string(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(codes::status(self.code())).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        match self {
            Self::Invalid(v) => body["error"]["field"] = json!(v.field),
            Self::Unavailable { cause, .. } => tracing::warn!(code = self.code(), %cause, "dependency unavailable"),
            Self::Internal(cause) => tracing::error!(%cause, "internal error"),
            Self::Image(e @ jewelshot_imaging::ImageError::Internal(_)) => {
                tracing::error!(error = %e, "image processing failed")
            }
            _ => {}
        }
        let mut resp = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized => {
                resp.insert_header(("WWW-Authenticate", "Bearer"));
            }
            Self::MethodNotAllowed(allow) => {
                resp.insert_header(("Allow", allow.as_str()));
            }
            Self::Unavailable { retry_after_secs, .. } => {
                resp.insert_header(("Retry-After", retry_after_secs.to_string()));
            }
            Self::TooManyRequests { retry_after_secs, rate, .. } => {
                resp.insert_header(("Retry-After", retry_after_secs.max(&1).to_string()));
                if let Some(r) = rate {
                    r.apply(&mut resp);
                }
            }
            _ => {}
        }
        resp.json(body)
    }
}

/// Map actix's JSON extractor failures onto our shape: 415, 413 or 400 `invalid-json`.
pub fn json_error(err: actix_web::error::JsonPayloadError, limit: usize) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let api = match &err {
        J::ContentType => ApiError::UnsupportedMediaType("Content-Type must be application/json".into()),
        J::Overflow { .. } | J::OverflowKnownLength { .. } => ApiError::TooLarge(limit),
        J::Deserialize(e) => ApiError::BadRequest {
            code: codes::INVALID_JSON,
            message: format!("request body is not valid JSON for this route: {e}"),
        },
        other => ApiError::BadRequest {
            code: codes::INVALID_JSON,
            message: format!("could not read the request body: {other}"),
        },
    };
    api.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jewelshot_imaging::ImageError;

    #[test]
    fn every_code_the_gateway_answers_is_in_the_table_with_its_status() {
        let image = [
            ImageError::Empty,
            ImageError::Corrupt("x".into()),
            ImageError::TooManyBytes { len: 2, limit: 1 },
            ImageError::TooManyPixels { width: 2, height: 2, limit: 1 },
            ImageError::NotAnImage,
            ImageError::UnsupportedFormat("heic".into()),
            ImageError::Internal("x".into()),
        ];
        for e in image {
            let entry = codes::lookup(e.code()).unwrap_or_else(|| panic!("{} is not in the table", e.code()));
            assert_eq!(entry.status, e.http_status(), "{}", e.code());
        }
        let fixed = [
            ApiError::Unauthorized,
            ApiError::JobNotFound,
            ApiError::NotFound,
            ApiError::TooLarge(1),
            ApiError::UnsupportedMediaType(String::new()),
            ApiError::Internal(String::new()),
        ];
        let statuses: Vec<u16> = fixed.iter().map(|e| e.status_code().as_u16()).collect();
        assert_eq!(statuses, [401, 404, 404, 413, 415, 500]);
        for e in &fixed {
            assert!(codes::lookup(e.code()).is_some(), "{}", e.code());
        }
    }
}
