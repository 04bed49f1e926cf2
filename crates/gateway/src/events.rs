//! Live status: `GET /api/jobs/{id}/events` as Server-Sent Events.
//!
//! Every writer of a job's poll snapshot (the gateway at submit, the workers and the CLI through
//! their publishers) announces the job's id on the line's events channel in the same Redis
//! script. Each gateway holds **one** subscription to that channel ([`follow`]) and fans the
//! announcements out in-process ([`EventHub`]): a job's own streams wake at once, and streams
//! of waiting jobs re-read their place in line (at most every `events_line_interval_ms`), since
//! any job leaving the line moves theirs. So any replica serves any job, and an idle stream
//! costs a parked future, no Redis traffic.
//!
//! Each event is the whole [`JobView`] (the same answer as `GET /api/jobs/{id}`, steps and all),
//! sent when it changes; its `id` names that state. A client that reconnects with
//! `Last-Event-ID` gets the current state at once unless it already has it — nothing is lost,
//! since a state carries its history. The stream ends after a final state, and after
//! `events_max_secs` (the client reconnects); comments keep idle connections open.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::web::Bytes;
use jewelshot_domain::{view::JobView, JobId, JobStatus, StepName, StepStatus};
use tokio::sync::watch;

use crate::{error::ApiError, state::AppState};

/// Fans the events channel out to this process's streams.
pub struct EventHub {
    jobs: Mutex<HashMap<String, watch::Sender<u64>>>,
    line: watch::Sender<u64>,
    /// Set when the gateway stops: streams end at once (clients reconnect to another replica)
    /// instead of holding the drain open.
    closing: watch::Sender<bool>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub").field("jobs", &self.followed()).finish()
    }
}

impl Default for EventHub {
    fn default() -> Self {
        Self { jobs: Mutex::default(), line: watch::channel(0).0, closing: watch::channel(false).0 }
    }
}

/// One stream's interest in a job; unregisters when the last one for that job is dropped.
pub struct Watch {
    hub: Arc<EventHub>,
    job: String,
    pub changes: watch::Receiver<u64>,
    pub line: watch::Receiver<u64>,
    pub closing: watch::Receiver<bool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.hub.jobs.lock() {
            if jobs.get(&self.job).is_some_and(|s| s.receiver_count() <= 1) {
                jobs.remove(&self.job);
            }
        }
    }
}

impl EventHub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Follow `job`'s announcements and the line's movements.
    pub fn watch(self: &Arc<Self>, job: &str) -> Watch {
        let changes = match self.jobs.lock() {
            Ok(mut jobs) => jobs.entry(job.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe(),
            // A poisoned map: this stream falls back to its timers.
            Err(_) => watch::channel(0).1,
        };
        Watch {
            hub: self.clone(),
            job: job.to_owned(),
            changes,
            line: self.line.subscribe(),
            closing: self.closing.subscribe(),
        }
    }

    /// `job`'s snapshot was written.
    pub fn announce(&self, job: &str) {
        if let Ok(jobs) = self.jobs.lock() {
            if let Some(s) = jobs.get(job) {
                s.send_modify(|n| *n += 1);
            }
        }
        self.line.send_modify(|n| *n += 1);
    }

    /// Announcements may have been missed (the subscription was lost): every stream looks again.
    pub fn wake_all(&self) {
        if let Ok(jobs) = self.jobs.lock() {
            for s in jobs.values() {
                s.send_modify(|n| *n += 1);
            }
        }
        self.line.send_modify(|n| *n += 1);
    }

    /// End every stream (the gateway is stopping).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Jobs with at least one stream on this gateway.
    pub fn followed(&self) -> usize {
        self.jobs.lock().map(|j| j.len()).unwrap_or(0)
    }
}

/// Subscribe to the events channel and feed `hub` until aborted; resubscribes after a loss.
pub async fn follow(hub: Arc<EventHub>, cfg: jewelshot_queue::QueueConfig, channel: String) {
    use futures::StreamExt;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut backoff = Duration::from_millis(200);
    loop {
        let session = async {
            let client = jewelshot_queue::pubsub_client(&cfg)?;
            let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
                .await
                .map_err(|_| jewelshot_queue::QueueError::Timeout)??;
            tokio::time::timeout(timeout, pubsub.subscribe(&channel))
                .await
                .map_err(|_| jewelshot_queue::QueueError::Timeout)??;
            Ok::<_, jewelshot_queue::QueueError>(pubsub)
        };
        match session.await {
            Ok(mut pubsub) => {
                backoff = Duration::from_millis(200);
                hub.wake_all();
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    if let Ok(job) = msg.get_payload::<String>() {
                        hub.announce(&job);
                    }
                }
                tracing::warn!("lost the job-events subscription; resubscribing");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to job events; retrying"),
        }
        hub.wake_all();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The `id` of a state: a digest of the view without what changes each time it is served (a
/// signed image URL carries its own expiry).
pub fn state_id(view: &JobView) -> String {
    use sha2::Digest;
    let mut stable = view.clone();
    if let Some(u) = stable.image_url.as_mut() {
        u.truncate(u.find('?').unwrap_or(u.len()));
    }
    let bytes = serde_json::to_vec(&stable).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&bytes)[..8])
}

/// One SSE event carrying `view`.
pub fn event(view: &JobView, id: &str) -> String {
    let data = serde_json::to_string(view).unwrap_or_else(|_| "{}".into());
    format!("id: {id}\nevent: job\ndata: {data}\n\n")
}

/// A final job whose last step has run: nothing more will change but its webhook delivery.
fn settled(view: &JobView) -> bool {
    view.status.is_final()
        && (view.status == JobStatus::Canceled
            || view
                .steps
                .iter()
                .filter(|s| s.name == StepName::NotifyUser)
                .all(|s| matches!(s.status, StepStatus::Complete | StepStatus::Failed)))
}

/// How long a stream waits after a final state for the last step (`notify-user`) to settle.
const FINAL_GRACE: Duration = Duration::from_secs(30);

/// What a stream needs between events.
pub struct Stream {
    state: actix_web::web::Data<AppState>,
    user: jewelshot_db::users::User,
    job: JobId,
    watch: Watch,
    /// The state the client has (`Last-Event-ID`, then each event sent).
    last: Option<String>,
    /// The job waits in line: movements of the line may change its place.
    waiting: bool,
    /// When the line moved, the next look at the job's place (at most one per interval).
    line_due: Option<tokio::time::Instant>,
    last_read: tokio::time::Instant,
    /// When bytes last went out (heartbeats count from it).
    last_sent: tokio::time::Instant,
    first: bool,
    done: bool,
    ends_at: tokio::time::Instant,
    _open: OpenStream,
}

/// Counts open streams ([`EVENT_STREAMS`](jewelshot_domain::metric_names::EVENT_STREAMS)).
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        metrics::gauge!(jewelshot_domain::metric_names::EVENT_STREAMS).increment(1.0);
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(jewelshot_domain::metric_names::EVENT_STREAMS).decrement(1.0);
    }
}

impl Stream {
    /// A stream of `job` for `user`; the first read (and so a 404) happens before the response.
    pub async fn open(
        state: actix_web::web::Data<AppState>,
        user: jewelshot_db::users::User,
        job: JobId,
        last_event_id: Option<String>,
    ) -> Result<(Self, JobView), ApiError> {
        // Registered before the read, so no announcement between the two is missed.
        let watch = state.events.watch(&job.to_string());
        let view = crate::service::get(&state, &user, job).await?;
        let now = tokio::time::Instant::now();
        let ends_at = now + Duration::from_secs(state.cfg.gateway.events_max_secs.max(1));
        let stream = Self {
            state,
            user,
            job,
            watch,
            last: last_event_id,
            waiting: false,
            line_due: None,
            last_read: now,
            last_sent: now,
            first: true,
            done: false,
            ends_at,
            _open: OpenStream::new(),
        };
        Ok((stream, view))
    }

    /// The bytes the stream sends next, or `None` when it ends: `view` (a state just read) if
    /// the client lacks it, else — after waiting for a change — the next state, or a comment at
    /// each heartbeat.
    pub async fn next(&mut self, mut view: Option<JobView>) -> Option<Bytes> {
        let heartbeat = Duration::from_secs(self.state.cfg.gateway.events_heartbeat_secs.max(1));
        let line_every = Duration::from_millis(self.state.cfg.gateway.events_line_interval_ms.max(50));
        loop {
            if self.done || tokio::time::Instant::now() >= self.ends_at || *self.watch.closing.borrow() {
                return None;
            }
            let mut out = if std::mem::take(&mut self.first) { "retry: 2000\n\n".to_owned() } else { String::new() };
            if let Some(v) = view.take() {
                self.waiting = v.status == JobStatus::Queued;
                if v.status.is_final() {
                    // The last step may still be running: wait for it, within a grace.
                    self.ends_at = self.ends_at.min(tokio::time::Instant::now() + FINAL_GRACE);
                }
                self.done = settled(&v);
                let id = state_id(&v);
                if self.last.as_deref() != Some(id.as_str()) {
                    out.push_str(&event(&v, &id));
                    self.last = Some(id);
                }
            }
            if !out.is_empty() {
                self.last_sent = tokio::time::Instant::now();
                return Some(Bytes::from(out));
            }
            if self.done {
                return None;
            }
            let (waiting, line_due) = (self.waiting, self.line_due);
            let line_wait = async move {
                match line_due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.watch.closing.changed() => return None,
                r = self.watch.changes.changed() => {
                    if r.is_err() { tokio::time::sleep(line_every).await; }
                }
                r = self.watch.line.changed(), if waiting && line_due.is_none() => {
                    if r.is_err() { tokio::time::sleep(line_every).await; }
                    // One look per interval however often the line moves; the job's own changes
                    // are still read at once.
                    self.line_due = Some((self.last_read + line_every).max(tokio::time::Instant::now()));
                    continue;
                }
                _ = line_wait => {}
                _ = tokio::time::sleep_until(self.last_sent + heartbeat) => {
                    self.last_sent = tokio::time::Instant::now();
                    return Some(Bytes::from_static(b": keep-alive\n\n"));
                }
                _ = tokio::time::sleep_until(self.ends_at) => return None,
            }
            self.watch.changes.borrow_and_update();
            self.watch.line.borrow_and_update();
            self.line_due = None;
            self.last_read = tokio::time::Instant::now();
            view = match crate::service::get(&self.state, &self.user, self.job).await {
                Ok(v) => Some(v),
                Err(ApiError::JobNotFound) => return None,
                Err(e) => {
                    tracing::warn!(job_id = %self.job, error = %e, "live status: cannot read the job; trying again");
                    tokio::time::sleep(line_every).await;
                    None
                }
            };
        }
    }
}
