//! Webhook delivery, signed per Standard Webhooks, through the SSRF-guarded [`Egress`] client
//! (every address checked at connect time, literal IPs before sending, no redirects).

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use hmac::{Hmac, Mac};
use jewelshot_domain::edit::WebhookPolicy;
use sha2::Sha256;
use url::Url;

use crate::{
    config::WebhookConfig,
    egress::{error_chain, Egress},
};

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

/// Sign `body` for message `id` at `timestamp` with each `whsec_<base64>` secret: one `v1,`
/// entry per secret, space-separated, as Standard Webhooks allows while a secret rotates (a
/// receiver that knows either secret verifies the message).
pub fn sign<S: AsRef<str>>(secrets: &[S], id: &str, timestamp: i64, body: &[u8]) -> Result<Signed, WebhookError> {
    if secrets.is_empty() {
        return Err(WebhookError::BadSecret);
    }
    let mut entries = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let secret = secret.as_ref();
        let key = B64.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).map_err(|_| WebhookError::BadSecret)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| WebhookError::BadSecret)?;
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        entries.push(format!("v1,{}", B64.encode(mac.finalize().into_bytes())));
    }
    Ok(Signed { id: id.to_owned(), timestamp, signature: entries.join(" ") })
}

/// Sends webhooks; cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    egress: Egress,
    cfg: WebhookConfig,
}

impl WebhookSender {
    pub fn new(cfg: WebhookConfig) -> anyhow::Result<Self> {
        let policy = WebhookPolicy { allow_insecure: cfg.allow_insecure };
        let ua = concat!("jewelshot-webhooks/", env!("CARGO_PKG_VERSION"));
        let egress = Egress::new(policy, Duration::from_millis(cfg.timeout_ms), ua)?;
        Ok(Self { egress, cfg })
    }

    /// One delivery attempt of `body` to `url` (retries are scheduled by
    /// [`crate::deliveries`], never slept through here): a fresh timestamp and signature, the
    /// message id the receiver deduplicates on, at most `timeout_ms`.
    pub async fn attempt<S: AsRef<str>>(
        &self,
        url: &str,
        secrets: &[S],
        msg_id: &str,
        body: &[u8],
    ) -> Result<(), WebhookError> {
        let target = self.egress.target(url).map_err(WebhookError::Forbidden)?;
        let signed = sign(secrets, msg_id, chrono::Utc::now().timestamp(), body)?;
        self.send_once(&target, &signed, body).await
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms)
    }

    async fn send_once(&self, url: &Url, signed: &Signed, body: &[u8]) -> Result<(), WebhookError> {
        let resp = self
            .egress
            .http()
            .post(url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &signed.id)
            .header("webhook-timestamp", signed.timestamp.to_string())
            .header("webhook-signature", &signed.signature)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| match Egress::refused(&e) {
                Some(why) => WebhookError::Forbidden(why),
                None => WebhookError::Transport(error_chain(&e)),
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
        let s = sign(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).expect("sign");
        assert_eq!(s.signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // During a rotation: one entry per secret, the given order kept.
        let other = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=";
        let both = sign(&[other, secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).expect("sign");
        let entries: Vec<&str> = both.signature.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1], s.signature);
        assert_ne!(entries[0], s.signature);
        assert!(matches!(sign::<&str>(&[], "m", 1, body), Err(WebhookError::BadSecret)));
    }

    #[tokio::test]
    async fn refuses_internal_targets_before_sending() {
        let sender = WebhookSender::new(WebhookConfig { max_attempts: 1, ..Default::default() }).expect("client");
        for url in ["https://127.0.0.1/h", "https://169.254.169.254/x", "https://[::1]/h", "https://localhost:1/h"] {
            let err =
                sender.attempt(url, &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "m", b"{}").await.expect_err(url);
            assert!(matches!(err, WebhookError::Forbidden(_)), "{url}: {err:?}");
        }
    }
}
