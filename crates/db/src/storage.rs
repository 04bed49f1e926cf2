//! Storage accounting and uploads. Quotas are enforced by reserving bytes with one conditional
//! UPDATE before writing the object, so two concurrent uploads cannot both slip under a quota.

use chrono::{DateTime, Utc};
use jewelshot_domain::UserId;

use crate::sql::Sql;
use crate::{Db, Result};

#[derive(Debug, Clone)]
pub struct Upload {
    pub id: String,
    pub user_id: String,
    pub storage_key: String,
    pub content_type: String,
    pub bytes: i64,
    pub original_bytes: i64,
    pub width: i32,
    pub height: i32,
    pub created_at: DateTime<Utc>,
}

/// A user's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: i64,
    pub objects: i64,
}

impl Db {
    /// Reserve `bytes` (one object) for `user` if it stays within `quota` (None = unlimited).
    /// Returns false when the quota would be exceeded.
    pub async fn reserve_storage(&self, user: UserId, bytes: i64, quota: Option<i64>) -> Result<bool> {
        let conn = self.conn().await?;
        conn.execute("INSERT INTO user_storage (user_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&user.to_string()])
            .await?;
        let n = conn
            .execute(
                "UPDATE user_storage SET bytes = bytes + $2, objects = objects + 1, updated_at = now()
                  WHERE user_id = $1 AND ($3::bigint IS NULL OR bytes + $2 <= $3)",
                &[&user.to_string(), &bytes, &quota],
            )
            .await?;
        Ok(n == 1)
    }

    /// Give back a reservation (the write failed) or account a deletion.
    pub async fn release_storage(&self, user: UserId, bytes: i64) -> Result<()> {
        self.conn()
            .await?
            .execute(
                "UPDATE user_storage SET bytes = greatest(bytes - $2, 0), objects = greatest(objects - 1, 0),
                        updated_at = now() WHERE user_id = $1",
                &[&user.to_string(), &bytes],
            )
            .await?;
        Ok(())
    }

    pub async fn storage_usage(&self, user: UserId) -> Result<Usage> {
        let row = self
            .conn()
            .await?
            .query_opt("SELECT bytes, objects FROM user_storage WHERE user_id = $1", &[&user.to_string()])
            .await?;
        Ok(row.map(|r| Usage { bytes: r.get(0), objects: r.get(1) }).unwrap_or_default())
    }

    /// Bytes and objects over every user (for the storage-usage alert).
    pub async fn total_storage(&self) -> Result<Usage> {
        let row = self
            .conn()
            .await?
            .query_one(
                "SELECT coalesce(sum(bytes), 0)::bigint, coalesce(sum(objects), 0)::bigint FROM user_storage",
                &[],
            )
            .await?;
        Ok(Usage { bytes: row.get(0), objects: row.get(1) })
    }

    /// Record an upload whose bytes were already reserved. `content_sha256` is the hex digest of
    /// the stored bytes (what fal will read): a submit that reads this upload finds its result
    /// cache key without fetching anything.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_upload(
        &self,
        id: &str,
        user: UserId,
        key: &str,
        content_type: &str,
        bytes: i64,
        original_bytes: i64,
        width: i32,
        height: i32,
        content_sha256: &str,
    ) -> Result<Upload> {
        let row = self
            .conn()
            .await?
            .query_one(
                "INSERT INTO uploads (id, user_id, storage_key, content_type, bytes, original_bytes, width, height, content_sha256)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
                &[&id, &user.to_string(), &key, &content_type, &bytes, &original_bytes, &width, &height, &content_sha256],
            )
            .await?;
        Ok(Upload {
            id: row.get("id"),
            user_id: row.get("user_id"),
            storage_key: row.get("storage_key"),
            content_type: row.get("content_type"),
            bytes: row.get("bytes"),
            original_bytes: row.get("original_bytes"),
            width: row.get("width"),
            height: row.get("height"),
            created_at: row.get("created_at"),
        })
    }
}
