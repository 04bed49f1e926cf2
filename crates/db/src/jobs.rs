//! Job rows and their transitions. Every transition is one conditional UPDATE, so two workers
//! (or a worker and a cancel) can never both win.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use jewelshot_domain::{JobId, JobStatus, NewEdit, Priority, UserId};

use crate::group::{How, NewJob};
use crate::sql::Sql;
use crate::{steps::generate_started, Db, DbError, Result};

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: JobId,
    pub seq: i64,
    pub user_id: UserId,
    pub status: JobStatus,
    pub priority: Priority,
    pub prompt: String,
    pub input_url: String,
    pub webhook_url: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub result_url: Option<String>,
    /// Storage key of the result: URLs are derived from it when served (presigned URLs expire).
    pub result_key: Option<String>,
    pub worker_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Bumped by every update of the row (V9): part of a snapshot's revision.
    pub rev: i64,
    /// The W3C traceparent of the submit's span (V11), when traces are exported: each attempt
    /// continues that trace.
    pub trace_parent: Option<String>,
    /// Its result-cache key (V12): NULL when not cacheable, `cache: false`, or its input not
    /// hashed yet.
    pub cache_key: Option<String>,
    /// Completed from another job's result, without a fal request of its own.
    pub cached: bool,
    /// While waiting: the job whose fal request it shares (it is not in the dispatch line).
    pub shares_job: Option<JobId>,
}

pub(crate) fn parse<T: std::str::FromStr>(row: &tokio_postgres::Row, col: &str) -> Result<T> {
    let text: String = row.get(col);
    text.parse().map_err(|_| DbError::Corrupt(format!("{col} = {text:?}")))
}

pub(crate) fn job_from_row(row: &tokio_postgres::Row) -> Result<JobRow> {
    Ok(JobRow {
        id: parse(row, "id")?,
        seq: row.get("seq"),
        user_id: parse(row, "user_id")?,
        status: parse(row, "status")?,
        priority: parse(row, "priority")?,
        prompt: row.get("prompt"),
        input_url: row.get("input_url"),
        webhook_url: row.get("webhook_url"),
        run_at: row.get("run_at"),
        attempts: row.get("attempts"),
        max_attempts: row.get("max_attempts"),
        error_code: row.get("error_code"),
        error_message: row.get("error_message"),
        result_url: row.get("result_url"),
        result_key: row.get("result_key"),
        worker_id: row.get("worker_id"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        rev: row.get("rev"),
        trace_parent: row.get("trace_parent"),
        cache_key: row.get("cache_key"),
        cached: row.get("cached"),
        shares_job: row
            .get::<_, Option<String>>("shares_job")
            .map(|s| s.parse().map_err(|_| DbError::Corrupt(format!("shares_job = {s:?}"))))
            .transpose()?,
    })
}

fn jobs_from_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<JobRow>> {
    rows.iter().map(job_from_row).collect()
}

/// Outcome of a cancel request.
#[derive(Debug)]
pub enum CancelOutcome {
    Canceled(Box<JobRow>),
    NotFound,
    /// The job exists but is past the point where it can be canceled.
    NotCancelable(JobStatus),
}

/// Job counts by state, for `GET /api/queue` and `queue stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Waiting and due.
    pub queued: i64,
    /// Waiting for their `run_at`.
    pub scheduled: i64,
    pub processing: i64,
    pub complete: i64,
    pub failed: i64,
    pub canceled: i64,
}

fn counts_of(rows: &[tokio_postgres::Row]) -> QueueCounts {
    let mut c = QueueCounts::default();
    for row in rows {
        let status: String = row.get(0);
        let later: bool = row.get(1);
        let n: i64 = row.get(2);
        match (status.as_str(), later) {
            ("queued", true) => c.scheduled += n,
            ("queued", false) => c.queued += n,
            ("processing", _) => c.processing += n,
            ("complete", _) => c.complete += n,
            ("failed", _) => c.failed += n,
            ("canceled", _) => c.canceled += n,
            _ => {}
        }
    }
    c
}

/// What [`Db::begin_attempt`] found.
#[derive(Debug)]
pub enum Begun {
    /// The attempt is ours.
    Started(Box<JobRow>),
    /// Another worker runs the job and its heartbeat is fresh.
    Busy(Box<JobRow>),
    /// Gone (None) or final.
    Final(Option<Box<JobRow>>),
}

/// An open job as the reconciler sees it.
#[derive(Debug)]
pub struct OpenJob {
    pub job: JobRow,
    /// `generate-image` finished or holds a fal request: the job must not wait for a new slot.
    pub generate_started: bool,
    /// Processing, and its worker's heartbeat is older than the threshold.
    pub stale: bool,
    /// Not touched in the last few seconds (a submit or a handoff is not in progress).
    pub settled: bool,
}

/// What an idempotent insert found.
#[derive(Debug)]
pub enum Inserted {
    /// Recorded as waiting: it goes in the dispatch line.
    New(Box<JobRow>),
    /// Completed at once from an identical request's cached result (no fal request).
    Cached(Box<JobRow>),
    /// Waiting on an identical job's fal request (`shares_job`): not in the dispatch line.
    Shared(Box<JobRow>),
    /// The key was used within 24 h: the first job, and whether the request was the same.
    Existing { job: Box<JobRow>, same_request: bool },
}

/// How [`Db::submit_job`] records a job beside the edit itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Submission<'a> {
    pub max_attempts: i32,
    /// Refuse once the user has this many jobs waiting.
    pub queued_cap: Option<i64>,
    /// `(key, request hash)` of an `Idempotency-Key`.
    pub idempotency: Option<(&'a str, &'a str)>,
    /// The submit's trace ([`JobRow::trace_parent`]).
    pub trace_parent: Option<&'a str>,
    /// The result cache's basis of the request (`jewelshot_domain::cache::basis`); `None` when
    /// the job may not use the cache.
    pub cache_basis: Option<&'a str>,
    /// The storage key of the caller's upload the job reads, if it reads one: its bytes were
    /// hashed when stored, so the cache is consulted in the submit itself.
    pub input_key: Option<&'a str>,
}

impl Db {
    /// Record a new job in `queued`: one statement, one round trip (`jewelshot_submit`, V9; V11 adds the trace).
    /// With `idempotency` (`key`, request hash), a key `user` used within the last 24 h answers
    /// with its first job instead; concurrent duplicates serialise on the key and make one job.
    /// With `queued_cap`, the user's submissions serialise on an advisory lock and the insert is
    /// refused ([`DbError::QueuedCapReached`]) once they have that many jobs waiting.
    pub async fn submit_job(&self, id: JobId, user: UserId, edit: &NewEdit, how: &Submission<'_>) -> Result<Inserted> {
        let Submission { max_attempts, queued_cap, idempotency, trace_parent, cache_basis, input_key } = *how;
        let cap = queued_cap.filter(|c| *c > 0).unwrap_or(0);
        // A scheduled job never completes before its time: it does not use the cache.
        let cache_basis = cache_basis.filter(|_| edit.run_at.is_none());
        let input_key = input_key.filter(|_| cache_basis.is_some());
        if cap == 0 && idempotency.is_none() && (input_key.is_none() || self.group.is_some()) {
            let how = match cache_basis.zip(input_key) {
                Some((basis, input_key)) => {
                    How::Lookup { basis: Cow::Borrowed(basis), input_key: Cow::Borrowed(input_key) }
                }
                // The worker that fetches the input hashes it (`<basis>:` until then).
                None => How::Plain { cache_key: cache_basis.map(|b| format!("{b}:")) },
            };
            let new = NewJob::of(id, user, edit, max_attempts, trace_parent, how);
            // Nothing to check: the bare INSERT (the function's plpgsql costs ~25 % of Postgres's
            // insert rate, measured with pgbench) — with `group_insert`, written with whatever
            // other submits wait on this pool (`group`), the cache's lookups too.
            let row = match (&self.group, &new.how) {
                (Some(group), _) => {
                    group.insert(new).await?.ok_or_else(|| DbError::Corrupt("a submit wrote no row".into()))?
                }
                (None, How::Plain { cache_key }) => {
                    crate::group::insert_alone(&self.conn().await?, &new, cache_key.as_deref()).await?
                }
                (None, _) => return Err(DbError::Corrupt("only a plain submit is written alone".into())),
            };
            return self.inserted(id, &row, cap);
        }
        let row = self
            .conn()
            .await?
            .query_one(
                "SELECT s.outcome, s.same_request, (s.job).*
                   FROM jewelshot_submit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) s",
                &[
                    &id.to_string(),
                    &user.to_string(),
                    &edit.priority.as_str(),
                    &edit.prompt,
                    &edit.image_url.as_str(),
                    &edit.webhook_url.as_ref().map(|u| u.as_str()),
                    &edit.run_at,
                    &max_attempts,
                    &cap,
                    &idempotency.map(|(k, _)| k),
                    &idempotency.map(|(_, h)| h),
                    &trace_parent,
                    &cache_basis,
                    &input_key,
                ],
            )
            .await?;
        self.inserted(id, &row, cap)
    }

    /// What `jewelshot_submit` (or a plain submit's INSERT, as `new`) answered for job `id`.
    fn inserted(&self, id: JobId, row: &tokio_postgres::Row, cap: i64) -> Result<Inserted> {
        let outcome: &str = row.try_get("outcome")?;
        match outcome {
            "new" => {
                self.changed(id);
                Ok(Inserted::New(Box::new(job_from_row(row)?)))
            }
            "hit" => {
                self.changed(id);
                Ok(Inserted::Cached(Box::new(job_from_row(row)?)))
            }
            "shared" => {
                self.changed(id);
                Ok(Inserted::Shared(Box::new(job_from_row(row)?)))
            }
            "existing" => Ok(Inserted::Existing {
                job: Box::new(job_from_row(row)?),
                same_request: row.try_get::<_, Option<bool>>("same_request")?.unwrap_or(false),
            }),
            "cap" => Err(DbError::QueuedCapReached { cap }),
            other => Err(DbError::Corrupt(format!("jewelshot_submit answered {other:?}"))),
        }
    }

    /// Record a new job in `queued` (see [`Db::submit_job`]) without an idempotency key.
    pub async fn insert_job(
        &self,
        id: JobId,
        user: UserId,
        edit: &NewEdit,
        max_attempts: i32,
        queued_cap: Option<i64>,
    ) -> Result<JobRow> {
        match self.submit_job(id, user, edit, &Submission { max_attempts, queued_cap, ..Default::default() }).await? {
            Inserted::New(job) | Inserted::Cached(job) | Inserted::Shared(job) => Ok(*job),
            Inserted::Existing { .. } => Err(DbError::Corrupt("a submit without a key found an earlier job".into())),
        }
    }

    pub async fn job(&self, id: JobId) -> Result<Option<JobRow>> {
        let row = self.conn().await?.query_opt("SELECT * FROM jobs WHERE id = $1", &[&id.to_string()]).await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// A job, only if `user` owns it: another user's job is indistinguishable from none.
    pub async fn job_for_user(&self, id: JobId, user: UserId) -> Result<Option<JobRow>> {
        let row = self
            .conn()
            .await?
            .query_opt("SELECT * FROM jobs WHERE id = $1 AND user_id = $2", &[&id.to_string(), &user.to_string()])
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// `user`'s jobs, newest first, strictly older than `before` when given.
    pub async fn list_jobs(
        &self,
        user: Option<UserId>,
        status: Option<JobStatus>,
        before: Option<JobId>,
        limit: i64,
    ) -> Result<Vec<JobRow>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT * FROM jobs
                  WHERE ($1::text IS NULL OR user_id = $1)
                    AND ($2::text IS NULL OR status = $2)
                    AND ($3::text IS NULL OR id < $3)
                  ORDER BY id DESC LIMIT $4",
                &[&user.map(|u| u.to_string()), &status.map(|s| s.as_str()), &before.map(|b| b.to_string()), &limit],
            )
            .await?;
        jobs_from_rows(&rows)
    }

    /// 1-based place in line among due waiting jobs (1 = next to run); 0 when the job is not
    /// waiting or not yet due. Dispatch is FIFO on `seq`, so this is the count of due waiting
    /// jobs submitted no later than this one.
    pub async fn queue_position(&self, job: &JobRow) -> Result<i64> {
        self.queue_position_of(job.status, job.run_at, job.seq).await
    }

    /// [`Db::queue_position`] of a job known by its state, schedule and `seq`.
    pub async fn queue_position_of(&self, status: JobStatus, run_at: Option<DateTime<Utc>>, seq: i64) -> Result<i64> {
        if status != JobStatus::Queued || run_at.is_some_and(|t| t > Utc::now()) {
            return Ok(0);
        }
        let row = self
            .conn()
            .await?
            .query_one(
                "SELECT count(*) FROM jobs
                  WHERE status = 'queued' AND seq <= $1 AND (run_at IS NULL OR run_at <= now())
                    AND shares_job IS NULL",
                &[&seq],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Seconds the longest-waiting due job has waited since it last became `queued` (submitted,
    /// requeued or handed back); 0 when none waits. Reads the first 100 waiting jobs in `seq`
    /// order through the partial index of waiting jobs — cheap at any depth.
    pub async fn oldest_waiting_secs(&self) -> Result<f64> {
        let row = self
            .conn()
            .await?
            .query_one(
                "SELECT coalesce(max(extract(epoch FROM now() - updated_at)), 0)::float8 FROM (
                    SELECT updated_at FROM jobs WHERE status = 'queued' AND (run_at IS NULL OR run_at <= now())
                     ORDER BY seq LIMIT 100) t",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Count the open jobs (queued, scheduled, processing) through the partial index of open
    /// jobs — cheap however many jobs have ever run; the finished counts stay 0.
    pub async fn open_counts(&self) -> Result<QueueCounts> {
        // A job sharing another's fal request is not waiting for fal itself (V12).
        self.counts("WHERE status IN ('queued', 'processing') AND shares_job IS NULL").await
    }

    /// Count jobs by state (every job: for operators, not for hot paths).
    pub async fn queue_counts(&self) -> Result<QueueCounts> {
        self.counts("").await
    }

    async fn counts(&self, filter: &'static str) -> Result<QueueCounts> {
        let sql = format!(
            "SELECT status, (run_at IS NOT NULL AND run_at > now()) AS later, count(*) FROM jobs {filter} GROUP BY 1, 2"
        );
        let rows = self.conn().await?.query(&sql, &[]).await?;
        Ok(counts_of(&rows))
    }

    /// Start an attempt: `queued`/`processing` → `processing`, attempts + 1. [`Begun::Final`]
    /// when the job is gone or final (canceled while waiting, finished by another worker), or
    /// waits on another job's fal request (`shares_job`: a task delivered again after its worker
    /// made it share one; the result cache completes it).
    ///
    /// It is also the job's run lock: a `processing` job whose worker's heartbeat is younger than
    /// `stale` belongs to that worker, and another worker gets `Busy` (two deliveries of one
    /// task, e.g. after a false orphan recovery or a reconciler re-push, never run at once).
    pub async fn begin_attempt(&self, id: JobId, worker: &str, stale: std::time::Duration) -> Result<Begun> {
        let stale_secs = stale.as_secs_f64();
        let row = self
            .conn()
            .await?
            .query_opt(
                "UPDATE jobs SET status = 'processing', attempts = attempts + 1, worker_id = $2,
                        started_at = coalesce(started_at, now()), updated_at = now(), heartbeat_at = now()
                  WHERE id = $1 AND ((status = 'queued' AND shares_job IS NULL) OR (status = 'processing' AND (
                        worker_id IS NOT DISTINCT FROM $2 OR heartbeat_at IS NULL
                        OR heartbeat_at < now() - make_interval(secs => $3))))
                  RETURNING *",
                &[&id.to_string(), &worker, &stale_secs],
            )
            .await?;
        match row {
            Some(r) => {
                self.changed(id);
                Ok(Begun::Started(Box::new(job_from_row(&r)?)))
            }
            None => match self.job(id).await? {
                Some(j) if j.status == JobStatus::Processing => Ok(Begun::Busy(Box::new(j))),
                Some(j) => Ok(Begun::Final(Some(Box::new(j)))),
                None => Ok(Begun::Final(None)),
            },
        }
    }

    /// Refresh the heartbeat of the jobs `worker` is running.
    pub async fn heartbeat(&self, worker: &str, jobs: &[JobId]) -> Result<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = jobs.iter().map(|j| j.to_string()).collect();
        self.conn()
            .await?
            .execute(
                "UPDATE jobs SET heartbeat_at = now()
                  WHERE id = ANY($1) AND worker_id = $2 AND status = 'processing'",
                &[&ids, &worker],
            )
            .await
    }

    /// Open jobs (queued or processing) after `after_seq`, in `seq` order, at most `limit`; with
    /// whether each one's `generate-image` has started (finished or checkpointed), and whether a
    /// processing one's heartbeat is older than `stale`. For the reconciler.
    pub async fn open_jobs(&self, after_seq: i64, limit: i64, stale: std::time::Duration) -> Result<Vec<OpenJob>> {
        let rows = self
            .conn()
            .await?
            .query(
                concat!(
                    "SELECT j.*, ",
                    generate_started!(),
                    " AS generate_started,
                        (j.status = 'processing' AND (j.heartbeat_at IS NULL
                          OR j.heartbeat_at < now() - make_interval(secs => $3))) AS stale,
                        j.updated_at < now() - interval '5 seconds' AS settled
                   FROM jobs j
                   LEFT JOIN job_steps s ON s.job_id = j.id AND s.step = 'generate-image'
                  WHERE j.status IN ('queued', 'processing') AND j.seq > $1
                  ORDER BY j.seq LIMIT $2"
                ),
                &[&after_seq, &limit, &stale.as_secs_f64()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OpenJob {
                    job: job_from_row(r)?,
                    generate_started: r.get::<_, Option<bool>>("generate_started").unwrap_or(false),
                    stale: r.get::<_, Option<bool>>("stale").unwrap_or(false),
                    settled: r.get::<_, Option<bool>>("settled").unwrap_or(false),
                })
            })
            .collect()
    }

    /// Count one more attempt on a job already processing (an in-process retry).
    pub async fn next_attempt(&self, id: JobId) -> Result<Option<JobRow>> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "UPDATE jobs SET attempts = attempts + 1, updated_at = now()
                  WHERE id = $1 AND status = 'processing' RETURNING *",
                &[&id.to_string()],
            )
            .await?;
        if row.is_some() {
            self.changed(id);
        }
        row.as_ref().map(job_from_row).transpose()
    }

    /// Hand a job back to the queue (its worker is stopping): `queued` again, and the attempt
    /// it had started is not counted.
    pub async fn release_job(&self, id: JobId) -> Result<()> {
        self.conn()
            .await?
            .execute(
                "UPDATE jobs SET status = 'queued', attempts = greatest(attempts - 1, 0), worker_id = NULL,
                        updated_at = now()
                  WHERE id = $1 AND status = 'processing'",
                &[&id.to_string()],
            )
            .await?;
        self.changed(id);
        Ok(())
    }

    /// Record the last error without ending the job (it will be retried).
    pub async fn note_job_error(&self, id: JobId, code: &str, message: &str) -> Result<()> {
        self.conn()
            .await?
            .execute(
                "UPDATE jobs SET error_code = $2, error_message = $3, updated_at = now()
                  WHERE id = $1 AND status = 'processing'",
                &[&id.to_string(), &code, &message],
            )
            .await?;
        self.changed(id);
        Ok(())
    }

    /// End a job as `failed`. `None` if it was already final.
    pub async fn fail_job(&self, id: JobId, code: &str, message: &str) -> Result<Option<JobRow>> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "UPDATE jobs SET status = 'failed', error_code = $2, error_message = $3,
                        finished_at = now(), updated_at = now()
                  WHERE id = $1 AND status IN ('queued', 'processing') RETURNING *",
                &[&id.to_string(), &code, &message],
            )
            .await?;
        if row.is_some() {
            self.changed(id);
        }
        row.as_ref().map(job_from_row).transpose()
    }

    /// End a job as `complete` with its gallery image. `None` if it was already final.
    pub async fn complete_job(&self, id: JobId, result_key: &str, result_url: &str) -> Result<Option<JobRow>> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "UPDATE jobs SET status = 'complete', result_key = $2, result_url = $3, error_code = NULL,
                        error_message = NULL, finished_at = now(), updated_at = now()
                  WHERE id = $1 AND status = 'processing' RETURNING *",
                &[&id.to_string(), &result_key, &result_url],
            )
            .await?;
        if row.is_some() {
            self.changed(id);
        }
        row.as_ref().map(job_from_row).transpose()
    }

    /// Cancel a waiting or running job: `owner`'s (another user's job is indistinguishable from
    /// none), or any job for an operator (`None`). A running one ends `canceled` here at once;
    /// its worker sees that, cancels the request at fal and writes nothing more (every later
    /// write of the worker is conditional on the job not being final). The dispatch line is the
    /// caller's: `jewelshot_queue::cancel` does both.
    pub async fn cancel_job(&self, id: JobId, owner: Option<UserId>) -> Result<CancelOutcome> {
        let owner = owner.map(|u| u.to_string());
        let row = self
            .conn()
            .await?
            .query_opt(
                "UPDATE jobs SET status = 'canceled', finished_at = now(), updated_at = now()
                  WHERE id = $1 AND ($2::text IS NULL OR user_id = $2) AND status IN ('queued', 'processing')
                  RETURNING *",
                &[&id.to_string(), &owner],
            )
            .await?;
        if let Some(row) = row {
            self.changed(id);
            return Ok(CancelOutcome::Canceled(Box::new(job_from_row(&row)?)));
        }
        let found = self
            .conn()
            .await?
            .query_opt(
                "SELECT status FROM jobs WHERE id = $1 AND ($2::text IS NULL OR user_id = $2)",
                &[&id.to_string(), &owner],
            )
            .await?;
        Ok(match found {
            None => CancelOutcome::NotFound,
            Some(r) => CancelOutcome::NotCancelable(parse(&r, "status")?),
        })
    }

    /// Whether the job was canceled (a worker asks while it waits on fal).
    pub async fn is_canceled(&self, id: JobId) -> Result<bool> {
        let row = self.conn().await?.query_opt("SELECT status FROM jobs WHERE id = $1", &[&id.to_string()]).await?;
        Ok(row.is_some_and(|r| r.get::<_, String>(0) == "canceled"))
    }

    /// Mean seconds a `generate-image` step took over the last hour.
    pub async fn mean_generation_seconds(&self) -> Result<Option<f64>> {
        let row = self
            .conn()
            .await?
            .query_one(
                "SELECT avg(extract(epoch FROM finished_at - started_at))::float8 FROM job_steps
                  WHERE step = 'generate-image' AND status = 'complete'
                    AND finished_at > now() - interval '1 hour'",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }
}
