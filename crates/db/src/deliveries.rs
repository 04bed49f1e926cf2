//! Webhook deliveries: an outbox in the record, worked by every worker's delivery loop. One row
//! per job (the job's last end); each claim is one attempt under a lease, and the claim holds
//! each user to a cap on attempts in flight, so one user's endpoint that never answers cannot
//! take every delivery slot.

use chrono::{DateTime, Utc};
use jewelshot_domain::{
    view::{ErrorView, NotificationView},
    DeliveryState, JobId, UserId,
};

use crate::sql::Sql;
use crate::{jobs::parse, Db, DbError, Result};

/// One job's delivery.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub job_id: JobId,
    pub user_id: UserId,
    pub message_id: String,
    pub event: String,
    pub url: String,
    pub state: DeliveryState,
    pub attempts: i32,
    pub max_attempts: i32,
    /// Pending: when the next attempt is due. Sending: when the lease ends.
    pub next_at: DateTime<Utc>,
    pub worker_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

fn delivery_from_row(row: &tokio_postgres::Row) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        job_id: parse(row, "job_id")?,
        user_id: parse(row, "user_id")?,
        message_id: row.get("message_id"),
        event: row.get("event"),
        url: row.get("url"),
        state: parse(row, "state")?,
        attempts: row.get("attempts"),
        max_attempts: row.get("max_attempts"),
        next_at: row.get("next_at"),
        worker_id: row.get("worker_id"),
        error_code: row.get("error_code"),
        error_message: row.get("error_message"),
        created_at: row.get("created_at"),
        last_attempt_at: row.get("last_attempt_at"),
        delivered_at: row.get("delivered_at"),
    })
}

fn deliveries_from_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<DeliveryRow>> {
    rows.iter().map(delivery_from_row).collect()
}

impl DeliveryRow {
    /// What a client reads about it (`notification` in a job).
    pub fn to_view(&self) -> NotificationView {
        let error = self
            .error_code
            .as_ref()
            .filter(|_| self.state != DeliveryState::Delivered)
            .map(|code| ErrorView { code: code.clone(), message: self.error_message.clone().unwrap_or_default() });
        NotificationView {
            state: self.state,
            message_id: self.message_id.clone(),
            event: self.event.clone(),
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            next_attempt_at: (self.state == DeliveryState::Pending).then_some(self.next_at),
            last_attempt_at: self.last_attempt_at,
            delivered_at: self.delivered_at,
            error,
        }
    }
}

/// A delivery to record when a job ends.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub job_id: JobId,
    pub user_id: UserId,
    pub message_id: &'a str,
    pub event: &'a str,
    pub url: &'a str,
    pub max_attempts: i32,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum AttemptEnd<'a> {
    Delivered,
    /// Try again after `retry_in` if attempts remain; `permanent` ends it now.
    Failed {
        code: &'a str,
        message: &'a str,
        retry_in: std::time::Duration,
        permanent: bool,
    },
}

/// Serialises claims across workers (the per-user cap is counted, then taken, in one transaction).
const CLAIM_LOCK: i64 = 727_275;

fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Db {
    /// Record the delivery a job's end owes, due now. A job that ends again (after a requeue)
    /// owes a fresh one: the row is reset.
    pub async fn enqueue_delivery(&self, d: &NewDelivery<'_>) -> Result<DeliveryRow> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "INSERT INTO webhook_deliveries (job_id, user_id, message_id, event, url, state, max_attempts)
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6)
                 ON CONFLICT (job_id) DO UPDATE SET
                     message_id = excluded.message_id, event = excluded.event, url = excluded.url,
                     state = 'pending', attempts = 0, max_attempts = excluded.max_attempts, next_at = now(),
                     worker_id = NULL, error_code = NULL, error_message = NULL, created_at = now(),
                     last_attempt_at = NULL, delivered_at = NULL
                   WHERE webhook_deliveries.message_id <> excluded.message_id
                 RETURNING *",
                &[&d.job_id.to_string(), &d.user_id.to_string(), &d.message_id, &d.event, &d.url, &d.max_attempts],
            )
            .await?;
        match row {
            Some(row) => {
                self.changed(d.job_id);
                delivery_from_row(&row)
            }
            // The same message already recorded (notify-user ran again for the same end): keep
            // its progress.
            None => self.delivery(d.job_id).await?.ok_or_else(|| DbError::Corrupt("delivery vanished".into())),
        }
    }

    /// A job's delivery, if it owes or owed one.
    pub async fn delivery(&self, job: JobId) -> Result<Option<DeliveryRow>> {
        let row = self
            .conn()
            .await?
            .query_opt("SELECT * FROM webhook_deliveries WHERE job_id = $1", &[&job.to_string()])
            .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// Claim up to `limit` due deliveries (pending and due, or sending with a lapsed lease) for
    /// one attempt each under a lease of `lease`, never taking a user past `per_user` attempts in
    /// flight. Oldest due first.
    pub async fn claim_deliveries(
        &self,
        worker: &str,
        limit: i64,
        per_user: i64,
        lease: std::time::Duration,
    ) -> Result<Vec<DeliveryRow>> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK]).await?;
        let rows = tx
            .query(
                "WITH busy AS (
                     SELECT user_id, count(*) AS n FROM webhook_deliveries
                      WHERE state = 'sending' AND next_at > now() GROUP BY user_id),
                 due AS (
                     SELECT job_id, user_id, next_at FROM webhook_deliveries
                      WHERE state IN ('pending', 'sending') AND next_at <= now()
                      ORDER BY next_at LIMIT 1000),
                 ranked AS (
                     SELECT job_id, user_id, next_at,
                            row_number() OVER (PARTITION BY user_id ORDER BY next_at, job_id) AS rank
                       FROM due),
                 picked AS (
                     SELECT r.job_id FROM ranked r LEFT JOIN busy b USING (user_id)
                      WHERE r.rank + coalesce(b.n, 0) <= $2
                      ORDER BY r.next_at LIMIT $1)
                 UPDATE webhook_deliveries d
                    SET state = 'sending', attempts = d.attempts + 1, worker_id = $3, last_attempt_at = now(),
                        next_at = now() + $4 * interval '1 millisecond'
                   FROM picked WHERE d.job_id = picked.job_id
                 RETURNING d.*",
                &[&limit, &per_user, &worker, &millis(lease)],
            )
            .await?;
        tx.commit().await?;
        let mut claimed = deliveries_from_rows(&rows)?;
        self.changed_all(&claimed.iter().map(|d| d.job_id).collect::<Vec<_>>());
        claimed.sort_by_key(|d| d.next_at);
        Ok(claimed)
    }

    /// Record how a claimed attempt ended. `false` when the claim was no longer ours (the lease
    /// lapsed and another worker took it, or an operator reset it).
    pub async fn end_attempt(&self, job: JobId, worker: &str, end: AttemptEnd<'_>) -> Result<bool> {
        let conn = self.conn().await?;
        let n = match end {
            AttemptEnd::Delivered => {
                conn.execute(
                    "UPDATE webhook_deliveries
                        SET state = 'delivered', delivered_at = now(), worker_id = NULL,
                            error_code = NULL, error_message = NULL
                      WHERE job_id = $1 AND state = 'sending' AND worker_id = $2",
                    &[&job.to_string(), &worker],
                )
                .await?
            }
            AttemptEnd::Failed { code, message, retry_in, permanent } => {
                conn.execute(
                    "UPDATE webhook_deliveries
                        SET state = CASE WHEN $5 OR attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
                            next_at = now() + $6 * interval '1 millisecond', worker_id = NULL,
                            error_code = $3, error_message = $4
                      WHERE job_id = $1 AND state = 'sending' AND worker_id = $2",
                    &[&job.to_string(), &worker, &code, &message, &permanent, &millis(retry_in)],
                )
                .await?
            }
        };
        if n == 1 {
            self.changed(job);
        }
        Ok(n == 1)
    }

    /// Deliveries, newest first: in `state` when given, of `user` when given.
    pub async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        user: Option<UserId>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT * FROM webhook_deliveries
                  WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR user_id = $2)
                  ORDER BY created_at DESC LIMIT $3",
                &[&state.map(|s| s.as_str()), &user.map(|u| u.to_string()), &limit],
            )
            .await?;
        deliveries_from_rows(&rows)
    }

    /// Make deliveries due again with fresh attempts: these jobs' (any state but `sending`), or
    /// every `failed` one of `user` (all users when `None`) when `jobs` is empty. Returns the
    /// deliveries reset.
    pub async fn resend_deliveries(&self, jobs: &[JobId], user: Option<UserId>) -> Result<Vec<DeliveryRow>> {
        let ids: Vec<String> = jobs.iter().map(|j| j.to_string()).collect();
        let rows = self
            .conn()
            .await?
            .query(
                "UPDATE webhook_deliveries
                    SET state = 'pending', attempts = 0, next_at = now(), worker_id = NULL,
                        error_code = NULL, error_message = NULL, delivered_at = NULL
                  WHERE state <> 'sending'
                    AND CASE WHEN cardinality($1::text[]) > 0 THEN job_id = ANY($1)
                             ELSE state = 'failed' AND ($2::text IS NULL OR user_id = $2) END
                  RETURNING *",
                &[&ids, &user.map(|u| u.to_string())],
            )
            .await?;
        let reset = deliveries_from_rows(&rows)?;
        self.changed_all(&reset.iter().map(|d| d.job_id).collect::<Vec<_>>());
        Ok(reset)
    }

    /// Deliveries by state (for `webhooks list` and metrics).
    pub async fn delivery_counts(&self) -> Result<Vec<(DeliveryState, i64)>> {
        let rows = self
            .conn()
            .await?
            .query("SELECT state, count(*) AS n FROM webhook_deliveries GROUP BY state ORDER BY state", &[])
            .await?;
        rows.iter().map(|r| Ok((parse(r, "state")?, r.get("n")))).collect()
    }
}
