//! Every stable error code the system answers or records, in one place: its spelling, the HTTP
//! status the API answers with it, and what it means. Clients branch on these strings, so they
//! never change; `docs/error-codes.md` is generated from [`ALL`] (a test keeps it current).
//!
//! API answers carry a code as `{"error": {"code", "message"}}`; a failed job carries one as
//! `error.code` (those with status 0 are only ever found there).

/// One code and what it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: &'static str,
    /// The HTTP status the API answers with this code; 0 for codes only a failed job carries.
    pub status: u16,
    /// Where it appears: `api`, `job` (a failed job's `error`), `notification` (a webhook
    /// delivery's `error`).
    pub seen_in: &'static str,
    pub meaning: &'static str,
}

macro_rules! codes {
    ($( $name:ident = $code:literal, $status:literal, $seen:literal, $meaning:literal; )*) => {
        $( #[doc = $meaning] pub const $name: &str = $code; )*
        /// Every code, in the order of the table.
        pub const ALL: &[ErrorCode] = &[ $( ErrorCode { code: $code, status: $status, seen_in: $seen, meaning: $meaning } ),* ];
    };
}

codes! {
    // Requests the API cannot read.
    INVALID_JSON = "invalid-json", 400, "api", "The body is not JSON, or not the JSON this route reads.";
    INVALID_QUERY = "invalid-query", 400, "api", "A query parameter could not be read.";
    INVALID_BODY = "invalid-body", 400, "api", "The request body could not be read to its end.";
    INVALID_MULTIPART = "invalid-multipart", 400, "api", "A multipart upload is malformed.";
    MISSING_FILE = "missing-file", 400, "api", "A multipart upload has no file part.";
    INVALID_LIMIT = "invalid-limit", 400, "api", "`limit` is out of range.";
    INVALID_CURSOR = "invalid-cursor", 400, "api", "`cursor` is not one this API returned.";
    INVALID_STATUS = "invalid-status", 400, "api", "`status` is not a job status.";
    INVALID_IDEMPOTENCY_KEY = "invalid-idempotency-key", 400, "api", "`Idempotency-Key` is not 1-255 visible ASCII characters.";
    // Edit requests that fail validation (the answer names the field).
    INVALID_PROMPT = "invalid-prompt", 400, "api", "`prompt` is missing, too long or holds control characters.";
    INVALID_IMAGE_URL = "invalid-image-url", 400, "api", "`image_url` is not an http(s) URL the system may fetch.";
    INVALID_PRIORITY = "invalid-priority", 400, "api", "`priority` is neither `normal` nor `high`.";
    INVALID_WEBHOOK_URL = "invalid-webhook-url", 400, "api", "`webhook_url` is not https, or resolves to an internal address.";
    INVALID_SCHEDULE = "invalid-schedule", 400, "api", "`run_at` is not an RFC 3339 time in the allowed window.";
    // Images.
    INVALID_IMAGE = "invalid-image", 400, "api", "The image is empty, truncated or corrupt.";
    IMAGE_TOO_LARGE = "image-too-large", 400, "api", "The image (or a GIF frame) has more pixels than allowed (50 MP), or a PNG, WebP or GIF would take more memory to decode than allowed (96 MiB).";
    IMAGE_TOO_COMPLEX = "image-too-complex", 400, "api", "A JPEG with more scans than any photo has (over 100): each scan is a pass over the whole image.";
    PAYLOAD_TOO_LARGE = "payload-too-large", 413, "api", "The body is larger than the route accepts.";
    UNSUPPORTED_MEDIA_TYPE = "unsupported-media-type", 415, "api", "The `Content-Type` is not one the route reads.";
    NOT_AN_IMAGE = "not-an-image", 415, "api", "The upload is not an image.";
    UNSUPPORTED_IMAGE_FORMAT = "unsupported-image-format", 415, "api", "An image format the system does not decode (e.g. HEIC).";
    // Who may do what.
    UNAUTHORIZED = "unauthorized", 401, "api", "No API key, or one that is unknown or revoked.";
    PRIORITY_NOT_ALLOWED = "priority-not-allowed", 403, "api", "The user's plan may not submit `high` priority.";
    STORAGE_QUOTA_EXCEEDED = "storage-quota-exceeded", 403, "api", "Storing the upload would exceed the user's quota.";
    INVALID_FILE_URL = "invalid-file-url", 403, "api", "A `/files/…` URL that is unsigned, altered or expired (fetch a fresh one).";
    JOB_NOT_FOUND = "job-not-found", 404, "api", "No such job for this user.";
    IMAGE_NOT_FOUND = "image-not-found", 404, "api", "No such gallery image for this user.";
    NOT_FOUND = "not-found", 404, "api", "No such route or file.";
    METHOD_NOT_ALLOWED = "method-not-allowed", 405, "api", "The route exists but not with this method; `Allow` lists those it has.";
    JOB_NOT_CANCELABLE = "job-not-cancelable", 409, "api", "The job is final; only queued or processing jobs can be canceled.";
    IDEMPOTENCY_KEY_REUSED = "idempotency-key-reused", 409, "api", "The `Idempotency-Key` was used within 24 h for a different request.";
    JOB_NOT_REQUEUEABLE = "job-not-requeueable", 409, "console", "Only failed jobs, or processing ones whose worker is gone, are requeued.";
    CONSOLE_READ_ONLY = "console-read-only", 403, "console", "The operator console is read-only (`JEWELSHOT_CONSOLE__READ_ONLY`).";
    TOO_MANY_UPLOADS = "too-many-uploads", 429, "api", "The user already has the most uploads in progress that are allowed at once.";
    REQUEST_TIMEOUT = "request-timeout", 408, "api", "The request body did not arrive in time.";
    TOO_MANY_AUTH_FAILURES = "too-many-auth-failures", 429, "api", "Too many unknown keys from this address this minute (see `Retry-After`).";
    RATE_LIMITED = "rate-limited", 429, "api", "Too many submissions this minute (see `Retry-After`).";
    TOO_MANY_QUEUED_JOBS = "too-many-queued-jobs", 429, "api", "The user already has the most jobs waiting that the plan allows.";
    // Dependencies.
    DATABASE_UNAVAILABLE = "database-unavailable", 503, "api", "PostgreSQL did not answer; nothing was written (see `Retry-After`).";
    QUEUE_UNAVAILABLE = "queue-unavailable", 503, "api, job", "Redis (the queue or the upstream limiter) did not answer.";
    NOT_READY = "not-ready", 503, "api", "`/readyz`: a dependency (PostgreSQL, Redis, storage) does not answer.";
    SERVICE_UNAVAILABLE = "service-unavailable", 503, "api", "Storage or image processing is busy or down (see `Retry-After`).";
    INTERNAL = "internal-error", 500, "api, job", "Something of ours failed; the detail is in the logs.";
    // Why a job failed.
    UPSTREAM_INVALID_INPUT = "upstream-invalid-input", 0, "job", "fal refused the input (422): retrying cannot help.";
    UPSTREAM_UNAUTHORIZED = "upstream-unauthorized", 0, "job", "Every fal account's key was refused (401/403).";
    UPSTREAM_UNAVAILABLE = "upstream-unavailable", 0, "job", "fal kept failing (5xx, timeouts, 429) until the attempts ran out.";
    UPSTREAM_BAD_RESPONSE = "upstream-bad-response", 0, "job", "fal answered something unusable (no image, an undecodable or oversized one).";
    STORAGE_FAILED = "storage-failed", 0, "job", "The generated image could not be fetched or stored.";
    POISON_JOB = "poison-job", 0, "job", "The job's worker died during every attempt.";
    // Why a webhook delivery attempt failed (`notification.error.code`).
    WEBHOOK_REJECTED = "webhook-rejected", 0, "notification", "The webhook endpoint answered with a status other than 2xx.";
    WEBHOOK_UNREACHABLE = "webhook-unreachable", 0, "notification", "The webhook endpoint could not be reached, or did not answer within the timeout (10 s).";
    WEBHOOK_FORBIDDEN = "webhook-forbidden", 0, "notification", "The webhook URL now resolves to an address the system never calls (private, loopback, link-local); not retried.";
}

/// The entry for `code`, if it is one of ours.
pub fn lookup(code: &str) -> Option<&'static ErrorCode> {
    ALL.iter().find(|c| c.code == code)
}

/// The HTTP status the API answers with `code` (500 for a code that is not in the table, or
/// one only a job carries).
pub fn status(code: &str) -> u16 {
    lookup(code).map(|c| c.status).filter(|s| *s != 0).unwrap_or(500)
}

/// The table as Markdown (`docs/error-codes.md`).
pub fn markdown() -> String {
    let mut out = String::from(
        "# Error codes\n\nGenerated from `crates/domain/src/error_code.rs` (`JEWELSHOT_BLESS=1 cargo test -p \
         jewelshot-domain` rewrites it). API errors answer `{\"error\": {\"code\", \"message\"}}` with the \
         status below; a failed job carries its code in `error.code`. Codes never change spelling.\n\n\
         | code | HTTP status | seen in | meaning |\n|---|---|---|---|\n",
    );
    for c in ALL {
        let status = if c.status == 0 { "—".to_owned() } else { c.status.to_string() };
        out += &format!("| `{}` | {} | {} | {} |\n", c.code, status, c.seen_in, c.meaning);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_kebab_case_and_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for c in ALL {
            assert!(seen.insert(c.code), "{} is listed twice", c.code);
            assert!(c.code.chars().all(|ch| ch.is_ascii_lowercase() || ch == '-'), "{}", c.code);
            assert!(c.status == 0 || (400..600).contains(&c.status), "{}", c.code);
        }
        assert_eq!(status(JOB_NOT_FOUND), 404);
        assert_eq!(status(POISON_JOB), 500, "a job-only code is no HTTP answer");
        assert_eq!(status("no-such-code"), 500);
    }

    #[test]
    fn the_docs_table_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/error-codes.md");
        let want = markdown();
        if std::env::var_os("JEWELSHOT_BLESS").is_some() {
            std::fs::write(&path, &want).expect("write docs/error-codes.md");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(have == want, "docs/error-codes.md is stale: run JEWELSHOT_BLESS=1 cargo test -p jewelshot-domain");
    }
}
