//! Local-filesystem backend: one file per object under `root`, served by the gateway at
//! `public_base_url` (`/files/…`).

use std::path::{Path, PathBuf};

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
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self { root: PathBuf::from("data/files"), public_base_url: String::new() }
    }
}

/// Where the gateway serves the local store by default.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8080/files";

#[derive(Debug, Clone)]
pub struct LocalFs {
    root: PathBuf,
    base_url: String,
}

impl LocalFs {
    pub fn new(cfg: &LocalConfig) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&cfg.root)?;
        let base = if cfg.public_base_url.is_empty() { DEFAULT_BASE_URL } else { &cfg.public_base_url };
        Ok(Self { root: cfg.root.clone(), base_url: base.trim_end_matches('/').to_owned() })
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
        Ok(format!("{}/{}", self.base_url, key))
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
        let fs = LocalFs::new(&LocalConfig { root: dir.path().into(), public_base_url: "http://x/files/".into() })
            .expect("open");
        let key = ObjectKey::new("results/u1/j1.jpg").expect("key");
        assert!(fs.get(&key).await.expect("get").is_none());
        let stored = fs.put(&key, Bytes::from_static(b"jpeg"), "image/jpeg").await.expect("put");
        assert_eq!(stored.bytes, 4);
        let obj = fs.get(&key).await.expect("get").expect("present");
        assert_eq!(&obj.body[..], b"jpeg");
        assert_eq!(obj.content_type, "image/jpeg");
        assert_eq!(fs.url(&key).await.expect("url"), "http://x/files/results/u1/j1.jpg");
        // Overwrite is atomic and leaves no temp files.
        fs.put(&key, Bytes::from_static(b"jpeg2"), "image/jpeg").await.expect("put again");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("results/u1")).expect("dir").collect();
        assert_eq!(names.len(), 1);
        fs.delete(&key).await.expect("delete");
        assert!(!fs.exists(&key).await.expect("exists"));
        fs.delete(&key).await.expect("delete is idempotent");
        fs.health().await.expect("healthy");
    }
}
