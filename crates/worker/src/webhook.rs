//! Webhook delivery, signed per Standard Webhooks, and guarded against SSRF: every address the
//! target resolves to is checked at connect time (so DNS rebinding cannot slip past a check made
//! at submit), literal IPs are checked before sending, and redirects are never followed.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use hmac::{Hmac, Mac};
use jewelshot_domain::edit::{webhook_ip_allowed, WebhookPolicy};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sha2::Sha256;
use url::Url;

use crate::{backoff::backoff, config::WebhookConfig};

/// Why a delivery did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook target is not allowed: {0}")]
    Forbidden(String),
    #[error("webhook secret is malformed")]
    BadSecret,
    #[error("webhook answered {0}")]
    Status(u16),
    #[error("webhook delivery failed: {0}")]
    Transport(String),
}

/// The three Standard Webhooks headers for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
}

/// Sign `body` for message `id` at `timestamp` with a `whsec_<base64>` secret.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<Signed, WebhookError> {
    let key = B64.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).map_err(|_| WebhookError::BadSecret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| WebhookError::BadSecret)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let signature = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    Ok(Signed { id: id.to_owned(), timestamp, signature })
}

/// Resolves names and drops every address the policy forbids; none left → connect refused.
#[derive(Debug, Clone, Copy)]
struct GuardedResolver {
    policy: WebhookPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| webhook_ip_allowed(a.ip(), policy)).collect();
            if allowed.is_empty() {
                return Err(Box::new(WebhookError::Forbidden(format!("{host} resolves only to forbidden addresses")))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Sends webhooks; cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    http: reqwest::Client,
    cfg: WebhookConfig,
    policy: WebhookPolicy,
}

impl WebhookSender {
    pub fn new(cfg: WebhookConfig) -> anyhow::Result<Self> {
        let policy = WebhookPolicy { allow_insecure: cfg.allow_insecure };
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(5_000)))
            .user_agent(concat!("jewelshot-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, cfg, policy })
    }

    /// Deliver `body` to `url`, retrying non-2xx answers with backoff. The message id stays the
    /// same across attempts (receivers deduplicate on it); the timestamp and signature are fresh.
    /// Returns the number of attempts made.
    pub async fn deliver(
        &self,
        url: &str,
        secret: &str,
        msg_id: &str,
        body: &[u8],
    ) -> Result<u32, (u32, WebhookError)> {
        let target = Url::parse(url).map_err(|e| (0, WebhookError::Forbidden(e.to_string())))?;
        self.check_literal(&target).map_err(|e| (0, e))?;
        let mut last = WebhookError::Transport("not attempted".into());
        for attempt in 1..=self.cfg.max_attempts.max(1) {
            match self.send_once(&target, secret, msg_id, body).await {
                Ok(()) => return Ok(attempt),
                Err(e @ (WebhookError::Forbidden(_) | WebhookError::BadSecret)) => return Err((attempt, e)),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "webhook delivery failed");
                    last = e;
                }
            }
            if attempt < self.cfg.max_attempts {
                tokio::time::sleep(backoff(attempt, self.cfg.backoff_base_ms, self.cfg.backoff_base_ms * 64, None))
                    .await;
            }
        }
        Err((self.cfg.max_attempts, last))
    }

    fn check_literal(&self, url: &Url) -> Result<(), WebhookError> {
        let scheme_ok = url.scheme() == "https" || (self.policy.allow_insecure && url.scheme() == "http");
        if !scheme_ok {
            return Err(WebhookError::Forbidden(format!("scheme {}", url.scheme())));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(v4.into()),
            Some(url::Host::Ipv6(v6)) => Some(v6.into()),
            _ => None,
        };
        match ip {
            Some(ip) if !webhook_ip_allowed(ip, self.policy) => Err(WebhookError::Forbidden(ip.to_string())),
            _ => Ok(()),
        }
    }

    async fn send_once(&self, url: &Url, secret: &str, msg_id: &str, body: &[u8]) -> Result<(), WebhookError> {
        let signed = sign(secret, msg_id, chrono::Utc::now().timestamp(), body)?;
        let resp = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &signed.id)
            .header("webhook-timestamp", signed.timestamp.to_string())
            .header("webhook-signature", &signed.signature)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                // The guarded resolver's refusal surfaces as a connect error; keep it distinct.
                let text = format!("{e:#}");
                let chain = std::iter::successors(std::error::Error::source(&e), |s| s.source())
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(": ");
                if chain.contains("forbidden addresses") {
                    WebhookError::Forbidden(chain)
                } else {
                    WebhookError::Transport(format!("{text}: {chain}"))
                }
            })?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(WebhookError::Status(status.as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let s = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).expect("sign");
        assert_eq!(s.signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[tokio::test]
    async fn refuses_internal_targets_before_sending() {
        let sender = WebhookSender::new(WebhookConfig { max_attempts: 1, ..Default::default() }).expect("client");
        for url in ["https://127.0.0.1/h", "https://169.254.169.254/x", "https://[::1]/h", "https://localhost:1/h"] {
            let err = sender.deliver(url, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "m", b"{}").await.expect_err(url);
            assert!(matches!(err.1, WebhookError::Forbidden(_)), "{url}: {:?}", err.1);
        }
    }
}
