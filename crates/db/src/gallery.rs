//! Saved images. One per job, ever: the unique `job_id` makes a repeated save a no-op.
//!
//! A user's gallery has two sources: the `gallery_images` rows (images the user's own requests
//! stored) and the jobs completed from the result cache, each of which is its own entry (V13:
//! `gallery_entry`; the entry's id and time are its job's — it sits where the job was submitted —
//! and its object is another job's, not charged). Listing, deleting and the orphan checks read
//! both.

use chrono::{DateTime, Utc};
use jewelshot_domain::{JobId, UserId};

use crate::sql::Sql;
use crate::{Db, Result};

#[derive(Debug, Clone)]
pub struct GalleryImage {
    pub id: String,
    pub user_id: String,
    pub job_id: Option<String>,
    pub storage_key: String,
    pub url: String,
    pub content_type: String,
    pub bytes: i64,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// What to record for a stored image.
#[derive(Debug, Clone)]
pub struct NewGalleryImage<'a> {
    pub user_id: UserId,
    pub job_id: JobId,
    pub storage_key: &'a str,
    pub url: &'a str,
    pub content_type: &'a str,
    pub bytes: i64,
    pub width: Option<i32>,
    pub height: Option<i32>,
}

fn image_from_row(row: &tokio_postgres::Row) -> GalleryImage {
    GalleryImage {
        id: row.get("id"),
        user_id: row.get("user_id"),
        job_id: row.get("job_id"),
        storage_key: row.get("storage_key"),
        url: row.get("url"),
        content_type: row.get("content_type"),
        bytes: row.get("bytes"),
        width: row.get("width"),
        height: row.get("height"),
        created_at: row.get("created_at"),
    }
}

impl Db {
    /// Record the job's gallery image (and account its bytes), or return the one already
    /// recorded for it. One transaction: the row and the accounting agree.
    pub async fn save_gallery_image(&self, img: &NewGalleryImage<'_>) -> Result<GalleryImage> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let inserted = tx
            .query_opt(
                "INSERT INTO gallery_images (id, user_id, job_id, storage_key, url, content_type, bytes, width, height)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (job_id) DO NOTHING RETURNING *",
                &[
                    &ulid::Ulid::generate().to_string(),
                    &img.user_id.to_string(),
                    &img.job_id.to_string(),
                    &img.storage_key,
                    &img.url,
                    &img.content_type,
                    &img.bytes,
                    &img.width,
                    &img.height,
                ],
            )
            .await?;
        let row = match inserted {
            Some(row) => {
                tx.execute(
                    "INSERT INTO user_storage (user_id, bytes, objects) VALUES ($1, $2, 1)
                     ON CONFLICT (user_id) DO UPDATE SET bytes = user_storage.bytes + $2,
                            objects = user_storage.objects + 1, updated_at = now()",
                    &[&img.user_id.to_string(), &img.bytes],
                )
                .await?;
                row
            }
            None => tx.query_one("SELECT * FROM gallery_images WHERE job_id = $1", &[&img.job_id.to_string()]).await?,
        };
        tx.commit().await?;
        Ok(image_from_row(&row))
    }

    /// `user`'s gallery, newest first, strictly older than `before` when given.
    pub async fn list_gallery(&self, user: UserId, before: Option<&str>, limit: i64) -> Result<Vec<GalleryImage>> {
        let rows = self
            .conn()
            .await?
            .query(
                "(SELECT id, user_id, job_id, storage_key, url, content_type, bytes, width, height, created_at
                    FROM gallery_images WHERE user_id = $1 AND ($2::text IS NULL OR id < $2)
                   ORDER BY id DESC LIMIT $3)
                 UNION ALL
                 (SELECT id, user_id, id, result_key, coalesce(result_url, ''),
                         coalesce(result_content_type, 'application/octet-stream'), coalesce(result_bytes, 0),
                         result_width, result_height, created_at
                    FROM jobs WHERE user_id = $1 AND gallery_entry AND ($2::text IS NULL OR id < $2)
                   ORDER BY id DESC LIMIT $3)
                 ORDER BY id DESC LIMIT $3",
                &[&user.to_string(), &before, &limit],
            )
            .await?;
        Ok(rows.iter().map(image_from_row).collect())
    }

    /// How many gallery images a job has (the invariant is: at most one), its own entry
    /// included when it was completed from the cache.
    pub async fn gallery_count_for_job(&self, job: JobId) -> Result<i64> {
        let row = self
            .conn()
            .await?
            .query_one(
                "SELECT (SELECT count(*) FROM gallery_images WHERE job_id = $1)
                      + (SELECT count(*) FROM jobs WHERE id = $1 AND gallery_entry)",
                &[&job.to_string()],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Delete `user`'s gallery image `id`: the row, its bytes from the user's account (a cache
    /// hit's entry was never charged), and — when it was the user's own result — the cache
    /// entries made from it. A cache hit's entry is its job: the job stays, out of the gallery.
    /// The object is tombstoned: once [`crate::cache::ORPHAN_GRACE`] has passed, the upkeep
    /// deletes it if no gallery entry and no cache entry refers to it then — another user's hit
    /// on the same result keeps it (the check is made then, not now, so two deletes
    /// of the last two rows at once cannot both leave it). `None` when the user has no such
    /// image. One statement.
    pub async fn delete_gallery_image(&self, user: UserId, id: &str) -> Result<Option<DeletedImage>> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "WITH row_del AS (
                    DELETE FROM gallery_images WHERE id = $1 AND user_id = $2
                    RETURNING storage_key, bytes, shared),
                 hit_del AS (
                    UPDATE jobs SET gallery_entry = false
                     WHERE id = $1 AND user_id = $2 AND gallery_entry AND NOT EXISTS (SELECT 1 FROM row_del)
                    RETURNING result_key AS storage_key, 0::bigint AS bytes, true AS shared),
                 del AS (SELECT * FROM row_del UNION ALL SELECT * FROM hit_del),
                 acct AS (
                    UPDATE user_storage u SET bytes = greatest(u.bytes - d.bytes, 0),
                           objects = greatest(u.objects - 1, 0), updated_at = now()
                      FROM del d WHERE u.user_id = $2 AND NOT d.shared
                    RETURNING 1),
                 entries AS (
                    DELETE FROM result_cache r USING del d WHERE r.storage_key = d.storage_key AND NOT d.shared
                    RETURNING 1),
                 orphan AS (
                    INSERT INTO object_tombstones (storage_key, due_at)
                    SELECT d.storage_key, now() + make_interval(secs => $3) FROM del d
                    ON CONFLICT (storage_key) DO NOTHING)
                 SELECT d.storage_key,
                        NOT EXISTS (SELECT 1 FROM gallery_images i WHERE i.storage_key = d.storage_key AND i.id <> $1)
                        AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.result_key = d.storage_key AND j.gallery_entry
                                           AND j.id <> $1)
                        AND (NOT d.shared OR NOT EXISTS (SELECT 1 FROM result_cache r WHERE r.storage_key = d.storage_key))
                        AS orphaned
                   FROM del d",
                &[&id, &user.to_string(), &crate::cache::ORPHAN_GRACE.as_secs_f64()],
            )
            .await?;
        Ok(row.map(|r| DeletedImage { storage_key: r.get("storage_key"), orphaned: r.get("orphaned") }))
    }
}

/// What [`Db::delete_gallery_image`] left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedImage {
    pub storage_key: String,
    /// Nothing else referred to the object as this statement saw it (the upkeep decides).
    pub orphaned: bool,
}
