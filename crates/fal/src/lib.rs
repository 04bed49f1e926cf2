//! # jewelshot-fal
//!
//! A client for fal.ai's queue API (and for our emulator, which speaks the same protocol):
//! submit → poll status → fetch result, and cancel. Every call has a timeout; every error says
//! whether a retry can help.
//!
//! ## Layout
//! - [`FalConfig`] — base URL, model, key, timeouts, and the account pool's limits
//!   (`JEWELSHOT_FAL__*`, key from `FAL_KEY`); [`PoolKeyConfig`] is one pool account,
//!   [`Secret`] a key that never prints; defaults [`DEFAULT_QUEUE_URL`], [`DEFAULT_MODEL`].
//! - [`FalClient`] — the four queue calls (`submit`, `status`, `result`, `cancel`), and
//!   `with_key` for another account on the same connection pool.
//! - Wire types — [`EditInput`] in; [`QueuedRequest`], [`StatusResponse`] / [`RequestState`],
//!   [`EditOutput`] / [`FalImage`] and [`CancelState`] out.
//! - [`FalError`] — typed failures with `code()`, `is_retryable()` and `retry_after()`.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

/// fal's public queue endpoint.
pub const DEFAULT_QUEUE_URL: &str = "https://queue.fal.run";
/// The image-edit model used by default.
pub const DEFAULT_MODEL: &str = "fal-ai/flux-pro/kontext";

/// A secret that never prints.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "<unset>" } else { "<redacted>" })
    }
}

/// Upstream settings (`JEWELSHOT_FAL__*`; the key also from `FAL_KEY`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FalConfig {
    pub queue_url: String,
    pub model: String,
    pub key: Secret,
    /// Per HTTP call (connect + answer), in milliseconds.
    pub request_timeout_ms: u64,
    /// How often to poll a request's status, in milliseconds.
    pub poll_interval_ms: u64,
    /// Give up on one generation after this long, in seconds (then cancel it and retry).
    pub generation_timeout_secs: u64,
    /// The account pool (`JEWELSHOT_FAL__KEYS`, e.g.
    /// `[{id="a", key="…", max_per_minute=15, max_concurrent=4}, {key="…"}]`). Empty: the one
    /// `key` (`FAL_KEY`) with the limits below.
    pub keys: Vec<PoolKeyConfig>,
    /// Requests one account may start per rate window (0 = unlimited); the default for pool
    /// entries that do not say.
    pub max_per_minute: u32,
    /// Requests one account may have in progress at once (0 = unlimited); the default likewise.
    pub max_concurrent: u32,
    /// The upstream's rate window, in milliseconds (60 000 at fal; shorter against a
    /// time-scaled emulator).
    pub rate_window_ms: u64,
    /// An in-flight slot not renewed for this long (its worker died) is freed, in milliseconds.
    pub slot_lease_ms: u64,
    /// A key fal refused (401/403) rests this long before one request tries it again, in seconds.
    pub disabled_recheck_secs: u64,
}

/// One account of the pool. Limits left out take the pool-wide defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolKeyConfig {
    /// A name for logs and metrics; derived from the key when empty (never the key itself).
    pub id: String,
    pub key: Secret,
    pub max_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
}

impl Default for FalConfig {
    fn default() -> Self {
        Self {
            queue_url: DEFAULT_QUEUE_URL.into(),
            model: DEFAULT_MODEL.into(),
            key: Secret::default(),
            request_timeout_ms: 15_000,
            poll_interval_ms: 1_000,
            generation_timeout_secs: 300,
            keys: Vec::new(),
            max_per_minute: 15,
            max_concurrent: 4,
            rate_window_ms: 60_000,
            slot_lease_ms: 120_000,
            disabled_recheck_secs: 600,
        }
    }
}

/// The input of an image-edit model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EditInput {
    pub image_url: String,
    pub prompt: String,
}

/// What fal answers to a submit: where to look for the request from now on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueuedRequest {
    pub request_id: String,
    pub status_url: String,
    pub response_url: String,
    pub cancel_url: String,
    #[serde(default)]
    pub queue_position: Option<i64>,
}

/// Where a request is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RequestState {
    InQueue,
    InProgress,
    Completed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    pub status: RequestState,
    #[serde(default)]
    pub queue_position: Option<i64>,
}

/// One generated image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FalImage {
    pub url: String,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// A finished request's output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EditOutput {
    pub images: Vec<FalImage>,
    #[serde(default)]
    pub seed: Option<u64>,
}

/// How a cancel went.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelState {
    CancellationRequested,
    AlreadyCompleted,
    NotFound,
}

/// A failed upstream call.
#[derive(Debug, thiserror::Error)]
pub enum FalError {
    #[error("fal rejected the key ({status})")]
    Unauthorized { status: u16 },
    #[error("fal refused the input: {detail}")]
    InvalidInput { detail: String },
    #[error("fal rate limit reached")]
    RateLimited { retry_after: Option<Duration> },
    #[error("fal answered {status}: {detail}")]
    Upstream { status: u16, detail: String, retry_after: Option<Duration> },
    #[error("fal did not answer in time")]
    Timeout,
    #[error("could not reach fal: {0}")]
    Network(String),
    #[error("fal answered something unexpected: {0}")]
    BadResponse(String),
    #[error("the request was not found at fal")]
    NotFound,
}

impl FalError {
    /// Stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "upstream-unauthorized",
            Self::InvalidInput { .. } => "upstream-invalid-input",
            Self::RateLimited { .. } => "upstream-rate-limited",
            Self::Upstream { .. } => "upstream-error",
            Self::Timeout => "upstream-timeout",
            Self::Network(_) => "upstream-unreachable",
            Self::BadResponse(_) => "upstream-bad-response",
            Self::NotFound => "upstream-not-found",
        }
    }

    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Timeout | Self::Network(_) => true,
            Self::Upstream { status, .. } => *status >= 500 || *status == 408 || *status == 409,
            Self::Unauthorized { .. } | Self::InvalidInput { .. } | Self::BadResponse(_) | Self::NotFound => false,
        }
    }

    /// The wait fal asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Upstream { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The queue API client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FalClient {
    http: reqwest::Client,
    cfg: FalConfig,
}

impl FalClient {
    pub fn new(cfg: FalConfig) -> Result<Self, FalError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.request_timeout_ms.min(5_000)))
            .user_agent(concat!("jewelshot/", env!("CARGO_PKG_VERSION")))
            // fal's queue API does not redirect; a redirect is never followed with our key.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| FalError::Network(e.to_string()))?;
        Ok(Self { http, cfg })
    }

    pub fn config(&self) -> &FalConfig {
        &self.cfg
    }

    /// The same client speaking for another account (shares the connection pool).
    pub fn with_key(&self, key: Secret) -> Self {
        Self { http: self.http.clone(), cfg: FalConfig { key, keys: Vec::new(), ..self.cfg.clone() } }
    }

    /// `POST {queue_url}/{model}`: enqueue a generation. This is the call fal bills. The URLs
    /// fal answers with must be on the queue's own origin (see [`FalClient::on_queue_origin`]).
    pub async fn submit(&self, input: &EditInput) -> Result<QueuedRequest, FalError> {
        let url = format!("{}/{}", self.cfg.queue_url.trim_end_matches('/'), self.cfg.model);
        let resp = self.http.post(url).header("Authorization", self.auth()).json(input).send().await;
        let queued: QueuedRequest = decode(resp).await?;
        for u in [&queued.status_url, &queued.response_url, &queued.cancel_url] {
            self.on_queue_origin(u)?;
        }
        Ok(queued)
    }

    /// `GET {status_url}`.
    pub async fn status(&self, req: &QueuedRequest) -> Result<StatusResponse, FalError> {
        let url = self.on_queue_origin(&req.status_url)?;
        decode(self.http.get(url).header("Authorization", self.auth()).send().await).await
    }

    /// `GET {response_url}`: the output of a completed request (or its failure).
    pub async fn result(&self, req: &QueuedRequest) -> Result<EditOutput, FalError> {
        let url = self.on_queue_origin(&req.response_url)?;
        decode(self.http.get(url).header("Authorization", self.auth()).send().await).await
    }

    /// `url` if it is on the configured queue's origin (scheme, host and port): the key goes
    /// nowhere else, whatever a response (or a stored checkpoint) says.
    pub fn on_queue_origin(&self, url: &str) -> Result<url::Url, FalError> {
        let foreign = || FalError::BadResponse(format!("fal named a URL off its queue's host: {url}"));
        let ours = url::Url::parse(&self.cfg.queue_url).map_err(|e| FalError::BadResponse(e.to_string()))?;
        let theirs = url::Url::parse(url).map_err(|_| foreign())?;
        let same = theirs.scheme() == ours.scheme()
            && theirs.host_str() == ours.host_str()
            && theirs.port_or_known_default() == ours.port_or_known_default()
            && theirs.username().is_empty()
            && theirs.password().is_none();
        if same {
            Ok(theirs)
        } else {
            Err(foreign())
        }
    }

    /// `PUT {cancel_url}`. fal answers 202/400/404 with a `status` body; all three are answers.
    pub async fn cancel(&self, req: &QueuedRequest) -> Result<CancelState, FalError> {
        #[derive(Deserialize)]
        struct Answer {
            status: CancelState,
        }
        let url = self.on_queue_origin(&req.cancel_url)?;
        let resp = self.http.put(url).header("Authorization", self.auth()).send().await.map_err(map_transport)?;
        let status = resp.status().as_u16();
        let wait = retry_after(resp.headers());
        let body = resp.bytes().await.map_err(map_transport)?;
        match serde_json::from_slice::<Answer>(&body) {
            Ok(a) => Ok(a.status),
            Err(_) => Err(error_for(status, wait, &body)),
        }
    }

    fn auth(&self) -> String {
        format!("Key {}", self.cfg.key.0)
    }
}

fn map_transport(e: reqwest::Error) -> FalError {
    if e.is_timeout() {
        FalError::Timeout
    } else {
        FalError::Network(e.to_string())
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
}

/// Turn an answer into `T` or a typed error; reads at most what `reqwest`'s timeout allows.
async fn decode<T: serde::de::DeserializeOwned>(
    resp: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, FalError> {
    let resp = resp.map_err(map_transport)?;
    let status = resp.status().as_u16();
    let wait = retry_after(resp.headers());
    let body = resp.bytes().await.map_err(map_transport)?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&body).map_err(|e| FalError::BadResponse(e.to_string()));
    }
    Err(error_for(status, wait, &body))
}

fn error_for(status: u16, wait: Option<Duration>, body: &[u8]) -> FalError {
    let detail = detail_of(body);
    match status {
        401 | 403 => FalError::Unauthorized { status },
        404 => FalError::NotFound,
        400 | 422 => FalError::InvalidInput { detail },
        429 => FalError::RateLimited { retry_after: wait },
        _ => FalError::Upstream { status, detail, retry_after: wait },
    }
}

fn detail_of(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => match v.get("detail") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => v.to_string(),
        },
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    text.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errors() {
        assert!(!FalError::InvalidInput { detail: String::new() }.is_retryable());
        assert!(!FalError::Unauthorized { status: 401 }.is_retryable());
        assert!(FalError::RateLimited { retry_after: None }.is_retryable());
        assert!(FalError::Upstream { status: 503, detail: String::new(), retry_after: None }.is_retryable());
        assert!(!FalError::Upstream { status: 418, detail: String::new(), retry_after: None }.is_retryable());
        assert_eq!(FalError::InvalidInput { detail: String::new() }.code(), "upstream-invalid-input");
    }

    #[test]
    fn reads_detail_and_retry_after() {
        assert_eq!(detail_of(br#"{"detail":"bad prompt"}"#), "bad prompt");
        assert_eq!(detail_of(b"plain"), "plain");
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, reqwest::header::HeaderValue::from_static("2.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn the_key_goes_only_to_the_queue_origin() {
        let c = FalClient::new(FalConfig { queue_url: "https://queue.fal.run".into(), ..Default::default() })
            .expect("client");
        assert!(c.on_queue_origin("https://queue.fal.run/fal-ai/x/requests/r1/status").is_ok());
        assert!(c.on_queue_origin("https://queue.fal.run:443/fal-ai/x/requests/r1").is_ok());
        for foreign in [
            "https://evil.example/fal-ai/x/requests/r1/status",
            "http://queue.fal.run/fal-ai/x/requests/r1/status",
            "https://queue.fal.run:8443/r1",
            "https://queue.fal.run.evil.example/r1",
            "https://user:pw@queue.fal.run/r1",
            "https://169.254.169.254/latest/meta-data",
            "not a url",
        ] {
            assert!(matches!(c.on_queue_origin(foreign), Err(FalError::BadResponse(_))), "{foreign}");
        }
    }

    #[test]
    fn secret_never_prints() {
        let c = FalConfig { key: Secret("abc".into()), ..Default::default() };
        assert!(!format!("{c:?}").contains("abc"));
    }
}
