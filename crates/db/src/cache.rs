//! The result cache (V12; the rules are SQL functions there). A submit that reads one of the
//! caller's uploads meets the cache in its own statement ([`crate::Db::submit_job`]); any other job
//! meets it when a worker has hashed the bytes it fetched ([`Db::cache_join`]). Whoever ends a
//! job settles what the cache owes ([`Db::cache_settle`]): the result becomes an entry and the
//! jobs sharing the request complete, fail or take it over. Upkeep evicts entries and deletes
//! objects nothing refers to any more, after a grace period ([`Db::cache_evict`],
//! [`Db::due_orphans`]).

use std::{borrow::Cow, time::Duration};

use jewelshot_domain::JobId;

use crate::jobs::{job_from_row, parse, JobRow};
use crate::sql::Sql;
use crate::{Db, DbError, Result};

/// How long an object nothing refers to waits before it is deleted: longer than any submit's
/// statement, so a hit that read an entry just before it was evicted has committed its job —
/// its gallery entry, which then keeps the object — by the time the object is looked at again.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// What [`Db::cache_join`] made of a fingerprinted job.
#[derive(Debug)]
pub enum Joined {
    /// No usable entry: the job owns a pending one now and calls fal.
    Leader,
    /// Completed now from a ready entry.
    Hit(Box<JobRow>),
    /// Waiting on another job's request (back to `queued`, out of the line).
    Shared,
    /// No longer waiting or running (canceled meanwhile): nothing to do.
    Gone,
}

/// One job [`Db::cache_settle`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub job: JobId,
    pub outcome: SettledAs,
    /// It has a webhook: its `notify-user` must run (a worker does it for any final job).
    pub webhook: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettledAs {
    /// Completed from the finished job's result.
    Complete,
    /// Failed as the finished job did (fal refused the same input).
    Failed,
    /// Now runs the request itself: it must be put in the dispatch line.
    Promoted,
}

/// Lookups of the last hour, for `GET /api/queue`, the console and the hit-rate gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheStats {
    /// Completed from a result (at submit, or when the request they shared finished).
    pub hits: i64,
    /// Waiting on an identical job's request now.
    pub sharing: i64,
    /// Jobs that could use the cache.
    pub lookups: i64,
    /// Ready entries.
    pub entries: i64,
}

impl CacheStats {
    /// Hits per lookup, `None` before any.
    pub fn hit_rate(&self) -> Option<f64> {
        (self.lookups > 0).then(|| self.hits as f64 / self.lookups as f64)
    }
}

/// What one upkeep pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    pub expired: u64,
    pub over_capacity: u64,
    /// Objects left unreferenced, to be deleted after [`ORPHAN_GRACE`].
    pub orphaned: u64,
}

impl Db {
    /// A submit whose result is stored under `entry` (a hit), recorded in one plain statement —
    /// the job row, complete, which is also its gallery entry (V13) — without the
    /// `jewelshot_submit` function (a hit needs neither the cap nor the line). `None` (nothing
    /// written) when the entry is not ready now: the caller submits the usual way. The gateway
    /// takes this path for a request (one of the caller's uploads and a cache basis) it recently
    /// saw hit `entry`.
    pub async fn submit_hit(
        &self,
        id: JobId,
        user: jewelshot_domain::UserId,
        edit: &jewelshot_domain::NewEdit,
        max_attempts: i32,
        trace_parent: Option<&str>,
        entry: &str,
    ) -> Result<Option<JobRow>> {
        let row = match &self.group {
            // Written with whatever other submits wait on this pool.
            Some(group) => {
                let how = crate::group::How::Hit { key: Cow::Borrowed(entry) };
                let new = crate::group::NewJob::of(id, user, edit, max_attempts, trace_parent, how);
                group.insert(new).await?
            }
            None => {
                self.conn()
                    .await?
                    .query_opt(
                        "WITH e AS (
                            SELECT r.* FROM result_cache r
                             WHERE r.key = $9 AND r.storage_key IS NOT NULL AND r.expires_at > now()),
                         j AS (
                            INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, webhook_url, max_attempts,
                                              trace_parent, cache_key, cached, result_key, result_url, result_content_type,
                                              result_bytes, result_width, result_height, gallery_entry, started_at, finished_at)
                            SELECT $1, $2, 'complete', $3, $4, $5, $6, $7, $8, e.key, true, e.storage_key, e.url, e.content_type,
                                   e.bytes, e.width, e.height, true, now(), now()
                              FROM e
                            RETURNING *)
                         SELECT * FROM j",
                        &[
                            &id.to_string(),
                            &user.to_string(),
                            &edit.priority.as_str(),
                            &edit.prompt,
                            &edit.image_url.as_str(),
                            &edit.webhook_url.as_ref().map(|u| u.as_str()),
                            &max_attempts,
                            &trace_parent,
                            &entry,
                        ],
                    )
                    .await?
            }
        };
        let Some(row) = row else { return Ok(None) };
        self.changed(id);
        Ok(Some(job_from_row(&row)?))
    }

    /// A worker hashed the bytes `job` reads: meet the cache under `key`
    /// (`jewelshot_cache_join`).
    pub async fn cache_join(&self, job: JobId, key: &str) -> Result<Joined> {
        let conn = self.conn().await?;
        let row = conn.query_one("SELECT jewelshot_cache_join($1, $2)", &[&job.to_string(), &key]).await?;
        let outcome: String = row.get(0);
        self.changed(job);
        match outcome.as_str() {
            "leader" => Ok(Joined::Leader),
            "shared" => Ok(Joined::Shared),
            "gone" => Ok(Joined::Gone),
            "hit" => {
                let row = conn.query_one("SELECT * FROM jobs WHERE id = $1", &[&job.to_string()]).await?;
                Ok(Joined::Hit(Box::new(job_from_row(&row)?)))
            }
            other => Err(DbError::Corrupt(format!("jewelshot_cache_join answered {other:?}"))),
        }
    }

    /// `job` ended: record its result (kept `ttl`) and settle the jobs sharing its request
    /// (`jewelshot_cache_settle`). Idempotent; every job it changed is reported changed.
    pub async fn cache_settle(&self, job: JobId, ttl: Duration) -> Result<Vec<Settled>> {
        let rows = self
            .conn()
            .await?
            .query("SELECT * FROM jewelshot_cache_settle($1, $2)", &[&job.to_string(), &ttl.as_secs_f64()])
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let outcome = match row.get::<_, String>("outcome").as_str() {
                "complete" => SettledAs::Complete,
                "failed" => SettledAs::Failed,
                "promoted" => SettledAs::Promoted,
                other => return Err(DbError::Corrupt(format!("jewelshot_cache_settle answered {other:?}"))),
            };
            out.push(Settled { job: parse(row, "job_id")?, outcome, webhook: row.get("webhook") });
        }
        self.changed_all(&out.iter().map(|s| s.job).collect::<Vec<_>>());
        Ok(out)
    }

    /// Ended jobs that still have jobs waiting on their request (their settle did not happen:
    /// a worker died between the end and the settle, or a sharer joined just as it ended).
    pub async fn unsettled_leaders(&self, limit: i64) -> Result<Vec<JobId>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT DISTINCT f.shares_job FROM jobs f JOIN jobs l ON l.id = f.shares_job
                  WHERE f.shares_job IS NOT NULL AND f.status = 'queued'
                    AND l.status IN ('complete', 'failed', 'canceled')
                  LIMIT $1",
                &[&limit],
            )
            .await?;
        rows.iter().map(|r| parse(r, "shares_job")).collect()
    }

    /// Remove expired entries, then the oldest ready ones beyond `max_entries` (at most `batch`
    /// each); an object no gallery entry refers to any more is tombstoned, to be deleted after
    /// [`ORPHAN_GRACE`]. Entries are digests and storage keys only: the objects stay while
    /// any gallery refers to them.
    pub async fn cache_evict(&self, max_entries: u64, batch: i64) -> Result<Evicted> {
        let conn = self.conn().await?;
        let grace = ORPHAN_GRACE.as_secs_f64();
        let row = conn
            .query_one(
                "WITH expired AS (
                    DELETE FROM result_cache WHERE key IN (
                        SELECT key FROM result_cache WHERE storage_key IS NOT NULL AND expires_at <= now() LIMIT $2)
                    RETURNING storage_key),
                 surplus AS (
                    DELETE FROM result_cache WHERE key IN (
                        SELECT key FROM result_cache WHERE storage_key IS NOT NULL AND expires_at > now()
                         ORDER BY ready_at DESC OFFSET $1 LIMIT $2)
                    RETURNING storage_key),
                 gone AS (SELECT storage_key FROM expired UNION SELECT storage_key FROM surplus),
                 orphaned AS (
                    INSERT INTO object_tombstones (storage_key, due_at)
                    SELECT g.storage_key, now() + make_interval(secs => $3) FROM gone g
                     WHERE NOT jewelshot_object_in_gallery(g.storage_key)
                    ON CONFLICT (storage_key) DO NOTHING
                    RETURNING 1)
                 SELECT (SELECT count(*) FROM expired), (SELECT count(*) FROM surplus), (SELECT count(*) FROM orphaned)",
                &[&(max_entries.min(i64::MAX as u64) as i64), &batch, &grace],
            )
            .await?;
        Ok(Evicted {
            expired: row.get::<_, i64>(0) as u64,
            over_capacity: row.get::<_, i64>(1) as u64,
            orphaned: row.get::<_, i64>(2) as u64,
        })
    }

    /// Tombstoned objects past their grace period that nothing refers to now — each claimed
    /// (its tombstone removed) in this statement: the caller deletes the objects. One that is
    /// referenced again (a hit's gallery entry) just loses its tombstone.
    pub async fn due_orphans(&self, limit: i64) -> Result<Vec<String>> {
        let rows = self
            .conn()
            .await?
            .query(
                "WITH due AS (
                    DELETE FROM object_tombstones WHERE storage_key IN (
                        SELECT storage_key FROM object_tombstones WHERE due_at <= now() LIMIT $1)
                    RETURNING storage_key)
                 SELECT d.storage_key FROM due d
                  WHERE NOT jewelshot_object_in_gallery(d.storage_key)
                    AND NOT EXISTS (SELECT 1 FROM result_cache r WHERE r.storage_key = d.storage_key)",
                &[&limit],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Lookups, hits and sharers of the last `window`, and the ready entries. The window is a
    /// range of the primary key (job ids are ULIDs: time first), so no index is kept for it —
    /// every hit would pay for one.
    pub async fn cache_stats(&self, window: Duration) -> Result<CacheStats> {
        let since = std::time::SystemTime::now().checked_sub(window).unwrap_or(std::time::UNIX_EPOCH);
        let first_id = ulid::Ulid::from_parts(
            since.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            0,
        )
        .to_string();
        let row = self
            .conn()
            .await?
            .query_one(
                "SELECT count(*) FILTER (WHERE cached),
                        count(*) FILTER (WHERE shares_job IS NOT NULL AND status = 'queued'),
                        count(*),
                        (SELECT count(*) FROM result_cache WHERE storage_key IS NOT NULL)
                   FROM jobs WHERE id >= $1 AND cache_key IS NOT NULL",
                &[&first_id],
            )
            .await?;
        Ok(CacheStats { hits: row.get(0), sharing: row.get(1), lookups: row.get(2), entries: row.get(3) })
    }
}
