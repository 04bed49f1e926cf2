//! The result cache's words (issue I): its settings, shared by the gateway and the worker, and
//! its key. "Same prompt = same image": a job whose input bytes, normalized prompt, model and
//! scope match a finished job's reuses that job's stored result, and identical jobs in flight
//! share one fal request (the rules themselves are SQL, `migrations/V12__result_cache.sql`).
//!
//! A key is `<basis>:<content>`: [`basis`] digests what the request asks (scope, model, prompt
//! as [`normalize_prompt`] reads it), [`content_digest`] the bytes fal reads. Keys are digests,
//! so neither a prompt nor an image is kept in the cache's table.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::UserId;

/// Who may reuse whose results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    /// A user's own earlier results only (the default: nobody learns what anyone else made).
    #[default]
    User,
    /// Any user's: the same photo and prompt from two sellers costs one fal request.
    Shared,
}

impl CacheScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Shared => "shared",
        }
    }
}

/// `JEWELSHOT_CACHE__*`, read by the gateway (hits at submit) and the worker (results, sharing,
/// eviction). Both must agree on `scope`; `ttl_secs` and `max_entries` are the workers'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Off: every job calls fal (`cache: false` in a request does this for one job).
    pub enabled: bool,
    pub scope: CacheScope,
    /// How long a result is reused after it was made.
    pub ttl_secs: u64,
    /// Ready entries kept; the oldest go first beyond this (and every expired one).
    pub max_entries: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self { enabled: true, scope: CacheScope::User, ttl_secs: 7 * 24 * 3600, max_entries: 100_000 }
    }
}

/// A prompt as the cache compares it: trimmed, every run of white space one space, lower case.
/// "Enhance  lighting" and "enhance lighting" ask for the same image.
pub fn normalize_prompt(prompt: &str) -> String {
    let mut out = String::with_capacity(prompt.len());
    for word in prompt.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// Hex SHA-256 of what a request asks for, apart from its image: the scope (the user, when
/// results are not shared), the model and the normalized prompt. Fields are length-prefixed, so
/// no two different requests digest alike.
pub fn basis(scope: CacheScope, user: UserId, model: &str, prompt: &str) -> String {
    let owner = match scope {
        CacheScope::User => user.to_string(),
        CacheScope::Shared => String::new(),
    };
    let mut h = Sha256::new();
    h.update(b"jewelshot-cache-v1");
    for field in [scope.as_str(), owner.as_str(), model, normalize_prompt(prompt).as_str()] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex(&h.finalize())
}

/// Hex SHA-256 of the bytes fal reads.
pub fn content_digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The cache key of a request's `basis` and its image's `content_digest`.
pub fn key(basis: &str, content: &str) -> String {
    format!("{basis}:{content}")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_that_ask_the_same_compare_equal() {
        assert_eq!(normalize_prompt("  Enhance\tLIGHTING \n"), "enhance lighting");
        assert_eq!(normalize_prompt("Weiße  Hintergrund"), "weiße hintergrund");
        assert_ne!(normalize_prompt("white background"), normalize_prompt("white backgrounds"));
    }

    #[test]
    fn the_basis_separates_scope_user_model_and_prompt() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let m = "fal-ai/flux-pro/kontext";
        let base = basis(CacheScope::User, a, m, "Enhance lighting");
        assert_eq!(base, basis(CacheScope::User, a, m, "enhance  lighting"));
        assert_eq!(base.len(), 64);
        assert_ne!(base, basis(CacheScope::User, b, m, "enhance lighting"));
        assert_ne!(base, basis(CacheScope::User, a, "fal-ai/other", "enhance lighting"));
        assert_ne!(base, basis(CacheScope::User, a, m, "enhance lightin"));
        // Shared: the user no longer matters, and the key differs from any user's.
        let shared = basis(CacheScope::Shared, a, m, "enhance lighting");
        assert_eq!(shared, basis(CacheScope::Shared, b, m, "enhance lighting"));
        assert_ne!(shared, base);
        // Length prefixes: moving a character between fields changes the digest.
        assert_ne!(basis(CacheScope::Shared, a, "ab", "c"), basis(CacheScope::Shared, a, "a", "bc"));
    }

    #[test]
    fn content_digests_are_sha256() {
        assert_eq!(content_digest(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(key("b", "c"), "b:c");
    }
}
