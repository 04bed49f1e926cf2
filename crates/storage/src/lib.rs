//! # jewelshot-storage
//!
//! Where images live. One [`ObjectStore`] trait, shaped for object storage (keys, content types,
//! public or signed URLs), with a local-filesystem backend as the default and an S3 backend for
//! AWS S3, Cloudflare R2, MinIO, Supabase Storage and other S3-compatible services.
//!
//! ## Layout
//! - [`ObjectKey`] — a validated relative key (`results/<user>/<job>.jpg`); no `..`, no absolute
//!   paths. [`upload_key`] and [`job_result_key`] build the two kinds the system writes.
//! - [`ObjectStore`] — put/get/delete/exists/url/health; a put answers a [`StoredObject`], a get
//!   an [`Object`]; [`content_type_for`] guesses a type from the key's extension.
//! - [`StorageError`] — typed failures with `code()` and `is_retryable()`.
//! - [`local`] — [`local::LocalFs`]: files under a root directory, written atomically (temp
//!   file + rename); [`local::LocalConfig`], [`local::DEFAULT_BASE_URL`].
//! - [`s3`] — [`s3::S3Store`]: any S3-compatible service; CDN base URLs or presigned GETs;
//!   [`s3::S3Config`], [`s3::IMMUTABLE`] (the `Cache-Control` of what we write).
//! - [`StorageConfig`] / [`open`] — builds the configured backend.

pub mod local;
pub mod s3;

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A validated object key: ASCII letters, digits, `._-/`, no empty or dot segments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn new(key: impl Into<String>) -> Result<Self, StorageError> {
        let key = key.into();
        let ok_chars = key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        let ok_segments = key.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
        if key.is_empty() || key.len() > 512 || !ok_chars || !ok_segments {
            return Err(StorageError::InvalidKey(key));
        }
        Ok(Self(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An object read back.
#[derive(Debug, Clone)]
pub struct Object {
    pub body: Bytes,
    pub content_type: String,
}

/// What a put stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: ObjectKey,
    pub bytes: u64,
    pub content_type: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object key `{0}`")]
    InvalidKey(String),
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage backend failed: {0}")]
    Backend(String),
    #[error("invalid storage configuration: {0}")]
    Config(String),
}

impl StorageError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidKey(_) => "invalid-object-key",
            Self::Io(_) | Self::Backend(_) => "storage-unavailable",
            Self::Config(_) => "storage-config",
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Io(_) | Self::Backend(_))
    }
}

/// An object store. Implementations must make `put` atomic: a reader sees the old object, the
/// new one, or none — never a partial write.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    async fn put(&self, key: &ObjectKey, body: Bytes, content_type: &str) -> Result<StoredObject, StorageError>;
    async fn get(&self, key: &ObjectKey) -> Result<Option<Object>, StorageError>;
    async fn exists(&self, key: &ObjectKey) -> Result<bool, StorageError>;
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError>;
    /// A URL a client can fetch the object from (public base, or a signed URL for S3).
    async fn url(&self, key: &ObjectKey) -> Result<String, StorageError>;
    /// Cheap reachability check for `/readyz`.
    async fn health(&self) -> Result<(), StorageError>;
    /// The key of the object `url` names, if it is a URL this store makes ([`ObjectStore::url`]:
    /// the same origin and bucket; signature and expiry are not checked). The gateway uses it to
    /// recognise a submit that reads one of its uploads.
    fn key_of(&self, url: &str) -> Option<ObjectKey>;
}

/// The key in `url` under `base` (`<base>/<key>[?query]`), if `url` starts with it.
pub fn key_under(base: &str, url: &str) -> Option<ObjectKey> {
    let rest = url.strip_prefix(base.trim_end_matches('/'))?.strip_prefix('/')?;
    let path = rest.split(['?', '#']).next()?;
    ObjectKey::new(path).ok()
}

/// Storage settings (`JEWELSHOT_STORAGE__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    /// `local` (default) or `s3`.
    pub backend: String,
    pub local: local::LocalConfig,
    pub s3: s3::S3Config,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { backend: "local".into(), local: local::LocalConfig::default(), s3: s3::S3Config::default() }
    }
}

/// Build the configured store.
pub async fn open(cfg: &StorageConfig) -> Result<Arc<dyn ObjectStore>, StorageError> {
    match cfg.backend.as_str() {
        "local" => Ok(Arc::new(local::LocalFs::new(&cfg.local)?)),
        "s3" => Ok(Arc::new(s3::S3Store::new(&cfg.s3).await?)),
        other => Err(StorageError::Config(format!("unknown storage backend `{other}` (expected `local` or `s3`)"))),
    }
}

/// The content type for a key's extension (for stores that keep none).
pub fn content_type_for(key: &ObjectKey) -> &'static str {
    match key.as_str().rsplit('.').next().map(str::to_ascii_lowercase).as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// The key an upload is stored under: the user's prefix and a fresh ULID, so it never collides.
pub fn upload_key(user: &str, id: &str, ext: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::new(format!("uploads/{user}/{id}.{ext}"))
}

/// The key a job's gallery image is stored under: derived from ids only, so a repeated save
/// overwrites the same object instead of adding one.
pub fn job_result_key(user: &str, job: &str, ext: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::new(format!("results/{user}/{job}.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert!(ObjectKey::new("results/u/j.jpg").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "a/./b", "sp ace", "a\\b", "ü"] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?}");
        }
    }
}
