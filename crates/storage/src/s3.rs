//! S3-compatible backend (AWS S3, Cloudflare R2, MinIO, Supabase Storage, s3s): path-style or
//! virtual-hosted addressing, credentials from the environment, URLs from a CDN base when one is
//! configured (R2 behind a CDN), else presigned GETs.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::{
    config::{
        timeout::TimeoutConfig, BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation,
    },
    presigning::PresigningConfig,
    primitives::ByteStream,
    Client,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Object, ObjectKey, ObjectStore, StorageError, StoredObject};

/// Objects we write never change under the same key (job-derived or ULID keys).
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `JEWELSHOT_STORAGE__S3__*`. Credentials: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
/// (and `AWS_SESSION_TOKEN`), or the fields below.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct S3Config {
    pub bucket: String,
    /// `auto` for R2; the bucket's region for AWS.
    pub region: String,
    /// Custom endpoint (R2, MinIO, Supabase, s3s); empty for AWS.
    pub endpoint: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by MinIO and most local servers.
    pub path_style: bool,
    /// CDN (or public bucket) base for object URLs; empty → presigned URLs.
    pub public_base_url: String,
    /// Lifetime of presigned URLs, in seconds (at most 7 days).
    pub presign_expiry_secs: u64,
    /// Per operation, in milliseconds.
    pub timeout_ms: u64,
    /// Create the bucket at start-up if it is missing (development and tests).
    pub create_bucket: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("public_base_url", &self.public_base_url)
            .field("credentials", &"<redacted>")
            .finish()
    }
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: "jewelshot".into(),
            region: "us-east-1".into(),
            endpoint: String::new(),
            path_style: false,
            public_base_url: String::new(),
            presign_expiry_secs: 3600,
            timeout_ms: 30_000,
            create_bucket: false,
            access_key_id: String::new(),
            secret_access_key: String::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    public_base: Option<String>,
    expiry: Duration,
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

impl S3Store {
    pub async fn new(cfg: &S3Config) -> Result<Self, StorageError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let key_id = Some(cfg.access_key_id.clone()).filter(|v| !v.is_empty()).or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret =
            Some(cfg.secret_access_key.clone()).filter(|v| !v.is_empty()).or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        let (Some(key_id), Some(secret)) = (key_id, secret) else {
            return Err(StorageError::Config("S3 storage needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into()));
        };
        if cfg.bucket.is_empty() {
            return Err(StorageError::Config("JEWELSHOT_STORAGE__S3__BUCKET is empty".into()));
        }
        if !(1..=7 * 24 * 3600).contains(&cfg.presign_expiry_secs) {
            return Err(StorageError::Config("presign expiry must be between 1 s and 7 days".into()));
        }
        let timeout = Duration::from_millis(cfg.timeout_ms);
        use aws_smithy_http_client::tls;
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let mut b = aws_sdk_s3::Config::builder()
            .http_client(https)
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(Credentials::new(key_id, secret, env("AWS_SESSION_TOKEN"), None, "jewelshot"))
            .force_path_style(cfg.path_style)
            // Only checksum when the API requires it: several S3-compatible servers reject the
            // newer default trailing checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(timeout.min(Duration::from_secs(5)))
                    .operation_attempt_timeout(timeout)
                    .operation_timeout(timeout * 3)
                    .build(),
            );
        if !cfg.endpoint.is_empty() {
            b = b.endpoint_url(&cfg.endpoint);
        }
        let client = Client::from_conf(b.build());
        let store = Self {
            client,
            bucket: cfg.bucket.clone(),
            public_base: Some(cfg.public_base_url.trim_end_matches('/').to_owned()).filter(|s| !s.is_empty()),
            expiry: Duration::from_secs(cfg.presign_expiry_secs),
        };
        if cfg.create_bucket && store.health().await.is_err() {
            store
                .client
                .create_bucket()
                .bucket(&store.bucket)
                .send()
                .await
                .map_err(|e| backend(aws_sdk_s3::error::DisplayErrorContext(e)))?;
        }
        Ok(store)
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &ObjectKey, body: Bytes, content_type: &str) -> Result<StoredObject, StorageError> {
        let len = body.len() as u64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(content_type)
            .cache_control(IMMUTABLE)
            .content_length(len as i64)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| backend(aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(StoredObject { key: key.clone(), bytes: len, content_type: content_type.to_owned() })
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Object>, StorageError> {
        match self.client.get_object().bucket(&self.bucket).key(key.as_str()).send().await {
            Ok(out) => {
                let content_type = out.content_type().unwrap_or("application/octet-stream").to_owned();
                let body = out.body.collect().await.map_err(backend)?.into_bytes();
                Ok(Some(Object { body, content_type }))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(backend(aws_sdk_s3::error::DisplayErrorContext(e))),
        }
    }

    async fn exists(&self, key: &ObjectKey) -> Result<bool, StorageError> {
        match self.client.head_object().bucket(&self.bucket).key(key.as_str()).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(backend(aws_sdk_s3::error::DisplayErrorContext(e))),
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| backend(aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    async fn url(&self, key: &ObjectKey) -> Result<String, StorageError> {
        if let Some(base) = &self.public_base {
            return Ok(format!("{base}/{key}"));
        }
        let cfg = PresigningConfig::expires_in(self.expiry).map_err(backend)?;
        let req =
            self.client.get_object().bucket(&self.bucket).key(key.as_str()).presigned(cfg).await.map_err(backend)?;
        Ok(req.uri().to_owned())
    }

    fn key_of(&self, url: &str) -> Option<ObjectKey> {
        if let Some(base) = &self.public_base {
            return crate::key_under(base, url);
        }
        // A presigned URL: `<endpoint>/<bucket>/<key>?X-Amz-…` (path style) or
        // `https://<bucket>.<host>/<key>?X-Amz-…`.
        let parsed = url::Url::parse(url).ok()?;
        let path = parsed.path().strip_prefix('/')?;
        let in_host = parsed
            .host_str()
            .and_then(|h| h.strip_prefix(self.bucket.as_str()))
            .is_some_and(|rest| rest.starts_with('.'));
        let key = match path.strip_prefix(self.bucket.as_str()).and_then(|p| p.strip_prefix('/')) {
            Some(key) if !in_host => key,
            _ if in_host => path,
            _ => return None,
        };
        ObjectKey::new(key).ok()
    }

    async fn health(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| backend(aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(())
    }
}
