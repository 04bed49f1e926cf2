//! Group insert: plain submits that arrive on one pool while others are being written share one
//! statement — one round trip and one commit for all of them, Postgres's group commit done
//! before the server sees the rows. Each caller still waits for its own row to be committed.
//!
//! A pool's inserts go through up to `lanes` writers (tasks on the runtime of the pool's first
//! insert). A writer takes everything waiting when it is free (up to [`MOST_ROWS`]): alone, a
//! submit is written at once, as a batch of one; under load the batches grow with the queue, so
//! Postgres does less per row exactly when it is the bottleneck. A batch that fails is written
//! again row by row, so one bad row (a user deleted meanwhile) fails only its own submit.
//!
//! Off by default (`JEWELSHOT_DATABASE__GROUP_INSERT`): it cuts the machine's CPU per submit by
//! about a third and raises the rate, but in `just bench-gateway` it also raised p99 at 50
//! connections (17-20 ms → 32-66 ms; docs/benchmarks.md) — callers whose rows share a batch are
//! answered together, and not yet understood further.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use jewelshot_domain::JobId;
use tokio::sync::{mpsc, oneshot};

use crate::{
    jobs::{job_from_row, JobRow},
    sql::{self, Sql},
    DbError, Result,
};

/// Most rows in one statement.
pub const MOST_ROWS: usize = 64;

/// A job row as a plain submit writes it (`queued`).
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub id: JobId,
    pub user_id: String,
    pub priority: String,
    pub prompt: String,
    pub input_url: String,
    pub webhook_url: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: i32,
    pub trace_parent: Option<String>,
    pub cache_key: Option<String>,
}

struct Pending {
    job: NewJob,
    reply: oneshot::Sender<Result<JobRow>>,
}

/// Statements and rows written so far ([`crate::Db::group_inserts`]).
#[derive(Debug, Default)]
struct Counts {
    statements: AtomicU64,
    rows: AtomicU64,
}

/// One pool's writers.
pub(crate) struct Group {
    pool: Pool,
    pooler: sql::Pooler,
    lanes: usize,
    queue: Mutex<Option<mpsc::UnboundedSender<Pending>>>,
    counts: Arc<Counts>,
}

impl Group {
    pub(crate) fn new(pool: Pool, pooler: sql::Pooler, lanes: usize) -> Self {
        Self { pool, pooler, lanes: lanes.max(1), queue: Mutex::new(None), counts: Arc::default() }
    }

    /// Statements sent and rows written by this pool's group inserts.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.counts.statements.load(Ordering::Relaxed), self.counts.rows.load(Ordering::Relaxed))
    }

    /// Write `job` with whatever else is waiting; its row once committed.
    pub(crate) async fn insert(&self, job: NewJob) -> Result<JobRow> {
        let (reply, answer) = oneshot::channel();
        let mut pending = Pending { job, reply };
        // Writers end with the runtime that started them (a test's): start new ones then.
        for _ in 0..2 {
            match self.sender().send(pending) {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => {
                    pending = back;
                    if let Ok(mut q) = self.queue.lock() {
                        *q = None;
                    }
                }
            }
        }
        answer.await.map_err(|_| DbError::Corrupt("the group insert's writer stopped".into()))?
    }

    fn sender(&self) -> mpsc::UnboundedSender<Pending> {
        let mut queue = match self.queue.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(tx) = queue.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..self.lanes {
            tokio::spawn(write(rx.clone(), self.pool.clone(), self.pooler, self.counts.clone()));
        }
        *queue = Some(tx.clone());
        tx
    }
}

/// A writer: take what waits, write it, answer each caller; until the pool's handle is gone.
async fn write(
    queue: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>>,
    pool: Pool,
    pooler: sql::Pooler,
    counts: Arc<Counts>,
) {
    let mut batch = Vec::with_capacity(MOST_ROWS);
    loop {
        if queue.lock().await.recv_many(&mut batch, MOST_ROWS).await == 0 {
            return;
        }
        let jobs: Vec<&NewJob> = batch.iter().map(|p| &p.job).collect();
        let written = insert_rows(&pool, pooler, &jobs).await;
        counts.statements.fetch_add(1, Ordering::Relaxed);
        match written {
            Ok(mut rows) => {
                counts.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for p in batch.drain(..) {
                    let row = rows
                        .remove(&p.job.id)
                        .ok_or_else(|| DbError::Corrupt(format!("job {} was not returned by its insert", p.job.id)));
                    let _ = p.reply.send(row);
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(p) = batch.pop() {
                    let _ = p.reply.send(Err(e));
                }
            }
            Err(_) => {
                // Each row on its own, so each caller gets its own outcome.
                let alone = batch.drain(..).map(|p| {
                    let (pool, counts) = (&pool, &counts);
                    async move {
                        let row = insert_rows(pool, pooler, &[&p.job]).await;
                        counts.statements.fetch_add(1, Ordering::Relaxed);
                        let row = row.and_then(|mut rows| {
                            rows.remove(&p.job.id).ok_or_else(|| DbError::Corrupt("an insert returned no row".into()))
                        });
                        if row.is_ok() {
                            counts.rows.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = p.reply.send(row);
                    }
                });
                futures::future::join_all(alone).await;
            }
        }
    }
}

/// `job` alone, in the single-row statement (without `group_insert`).
pub(crate) async fn insert_alone(conn: &sql::Conn, job: &NewJob) -> Result<JobRow> {
    let row = conn
        .query_one(
            "INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, webhook_url, run_at, max_attempts, trace_parent, cache_key)
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *",
            &[
                &job.id.to_string(),
                &job.user_id,
                &job.priority,
                &job.prompt,
                &job.input_url,
                &job.webhook_url,
                &job.run_at,
                &job.max_attempts,
                &job.trace_parent,
                &job.cache_key,
            ],
        )
        .await?;
    job_from_row(&row)
}

/// `jobs` in one statement; their rows by id.
async fn insert_rows(
    pool: &Pool,
    pooler: sql::Pooler,
    jobs: &[&NewJob],
) -> Result<std::collections::HashMap<JobId, JobRow>> {
    fn column<T>(jobs: &[&NewJob], f: impl Fn(&NewJob) -> T) -> Vec<T> {
        jobs.iter().map(|j| f(j)).collect()
    }
    let ids = column(jobs, |j| j.id.to_string());
    let users = column(jobs, |j| j.user_id.clone());
    let priorities = column(jobs, |j| j.priority.clone());
    let prompts = column(jobs, |j| j.prompt.clone());
    let inputs = column(jobs, |j| j.input_url.clone());
    let webhooks = column(jobs, |j| j.webhook_url.clone());
    let run_ats = column(jobs, |j| j.run_at);
    let attempts = column(jobs, |j| j.max_attempts);
    let traces = column(jobs, |j| j.trace_parent.clone());
    let cache_keys = column(jobs, |j| j.cache_key.clone());
    let conn = sql::Conn::new(pool.get().await?, pooler);
    let rows = conn
        .query(
            "INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, webhook_url, run_at, max_attempts, trace_parent, cache_key)
             SELECT id, user_id, 'queued', priority, prompt, input_url, webhook_url, run_at, max_attempts, trace_parent, cache_key
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
                           $8::int4[], $9::text[], $10::text[])
                 AS n(id, user_id, priority, prompt, input_url, webhook_url, run_at, max_attempts, trace_parent, cache_key)
             RETURNING *",
            &[&ids, &users, &priorities, &prompts, &inputs, &webhooks, &run_ats, &attempts, &traces, &cache_keys],
        )
        .await?;
    rows.iter().map(|r| job_from_row(r).map(|j| (j.id, j))).collect()
}
