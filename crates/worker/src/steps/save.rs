//! `save-to-gallery`: download fal's result (size-capped), compress it as uploads are, store it
//! under a key derived from the job (a repeat overwrites, never duplicates), and record the
//! gallery row (`UNIQUE(job_id)`: one image per job, ever).

use bytes::Bytes;
use jewelshot_db::{gallery::NewGalleryImage, jobs::JobRow};
use jewelshot_domain::{job::error_code, StepName};
use jewelshot_imaging::Compressed;
use jewelshot_storage::job_result_key;
use serde::{Deserialize, Serialize};

use super::{generate::Generated, run_step, StepFailure};
use crate::{
    egress::{error_chain, Egress},
    pipeline::Ctx,
};

/// What `save-to-gallery` produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub key: String,
    pub url: String,
    pub bytes: u64,
    pub content_type: String,
    /// fal's result size, before compression.
    #[serde(default)]
    pub original_bytes: u64,
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
}

#[tracing::instrument(name = "save-to-gallery", skip_all, fields(step = "save-to-gallery"))]
pub async fn save(ctx: &Ctx, job: &JobRow, generated: &Generated) -> Result<Saved, StepFailure> {
    run_step(ctx, job.id, StepName::SaveToGallery, |_| async move {
        let body = download(ctx, &generated.image.url).await?;
        let original_bytes = body.len() as u64;
        metrics::counter!(jewelshot_domain::metric_names::BANDWIDTH, "direction" => "results_downloaded")
            .increment(original_bytes);
        let image = compress(ctx, body).await?;
        store(ctx, job, image, original_bytes).await
    })
    .await
}

/// The gallery copy is the compressed one (≤ 1920 px, ≤ 500 KB): fal's results are several MB.
async fn compress(ctx: &Ctx, body: Bytes) -> Result<Compressed, StepFailure> {
    let limits = ctx.images;
    tokio::task::spawn_blocking(move || jewelshot_imaging::compress(&body, &limits))
        .await
        .map_err(|e| StepFailure::retry(error_code::INTERNAL, e.to_string()))?
        .map_err(|e| {
            StepFailure::fatal(error_code::UPSTREAM_BAD_RESPONSE, format!("fal's result could not be processed: {e}"))
        })
}

/// Write the object and the gallery row.
async fn store(ctx: &Ctx, job: &JobRow, image: Compressed, original_bytes: u64) -> Result<Saved, StepFailure> {
    // The key depends on the job only, so a repeated save overwrites rather than duplicates.
    let key = job_result_key(&job.user_id.to_string(), &job.id.to_string(), image.extension)?;
    let stored = ctx.store.put(&key, image.bytes.into(), image.content_type).await?;
    let url = ctx.store.url(&key).await?;
    let row = ctx
        .db
        .save_gallery_image(&NewGalleryImage {
            user_id: job.user_id,
            job_id: job.id,
            storage_key: key.as_str(),
            url: &url,
            content_type: image.content_type,
            bytes: stored.bytes as i64,
            width: Some(image.width as i32),
            height: Some(image.height as i32),
        })
        .await?;
    Ok(Saved {
        key: row.storage_key,
        url: row.url,
        bytes: stored.bytes,
        content_type: image.content_type.to_owned(),
        original_bytes,
        width: image.width,
        height: image.height,
    })
}

/// Fetch a generated image, refusing anything larger than `max_result_bytes`.
async fn download(ctx: &Ctx, url: &str) -> Result<Bytes, StepFailure> {
    let cap = ctx.settings.max_result_bytes;
    fetch_capped(ctx, url, cap).await.map_err(|e| match e {
        Fetch::Refused(why) => {
            StepFailure::fatal(error_code::UPSTREAM_BAD_RESPONSE, format!("fal's result URL: {why}"))
        }
        Fetch::TooLarge => {
            StepFailure::fatal(error_code::UPSTREAM_BAD_RESPONSE, format!("result is larger than {cap} bytes"))
        }
        Fetch::Failed(why) => {
            StepFailure::retry(error_code::STORAGE_FAILED, format!("downloading the result failed: {why}"))
        }
    })
}

/// Why [`fetch_capped`] got nothing.
#[derive(Debug)]
pub(crate) enum Fetch {
    /// The URL may not be fetched (an internal address, a bad scheme).
    Refused(String),
    TooLarge,
    /// Transport trouble or a non-2xx answer.
    Failed(String),
}

/// GET `url` through the egress guard (public addresses only), refusing more than `cap` bytes.
pub(crate) async fn fetch_capped(ctx: &Ctx, url: &str, cap: u64) -> Result<Bytes, Fetch> {
    let target = ctx.downloads.target(url).map_err(Fetch::Refused)?;
    let mut resp = ctx.downloads.http().get(target).send().await.map_err(|e| match Egress::refused(&e) {
        Some(why) => Fetch::Refused(why),
        None => Fetch::Failed(error_chain(&e)),
    })?;
    if !resp.status().is_success() {
        return Err(Fetch::Failed(format!("answered {}", resp.status())));
    }
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(Fetch::TooLarge);
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| Fetch::Failed(e.to_string()))? {
        buf.extend_from_slice(&chunk);
        if buf.len() as u64 > cap {
            return Err(Fetch::TooLarge);
        }
    }
    Ok(buf.into())
}
