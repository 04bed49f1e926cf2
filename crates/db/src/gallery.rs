//! Saved images. One per job, ever: the unique `job_id` makes a repeated save a no-op.

use chrono::{DateTime, Utc};
use jewelshot_domain::{JobId, UserId};

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
    /// Record the job's gallery image, or return the one already recorded for it.
    pub async fn save_gallery_image(&self, img: &NewGalleryImage<'_>) -> Result<GalleryImage> {
        let conn = self.conn().await?;
        let inserted = conn
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
            Some(row) => row,
            None => {
                conn.query_one("SELECT * FROM gallery_images WHERE job_id = $1", &[&img.job_id.to_string()]).await?
            }
        };
        Ok(image_from_row(&row))
    }

    /// How many gallery images a job has (the invariant is: at most one).
    pub async fn gallery_count_for_job(&self, job: JobId) -> Result<i64> {
        let row = self
            .conn()
            .await?
            .query_one("SELECT count(*) FROM gallery_images WHERE job_id = $1", &[&job.to_string()])
            .await?;
        Ok(row.get(0))
    }
}
