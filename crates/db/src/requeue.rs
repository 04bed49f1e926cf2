//! Putting failed or stuck jobs back in line (the on-call engineer's `jewelshot requeue`).

use chrono::{DateTime, Utc};
use jewelshot_domain::{JobId, UserId};

use crate::sql::Sql;
use crate::{
    jobs::{job_from_row, JobRow},
    Db, Result,
};

/// Which jobs to requeue. Filters combine with AND; `jobs` alone selects by id.
#[derive(Debug, Clone, Default)]
pub struct RequeueFilter {
    pub failed: bool,
    /// `processing` but not updated since this instant (its worker is gone).
    pub stuck_before: Option<DateTime<Utc>>,
    pub jobs: Vec<JobId>,
    /// Finished (or last updated) at or after this instant.
    pub since: Option<DateTime<Utc>>,
    pub user: Option<UserId>,
    pub error_code: Option<String>,
    pub limit: i64,
}

impl Db {
    /// The jobs a requeue would touch, oldest first.
    pub async fn requeue_candidates(&self, f: &RequeueFilter) -> Result<Vec<JobRow>> {
        let ids: Vec<String> = f.jobs.iter().map(|j| j.to_string()).collect();
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT * FROM jobs
                  WHERE (cardinality($1::text[]) = 0 OR id = ANY($1))
                    AND ( ($2 AND status = 'failed')
                       OR ($3::timestamptz IS NOT NULL AND status = 'processing' AND updated_at < $3)
                       OR (NOT $2 AND $3::timestamptz IS NULL AND status IN ('failed', 'processing')) )
                    AND ($4::timestamptz IS NULL OR coalesce(finished_at, updated_at) >= $4)
                    AND ($5::text IS NULL OR user_id = $5)
                    AND ($6::text IS NULL OR error_code = $6)
                  ORDER BY seq LIMIT $7",
                &[&ids, &f.failed, &f.stuck_before, &f.since, &f.user.map(|u| u.to_string()), &f.error_code, &f.limit],
            )
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Put one job back in line (at the back): `queued`, a fresh attempt budget, the error
    /// cleared. Finished steps are kept (a finished generate is never paid for again) unless
    /// `from_start`. `None` if the job changed meanwhile (someone else requeued it).
    pub async fn requeue_job(&self, job: &JobRow, from_start: bool) -> Result<Option<JobRow>> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let row = tx
            .query_opt(
                "UPDATE jobs SET status = 'queued', attempts = 0, error_code = NULL, error_message = NULL,
                        worker_id = NULL, finished_at = NULL, updated_at = now(),
                        seq = nextval(pg_get_serial_sequence('jobs', 'seq'))
                  WHERE id = $1 AND status = $2 AND updated_at = $3
                  RETURNING *",
                &[&job.id.to_string(), &job.status.as_str(), &job.updated_at],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if from_start {
            // Reset, not deleted: a snapshot's revision sums its rows' (V9), and must only grow.
            tx.execute(
                "UPDATE job_steps SET status = 'pending', attempts = 0, output = NULL, error = NULL,
                        started_at = NULL, finished_at = NULL
                  WHERE job_id = $1",
                &[&job.id.to_string()],
            )
            .await?;
        } else {
            tx.execute(
                // notify-user announced the failure: the job's next end is announced afresh.
                "UPDATE job_steps SET status = 'pending', error = NULL, output = NULL
                  WHERE job_id = $1 AND (status <> 'complete' OR step = 'notify-user')",
                &[&job.id.to_string()],
            )
            .await?;
        }
        tx.commit().await?;
        self.changed(job.id);
        Ok(Some(job_from_row(&row)?))
    }
}
