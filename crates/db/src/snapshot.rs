//! A job as clients see it, read in one statement: the row, its steps and its webhook delivery,
//! with the revision that orders snapshots (V9). Polls are answered from this — kept in Redis
//! by whoever changed the job, or read here when Redis cannot say — so both paths describe a
//! job the same way, field for field.
//!
//! Writers learn which jobs they changed through a [`ChangeSink`] ([`Db::with_changes`]): every
//! write that changes what a poll shows reports the job after it commits.

use chrono::{DateTime, Utc};
use jewelshot_domain::{
    view::{ErrorView, JobView, NotificationView, StepView},
    DeliveryState, JobId, JobStatus, Priority, StepName, StepStatus, UserId,
};
use serde::{Deserialize, Serialize};

use crate::{jobs::parse, sql::Sql, Db, DbError, Result};

/// Told of every job whose client-visible state a write changed (after the write committed).
pub trait ChangeSink: Send + Sync {
    fn changed(&self, jobs: &[JobId]);
}

/// What a poll shows of a job, apart from what is computed when it is served (the queue
/// position, the ETA and a fresh image URL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSnapshot {
    /// Grows with every change to what the view shows; equal revisions show the same thing.
    pub rev: i64,
    pub user_id: UserId,
    /// Submit sequence (the dispatch line's tie-break).
    pub seq: i64,
    /// Storage key of the result: its URL is made when served (signed URLs expire).
    pub result_key: Option<String>,
    /// `queue_position` 0, `eta_seconds` none, `image_url` as stored.
    pub view: JobView,
    /// While it waits on another job's fal request (the result cache): that job, whose place in
    /// line is this one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<SharedRequest>,
}

/// The job whose fal request a waiting job shares, as the dispatch line knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedRequest {
    pub job_id: String,
    pub seq: i64,
    pub user_id: UserId,
    pub priority: Priority,
}

impl JobSnapshot {
    /// The snapshot of a job just inserted (no steps, no delivery): what a read would give.
    pub fn of_new(job: &crate::jobs::JobRow) -> Self {
        Self {
            rev: job.rev,
            user_id: job.user_id,
            seq: job.seq,
            result_key: job.result_key.clone(),
            view: job.to_view(&[], 0, None),
            shares: None,
        }
    }

    pub fn id(&self) -> Option<JobId> {
        self.view.job_id.parse().ok()
    }

    pub fn status(&self) -> JobStatus {
        self.view.status
    }

    pub fn priority(&self) -> Priority {
        self.view.priority
    }

    /// Waiting for its `run_at`.
    pub fn scheduled_later(&self, now: DateTime<Utc>) -> bool {
        self.view.scheduled_for.is_some_and(|t| t > now)
    }
}

/// The columns a snapshot is made of, in one statement (so one consistent read): the job, its
/// steps as parallel arrays, its delivery's columns prefixed `d_`, and the revision sum.
macro_rules! snapshot_select {
    () => {
        "
    SELECT j.id, j.seq, j.user_id, j.status, j.priority, j.prompt, j.webhook_url, j.run_at, j.attempts,
           j.error_code, j.error_message, j.result_url, j.result_key, j.created_at, j.updated_at, j.cached, j.finished_at,
           j.rev + coalesce(s.rev, 0) + coalesce(d.rev, 0) AS snapshot_rev,
           s.names, s.statuses, s.attempts AS step_attempts, s.finished AS step_finished,
           d.message_id AS d_message_id, d.event AS d_event, d.state AS d_state, d.attempts AS d_attempts,
           d.max_attempts AS d_max_attempts, d.next_at AS d_next_at, d.last_attempt_at AS d_last_attempt_at,
           d.delivered_at AS d_delivered_at, d.error_code AS d_error_code, d.error_message AS d_error_message,
           l.id AS l_id, l.seq AS l_seq, l.user_id AS l_user_id, l.priority AS l_priority
      FROM jobs j
      LEFT JOIN LATERAL (
           SELECT sum(rev)::int8 AS rev, array_agg(step) AS names, array_agg(status) AS statuses,
                  array_agg(attempts) AS attempts, array_agg(finished_at) AS finished
             FROM job_steps WHERE job_id = j.id) s ON true
      LEFT JOIN webhook_deliveries d ON d.job_id = j.id
      LEFT JOIN jobs l ON l.id = j.shares_job AND j.status = 'queued'"
    };
}

fn steps_of(row: &tokio_postgres::Row, cached: Option<Cached>) -> Result<Vec<StepView>> {
    let names: Option<Vec<String>> = row.get("names");
    let Some(names) = names else { return Ok(shown_steps(&[], cached)) };
    let statuses: Vec<String> = row.get("statuses");
    let attempts: Vec<i32> = row.get("step_attempts");
    let finished: Vec<Option<DateTime<Utc>>> = row.get("step_finished");
    let mut recorded = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let name: StepName = name.parse().map_err(|_| DbError::Corrupt(format!("step {name}")))?;
        let status = statuses.get(i).ok_or_else(|| DbError::Corrupt("step arrays differ".into()))?;
        let status: StepStatus = status.parse().map_err(|_| DbError::Corrupt(format!("step status {status}")))?;
        recorded.push(StepView {
            name,
            status,
            attempts: attempts.get(i).copied().unwrap_or(0),
            finished_at: finished.get(i).copied().flatten(),
        });
    }
    Ok(shown_steps(&recorded, cached))
}

/// A job completed from the result cache, as its steps are shown.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cached {
    pub webhook: bool,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Every step in run order; those not recorded yet are `pending`. A job completed from the
/// result cache ran no step of its own (none is recorded for it: a hit writes only its row and
/// its gallery entry): its `generate-image` and `save-to-gallery` are shown done — they ran for
/// the job whose result it reused — and `notify-user` too when it has no webhook (with one, the
/// worker that announces it records the step).
pub(crate) fn shown_steps(recorded: &[StepView], cached: Option<Cached>) -> Vec<StepView> {
    StepName::ALL
        .iter()
        .map(|name| {
            let done = |c: Cached| StepView {
                name: *name,
                status: StepStatus::Complete,
                attempts: 0,
                finished_at: c.finished_at,
            };
            let mine = recorded.iter().find(|s| s.name == *name);
            match (cached, name, mine) {
                (Some(c), StepName::GenerateImage | StepName::SaveToGallery, _) => done(c),
                (_, _, Some(s)) => s.clone(),
                (Some(c), StepName::NotifyUser, None) if !c.webhook => done(c),
                _ => StepView { name: *name, status: StepStatus::Pending, attempts: 0, finished_at: None },
            }
        })
        .collect()
}

fn notification_of(row: &tokio_postgres::Row) -> Result<Option<NotificationView>> {
    let Some(message_id) = row.get::<_, Option<String>>("d_message_id") else { return Ok(None) };
    let state: DeliveryState = parse(row, "d_state")?;
    let error = row
        .get::<_, Option<String>>("d_error_code")
        .filter(|_| state != DeliveryState::Delivered)
        .map(|code| ErrorView { code, message: row.get::<_, Option<String>>("d_error_message").unwrap_or_default() });
    Ok(Some(NotificationView {
        state,
        message_id,
        event: row.get("d_event"),
        attempts: row.get("d_attempts"),
        max_attempts: row.get("d_max_attempts"),
        next_attempt_at: (state == DeliveryState::Pending).then(|| row.get("d_next_at")),
        last_attempt_at: row.get("d_last_attempt_at"),
        delivered_at: row.get("d_delivered_at"),
        error,
    }))
}

fn snapshot_from_row(row: &tokio_postgres::Row) -> Result<JobSnapshot> {
    let id: JobId = parse(row, "id")?;
    let status: JobStatus = parse(row, "status")?;
    let error = match (status, row.get::<_, Option<String>>("error_code")) {
        (JobStatus::Failed, Some(code)) => {
            Some(ErrorView { code, message: row.get::<_, Option<String>>("error_message").unwrap_or_default() })
        }
        _ => None,
    };
    let has_webhook = row.get::<_, Option<String>>("webhook_url").is_some();
    let cached =
        row.get::<_, bool>("cached").then(|| Cached { webhook: has_webhook, finished_at: row.get("finished_at") });
    let notification = if has_webhook && status.is_final() { notification_of(row)? } else { None };
    let shares = match row.get::<_, Option<String>>("l_id") {
        None => None,
        Some(job_id) => Some(SharedRequest {
            job_id,
            seq: row.get("l_seq"),
            user_id: parse(row, "l_user_id")?,
            priority: parse(row, "l_priority")?,
        }),
    };
    Ok(JobSnapshot {
        shares,
        rev: row.get("snapshot_rev"),
        user_id: parse(row, "user_id")?,
        seq: row.get("seq"),
        result_key: row.get("result_key"),
        view: JobView {
            job_id: id.to_string(),
            status,
            queue_position: 0,
            eta_seconds: None,
            image_url: row.get::<_, Option<String>>("result_url").filter(|_| status == JobStatus::Complete),
            error,
            attempts: row.get("attempts"),
            prompt: row.get("prompt"),
            priority: parse(row, "priority")?,
            scheduled_for: row.get("run_at"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
            steps: steps_of(row, cached)?,
            cached: cached.is_some(),
            notification,
        },
    })
}

fn readable(rows: &[tokio_postgres::Row]) -> Vec<JobSnapshot> {
    rows.iter()
        .filter_map(|r| match snapshot_from_row(r) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(job_id = r.get::<_, String>("id"), error = %e, "a job's row does not read; left out");
                None
            }
        })
        .collect()
}

impl Db {
    /// A job's snapshot — `owner`'s only, when given (another user's job reads as none).
    pub async fn job_snapshot(&self, id: JobId, owner: Option<UserId>) -> Result<Option<JobSnapshot>> {
        let sql = concat!(snapshot_select!(), " WHERE j.id = $1 AND ($2::text IS NULL OR j.user_id = $2)");
        let row = self.conn().await?.query_opt(sql, &[&id.to_string(), &owner.map(|u| u.to_string())]).await?;
        row.as_ref().map(snapshot_from_row).transpose()
    }

    /// Several jobs' snapshots in one statement (those that exist). A row that does not read
    /// (corrupt) is left out with a warning, so one bad job cannot stop the others' snapshots.
    pub async fn job_snapshots(&self, ids: &[JobId]) -> Result<Vec<JobSnapshot>> {
        let ids: Vec<String> = ids.iter().map(|j| j.to_string()).collect();
        let sql = concat!(snapshot_select!(), " WHERE j.id = ANY($1)");
        let rows = self.conn().await?.query(sql, &[&ids]).await?;
        Ok(readable(&rows))
    }

    /// A page of `user`'s jobs as snapshots, newest first, strictly older than `before` when
    /// given, in `status` when given — one statement, so the filter and what is shown agree.
    pub async fn list_snapshots(
        &self,
        user: UserId,
        status: Option<JobStatus>,
        before: Option<JobId>,
        limit: i64,
    ) -> Result<Vec<JobSnapshot>> {
        let sql = concat!(
            snapshot_select!(),
            " WHERE j.user_id = $1 AND ($2::text IS NULL OR j.status = $2) AND ($3::text IS NULL OR j.id < $3)
              ORDER BY j.id DESC LIMIT $4"
        );
        let params: [&dyn crate::sql::Param; 4] =
            [&user.to_string(), &status.map(|s| s.as_str()), &before.map(|b| b.to_string()), &limit];
        let rows = self.conn().await?.query(sql, &params).await?;
        Ok(readable(&rows))
    }

    /// Have the [`ChangeSink`] told of every job a write of this handle changes.
    #[must_use]
    pub fn with_changes(mut self, sink: std::sync::Arc<dyn ChangeSink>) -> Self {
        self.changes = Some(sink);
        self
    }

    /// Report a committed change to `job`'s client-visible state (or a snapshot that may be
    /// stale: a worker that finds a job already final reports it).
    pub fn changed(&self, job: JobId) {
        if let Some(sink) = &self.changes {
            sink.changed(&[job]);
        }
    }

    pub(crate) fn changed_all(&self, jobs: &[JobId]) {
        if let (Some(sink), false) = (&self.changes, jobs.is_empty()) {
            sink.changed(jobs);
        }
    }
}
