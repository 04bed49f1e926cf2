//! The submit body and its validation. Parsing, not checking: a [`NewEdit`] can only exist
//! when every field is valid, so nothing downstream re-validates.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use url::Url;
use utoipa::ToSchema;

use crate::{error_code, job::Priority};

/// Longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 2_000;
/// Longest URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2_048;
/// Latest a job may be scheduled, in seconds from now (30 days).
pub const MAX_DELAY_SECONDS: i64 = 30 * 24 * 3600;

/// `POST /api/ai/edit` body as sent. Accepts the snake_case names and their camelCase twins.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, ToSchema)]
pub struct EditRequest {
    /// The photo to edit (http or https).
    #[serde(alias = "imageUrl")]
    pub image_url: Option<String>,
    /// What to do to it, e.g. "enhance lighting".
    pub prompt: Option<String>,
    /// `normal` (default) or `high`.
    pub priority: Option<String>,
    /// Where to POST the signed result notification (https).
    #[serde(alias = "webhookUrl")]
    pub webhook_url: Option<String>,
    /// Run no earlier than this many seconds from now.
    #[serde(alias = "delaySeconds")]
    pub delay_seconds: Option<i64>,
    /// Run no earlier than this instant (RFC 3339); instead of `delay_seconds`.
    #[serde(alias = "runAt")]
    pub run_at: Option<String>,
}

/// A validated edit request.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEdit {
    pub image_url: Url,
    pub prompt: String,
    pub priority: Priority,
    pub webhook_url: Option<Url>,
    pub run_at: Option<DateTime<Utc>>,
}

/// Why a request was refused; `field` is the request field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub code: &'static str,
    pub message: String,
}

impl ValidationError {
    fn new(field: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { field, code, message: message.into() }
    }
}

/// Which webhook targets are acceptable before any DNS lookup.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookPolicy {
    /// Development only: allow `http://` and loopback targets.
    pub allow_insecure: bool,
}

impl NewEdit {
    /// Validate a raw request. `now` anchors `delay_seconds`.
    pub fn parse(raw: EditRequest, policy: WebhookPolicy, now: DateTime<Utc>) -> Result<Self, ValidationError> {
        let prompt = raw.prompt.map(|p| p.trim().to_owned()).unwrap_or_default();
        if prompt.is_empty() {
            return Err(ValidationError::new(
                "prompt",
                error_code::INVALID_PROMPT,
                "`prompt` is required and must not be empty",
            ));
        }
        let chars = prompt.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return Err(ValidationError::new(
                "prompt",
                error_code::INVALID_PROMPT,
                format!("`prompt` is {chars} characters; at most {MAX_PROMPT_CHARS} are allowed"),
            ));
        }
        if prompt.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(ValidationError::new(
                "prompt",
                error_code::INVALID_PROMPT,
                "`prompt` contains control characters",
            ));
        }

        let image_url = parse_http_url(raw.image_url.as_deref(), "image_url", error_code::INVALID_IMAGE_URL, true)?;

        let priority = match raw.priority.as_deref() {
            None => Priority::Normal,
            Some(p) => p.parse().map_err(|_| {
                ValidationError::new(
                    "priority",
                    error_code::INVALID_PRIORITY,
                    format!("`priority` must be `normal` or `high`, not `{p}`"),
                )
            })?,
        };

        let webhook_url = match raw.webhook_url.as_deref() {
            None => None,
            Some(_) => {
                let url = parse_http_url(
                    raw.webhook_url.as_deref(),
                    "webhook_url",
                    error_code::INVALID_WEBHOOK_URL,
                    policy.allow_insecure,
                )?;
                check_webhook_host(&url, policy)?;
                Some(url)
            }
        };

        let run_at = match (raw.delay_seconds, raw.run_at.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "run_at",
                    error_code::INVALID_SCHEDULE,
                    "give `delay_seconds` or `run_at`, not both",
                ))
            }
            (Some(d), None) => {
                if !(0..=MAX_DELAY_SECONDS).contains(&d) {
                    return Err(ValidationError::new(
                        "delay_seconds",
                        error_code::INVALID_SCHEDULE,
                        format!("`delay_seconds` must be between 0 and {MAX_DELAY_SECONDS}"),
                    ));
                }
                (d > 0).then(|| now + chrono::Duration::seconds(d))
            }
            (None, Some(t)) => {
                let at = DateTime::parse_from_rfc3339(t)
                    .map_err(|_| {
                        ValidationError::new(
                            "run_at",
                            error_code::INVALID_SCHEDULE,
                            "`run_at` must be an RFC 3339 timestamp",
                        )
                    })?
                    .with_timezone(&Utc);
                if at > now + chrono::Duration::seconds(MAX_DELAY_SECONDS) {
                    return Err(ValidationError::new(
                        "run_at",
                        error_code::INVALID_SCHEDULE,
                        "`run_at` is more than 30 days away",
                    ));
                }
                (at > now).then_some(at)
            }
            (None, None) => None,
        };

        Ok(Self { image_url, prompt, priority, webhook_url, run_at })
    }
}

fn parse_http_url(
    raw: Option<&str>,
    field: &'static str,
    code: &'static str,
    allow_http: bool,
) -> Result<Url, ValidationError> {
    let raw = raw.map(str::trim).unwrap_or_default();
    if raw.is_empty() {
        return Err(ValidationError::new(field, code, format!("`{field}` is required")));
    }
    if raw.len() > MAX_URL_BYTES {
        return Err(ValidationError::new(field, code, format!("`{field}` is longer than {MAX_URL_BYTES} bytes")));
    }
    let url =
        Url::parse(raw).map_err(|e| ValidationError::new(field, code, format!("`{field}` is not a valid URL: {e}")))?;
    let scheme_ok = match url.scheme() {
        "https" => true,
        "http" => allow_http,
        _ => false,
    };
    if !scheme_ok {
        let wanted = if allow_http { "http or https" } else { "https" };
        return Err(ValidationError::new(field, code, format!("`{field}` must be an {wanted} URL")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ValidationError::new(field, code, format!("`{field}` has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ValidationError::new(field, code, format!("`{field}` must not carry credentials")));
    }
    Ok(url)
}

/// Literal-address check; names are resolved and checked by the caller (and again at connect
/// time by the webhook sender, which is what really protects us from DNS rebinding).
fn check_webhook_host(url: &Url, policy: WebhookPolicy) -> Result<(), ValidationError> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(std::net::IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(std::net::IpAddr::V6(v6)),
        _ => None,
    };
    if let Some(ip) = ip {
        if !webhook_ip_allowed(ip, policy) {
            return Err(forbidden_webhook());
        }
    }
    Ok(())
}

/// Whether a webhook may connect to `ip` under `policy`.
pub fn webhook_ip_allowed(ip: std::net::IpAddr, policy: WebhookPolicy) -> bool {
    !crate::net::is_forbidden_ip(ip) || (policy.allow_insecure && crate::net::is_loopback(ip))
}

/// The error for a webhook whose host is, or resolves to, a forbidden address.
pub fn forbidden_webhook() -> ValidationError {
    ValidationError::new(
        "webhook_url",
        error_code::INVALID_WEBHOOK_URL,
        "`webhook_url` must name a host that resolves only to public addresses (never loopback, private, \
         link-local or metadata)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(prompt: &str, image: &str) -> EditRequest {
        EditRequest { image_url: Some(image.into()), prompt: Some(prompt.into()), ..Default::default() }
    }

    fn parse(raw: EditRequest) -> Result<NewEdit, ValidationError> {
        NewEdit::parse(raw, WebhookPolicy::default(), Utc::now())
    }

    #[test]
    fn accepts_a_plain_edit() {
        let ok = parse(req(" enhance lighting ", "https://cdn.example.com/a.jpg")).expect("valid");
        assert_eq!(ok.prompt, "enhance lighting");
        assert_eq!(ok.priority, Priority::Normal);
        assert!(ok.run_at.is_none());
    }

    #[test]
    fn names_the_field_at_fault() {
        assert_eq!(parse(req("", "https://a.b/c.jpg")).map_err(|e| e.field), Err("prompt"));
        assert_eq!(parse(req(&"x".repeat(2001), "https://a.b/c.jpg")).map_err(|e| e.field), Err("prompt"));
        assert!(parse(req(&"é".repeat(2000), "https://a.b/c.jpg")).is_ok(), "limit counts characters, not bytes");
        for bad in ["ftp://a.b/c.jpg", "not a url", "https://", "javascript:alert(1)", ""] {
            assert_eq!(parse(req("x", bad)).map_err(|e| e.field), Err("image_url"), "{bad}");
        }
        let mut r = req("x", "https://a.b/c.jpg");
        r.priority = Some("urgent".into());
        assert_eq!(parse(r).map_err(|e| e.field), Err("priority"));
    }

    #[test]
    fn refuses_internal_webhooks_unless_development() {
        for bad in [
            "https://127.0.0.1/h",
            "https://10.0.0.5/h",
            "https://169.254.169.254/latest",
            "https://[::1]/h",
            "http://example.com/h",
        ] {
            let mut r = req("x", "https://a.b/c.jpg");
            r.webhook_url = Some(bad.into());
            assert_eq!(parse(r).map_err(|e| e.field), Err("webhook_url"), "{bad}");
        }
        let mut r = req("x", "https://a.b/c.jpg");
        r.webhook_url = Some("http://127.0.0.1:9/h".into());
        let dev = WebhookPolicy { allow_insecure: true };
        assert!(NewEdit::parse(r.clone(), dev, Utc::now()).is_ok());
        r.webhook_url = Some("http://10.0.0.5/h".into());
        assert!(NewEdit::parse(r, dev, Utc::now()).is_err(), "dev mode allows loopback only");
    }

    #[test]
    fn schedules() {
        let now = Utc::now();
        let mut r = req("x", "https://a.b/c.jpg");
        r.delay_seconds = Some(60);
        let ok = NewEdit::parse(r.clone(), WebhookPolicy::default(), now).expect("valid");
        assert_eq!(ok.run_at, Some(now + chrono::Duration::seconds(60)));
        r.run_at = Some("2030-01-01T00:00:00Z".into());
        assert!(parse(r).is_err(), "both given");
        let mut r = req("x", "https://a.b/c.jpg");
        r.delay_seconds = Some(-1);
        assert_eq!(parse(r).map_err(|e| e.field), Err("delay_seconds"));
    }
}
