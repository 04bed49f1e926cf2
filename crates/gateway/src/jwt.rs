//! Identity-provider tokens (OIDC, Supabase Auth): JWTs accepted beside API keys.
//!
//! A token is verified against the provider's JWKS, fetched from `jwt.jwks_url` and cached:
//! refetched every `refresh_secs`, and at once (at most every `min_refresh_secs`) when a token
//! names a `kid` the cache does not hold — so a provider's key rotation is picked up without a
//! restart, and a flood of made-up `kid`s costs one fetch per interval. Only asymmetric
//! algorithms are accepted (`jwt.algorithms`, default RS256 and ES256): no `none`, no HMAC, and
//! a token's `alg` must match its key's type and the JWK's own `alg` (no HS/RS confusion).
//! `iss`, `aud`, `exp` and `nbf` are checked (with `leeway_secs`); `sub` names the user.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use jsonwebtoken::{
    jwk::{AlgorithmParameters, JwkSet},
    Algorithm, DecodingKey, Validation,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `JEWELSHOT_JWT__*`. Off while `jwks_url` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtSettings {
    /// The provider's JWKS, e.g. `https://<project>.supabase.co/auth/v1/.well-known/jwks.json`.
    pub jwks_url: String,
    /// The `iss` tokens must carry, e.g. `https://<project>.supabase.co/auth/v1`.
    pub issuer: String,
    /// The `aud` tokens must carry (Supabase: `authenticated`).
    pub audience: String,
    /// Accepted algorithms: RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    pub algorithms: Vec<String>,
    /// Where the user's plan is in the claims, as a dotted path (e.g. `app_metadata.plan`);
    /// empty, or absent from a token → `default_plan`.
    pub plan_claim: String,
    pub default_plan: String,
    /// The JWKS is refetched at least this often, in seconds.
    pub refresh_secs: u64,
    /// A token with an unknown `kid` refetches the JWKS at most this often, in seconds.
    pub min_refresh_secs: u64,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Longest a JWKS fetch may take, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            jwks_url: String::new(),
            issuer: String::new(),
            audience: String::new(),
            algorithms: vec!["RS256".into(), "ES256".into()],
            plan_claim: String::new(),
            default_plan: "free".into(),
            refresh_secs: 300,
            min_refresh_secs: 10,
            leeway_secs: 30,
            timeout_ms: 5_000,
        }
    }
}

impl JwtSettings {
    pub fn enabled(&self) -> bool {
        !self.jwks_url.is_empty()
    }

    /// The accepted algorithms, parsed; HMAC (and anything unknown) is refused at start-up.
    pub fn algorithms(&self) -> Result<Vec<Algorithm>, String> {
        use Algorithm::*;
        let algs = self
            .algorithms
            .iter()
            .map(|a| match a.parse::<Algorithm>() {
                Ok(alg @ (RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA)) => Ok(alg),
                _ => Err(format!("JEWELSHOT_JWT__ALGORITHMS: {a:?} is not an asymmetric JWS algorithm")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if algs.is_empty() {
            return Err("JEWELSHOT_JWT__ALGORITHMS is empty".into());
        }
        Ok(algs)
    }

    /// Start-up checks: a JWKS without an issuer or audience to hold tokens to is refused.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        url::Url::parse(&self.jwks_url).map_err(|e| format!("JEWELSHOT_JWT__JWKS_URL: {e}"))?;
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err("JEWELSHOT_JWT__ISSUER and JEWELSHOT_JWT__AUDIENCE are required with a JWKS URL".into());
        }
        self.algorithms().map(|_| ())
    }
}

/// Who a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// From `plan_claim`, when the token carries it.
    pub plan: Option<String>,
}

/// Why a token was refused (logged; the client gets 401 `unauthorized`).
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the token's header is not a JWS header")]
    Malformed,
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    #[error("the token names no key id")]
    NoKeyId,
    #[error("no key {0:?} in the provider's JWKS")]
    UnknownKey(String),
    #[error("the token's algorithm does not match its key")]
    KeyMismatch,
    #[error("the provider's JWKS could not be fetched: {0}")]
    KeysUnavailable(String),
    #[error("{0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

/// Cheap shape check before any work: three base64url segments, a JSON header, a sane size.
pub fn looks_like_jwt(token: &str) -> bool {
    let b64 = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    token.len() <= MAX_TOKEN_BYTES && h.starts_with("eyJ") && b64(h) && b64(p) && (s.is_empty() || b64(s))
}

/// Longest bearer token read (JWTs from common providers are 0.8-2 KB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

struct Key {
    key: DecodingKey,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, std::sync::Arc<Key>>,
    fetched: Option<Instant>,
    /// Last fetch attempt (success or not): bounds refetches on unknown `kid`s.
    tried: Option<Instant>,
}

/// Verifies tokens; one per gateway process.
pub struct JwtVerifier {
    cfg: JwtSettings,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    cache: tokio::sync::RwLock<Cache>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("jwks_url", &self.cfg.jwks_url).field("issuer", &self.cfg.issuer).finish()
    }
}

impl JwtVerifier {
    pub fn new(cfg: JwtSettings) -> anyhow::Result<Self> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let algorithms = cfg.algorithms().map_err(anyhow::Error::msg)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("jewelshot-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { cfg, algorithms, http, cache: Default::default(), fetching: Default::default() })
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.cfg
    }

    /// Verify `token` and say who it names.
    pub async fn verify(&self, token: &str) -> Result<Identity, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtError::Algorithm(header.alg));
        }
        let kid = header.kid.ok_or(JwtError::NoKeyId)?;
        let key = self.key(&kid).await?;
        if key.key.family() != header.alg.family() || key.alg.is_some_and(|a| a != header.alg) {
            return Err(JwtError::KeyMismatch);
        }
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = self.cfg.leeway_secs;
        let claims = jsonwebtoken::decode::<Value>(token, &key.key, &v)?.claims;
        let text = |path: &str| {
            let mut at = &claims;
            for part in path.split('.') {
                at = at.get(part)?;
            }
            at.as_str().filter(|s| !s.is_empty() && s.len() <= 256).map(str::to_owned)
        };
        Ok(Identity {
            issuer: self.cfg.issuer.clone(),
            subject: text("sub").ok_or(JwtError::Malformed)?,
            email: text("email"),
            plan: if self.cfg.plan_claim.is_empty() { None } else { text(&self.cfg.plan_claim) },
        })
    }

    /// The key `kid`, refetching the JWKS when the cache is old or does not hold it.
    async fn key(&self, kid: &str) -> Result<std::sync::Arc<Key>, JwtError> {
        let refresh = Duration::from_secs(self.cfg.refresh_secs.max(1));
        let min_refresh = Duration::from_secs(self.cfg.min_refresh_secs);
        {
            let c = self.cache.read().await;
            let fresh = c.fetched.is_some_and(|t| t.elapsed() < refresh);
            let may_retry = c.tried.is_none_or(|t| t.elapsed() >= min_refresh);
            match c.keys.get(kid) {
                Some(k) if fresh || !may_retry => return Ok(k.clone()),
                None if !may_retry => return Err(JwtError::UnknownKey(kid.to_owned())),
                _ => {}
            }
        }
        let fetched = self.refetch(min_refresh).await;
        let c = self.cache.read().await;
        match (c.keys.get(kid), fetched) {
            (Some(k), _) => Ok(k.clone()),
            (None, Err(e)) if c.keys.is_empty() => Err(e),
            (None, _) => Err(JwtError::UnknownKey(kid.to_owned())),
        }
    }

    /// Fetch the JWKS (one fetch at a time; a caller that waited for another's fetch uses its
    /// result). On failure the keys already held stay in use.
    async fn refetch(&self, min_refresh: Duration) -> Result<(), JwtError> {
        let _one = self.fetching.lock().await;
        if self.cache.read().await.tried.is_some_and(|t| t.elapsed() < min_refresh.min(Duration::from_secs(1))) {
            return Ok(()); // another request just fetched
        }
        let result = self.fetch().await;
        let mut c = self.cache.write().await;
        c.tried = Some(Instant::now());
        match result {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), url = %self.cfg.jwks_url, "JWKS fetched");
                c.keys = keys;
                c.fetched = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, url = %self.cfg.jwks_url, "JWKS fetch failed; keeping the keys held");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, std::sync::Arc<Key>>, JwtError> {
        let unavailable = |e: reqwest::Error| JwtError::KeysUnavailable(e.to_string());
        let resp = self.http.get(&self.cfg.jwks_url).send().await.map_err(unavailable)?;
        let resp = resp.error_for_status().map_err(unavailable)?;
        let set: JwkSet = resp.json().await.map_err(unavailable)?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            // Only public signature keys: a symmetric (`oct`) key in a JWKS is never trusted.
            let asymmetric = matches!(
                jwk.algorithm,
                AlgorithmParameters::RSA(_)
                    | AlgorithmParameters::EllipticCurve(_)
                    | AlgorithmParameters::OctetKeyPair(_)
            );
            let (Some(kid), true) = (jwk.common.key_id.clone(), asymmetric) else { continue };
            let alg = jwk.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok());
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, std::sync::Arc::new(Key { key, alg }));
                }
                Err(e) => tracing::warn!(kid, error = %e, "JWKS key skipped"),
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jwt_shaped_tokens_are_verified() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."), "`none` is refused later, by algorithm");
        for bad in
            ["", "jsk_abc", "a.b.c", "eyJ.eyJ", "eyJa.b.c.d", "eyJa.b!.c", &format!("eyJ{}.a.b", "a".repeat(9000))]
        {
            assert!(!looks_like_jwt(bad), "{bad:.40}");
        }
    }

    #[test]
    fn hmac_and_unknown_algorithms_are_refused_at_start_up() {
        let cfg = |algs: &[&str]| JwtSettings {
            jwks_url: "https://id.example/jwks".into(),
            issuer: "https://id.example".into(),
            audience: "api".into(),
            algorithms: algs.iter().map(|s| s.to_string()).collect(),
            ..JwtSettings::default()
        };
        assert!(cfg(&["RS256", "ES256"]).validate().is_ok());
        for bad in [&["HS256"][..], &["none"], &[], &["RS256", "HS512"]] {
            assert!(cfg(bad).validate().is_err(), "{bad:?}");
        }
        assert!(JwtSettings { audience: String::new(), ..cfg(&["RS256"]) }.validate().is_err());
    }
}
