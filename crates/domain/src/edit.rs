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

/// The URL grammar the API accepts, as regular expressions that mean the same to the server
/// (Rust's `regex`), to JSON Schema (ECMA-262) and to Python's `re` (the spec's consumers): an
/// http(s) scheme, a host name whose last label starts with a letter (so it is never read as a
/// number) or an IPv4 address, an optional port, then printable ASCII. The OpenAPI spec
/// publishes the same strings, so a request the spec allows is one the server accepts.
pub mod grammar {
    const OCTET: &str = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    const LABEL: &str = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    const LAST_LABEL: &str = "[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    const PORT: &str = "(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?";
    const REST: &str = "(?:[/?#][!-~]*)?";

    fn name() -> String {
        format!("(?:{LABEL}\\.)*{LAST_LABEL}")
    }

    fn ipv4(first: &str) -> String {
        format!("{first}(?:\\.{OCTET}){{3}}")
    }

    /// `image_url`: http or https; a host name or any IPv4 address (the worker's egress guard,
    /// not the grammar, keeps fetches off internal addresses).
    pub fn image_url() -> String {
        format!("^https?://(?:{}|{}){PORT}{REST}$", name(), ipv4(OCTET))
    }

    /// `webhook_url`: https and a host name; in development (`allow_insecure`) also http and
    /// loopback addresses. Names are resolved and checked after the grammar.
    pub fn webhook_url(allow_insecure: bool) -> String {
        if allow_insecure {
            format!("^https?://(?:{}|{}){PORT}{REST}$", name(), ipv4("127"))
        } else {
            format!("^https://{}{PORT}{REST}$", name())
        }
    }

    /// `prompt`: no control character but tab and newline, and at least one character that is
    /// neither a control nor white space (Unicode `White_Space`, what `str::trim` removes).
    pub const PROMPT: &str = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*\
        [^\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]\
        [^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$";

    /// A cursor (`nextCursor`): empty, or a ULID.
    pub const CURSOR: &str = "^(?:[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25})?$";

    /// A cursor this API did not hand out.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    #[error("not a cursor this API returned")]
    pub struct BadCursor;

    /// A `cursor` query parameter as the server reads it: absent or empty is the first page;
    /// else a ULID in the [`CURSOR`] grammar (`Err` otherwise).
    pub fn parse_cursor(raw: Option<&str>) -> Result<Option<ulid::Ulid>, BadCursor> {
        static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| super::compile(CURSOR));
        match raw.filter(|c| !c.is_empty()) {
            None => Ok(None),
            Some(c) if RE.is_match(c) => c.parse().map(Some).map_err(|_| BadCursor),
            Some(_) => Err(BadCursor),
        }
    }

    /// An `Idempotency-Key`: 1-255 visible ASCII characters.
    pub const IDEMPOTENCY_KEY: &str = "^[!-~]{1,255}$";
}

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
    #[serde(alias = "delaySeconds", default, deserialize_with = "integral")]
    pub delay_seconds: Option<i64>,
    /// Run no earlier than this instant (RFC 3339); instead of `delay_seconds`.
    #[serde(alias = "runAt")]
    pub run_at: Option<String>,
    /// `false`: generate afresh even if an identical request's result is cached (default true).
    /// Absent from the serialized form when not given, so idempotency hashes stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

/// An optional whole number as JSON Schema's `integer` means it in a JSON body: `199` or
/// `199.0`, never `199.5` nor `"199"`.
pub fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(Whole { text: false })
}

/// The same in a query string, where every value is text: `20` or `20.0`.
pub fn integral_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(Whole { text: true })
}

struct Whole {
    /// Whether numbers arrive spelled as text (query strings).
    text: bool,
}
impl<'a> serde::de::Visitor<'a> for Whole {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a whole number")
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v).map(Some).map_err(|_| E::custom("a whole number out of range"))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // Within ±2^53 a float is exact; a whole one converts without loss.
        if v.fract() == 0.0 && v.abs() <= 9_007_199_254_740_992.0 {
            Ok(Some(v as i64))
        } else {
            Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
        }
    }
    /// Digits, optionally followed by a point and zeros (`20`, `20.0`); nothing else.
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if !self.text {
            return Err(E::invalid_type(serde::de::Unexpected::Str(v), &self));
        }
        let whole = match v.split_once('.') {
            Some((int, zeros)) if !zeros.is_empty() && zeros.bytes().all(|b| b == b'0') => int,
            _ => v,
        };
        whole.parse::<i64>().map(Some).map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'a>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A validated edit request.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEdit {
    pub image_url: Url,
    pub prompt: String,
    pub priority: Priority,
    pub webhook_url: Option<Url>,
    pub run_at: Option<DateTime<Utc>>,
    /// May reuse a cached result or share an identical job's fal request (`cache`, default true).
    pub cache: bool,
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
        // Checked as sent (the spec's `maxLength` and `pattern`), then stored trimmed.
        let raw_prompt = raw.prompt.unwrap_or_default();
        if raw_prompt.chars().all(char::is_whitespace) {
            return Err(ValidationError::new(
                "prompt",
                error_code::INVALID_PROMPT,
                "`prompt` is required and must not be empty",
            ));
        }
        let chars = raw_prompt.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return Err(ValidationError::new(
                "prompt",
                error_code::INVALID_PROMPT,
                format!("`prompt` is {chars} characters; at most {MAX_PROMPT_CHARS} are allowed"),
            ));
        }
        if raw_prompt.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(ValidationError::new(
                "prompt",
                error_code::INVALID_PROMPT,
                "`prompt` contains control characters",
            ));
        }
        let prompt = raw_prompt.trim().to_owned();

        let image_url = parse_http_url(raw.image_url.as_deref(), "image_url", error_code::INVALID_IMAGE_URL, false)?;

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

        Ok(Self { image_url, prompt, priority, webhook_url, run_at, cache: raw.cache.unwrap_or(true) })
    }
}

fn grammar_of(field: &str, allow_insecure: bool) -> &'static regex::Regex {
    static IMAGE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| compile(&grammar::image_url()));
    static HOOK: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| compile(&grammar::webhook_url(false)));
    static HOOK_DEV: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| compile(&grammar::webhook_url(true)));
    match (field, allow_insecure) {
        ("webhook_url", false) => &HOOK,
        ("webhook_url", true) => &HOOK_DEV,
        _ => &IMAGE,
    }
}

fn compile(pattern: &str) -> regex::Regex {
    regex::Regex::new(pattern).unwrap_or_else(|e| unreachable!("the URL grammar is a valid pattern: {e}"))
}

/// `raw` against the field's [`grammar`] (one trailing newline forgiven, as `$` does in
/// Python and the URL parser does anyway), then parsed.
fn parse_http_url(
    raw: Option<&str>,
    field: &'static str,
    code: &'static str,
    allow_insecure: bool,
) -> Result<Url, ValidationError> {
    let raw = raw.unwrap_or_default();
    let raw = raw.strip_suffix('\n').unwrap_or(raw);
    if raw.is_empty() {
        return Err(ValidationError::new(field, code, format!("`{field}` is required")));
    }
    if raw.len() > MAX_URL_BYTES {
        return Err(ValidationError::new(field, code, format!("`{field}` is longer than {MAX_URL_BYTES} bytes")));
    }
    if !grammar_of(field, allow_insecure).is_match(raw) {
        let wanted = if field == "webhook_url" && !allow_insecure { "an https" } else { "an http(s)" };
        return Err(ValidationError::new(
            field,
            code,
            format!("`{field}` must be {wanted} URL with a host name (or an IPv4 address) and no credentials (grammar in the API spec)"),
        ));
    }
    let url =
        Url::parse(raw).map_err(|e| ValidationError::new(field, code, format!("`{field}` is not a valid URL: {e}")))?;
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

    /// The server and the published grammar agree: the prompt rule is exactly `grammar::PROMPT`
    /// on edge characters, and every URL the grammar allows parses (so no schema-valid URL is
    /// refused later by the parser).
    #[test]
    fn the_published_grammar_is_what_the_server_enforces() {
        let prompt = compile(grammar::PROMPT);
        let edges = [
            "\u{0}", "\t", "\n", "\r", "\u{b}", "\u{1f}", " ", "\u{7f}", "\u{85}", "\u{a0}", "\u{9f}", "\u{1680}",
            "\u{2000}", "\u{200a}", "\u{200b}", "\u{2028}", "\u{202f}", "\u{205f}", "\u{3000}", "\u{feff}", "a", "é",
            "💍",
        ];
        for a in edges {
            for b in edges {
                for text in [a.to_owned(), format!("{a}{b}"), format!("{a}x{b}"), format!(" {a} ")] {
                    let server = parse(req(&text, "https://a.b/c.jpg")).is_ok();
                    assert_eq!(server, prompt.is_match(&text), "{text:?}");
                }
            }
        }
        let hosts = [
            "a",
            "a.b",
            "x-1.example.com",
            "a1.b2.c3",
            "localhost",
            "1.2.3.4",
            "255.255.255.255",
            "0.0.0.0",
            "127.0.0.1",
        ];
        let ports = ["", ":1", ":80", ":8080", ":65535"];
        let rests = ["", "/", "/a/b.jpg", "?q=1", "#f", "/%zz", "/\\x", "/[]{}|^`~!$&'()*+,;=:@", "/a?b#c/../.."];
        let image = compile(&grammar::image_url());
        for scheme in ["http", "https"] {
            for h in hosts {
                for p in ports {
                    for r in rests {
                        let url = format!("{scheme}://{h}{p}{r}");
                        assert!(image.is_match(&url), "{url}");
                        assert!(parse(req("x", &url)).is_ok(), "{url}");
                    }
                }
            }
        }
        for bad in [
            "https://a.1/x",
            "https://1.2.3.999/",
            "https://a:65536/",
            "https://a:0/",
            "https://u:p@a/",
            "https://-a/",
            "https://a-/",
            "https://[::1]/",
            "https://a b/",
            "https://a/ b",
            " https://a/",
            "https://a.b./",
            "https://é.com/",
        ] {
            assert!(!image.is_match(bad), "{bad}");
            assert_eq!(parse(req("x", bad)).map_err(|e| e.field), Err("image_url"), "{bad}");
        }
        assert!(parse(req("x", "https://a.b/c\n")).is_ok(), "one trailing newline, as `$` allows");
        let hook = compile(&grammar::webhook_url(false));
        assert!(hook.is_match("https://hooks.example.com/x") && !hook.is_match("https://8.8.8.8/x"));
        let cursor = compile(grammar::CURSOR);
        let id = ulid::Ulid::generate().to_string();
        for (c, ok) in [
            (id.clone(), true),
            (id.to_lowercase(), true),
            (String::new(), true),
            ("8".repeat(26), false),
            (format!("I{}", &id[1..]), false),
            (format!("{id}0"), false),
        ] {
            assert_eq!(cursor.is_match(&c), ok, "{c}");
            assert_eq!(grammar::parse_cursor(Some(&c)).is_ok(), ok, "the server reads {c:?} as the grammar does");
        }
    }

    #[test]
    fn whole_numbers_are_what_json_schema_calls_integer() {
        let delay = |v: &str| {
            serde_json::from_str::<EditRequest>(&format!(r#"{{"delay_seconds": {v}}}"#)).map(|r| r.delay_seconds)
        };
        assert_eq!(delay("20").ok(), Some(Some(20)));
        assert_eq!(delay("20.0").ok(), Some(Some(20)));
        assert_eq!(delay("null").ok(), Some(None));
        for bad in ["20.5", "\"20\"", "true", "1e400", "[]"] {
            assert!(delay(bad).is_err(), "{bad}");
        }
    }
}
