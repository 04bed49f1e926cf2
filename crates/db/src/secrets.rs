//! Webhook signing secrets at rest: sealed with XChaCha20-Poly1305 under a key from the
//! environment, the key's id stored beside each secret so keys can be rotated.
//!
//! - [`SecretsConfig`] — `JEWELSHOT_SECRETS__KEYS__<id>=<32 bytes, base64>` (any number: old
//!   keys stay to open what they sealed) and `JEWELSHOT_SECRETS__CURRENT=<id>` (the key new
//!   secrets are sealed with; may be left out when there is one key).
//! - [`Keyring`] — seals and opens. Without keys it stores secrets as they are under the key id
//!   `plaintext` (development only: every process warns, and `required = true` refuses to start).
//! - [`WebhookSecret`] — a secret in the clear, never printed by `{:?}`.
//!
//! The associated data binds a sealed secret to its user and key id: copied onto another user's
//! row, or relabelled with another key id, it no longer opens.
//!
//! Secrets themselves rotate per user (`Db::rotate_webhook_secret`): the old one keeps signing
//! beside the new one until its `retires_at`, so receivers can switch without missing a message.

use std::collections::BTreeMap;

use base64::Engine;
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use jewelshot_domain::UserId;
use serde::{Deserialize, Serialize};

/// The key id of secrets stored without encryption (no key configured, or rows from before V8).
pub const PLAINTEXT: &str = "plaintext";

const NONCE_BYTES: usize = 24;

/// `JEWELSHOT_SECRETS__*`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretsConfig {
    /// Key id → 32 random bytes in base64 (`jewelshot secrets new-key` makes one). Ids are
    /// lower-case letters, digits, `-` and `_` (environment names are read in lower case).
    pub keys: BTreeMap<String, String>,
    /// The id of the key that seals new secrets; empty = the only key.
    pub current: String,
    /// Refuse to start without a key (production settings turn this on).
    pub required: bool,
}

impl std::fmt::Debug for SecretsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsConfig")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .field("required", &self.required)
            .finish()
    }
}

/// Why the keyring could not be built, or a secret not opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("JEWELSHOT_SECRETS__KEYS__{0}: {1}")]
    BadKey(String, &'static str),
    #[error("JEWELSHOT_SECRETS__CURRENT names {0:?}, which is not among JEWELSHOT_SECRETS__KEYS__*")]
    UnknownCurrent(String),
    #[error("JEWELSHOT_SECRETS__CURRENT must name one of the {0} keys")]
    NoCurrent(usize),
    #[error("JEWELSHOT_SECRETS__REQUIRED is on but no JEWELSHOT_SECRETS__KEYS__* is set")]
    Required,
    #[error(
        "no JEWELSHOT_SECRETS__KEYS__* is set here, but webhook secrets in this database are sealed: \
         refusing to store one unencrypted (configure the keys the other processes use)"
    )]
    WouldStorePlaintext,
    #[error("a secret is sealed with key {0:?}, which is not configured")]
    MissingKey(String),
    #[error("a secret sealed with key {0:?} does not open (wrong key, or the row was altered)")]
    Tampered(String),
}

/// A secret in the clear. `expose` is the only way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// A fresh `whsec_<base64 of 24 random bytes>` (the Standard Webhooks form).
    pub fn generate() -> Self {
        let mut b = [0u8; 24];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
        Self(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(b)))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// A secret as stored: the key id and `nonce || ciphertext+tag` (or the bytes, for `plaintext`).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed").field("key_id", &self.key_id).field("bytes", &self.bytes.len()).finish()
    }
}

/// The configured keys.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<String, XChaCha20Poly1305>,
    current: Option<String>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

fn aad(user: UserId, key_id: &str) -> Vec<u8> {
    format!("jewelshot webhook secret\0{user}\0{key_id}").into_bytes()
}

impl Keyring {
    pub fn from_config(cfg: &SecretsConfig) -> Result<Self, SecretsError> {
        let mut keys = BTreeMap::new();
        for (id, b64) in &cfg.keys {
            let id = id.to_ascii_lowercase();
            if id.is_empty()
                || id == PLAINTEXT
                || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(SecretsError::BadKey(id, "ids are lower-case letters, digits, - and _ (not `plaintext`)"));
            }
            let raw = decode_key(b64.trim()).ok_or(SecretsError::BadKey(id.clone(), "not base64"))?;
            if raw.len() != 32 {
                return Err(SecretsError::BadKey(id, "a key is 32 bytes (44 base64 characters)"));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&raw)
                .map_err(|_| SecretsError::BadKey(id.clone(), "a key is 32 bytes"))?;
            keys.insert(id, cipher);
        }
        let current = match cfg.current.trim().to_ascii_lowercase() {
            c if c.is_empty() && keys.len() <= 1 => keys.keys().next().cloned(),
            c if c.is_empty() => return Err(SecretsError::NoCurrent(keys.len())),
            c if keys.contains_key(&c) => Some(c),
            c => return Err(SecretsError::UnknownCurrent(c)),
        };
        if current.is_none() && cfg.required {
            return Err(SecretsError::Required);
        }
        Ok(Self { keys, current })
    }

    /// [`Keyring::from_config`], with a warning when secrets will be stored unencrypted.
    pub fn load(cfg: &SecretsConfig) -> Result<Self, SecretsError> {
        let ring = Self::from_config(cfg)?;
        match ring.current() {
            Some(id) => tracing::info!(key_id = id, keys = ring.keys.len(), "webhook secrets sealed"),
            None => tracing::warn!(
                "JEWELSHOT_SECRETS__KEYS__* is unset: webhook secrets are stored unencrypted (development only; \
                 `jewelshot secrets new-key` makes a key)"
            ),
        }
        Ok(ring)
    }

    /// A keyring with one random key (tests).
    pub fn random(id: &str) -> (Self, SecretsConfig) {
        let cfg = SecretsConfig { keys: BTreeMap::from([(id.to_owned(), new_key())]), ..Default::default() };
        match Self::from_config(&cfg) {
            Ok(k) => (k, cfg),
            Err(e) => unreachable!("a generated key is valid: {e}"),
        }
    }

    /// The key id new secrets are sealed with (`None`: stored as plaintext).
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Seal `secret` for `user` under the current key (or as plaintext without one).
    pub fn seal(&self, user: UserId, secret: &WebhookSecret) -> Sealed {
        let Some((id, cipher)) = self.current.as_ref().and_then(|id| self.keys.get(id).map(|c| (id, c))) else {
            return Sealed { key_id: PLAINTEXT.into(), bytes: secret.0.as_bytes().to_vec() };
        };
        let mut nonce = [0u8; NONCE_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        let aad = aad(user, id);
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret.0.as_bytes(), aad: &aad })
            .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 seals any message under 256 GiB"));
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&ct);
        Sealed { key_id: id.clone(), bytes }
    }

    /// Open what [`Keyring::seal`] made for `user`.
    pub fn open(&self, user: UserId, sealed: &Sealed) -> Result<WebhookSecret, SecretsError> {
        let tampered = || SecretsError::Tampered(sealed.key_id.clone());
        if sealed.key_id == PLAINTEXT {
            return String::from_utf8(sealed.bytes.clone()).map(WebhookSecret).map_err(|_| tampered());
        }
        let cipher = self.keys.get(&sealed.key_id).ok_or_else(|| SecretsError::MissingKey(sealed.key_id.clone()))?;
        if sealed.bytes.len() < NONCE_BYTES {
            return Err(tampered());
        }
        let (nonce, ct) = sealed.bytes.split_at(NONCE_BYTES);
        let aad = aad(user, &sealed.key_id);
        let plain =
            cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad }).map_err(|_| tampered())?;
        String::from_utf8(plain).map(WebhookSecret).map_err(|_| tampered())
    }

    /// Whether `sealed` should be sealed again: stored as plaintext, or under a key that is not
    /// the current one, while there is a current one.
    pub fn is_stale(&self, sealed: &Sealed) -> bool {
        self.current.as_deref().is_some_and(|c| c != sealed.key_id)
    }
}

fn decode_key(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    let no_pad = base64::engine::general_purpose::STANDARD_NO_PAD;
    [STANDARD, URL_SAFE]
        .iter()
        .find_map(|e| e.decode(s).ok())
        .or_else(|| [no_pad, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(s).ok()))
}

/// 32 random bytes in base64: a new key for `JEWELSHOT_SECRETS__KEYS__<id>`.
pub fn new_key() -> String {
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[(&str, &str)], current: &str) -> Result<Keyring, SecretsError> {
        Keyring::from_config(&SecretsConfig {
            keys: keys.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            current: current.into(),
            required: false,
        })
    }

    #[test]
    fn sealed_secrets_open_only_for_their_user_and_key() {
        let (ring, _) = Keyring::random("k1");
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let secret = WebhookSecret::generate();
        let sealed = ring.seal(alice, &secret);
        assert_eq!(sealed.key_id, "k1");
        assert!(!String::from_utf8_lossy(&sealed.bytes).contains(&secret.0[6..]), "the secret is encrypted");
        assert_eq!(ring.open(alice, &sealed).ok(), Some(secret.clone()));
        // Moved onto another user's row, it does not open.
        assert!(matches!(ring.open(bob, &sealed), Err(SecretsError::Tampered(_))));
        // A flipped bit does not open.
        let mut flipped = sealed.clone();
        let last = flipped.bytes.len() - 1;
        flipped.bytes[last] ^= 1;
        assert!(matches!(ring.open(alice, &flipped), Err(SecretsError::Tampered(_))));
        // Relabelled as plaintext, it is not the secret.
        let relabelled = Sealed { key_id: PLAINTEXT.into(), ..sealed.clone() };
        assert_ne!(ring.open(alice, &relabelled).ok(), Some(secret.clone()));
        // Each seal has its own nonce.
        assert_ne!(ring.seal(alice, &secret).bytes, sealed.bytes);
    }

    #[test]
    fn rotation_keeps_old_keys_opening_and_marks_their_secrets_stale() {
        let (k1, k2) = (new_key(), new_key());
        let old = ring(&[("k1", &k1)], "").unwrap_or_else(|e| panic!("{e}"));
        let user = UserId::generate();
        let secret = WebhookSecret::generate();
        let sealed = old.seal(user, &secret);
        let new = ring(&[("k1", &k1), ("k2", &k2)], "K2").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(new.current(), Some("k2"));
        assert!(new.is_stale(&sealed));
        assert_eq!(new.open(user, &sealed).ok(), Some(secret.clone()));
        let resealed = new.seal(user, &secret);
        assert!(!new.is_stale(&resealed));
        // The old key removed: what it sealed is reported, not silently dropped.
        let only_new = ring(&[("k2", &k2)], "").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(only_new.open(user, &sealed), Err(SecretsError::MissingKey(id)) if id == "k1"));
    }

    #[test]
    fn without_keys_secrets_are_plaintext_unless_keys_are_required() {
        let none = Keyring::default();
        let user = UserId::generate();
        let secret = WebhookSecret::generate();
        let sealed = none.seal(user, &secret);
        assert_eq!(sealed.key_id, PLAINTEXT);
        assert_eq!(none.open(user, &sealed).ok(), Some(secret));
        assert!(!none.is_stale(&sealed));
        let required = SecretsConfig { required: true, ..Default::default() };
        assert!(matches!(Keyring::from_config(&required), Err(SecretsError::Required)));
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        let k = new_key();
        assert!(matches!(ring(&[("k1", "c2hvcnQ=")], ""), Err(SecretsError::BadKey(..))));
        assert!(matches!(ring(&[("k1", "not base64!")], ""), Err(SecretsError::BadKey(..))));
        assert!(matches!(ring(&[("plaintext", &k)], ""), Err(SecretsError::BadKey(..))));
        assert!(matches!(ring(&[("a b", &k)], ""), Err(SecretsError::BadKey(..))));
        assert!(matches!(ring(&[("k1", &k), ("k2", &k)], ""), Err(SecretsError::NoCurrent(2))));
        assert!(matches!(ring(&[("k1", &k)], "k9"), Err(SecretsError::UnknownCurrent(_))));
    }

    #[test]
    fn secrets_never_print() {
        let s = WebhookSecret::generate();
        let (ring, cfg) = Keyring::random("k1");
        let key = cfg.keys["k1"].clone();
        for shown in [
            format!("{s:?}"),
            format!("{cfg:?}"),
            format!("{ring:?}"),
            format!("{:?}", ring.seal(UserId::generate(), &s)),
        ] {
            assert!(!shown.contains(&s.0) && !shown.contains(&key), "{shown}");
        }
    }
}
