//! Step records. A step marked `complete` keeps its output and is never run again; a running
//! step may keep a checkpoint (e.g. the fal request id) so a retry resumes instead of repeating.

use chrono::{DateTime, Utc};
use jewelshot_domain::{JobId, StepName, StepStatus};
use serde_json::Value;

use crate::sql::Sql;
use crate::{Db, DbError, Result};

/// The checkpoint field that says `generate-image` holds a fal request: the worker's checkpoint
/// stores the request under this name (its tests hold it to that), and the "generate started"
/// rule ([`Db::generate_started`]) looks for it.
pub const FAL_REQUEST_FIELD: &str = "request";

/// "`generate-image` has started" — the step finished, or it holds a fal request — over that
/// step's `job_steps` row aliased `s`. The one definition: such a job must never wait for a new
/// upstream slot nor go back in the dispatch line ([`Db::generate_started`], the reconciler's
/// [`Db::open_jobs`]).
macro_rules! generate_started {
    () => {
        "(s.status = 'complete' OR coalesce(s.output ? 'request', false))"
    };
}
pub(crate) use generate_started;

#[derive(Debug, Clone)]
pub struct StepRow {
    pub name: StepName,
    pub status: StepStatus,
    pub attempts: i32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

fn step_from_row(row: &tokio_postgres::Row) -> Result<StepRow> {
    let name: String = row.get("step");
    let status: String = row.get("status");
    Ok(StepRow {
        name: name.parse().map_err(|_| DbError::Corrupt(format!("step {name}")))?,
        status: status.parse().map_err(|_| DbError::Corrupt(format!("step status {status}")))?,
        attempts: row.get("attempts"),
        output: row.get("output"),
        error: row.get("error"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
    })
}

impl Db {
    /// The recorded steps of a job, in run order.
    pub async fn steps(&self, job: JobId) -> Result<Vec<StepRow>> {
        let rows = self.conn().await?.query("SELECT * FROM job_steps WHERE job_id = $1", &[&job.to_string()]).await?;
        let mut steps = rows.iter().map(step_from_row).collect::<Result<Vec<_>>>()?;
        steps.sort_by_key(|s| StepName::ALL.iter().position(|n| *n == s.name));
        Ok(steps)
    }

    /// The recorded steps of several jobs in one query, each job's in run order.
    pub async fn steps_of(&self, jobs: &[JobId]) -> Result<std::collections::HashMap<JobId, Vec<StepRow>>> {
        let ids: Vec<String> = jobs.iter().map(|j| j.to_string()).collect();
        let rows = self.conn().await?.query("SELECT * FROM job_steps WHERE job_id = ANY($1)", &[&ids]).await?;
        let mut out: std::collections::HashMap<JobId, Vec<StepRow>> = std::collections::HashMap::new();
        for row in &rows {
            let job: String = row.get("job_id");
            let job = job.parse().map_err(|_| DbError::Corrupt(format!("job id {job}")))?;
            out.entry(job).or_default().push(step_from_row(row)?);
        }
        for steps in out.values_mut() {
            steps.sort_by_key(|s| StepName::ALL.iter().position(|n| *n == s.name));
        }
        Ok(out)
    }

    /// Mark a step running (one more attempt) and return its record, checkpoint included.
    pub async fn start_step(&self, job: JobId, step: StepName) -> Result<StepRow> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "INSERT INTO job_steps (job_id, step, status, attempts, started_at)
                 VALUES ($1, $2, 'running', 1, now())
                 ON CONFLICT (job_id, step) DO UPDATE
                    SET status = 'running', attempts = job_steps.attempts + 1, error = NULL,
                        started_at = coalesce(job_steps.started_at, now())
                  WHERE job_steps.status <> 'complete'
                 RETURNING *",
                &[&job.to_string(), &step.as_str()],
            )
            .await?;
        match row {
            Some(row) => {
                self.changed(job);
                step_from_row(&row)
            }
            // The WHERE refused: the step is complete; hand back its record untouched.
            None => self.step(job, step).await?.ok_or_else(|| DbError::Corrupt("step vanished".into())),
        }
    }

    pub async fn step(&self, job: JobId, step: StepName) -> Result<Option<StepRow>> {
        let row = self
            .conn()
            .await?
            .query_opt("SELECT * FROM job_steps WHERE job_id = $1 AND step = $2", &[&job.to_string(), &step.as_str()])
            .await?;
        row.as_ref().map(step_from_row).transpose()
    }

    /// Whether the job's `generate-image` has started (see [`generate_started!`]).
    pub async fn generate_started(&self, id: JobId) -> Result<bool> {
        let row = self
            .conn()
            .await?
            .query_opt(
                concat!(
                    "SELECT ",
                    generate_started!(),
                    " FROM job_steps s WHERE s.job_id = $1 AND s.step = 'generate-image'"
                ),
                &[&id.to_string()],
            )
            .await?;
        Ok(row.and_then(|r| r.get::<_, Option<bool>>(0)).unwrap_or(false))
    }

    /// Drop a running step's checkpoint: what it pointed at is spent (e.g. fal lost the
    /// request), so the next attempt starts the step afresh.
    pub async fn clear_checkpoint(&self, job: JobId, step: StepName) -> Result<()> {
        self.conn()
            .await?
            .execute(
                "UPDATE job_steps SET output = NULL WHERE job_id = $1 AND step = $2 AND status <> 'complete'",
                &[&job.to_string(), &step.as_str()],
            )
            .await?;
        Ok(())
    }

    /// Save resume information for a running step.
    pub async fn checkpoint_step(&self, job: JobId, step: StepName, output: &Value) -> Result<()> {
        self.conn()
            .await?
            .execute(
                "UPDATE job_steps SET output = $3 WHERE job_id = $1 AND step = $2 AND status <> 'complete'",
                &[&job.to_string(), &step.as_str(), output],
            )
            .await?;
        Ok(())
    }

    /// Mark a step complete with its output. Idempotent: a second call keeps the first output.
    pub async fn complete_step(&self, job: JobId, step: StepName, output: &Value) -> Result<()> {
        self.conn()
            .await?
            .execute(
                "UPDATE job_steps SET status = 'complete', output = $3, error = NULL, finished_at = now()
                  WHERE job_id = $1 AND step = $2 AND status <> 'complete'",
                &[&job.to_string(), &step.as_str(), output],
            )
            .await?;
        self.changed(job);
        Ok(())
    }

    /// Mark a step failed (its checkpoint is kept for the next attempt).
    pub async fn fail_step(&self, job: JobId, step: StepName, error: &str) -> Result<()> {
        self.conn()
            .await?
            .execute(
                "UPDATE job_steps SET status = 'failed', error = $3
                  WHERE job_id = $1 AND step = $2 AND status <> 'complete'",
                &[&job.to_string(), &step.as_str(), &error],
            )
            .await?;
        self.changed(job);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_started_rule_looks_for_the_fal_request_field() {
        assert!(generate_started!().contains(&format!("output ? '{}'", super::FAL_REQUEST_FIELD)));
    }
}
