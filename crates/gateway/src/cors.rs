//! Browsers on other origins (`JEWELSHOT_CORS__*`): which origins may call the API, with or
//! without credentials, and how long a preflight answer is cached. Off (no CORS headers, so only
//! pages served by the gateway itself may read its answers) until origins are listed.
//!
//! A request from an origin not on the list is served as if CORS did not exist: no
//! `Access-Control-Allow-Origin`, so the browser refuses the page the answer (a preflight
//! included) — the server never 400s a request for its `Origin`, which non-browser clients and
//! same-origin pages also send.

use actix_web::http::{header, Method};
use serde::{Deserialize, Serialize};

/// `JEWELSHOT_CORS__*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CorsSettings {
    /// Origins allowed to call the API from a browser, exactly as the browser sends them
    /// (`https://app.jewelshot.com`, scheme and host and a port when not the default); `*` for
    /// any (only without credentials). Empty: CORS off.
    pub allowed_origins: Vec<String>,
    /// Let pages send credentials (cookies, HTTP auth, client certificates). The API's own
    /// credential is a bearer token the page adds itself, which needs no such permission.
    pub allow_credentials: bool,
    /// How long a browser may reuse a preflight answer, in seconds.
    pub max_age_secs: usize,
}

impl Default for CorsSettings {
    fn default() -> Self {
        Self { allowed_origins: Vec::new(), allow_credentials: false, max_age_secs: 600 }
    }
}

/// Request headers a page may send beyond the CORS-safelisted ones.
const REQUEST_HEADERS: [&str; 3] = ["authorization", "content-type", "idempotency-key"];
/// Response headers a page may read beyond the safelisted ones.
const EXPOSED_HEADERS: [&str; 6] =
    ["location", "retry-after", "ratelimit", "ratelimit-policy", "idempotent-replayed", "www-authenticate"];

impl CorsSettings {
    pub fn enabled(&self) -> bool {
        !self.allowed_origins.is_empty()
    }

    fn any_origin(&self) -> bool {
        self.allowed_origins.iter().any(|o| o == "*")
    }

    /// Refuse settings a browser would not honour or that would open the API wider than meant.
    pub fn validate(&self) -> Result<(), String> {
        if self.any_origin() {
            if self.allow_credentials {
                return Err("JEWELSHOT_CORS__ALLOWED_ORIGINS = \"*\" cannot go with ALLOW_CREDENTIALS = true: browsers refuse a wildcard with credentials; list the origins".into());
            }
            return Ok(());
        }
        for origin in &self.allowed_origins {
            let url = url::Url::parse(origin).map_err(|e| format!("CORS origin {origin:?}: {e}"))?;
            let bare = matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some()
                && url.path() == "/"
                && url.query().is_none()
                && url.fragment().is_none()
                && url.username().is_empty()
                && !origin.ends_with('/');
            if !bare {
                return Err(format!(
                    "CORS origin {origin:?} is not an origin: write scheme://host[:port], e.g. https://app.example.com"
                ));
            }
        }
        Ok(())
    }

    /// The middleware (wrap it outermost, so preflights never reach authentication).
    pub fn middleware(&self) -> actix_cors::Cors {
        let mut cors = actix_cors::Cors::default()
            .allowed_methods([Method::GET, Method::POST, Method::DELETE])
            .allowed_headers(REQUEST_HEADERS.iter().map(|h| header::HeaderName::from_static(h)))
            .expose_headers(EXPOSED_HEADERS.iter().map(|h| header::HeaderName::from_static(h)))
            .max_age(self.max_age_secs)
            .block_on_origin_mismatch(false);
        if self.any_origin() {
            cors = cors.send_wildcard().allow_any_origin();
        } else {
            for origin in &self.allowed_origins {
                cors = cors.allowed_origin(origin);
            }
        }
        if self.allow_credentials {
            cors = cors.supports_credentials();
        }
        cors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(origins: &[&str], credentials: bool) -> CorsSettings {
        CorsSettings {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_credentials: credentials,
            ..Default::default()
        }
    }

    #[test]
    fn origins_must_be_origins_and_a_wildcard_goes_without_credentials() {
        assert!(with(&["https://app.example.com", "http://localhost:3000"], true).validate().is_ok());
        assert!(with(&["*"], false).validate().is_ok());
        assert!(with(&["*"], true).validate().is_err());
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/path",
            "app.example.com",
            "ftp://x.example",
            "https://u@x.example",
        ] {
            assert!(with(&[bad], false).validate().is_err(), "{bad}");
        }
        assert!(!CorsSettings::default().enabled());
    }
}
