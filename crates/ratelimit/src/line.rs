//! The dispatch line: every queued job that needs an upstream slot, in the order slots are given.
//!
//! The gateway puts a job in line ([`Limiter::enqueue`]); each worker runs a dispatcher that
//! takes the head of the line and a slot in one step ([`Limiter::dispatch`]) and hands the job to
//! the work queue; the worker that runs it takes the grant over ([`Limiter::claim`]).
//!
//! Order: `high` before `normal`, but at most `burst` highs in a row while normal work waits;
//! within a class, start-time fair queuing across users (one dispatch per user per round) and
//! FIFO within a user. A job's position ([`Limiter::position`]) is its rank in that order —
//! `ZRANK` plus arithmetic, O(log n) at any depth. See `line.lua`.

use std::time::Duration;

use super::{Grant, LimitError, Limiter};

const ENQUEUE: &str = concat!(include_str!("clock.lua"), include_str!("line.lua"), include_str!("enqueue.lua"));
const POSITION: &str = concat!(include_str!("clock.lua"), include_str!("line.lua"), include_str!("position.lua"));
const POSITIONS: &str = concat!(include_str!("clock.lua"), include_str!("line.lua"), include_str!("positions.lua"));
const DISPATCH: &str = concat!(
    include_str!("clock.lua"),
    include_str!("pool.lua"),
    include_str!("line.lua"),
    include_str!("dispatch.lua")
);
const CLAIM: &str = concat!(include_str!("clock.lua"), include_str!("claim.lua"));
const ABSENT: &str = concat!(include_str!("clock.lua"), include_str!("line.lua"), include_str!("absent.lua"));
const UNDISPATCH: &str = concat!(include_str!("clock.lua"), include_str!("line.lua"), include_str!("undispatch.lua"));
const SUBMIT: &str = concat!(include_str!("clock.lua"), include_str!("line.lua"), include_str!("submit.lua"));
const RECORD_READ: &str = concat!(include_str!("clock.lua"), include_str!("line.lua"), include_str!("record_read.lua"));
const RECORD_WRITE: &str =
    concat!(include_str!("clock.lua"), include_str!("line.lua"), include_str!("record_write.lua"));

pub(crate) struct Scripts {
    enqueue: redis::Script,
    position: redis::Script,
    positions: redis::Script,
    dispatch: redis::Script,
    claim: redis::Script,
    undispatch: redis::Script,
    absent: redis::Script,
    submit: redis::Script,
    record_read: redis::Script,
    record_write: redis::Script,
    record_invalidate: redis::Script,
    generations_add: redis::Script,
    generations_mean: redis::Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            enqueue: redis::Script::new(ENQUEUE),
            position: redis::Script::new(POSITION),
            positions: redis::Script::new(POSITIONS),
            dispatch: redis::Script::new(DISPATCH),
            claim: redis::Script::new(CLAIM),
            undispatch: redis::Script::new(UNDISPATCH),
            absent: redis::Script::new(ABSENT),
            submit: redis::Script::new(SUBMIT),
            record_read: redis::Script::new(RECORD_READ),
            record_write: redis::Script::new(RECORD_WRITE),
            record_invalidate: redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then \
                   redis.call('HDEL', KEYS[1], 'data', 'member') redis.call('HSET', KEYS[1], 'tomb', 1) end return 1",
            ),
            generations_add: redis::Script::new(concat!(
                include_str!("clock.lua"),
                include_str!("generations_add.lua")
            )),
            generations_mean: redis::Script::new(concat!(
                include_str!("clock.lua"),
                include_str!("generations_mean.lua")
            )),
        }
    }
}

/// A job as the line knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineEntry {
    /// The job's submit sequence: FIFO within a user, and the tie-break between users.
    pub seq: i64,
    pub high: bool,
    pub user: String,
    pub job: String,
}

impl LineEntry {
    /// `seq|class|user|job`; the zero-padded sequence first, so equal tags sort by it.
    pub fn member(&self) -> String {
        let class = if self.high { "high" } else { "normal" };
        format!("{:016}|{class}|{}|{}", self.seq.max(0), self.user, self.job)
    }

    fn parse(member: &str) -> Option<Self> {
        let mut it = member.splitn(4, '|');
        let seq = it.next()?.parse().ok()?;
        let high = it.next()? == "high";
        let user = it.next()?.to_owned();
        let job = it.next()?.to_owned();
        Some(Self { seq, high, user, job })
    }
}

/// Where a job stands in the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinePlace {
    /// 1 = dispatched next.
    Queued(u64),
    /// Waiting for its `run_at`.
    Scheduled,
    /// Has its slot; a worker is about to start it.
    Dispatched,
    /// Not in line (finished, running, canceled — or the line lost it).
    Absent,
}

/// A job's record kept beside the line (its poll snapshot): opaque bytes, ordered by `rev` —
/// an older revision never replaces a newer one — and the job's line member while it waits, so
/// one round trip reads both the record and the job's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub job: String,
    pub rev: i64,
    pub data: Vec<u8>,
    /// The job's entry while it waits in line (or scheduled); `None` otherwise.
    pub entry: Option<LineEntry>,
    /// How long Redis keeps it after this write.
    pub ttl: Duration,
}

fn place_from(code: i64) -> LinePlace {
    match code {
        p if p > 0 => LinePlace::Queued(p as u64),
        0 => LinePlace::Scheduled,
        -1 => LinePlace::Dispatched,
        _ => LinePlace::Absent,
    }
}

/// What [`Limiter::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    InLine,
    Scheduled,
    /// Already dispatched: nothing to do.
    AlreadyDispatched,
}

/// How a dispatcher takes from the line.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// Highs dispatched in a row while normal work waits, before one normal (4: normal gets at
    /// least 1 in 5).
    pub high_burst: u32,
    /// Dispatch only while fewer than this many dispatched jobs wait in `ready_list` for a worker
    /// (0 = no bound): the work queue stays short, however long the line.
    pub ahead: u32,
    /// The work queue's list of tasks ready to be fetched.
    pub ready_list: String,
    /// The work queue's set of scheduled tasks (a pushed task may wait there until fetched).
    pub scheduled_set: String,
}

/// Where the work queue keeps tasks, for [`Limiter::absent`].
#[derive(Debug, Clone)]
pub struct QueueKeys {
    /// Tasks ready to be fetched (a list).
    pub ready: String,
    /// Tasks waiting for their time (a sorted set of ids).
    pub scheduled: String,
    /// Workers (a sorted set of worker names).
    pub workers: String,
    /// A worker's in-flight set is this, `:`, and its name.
    pub inflight_prefix: String,
}

/// One dispatch attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dispatched {
    /// The head of the line has a slot: hand `entry.job` to the workers.
    Job {
        entry: LineEntry,
        tag: i64,
        grant: Grant,
    },
    /// No free slot; `retry_in`: when one frees by itself (else on a release).
    NoSlot {
        retry_in: Option<Duration>,
    },
    /// The line is empty; `next_due`: when the next scheduled job joins it.
    Empty {
        next_due: Option<Duration>,
    },
    /// Enough dispatched jobs already wait for a worker.
    WorkersBusy,
    NoHealthyKeys {
        retry_in: Option<Duration>,
    },
}

fn opt_ms(v: i64) -> Option<Duration> {
    (v >= 0).then(|| Duration::from_millis(v as u64))
}

impl Limiter {
    fn line_keys(&self) -> &[String; 7] {
        &self.line_keys
    }

    /// Put a job in line, or in the scheduled set until `due_unix_ms`. Idempotent: a job in line
    /// keeps its place; a dispatched one is left alone. Wakes the dispatchers.
    pub async fn enqueue(&self, entry: &LineEntry, due_unix_ms: Option<i64>) -> Result<Enqueued, LimitError> {
        let mut inv = self.scripts.line.enqueue.prepare_invoke();
        for k in self.line_keys() {
            inv.key(k);
        }
        inv.arg(entry.member()).arg(due_unix_ms.unwrap_or(0).max(0)).arg(self.channel());
        let mut conn = self.conn.clone();
        Ok(match self.timed(inv.invoke_async::<i64>(&mut conn)).await? {
            1 => Enqueued::InLine,
            2 => Enqueued::Scheduled,
            _ => Enqueued::AlreadyDispatched,
        })
    }

    /// The job's place in the dispatch order. `high_burst` must be the dispatchers'.
    pub async fn position(&self, entry: &LineEntry, high_burst: u32) -> Result<LinePlace, LimitError> {
        let mut inv = self.scripts.line.position.prepare_invoke();
        for k in self.line_keys() {
            inv.key(k);
        }
        inv.arg(entry.member()).arg(high_burst.max(1));
        let mut conn = self.conn.clone();
        Ok(place_from(self.timed(inv.invoke_async::<i64>(&mut conn)).await?))
    }

    /// [`Limiter::position`] of each of `entries`, in their order, in one round trip.
    pub async fn positions(&self, entries: &[LineEntry], high_burst: u32) -> Result<Vec<LinePlace>, LimitError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.line.positions.prepare_invoke();
        for k in self.line_keys() {
            inv.key(k);
        }
        inv.arg(high_burst.max(1));
        for e in entries {
            inv.arg(e.member());
        }
        let mut conn = self.conn.clone();
        let places: Vec<i64> = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok(places.into_iter().map(place_from).collect())
    }

    /// A submitted job in one round trip: [`Limiter::enqueue`] (until `due_unix_ms`), its
    /// record written, and its [`Limiter::position`].
    pub async fn submit(
        &self,
        entry: &LineEntry,
        due_unix_ms: Option<i64>,
        record: &JobRecord,
        high_burst: u32,
    ) -> Result<(Enqueued, LinePlace), LimitError> {
        let mut inv = self.scripts.line.submit.prepare_invoke();
        for k in self.line_keys() {
            inv.key(k);
        }
        inv.key(self.record_key(&record.job));
        inv.arg(entry.member())
            .arg(due_unix_ms.unwrap_or(0).max(0))
            .arg(self.channel())
            .arg(high_burst.max(1))
            .arg(record.rev)
            .arg(&record.data[..])
            .arg(record.ttl.as_millis().max(1) as u64)
            .arg(self.events_channel());
        let mut conn = self.conn.clone();
        let (queued, place): (i64, i64) = self.timed(inv.invoke_async(&mut conn)).await?;
        let queued = match queued {
            1 => Enqueued::InLine,
            2 => Enqueued::Scheduled,
            _ => Enqueued::AlreadyDispatched,
        };
        Ok((queued, place_from(place)))
    }

    /// Where a job's record lives.
    /// The channel on which every written job record is announced (the job's id): what live
    /// status streams follow.
    pub fn events_channel(&self) -> String {
        self.k("events")
    }

    pub fn record_key(&self, job: &str) -> String {
        self.k(&format!("job:{job}"))
    }

    /// Keep these records, each unless Redis holds a newer revision (one pipeline). How many
    /// were written.
    pub async fn write_records(&self, records: &[JobRecord]) -> Result<usize, LimitError> {
        if records.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for r in records {
            let member = r.entry.as_ref().map(LineEntry::member).unwrap_or_default();
            pipe.invoke_script(
                self.scripts
                    .line
                    .record_write
                    .key(self.record_key(&r.job))
                    .arg(r.rev)
                    .arg(&r.data[..])
                    .arg(member)
                    .arg(r.ttl.as_millis().max(1) as u64)
                    .arg(self.events_channel()),
            );
        }
        let mut conn = self.conn.clone();
        let written: Vec<i64> = match self.timed(pipe.query_async(&mut conn)).await {
            Err(LimitError::Redis(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // A pipeline does not load scripts by itself: load once, then again.
                self.timed(self.scripts.line.record_write.prepare_invoke().load_async(&mut conn)).await?;
                self.timed(pipe.query_async(&mut conn)).await?
            }
            other => other?,
        };
        Ok(written.iter().filter(|w| **w == 1).count())
    }

    /// A job's record and, while it waits, its place in line (one round trip). `None` when
    /// Redis holds no record; the place is `None` when the record names no line entry.
    pub async fn read_record(
        &self,
        job: &str,
        high_burst: u32,
    ) -> Result<Option<(Vec<u8>, Option<LinePlace>)>, LimitError> {
        let mut inv = self.scripts.line.record_read.prepare_invoke();
        for k in self.line_keys() {
            inv.key(k);
        }
        inv.key(self.record_key(job)).arg(high_burst.max(1));
        let mut conn = self.conn.clone();
        let found: Option<(Vec<u8>, i64)> = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok(found.map(|(data, place)| (data, (place != -3).then(|| place_from(place)))))
    }

    /// Keep these jobs' records for `ttl` more (one pipeline; records that are gone stay gone).
    pub async fn touch_records(&self, jobs: &[String], ttl: Duration) -> Result<(), LimitError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for job in jobs {
            pipe.pexpire(self.record_key(job), ttl.as_millis().max(1) as i64).ignore();
        }
        let mut conn = self.conn.clone();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Forget a job's record at once, as if it had expired (polls then read Postgres and write
    /// it back).
    pub async fn drop_record(&self, job: &str) -> Result<(), LimitError> {
        let mut conn = self.conn.clone();
        self.timed(redis::cmd("DEL").arg(self.record_key(job)).query_async::<()>(&mut conn)).await
    }

    /// Stop serving a job's record without forgetting its revision: reads find none (polls read
    /// Postgres), and only a strictly newer revision may write it again — so a write from a read
    /// made before the change that invalidated it cannot bring the old state back (a job gone,
    /// or changed when its new record could not be written).
    pub async fn invalidate_record(&self, job: &str) -> Result<(), LimitError> {
        let mut inv = self.scripts.line.record_invalidate.prepare_invoke();
        inv.key(self.record_key(job));
        let mut conn = self.conn.clone();
        self.timed(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// Record how long one generation took (ETAs read the mean over `window`): a sum and a count
    /// per minute, so reading the mean costs the same at any rate of jobs.
    pub async fn record_generation(&self, took: Duration, window: Duration) -> Result<(), LimitError> {
        let mut inv = self.scripts.line.generations_add.prepare_invoke();
        inv.key(self.k("generations")).arg(window.as_millis() as u64).arg(format!("{:.3}", took.as_secs_f64()));
        let mut conn = self.conn.clone();
        self.timed(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// The mean of the generations recorded within `window` (`None` when there are none).
    pub async fn mean_generation(&self, window: Duration) -> Result<Option<f64>, LimitError> {
        let mut inv = self.scripts.line.generations_mean.prepare_invoke();
        inv.key(self.k("generations")).arg(window.as_millis() as u64);
        let mut conn = self.conn.clone();
        let (n, sum): (u64, String) = self.timed(inv.invoke_async(&mut conn)).await?;
        let sum: f64 = sum.parse().map_err(|_| LimitError::Corrupt(format!("generation sum {sum:?}")))?;
        Ok((n > 0).then(|| sum / n as f64))
    }

    /// Take a job out of line (canceled). True if it was there.
    pub async fn remove(&self, entry: &LineEntry) -> Result<bool, LimitError> {
        let [high, normal, scheduled, ..] = self.line_keys();
        let line = if entry.high { high } else { normal };
        let member = entry.member();
        let mut pipe = redis::pipe();
        pipe.atomic().zrem(line, &member).zrem(scheduled, &member);
        let mut conn = self.conn.clone();
        let (a, b): (i64, i64) = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(a + b > 0)
    }

    /// Jobs dispatched (holding their slot) and not yet claimed by the worker that runs them.
    pub async fn dispatched_count(&self) -> Result<u64, LimitError> {
        let mut conn = self.conn.clone();
        self.timed(redis::cmd("HLEN").arg(&self.line_keys()[6]).query_async(&mut conn)).await
    }

    /// Jobs in line per class and scheduled: `(high, normal, scheduled)`.
    pub async fn line_lengths(&self) -> Result<(u64, u64, u64), LimitError> {
        let [high, normal, scheduled, ..] = self.line_keys();
        let mut pipe = redis::pipe();
        pipe.zcard(high).zcard(normal).zcard(scheduled);
        let mut conn = self.conn.clone();
        self.timed(pipe.query_async(&mut conn)).await
    }

    /// Dispatch the head of the line if a slot is free (atomically: no two dispatchers take the
    /// same job or the same slot). Waiters of [`Limiter::acquire`] (retries, resumed jobs) go
    /// first. `probe`: every key is disabled and this dispatch tries one anyway.
    pub async fn dispatch(&self, opts: &DispatchOptions, probe: bool) -> Result<Dispatched, LimitError> {
        if self.keys.is_empty() {
            return Err(LimitError::EmptyPool);
        }
        let grant_id = ulid::Ulid::generate().to_string();
        let mut inv = self.scripts.line.dispatch.prepare_invoke();
        inv.key(self.k("waiters")).key(self.k("waiters:seen")).key(self.k("dispatched")).key(&opts.ready_list);
        for k in self.line_keys() {
            inv.key(k);
        }
        inv.key(&opts.scheduled_set);
        for key in self.keys.iter() {
            inv.key(self.key_k(&key.id, "window")).key(self.key_k(&key.id, "leases")).key(self.key_k(&key.id, "state"));
        }
        inv.arg(self.cfg.window.as_millis() as u64)
            .arg(self.cfg.lease.as_millis() as u64)
            .arg(&grant_id)
            .arg(self.cfg.waiter_ttl.as_millis() as u64)
            .arg(self.keys.len())
            .arg(if probe { "1" } else { "0" })
            .arg(opts.high_burst.max(1))
            .arg(opts.ahead)
            .arg(100);
        for key in self.keys.iter() {
            inv.arg(key.max_per_minute).arg(key.max_concurrent);
        }
        for key in self.keys.iter() {
            inv.arg(&key.id);
        }
        let mut conn = self.conn.clone();
        let r: Vec<redis::Value> = self.timed(inv.invoke_async(&mut conn)).await?;
        let int = |i: usize| r.get(i).and_then(|v| redis::from_redis_value_ref::<i64>(v).ok()).unwrap_or(-1);
        Ok(match int(0) {
            1 => {
                let member = r.get(3).and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).unwrap_or_default();
                let tag = int(4);
                let entry =
                    LineEntry::parse(&member).ok_or_else(|| LimitError::Corrupt(format!("line member {member:?}")))?;
                let idx = int(1).max(1) as usize - 1;
                let grant = Grant {
                    key_id: self.key_at(idx)?,
                    grant_id,
                    lease: entry.job.clone(),
                    waited: Duration::ZERO,
                    dispatch: int(2).max(0) as u64,
                    probe,
                };
                // Others may be able to go too.
                self.publish().await;
                Dispatched::Job { entry, tag, grant }
            }
            0 => Dispatched::NoSlot { retry_in: opt_ms(int(1)) },
            2 => Dispatched::Empty { next_due: opt_ms(int(1)) },
            3 => Dispatched::WorkersBusy,
            _ => Dispatched::NoHealthyKeys { retry_in: opt_ms(int(1)) },
        })
    }

    /// The handoff failed: the job goes back to its place in line, its slot is given back.
    pub async fn undispatch(&self, entry: &LineEntry, tag: i64, grant: &Grant) -> Result<(), LimitError> {
        let mut inv = self.scripts.line.undispatch.prepare_invoke();
        for k in self.line_keys() {
            inv.key(k);
        }
        inv.key(self.key_k(&grant.key_id, "window"))
            .key(self.key_k(&grant.key_id, "leases"))
            .arg(entry.member())
            .arg(tag)
            .arg(&grant.grant_id);
        let mut conn = self.conn.clone();
        self.timed(inv.invoke_async::<i64>(&mut conn)).await?;
        self.publish().await;
        Ok(())
    }

    /// The entries Redis holds nowhere — not in line, not scheduled, not dispatched, not in the
    /// work queue (ready, scheduled or in flight): the reconciler must put them back.
    pub async fn absent(&self, queue: &QueueKeys, entries: &[LineEntry]) -> Result<Vec<LineEntry>, LimitError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.line.absent.prepare_invoke();
        for k in self.line_keys() {
            inv.key(k);
        }
        inv.key(&queue.ready).key(&queue.scheduled).key(&queue.workers);
        inv.arg(self.cfg.lease.as_millis() as u64).arg(&queue.inflight_prefix);
        for e in entries {
            inv.arg(e.member());
        }
        let mut conn = self.conn.clone();
        let idx: Vec<usize> = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok(idx.into_iter().filter_map(|i| entries.get(i.checked_sub(1)?).cloned()).collect())
    }

    /// Take over the grant a dispatcher left for `job` (its slot renewed), if there is one and
    /// its slot has not expired.
    pub async fn claim(&self, job: &str) -> Result<Option<Grant>, LimitError> {
        let mut inv = self.scripts.line.claim.prepare_invoke();
        inv.key(self.k("granted")).arg(job).arg(&self.cfg.prefix).arg(self.cfg.lease.as_millis() as u64);
        let mut conn = self.conn.clone();
        let rec: Option<String> = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok(rec.and_then(|rec| {
            // key|grant|dispatch|probe|ms
            let mut it = rec.split('|');
            let key_id = it.next()?.to_owned();
            let grant_id = it.next()?.to_owned();
            let dispatch = it.next()?.parse().ok()?;
            let probe = it.next()? == "1";
            Some(Grant { key_id, grant_id, lease: job.to_owned(), waited: Duration::ZERO, dispatch, probe })
        }))
    }
}
