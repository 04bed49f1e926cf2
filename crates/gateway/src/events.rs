//! Live status: `GET /api/jobs/{id}/events` as Server-Sent Events.
//!
//! Every writer of a job's poll snapshot (the gateway at submit, the workers and the CLI through
//! their publishers) announces the job's id on the line's events channel in the same Redis
//! script. Each gateway holds **one** subscription to that channel ([`follow`]) while it has
//! streams open, and fans the announcements out in-process ([`EventHub`]): a job's own streams
//! wake at once, and streams of waiting jobs re-read their place in line (at most every
//! `events_line_interval_ms`), since any job leaving the line moves theirs. So any replica serves any job, and an idle stream
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
    /// Streams open on this gateway: [`follow`] holds the subscription only while there are any.
    watchers: watch::Sender<usize>,
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
        Self {
            jobs: Mutex::default(),
            line: watch::channel(0).0,
            watchers: watch::channel(0).0,
            closing: watch::channel(false).0,
        }
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
        self.hub.watchers.send_modify(|n| *n = n.saturating_sub(1));
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
        self.watchers.send_modify(|n| *n += 1);
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

/// How long [`follow`] keeps its subscription after the last stream on this gateway closed (a
/// client reconnecting within it finds the subscription up).
pub const LINGER: Duration = Duration::from_secs(30);

/// Feed `hub` from the events channel until aborted, subscribed only while this gateway has
/// streams open (and for `linger` after the last one closed): a gateway without streams is not
/// sent every job's announcements. Resubscribes after a loss; every stream looks again after a
/// (re)subscription, since announcements may have gone by meanwhile.
pub async fn follow(hub: Arc<EventHub>, cfg: jewelshot_queue::QueueConfig, channel: String, linger: Duration) {
    use futures::StreamExt;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut backoff = Duration::from_millis(200);
    let mut watchers = hub.watchers.subscribe();
    loop {
        if watchers.wait_for(|n| *n > 0).await.is_err() {
            return;
        }
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
                tracing::debug!("live status: subscribed to job events");
                hub.wake_all();
                let mut messages = pubsub.on_message();
                let lost = loop {
                    tokio::select! {
                        msg = messages.next() => match msg {
                            Some(msg) => {
                                if let Ok(job) = msg.get_payload::<String>() {
                                    hub.announce(&job);
                                }
                            }
                            None => break true,
                        },
                        () = idle(&mut watchers, linger) => break false,
                    }
                };
                if !lost {
                    tracing::debug!("live status: no stream left; unsubscribed from job events");
                    continue;
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

/// Resolves once no stream has been open for `linger` (never, if the hub is gone).
async fn idle(watchers: &mut watch::Receiver<usize>, linger: Duration) {
    loop {
        if watchers.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        if tokio::time::timeout(linger, watchers.wait_for(|n| *n > 0)).await.is_err() {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Subscribers of `channel` on the server `follow` subscribes through.
    async fn subscribers(cfg: &jewelshot_queue::QueueConfig, channel: &str) -> i64 {
        let client = jewelshot_queue::pubsub_client(cfg).expect("client");
        let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
        let (_, n): (String, i64) =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(&mut conn).await.expect("numsub");
        n
    }

    async fn until_subscribers(cfg: &jewelshot_queue::QueueConfig, channel: &str, want: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while subscribers(cfg, channel).await != want {
            assert!(tokio::time::Instant::now() < deadline, "{channel} never had {want} subscribers");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_events_channel_is_followed_only_while_streams_are_open() {
        let cfg = jewelshot_testkit::queue_config();
        let channel = format!("{}:events", cfg.name);
        let hub = EventHub::new();
        let linger = Duration::from_millis(400);
        let task = tokio::spawn(follow(hub.clone(), cfg.clone(), channel.clone(), linger));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(subscribers(&cfg, &channel).await, 0, "no stream, no subscription");

        let (mut a, mut b) = (hub.watch("job-a"), hub.watch("job-b"));
        until_subscribers(&cfg, &channel, 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await; // past the wake-up after subscribing
        a.changes.borrow_and_update();
        b.changes.borrow_and_update();
        let client = jewelshot_queue::pubsub_client(&cfg).expect("client");
        let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg("job-a").query_async(&mut conn).await.expect("publish");
        tokio::time::timeout(Duration::from_secs(5), a.changes.changed())
            .await
            .expect("job-a's announcement arrives")
            .expect("hub alive");
        assert!(!b.changes.has_changed().expect("hub alive"), "job-b was not announced");

        drop(a);
        assert_eq!(subscribers(&cfg, &channel).await, 1, "one stream is still open");
        drop(b);
        assert_eq!(subscribers(&cfg, &channel).await, 1, "kept for the linger");
        until_subscribers(&cfg, &channel, 0).await;

        let _c = hub.watch("job-c");
        until_subscribers(&cfg, &channel, 1).await;
        task.abort();
    }
}
