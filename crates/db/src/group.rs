//! Group insert: submits that arrive on one pool while others are being written share one
//! statement — one round trip and one commit for all of them, Postgres's group commit done
//! before the server sees the rows. Each caller still waits for its own row to be committed.
//!
//! Three kinds of submit are grouped, each kind in its own statement ([`How`]): plain ones (the
//! bare INSERT of `unnest`ed columns); recent hits (completed from a stored result the gateway
//! saw hit, if it is still there); and those that consult the result cache with an upload's
//! hash (`jewelshot_submit` called per row, `LATERAL`: a later row of a batch sees what an
//! earlier one wrote, so identical submits share as they do one by one). Submits with a queued
//! cap or an `Idempotency-Key` are not grouped.
//!
//! A pool's submits go through up to `lanes` writers (tasks on the runtime of the pool's first
//! submit). A writer takes everything waiting when it is free (up to [`MOST_ROWS`]): alone, a
//! submit is written at once, as a batch of one; under load the batches grow with the queue, so
//! Postgres does less per row exactly when it is the bottleneck. A batch that fails is written
//! again row by row, so one bad row (a user deleted meanwhile) fails only its own submit.
//!
//! On by default (`JEWELSHOT_DATABASE__GROUP_INSERT`); docs/benchmarks.md has the figures.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use jewelshot_domain::{metric_names as m, JobId, NewEdit, UserId};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;

use crate::{
    sql::{self, Sql},
    DbError, Result,
};

/// Most rows in one statement.
pub const MOST_ROWS: usize = 64;

/// A job row as a submit writes it: borrowed from the request, and copied only when it waits
/// for a writer ([`NewJob::into_owned`]).
#[derive(Debug, Clone)]
pub(crate) struct NewJob<'a> {
    pub id: JobId,
    pub user_id: String,
    pub priority: &'static str,
    pub prompt: Cow<'a, str>,
    pub input_url: Cow<'a, str>,
    pub webhook_url: Option<Cow<'a, str>>,
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: i32,
    pub trace_parent: Option<Cow<'a, str>>,
    pub how: How<'a>,
}

/// How a submit meets the result cache, which decides its statement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum How<'a> {
    /// The bare INSERT, `queued`, with the cache key a worker completes once it has hashed the
    /// input (`<basis>:`), if the job may use the cache.
    Plain { cache_key: Option<String> },
    /// Completed from the result cache's entry `key`, if it is still there (no row otherwise).
    Hit { key: Cow<'a, str> },
    /// `jewelshot_submit`: the cache consulted with the hash of the caller's upload `input_key`.
    Lookup { basis: Cow<'a, str>, input_key: Cow<'a, str> },
}

impl How<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Self::Plain { .. } => "plain",
            Self::Hit { .. } => "hit",
            Self::Lookup { .. } => "lookup",
        }
    }
}

impl<'a> NewJob<'a> {
    /// `edit` as `user`'s job `id`, written `how`.
    pub(crate) fn of(
        id: JobId,
        user: UserId,
        edit: &'a NewEdit,
        max_attempts: i32,
        trace_parent: Option<&'a str>,
        how: How<'a>,
    ) -> Self {
        Self {
            id,
            user_id: user.to_string(),
            priority: edit.priority.as_str(),
            prompt: Cow::Borrowed(&edit.prompt),
            input_url: Cow::Borrowed(edit.image_url.as_str()),
            webhook_url: edit.webhook_url.as_ref().map(|u| Cow::Borrowed(u.as_str())),
            run_at: edit.run_at,
            max_attempts,
            trace_parent: trace_parent.map(Cow::Borrowed),
            how,
        }
    }

    fn into_owned(self) -> NewJob<'static> {
        fn own(s: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(s.into_owned())
        }
        NewJob {
            id: self.id,
            user_id: self.user_id,
            priority: self.priority,
            prompt: own(self.prompt),
            input_url: own(self.input_url),
            webhook_url: self.webhook_url.map(own),
            run_at: self.run_at,
            max_attempts: self.max_attempts,
            trace_parent: self.trace_parent.map(own),
            how: match self.how {
                How::Plain { cache_key } => How::Plain { cache_key },
                How::Hit { key } => How::Hit { key: own(key) },
                How::Lookup { basis, input_key } => How::Lookup { basis: own(basis), input_key: own(input_key) },
            },
        }
    }
}

struct Pending {
    job: NewJob<'static>,
    reply: oneshot::Sender<Result<Option<Row>>>,
}

/// Statements and rows written so far ([`crate::Db::group_inserts`]; the metrics too).
#[derive(Debug, Default)]
struct Counts {
    statements: AtomicU64,
    rows: AtomicU64,
}

impl Counts {
    /// One statement sent for `kind`, which wrote `rows`.
    fn sent(&self, kind: &'static str, rows: u64) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
        metrics::counter!(m::DB_GROUP_STATEMENTS, "kind" => kind).increment(1);
        metrics::counter!(m::DB_GROUP_ROWS, "kind" => kind).increment(rows);
    }
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

    /// Write `job` with whatever else is waiting; its row once committed (as [`insert_alone`]'s),
    /// or `None` for a [`How::Hit`] whose entry is gone.
    pub(crate) async fn insert(&self, job: NewJob<'_>) -> Result<Option<Row>> {
        let (reply, answer) = oneshot::channel();
        let mut pending = Pending { job: job.into_owned(), reply };
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
        let (mut plain, mut hits, mut lookups) = (Vec::new(), Vec::new(), Vec::new());
        for p in batch.drain(..) {
            match p.job.how {
                How::Plain { .. } => plain.push(p),
                How::Hit { .. } => hits.push(p),
                How::Lookup { .. } => lookups.push(p),
            }
        }
        let (pool, counts) = (&pool, &counts);
        futures::join!(
            settle(pool, pooler, counts, plain),
            settle(pool, pooler, counts, hits),
            settle(pool, pooler, counts, lookups)
        );
    }
}

/// Write one kind of submit's batch and answer its callers. A batch the server refused for
/// one of its rows (bad data, a constraint, a deadlock) is written again row by row; any other
/// fault (no connection, a timeout) is every caller's answer, as it would have been alone.
async fn settle(pool: &Pool, pooler: sql::Pooler, counts: &Counts, mut batch: Vec<Pending>) {
    // A caller that went away (its client hung up) is not written, as it would not have been alone.
    batch.retain(|p| !p.reply.is_closed());
    let Some(kind) = batch.first().map(|p| p.job.how.kind()) else { return };
    let jobs: Vec<&NewJob<'_>> = batch.iter().map(|p| &p.job).collect();
    let written = write_rows(pool, pooler, &jobs).await;
    counts.sent(kind, written.as_ref().map_or(0, |rows| rows.len() as u64));
    match written {
        Ok(mut rows) => {
            for p in batch {
                let _ = p.reply.send(Ok(rows.remove(&p.job.id.to_string())));
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(p) = batch.pop() {
                let _ = p.reply.send(Err(e));
            }
        }
        Err(e) if !for_a_row(&e) => {
            let e = Arc::new(e);
            for p in batch {
                let _ = p.reply.send(Err(DbError::Shared(e.clone())));
            }
        }
        Err(_) => {
            // Each row on its own, so each caller gets its own outcome.
            let alone = batch.into_iter().map(|p| async move {
                let row = write_rows(pool, pooler, &[&p.job]).await;
                counts.sent(kind, row.as_ref().map_or(0, |rows| rows.len() as u64));
                let _ = p.reply.send(row.map(|mut rows| rows.remove(&p.job.id.to_string())));
            });
            futures::future::join_all(alone).await;
        }
    }
}

/// The server refused a statement for what one of its rows holds or met: a data exception
/// (22), an integrity constraint (23), a rollback such as a deadlock (40), a function's error (P0).
fn for_a_row(e: &DbError) -> bool {
    let DbError::Query(q) = e else { return false };
    q.code().is_some_and(|c| ["22", "23", "40", "P0"].iter().any(|class| c.code().starts_with(class)))
}

/// A plain submit alone, in the single-row statement (without `group_insert`): the row as
/// `jewelshot_submit` answers it (`outcome` `new`, `same_request`, the job's columns).
pub(crate) async fn insert_alone(conn: &sql::Conn, job: &NewJob<'_>, cache_key: Option<&str>) -> Result<Row> {
    conn.query_one(
        "INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, webhook_url, run_at, max_attempts, trace_parent, cache_key)
         VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10)
         RETURNING 'new'::text AS outcome, NULL::boolean AS same_request, *",
        &[
            &job.id.to_string(),
            &job.user_id,
            &job.priority,
            &&*job.prompt,
            &&*job.input_url,
            &job.webhook_url.as_deref(),
            &job.run_at,
            &job.max_attempts,
            &job.trace_parent.as_deref(),
            &cache_key,
        ],
    )
    .await
}

/// `jobs` (all of one [`How`]) in one statement; their rows by id, as [`insert_alone`] answers.
async fn write_rows(pool: &Pool, pooler: sql::Pooler, jobs: &[&NewJob<'_>]) -> Result<HashMap<String, Row>> {
    fn column<T>(jobs: &[&NewJob<'_>], f: impl Fn(&NewJob<'_>) -> T) -> Vec<T> {
        jobs.iter().map(|j| f(j)).collect()
    }
    fn text(jobs: &[&NewJob<'_>], f: impl for<'h> Fn(&'h How<'_>) -> Option<&'h str>) -> Vec<Option<String>> {
        column(jobs, |j| f(&j.how).map(str::to_owned))
    }
    let mut jobs = jobs.to_vec();
    // Identical lookups side by side, each key's in one order. Two batches can still meet two
    // entries in opposite orders (the lock is on the upload's hash, not its storage key): Postgres
    // then refuses one batch as a deadlock after `deadlock_timeout`, and its rows are written alone.
    jobs.sort_by(|a, b| a.how.cmp(&b.how));
    let jobs = &jobs[..];
    let Some(first) = jobs.first() else { return Ok(HashMap::new()) };
    let ids = column(jobs, |j| j.id.to_string());
    let users = column(jobs, |j| j.user_id.clone());
    let priorities = column(jobs, |j| j.priority.to_owned());
    let prompts = column(jobs, |j| j.prompt.to_string());
    let inputs = column(jobs, |j| j.input_url.to_string());
    let webhooks = column(jobs, |j| j.webhook_url.as_deref().map(str::to_owned));
    let run_ats = column(jobs, |j| j.run_at);
    let attempts = column(jobs, |j| j.max_attempts);
    let traces = column(jobs, |j| j.trace_parent.as_deref().map(str::to_owned));
    let common: [&dyn sql::Param; 9] =
        [&ids, &users, &priorities, &prompts, &inputs, &webhooks, &run_ats, &attempts, &traces];
    let conn = sql::Conn::new(pool.get().await?, pooler);
    let rows = match first.how {
        How::Plain { .. } => {
            let cache_keys = text(jobs, |h| match h {
                How::Plain { cache_key } => cache_key.as_deref(),
                _ => None,
            });
            conn.query(
                "INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, webhook_url, run_at, max_attempts,
                                   trace_parent, cache_key)
                 SELECT id, user_id, 'queued', priority, prompt, input_url, webhook_url, run_at, max_attempts, trace_parent,
                        cache_key
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
                               $8::int4[], $9::text[], $10::text[])
                     AS n(id, user_id, priority, prompt, input_url, webhook_url, run_at, max_attempts, trace_parent,
                          cache_key)
                 RETURNING 'new'::text AS outcome, NULL::boolean AS same_request, *",
                &[common.as_slice(), &[&cache_keys]].concat(),
            )
            .await?
        }
        How::Hit { .. } => {
            let keys = text(jobs, |h| match h {
                How::Hit { key } => Some(key.as_ref()),
                _ => None,
            });
            conn.query(
                "INSERT INTO jobs (id, user_id, status, priority, prompt, input_url, webhook_url, max_attempts,
                                   trace_parent, cache_key, cached, result_key, result_url, result_content_type,
                                   result_bytes, result_width, result_height, gallery_entry, started_at, finished_at)
                 SELECT n.id, n.user_id, 'complete', n.priority, n.prompt, n.input_url, n.webhook_url, n.max_attempts,
                        n.trace_parent, e.key, true, e.storage_key, e.url, e.content_type, e.bytes, e.width, e.height,
                        true, now(), now()
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
                               $8::int4[], $9::text[], $10::text[])
                     AS n(id, user_id, priority, prompt, input_url, webhook_url, run_at, max_attempts, trace_parent,
                          entry)
                   JOIN result_cache e ON e.key = n.entry AND e.storage_key IS NOT NULL AND e.expires_at > now()
                 RETURNING 'hit'::text AS outcome, NULL::boolean AS same_request, *",
                &[common.as_slice(), &[&keys]].concat(),
            )
            .await?
        }
        How::Lookup { .. } => {
            let bases = text(jobs, |h| match h {
                How::Lookup { basis, .. } => Some(basis.as_ref()),
                _ => None,
            });
            let input_keys = text(jobs, |h| match h {
                How::Lookup { input_key, .. } => Some(input_key.as_ref()),
                _ => None,
            });
            conn.query(
                "SELECT s.outcome, s.same_request, (s.job).*
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
                               $8::int4[], $9::text[], $10::text[], $11::text[])
                        WITH ORDINALITY
                        AS n(id, user_id, priority, prompt, input_url, webhook_url, run_at, max_attempts, trace_parent,
                             basis, input_key, ord)
                  CROSS JOIN LATERAL jewelshot_submit(n.id, n.user_id, n.priority, n.prompt, n.input_url, n.webhook_url,
                               n.run_at, n.max_attempts, 0, NULL, NULL, n.trace_parent, n.basis, n.input_key) s
                  ORDER BY n.ord",
                &[common.as_slice(), &[&bases, &input_keys]].concat(),
            )
            .await?
        }
    };
    rows.into_iter().map(|r| Ok((r.try_get::<_, String>("id")?, r))).collect()
}
