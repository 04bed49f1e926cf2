//! Local-filesystem backend: one file per object under `root`, served by the gateway at
//! `public_base_url` (`/files/…`) — only with a signed, expiring URL ([`UrlSigner`]).

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{content_type_for, Object, ObjectKey, ObjectStore, StorageError, StoredObject};

/// `JEWELSHOT_STORAGE__LOCAL__*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalConfig {
    pub root: PathBuf,
    /// Prefix of object URLs; the gateway serves `root` at `/files`. Empty: the gateway uses
    /// its own listen address; other processes assume `http://127.0.0.1:8080/files`.
    pub public_base_url: String,
    /// Key that signs file URLs; every gateway and worker must share it. Empty: a random key for
    /// this process alone (URLs made by another process — a worker's webhook — will not verify).
    pub signing_key: String,
    /// How long a file URL stays valid, in seconds (clients fetch the job again for a new one).
    pub url_ttl_secs: u64,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("data/files"),
            public_base_url: String::new(),
            signing_key: String::new(),
            url_ttl_secs: 24 * 3600,
        }
    }
}

/// Signs and verifies file URLs: `?expires=<unix seconds>&sig=<HMAC-SHA256(key, object key \n
/// expires), hex>`. Expiries are rounded up to the minute, so the URLs of one object made
/// within a minute are equal (caches and browsers reuse them).
#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// One random key per process, for configurations that set none.
fn process_key() -> Vec<u8> {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        tracing::warn!("JEWELSHOT_STORAGE__LOCAL__SIGNING_KEY is unset: file URLs verify only in this process");
        let mut k = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut k);
        k
    })
    .clone()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl UrlSigner {
    pub fn new(cfg: &LocalConfig) -> Self {
        let key = if cfg.signing_key.is_empty() { process_key() } else { cfg.signing_key.as_bytes().to_vec() };
        Self { key, ttl: Duration::from_secs(cfg.url_ttl_secs.max(60)) }
    }

    fn mac(&self, object: &str, expires: u64) -> Hmac<Sha256> {
        // A key of any length is accepted by HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(object.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The query string that makes `object`'s URL valid until about `ttl` from now.
    pub fn query(&self, object: &str) -> String {
        self.query_until(object, (unix_now() + self.ttl.as_secs()).div_ceil(60) * 60)
    }

    /// The query string that makes `object`'s URL valid until `expires` (Unix seconds), e.g.
    /// for a link an operator hands out with a life of its own.
    pub fn query_until(&self, object: &str, expires: u64) -> String {
        let sig = hex::encode(self.mac(object, expires).finalize().into_bytes());
        format!("expires={expires}&sig={sig}")
    }

    /// Seconds `object`'s URL stays valid if `expires`/`sig` are ours and not past; else `None`.
    pub fn verify(&self, object: &str, expires: u64, sig: &str) -> Option<u64> {
        let now = unix_now();
        if expires <= now {
            return None;
        }
        let sig = hex::decode(sig).ok()?;
        self.mac(object, expires).verify_slice(&sig).ok()?;
        Some(expires - now)
    }
}

/// Where the gateway serves the local store by default.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8080/files";

#[derive(Debug, Clone)]
pub struct LocalFs {
    root: PathBuf,
    base_url: String,
    signer: UrlSigner,
}

impl LocalFs {
    pub fn new(cfg: &LocalConfig) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&cfg.root)?;
        let base = if cfg.public_base_url.is_empty() { DEFAULT_BASE_URL } else { &cfg.public_base_url };
        Ok(Self {
            root: cfg.root.clone(),
            base_url: base.trim_end_matches('/').to_owned(),
            signer: UrlSigner::new(cfg),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        // ObjectKey forbids `..` and absolute paths, so this stays under root.
        self.root.join(key.as_str())
    }
}

#[async_trait]
impl ObjectStore for LocalFs {
    async fn put(&self, key: &ObjectKey, body: Bytes, content_type: &str) -> Result<StoredObject, StorageError> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        // Write beside the target, then rename: readers never see a half-written file.
        let tmp = path.with_extension(format!("tmp-{:016x}", rand::random::<u64>()));
        let len = body.len() as u64;
        let write = async {
            tokio::fs::write(&tmp, &body).await?;
            tokio::fs::rename(&tmp, &path).await
        };
        if let Err(e) = write.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        Ok(StoredObject { key: key.clone(), bytes: len, content_type: content_type.to_owned() })
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Object>, StorageError> {
        match tokio::fs::read(self.path(key)).await {
            Ok(body) => Ok(Some(Object { body: body.into(), content_type: content_type_for(key).to_owned() })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn exists(&self, key: &ObjectKey) -> Result<bool, StorageError> {
        Ok(tokio::fs::try_exists(self.path(key)).await?)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn url(&self, key: &ObjectKey) -> Result<String, StorageError> {
        Ok(format!("{}/{}?{}", self.base_url, key, self.signer.query(key.as_str())))
    }

    fn key_of(&self, url: &str) -> Option<ObjectKey> {
        crate::key_under(&self.base_url, url)
    }

    async fn health(&self) -> Result<(), StorageError> {
        let meta = tokio::fs::metadata(&self.root).await?;
        if !meta.is_dir() {
            return Err(StorageError::Backend(format!("{} is not a directory", self.root.display())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_delete_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = LocalConfig {
            root: dir.path().into(),
            public_base_url: "http://x/files/".into(),
            signing_key: "k".into(),
            ..Default::default()
        };
        let fs = LocalFs::new(&cfg).expect("open");
        let key = ObjectKey::new("results/u1/j1.jpg").expect("key");
        assert!(fs.get(&key).await.expect("get").is_none());
        let stored = fs.put(&key, Bytes::from_static(b"jpeg"), "image/jpeg").await.expect("put");
        assert_eq!(stored.bytes, 4);
        let obj = fs.get(&key).await.expect("get").expect("present");
        assert_eq!(&obj.body[..], b"jpeg");
        assert_eq!(obj.content_type, "image/jpeg");
        let url = fs.url(&key).await.expect("url");
        assert!(url.starts_with("http://x/files/results/u1/j1.jpg?expires="), "{url}");
        // A URL it made names its key again; another origin's, or a bad key, does not.
        assert_eq!(fs.key_of(&url), Some(key.clone()));
        assert_eq!(fs.key_of("http://x/files/results/u1/j1.jpg"), Some(key.clone()));
        assert_eq!(fs.key_of("http://y/files/results/u1/j1.jpg"), None);
        assert_eq!(fs.key_of("http://x/files-other/results/u1/j1.jpg"), None);
        assert_eq!(fs.key_of("http://x/files/a/../b.jpg"), None);
        // Overwrite is atomic and leaves no temp files.
        fs.put(&key, Bytes::from_static(b"jpeg2"), "image/jpeg").await.expect("put again");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("results/u1")).expect("dir").collect();
        assert_eq!(names.len(), 1);
        fs.delete(&key).await.expect("delete");
        assert!(!fs.exists(&key).await.expect("exists"));
        fs.delete(&key).await.expect("delete is idempotent");
        fs.health().await.expect("healthy");
    }

    #[test]
    fn file_urls_verify_only_as_signed_and_until_they_expire() {
        let cfg = LocalConfig { signing_key: "shared".into(), url_ttl_secs: 3600, ..Default::default() };
        let signer = UrlSigner::new(&cfg);
        let query = signer.query("results/u/j.jpg");
        let (expires, sig) = query.split_once("&sig=").expect("sig");
        let expires: u64 = expires.trim_start_matches("expires=").parse().expect("expires");
        let left = signer.verify("results/u/j.jpg", expires, sig).expect("valid");
        assert!((3540..=3660).contains(&left), "{left}");
        assert!(signer.verify("results/u/other.jpg", expires, sig).is_none(), "another object");
        assert!(signer.verify("results/u/j.jpg", expires + 60, sig).is_none(), "a longer life");
        assert!(signer.verify("results/u/j.jpg", expires, "00").is_none());
        let other = UrlSigner::new(&LocalConfig { signing_key: "other".into(), ..cfg.clone() });
        assert!(other.verify("results/u/j.jpg", expires, sig).is_none(), "another key");
        let past = unix_now() - 1;
        let old = hex::encode(signer.mac("results/u/j.jpg", past).finalize().into_bytes());
        assert!(signer.verify("results/u/j.jpg", past, &old).is_none(), "expired");
    }
}
