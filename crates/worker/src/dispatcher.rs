//! The dispatcher: moves jobs from the fleet's dispatch line to the work queue as upstream slots
//! free up. Every worker process runs one; each dispatch is one atomic script, so any number may
//! run at once.
//!
//! A dispatched job carries its slot: the dispatcher takes the head of the line together with a
//! slot on the best fal account ([`Limiter::dispatch`]), pushes the job's task, and the worker
//! that fetches the task takes the slot over ([`Limiter::claim`]). The work queue therefore holds
//! only jobs that can start now (at most `dispatch_ahead` waiting for a worker), never the
//! backlog, and the order jobs start in is the line's: fair between users, `high` first.

use std::time::Duration;

use jewelshot_domain::JobId;
use jewelshot_queue::Queue;
use jewelshot_ratelimit::{DispatchOptions, Dispatched, Grant, Limiter, LineEntry};
use tokio_util::sync::CancellationToken;

/// How long to wait while enough dispatched jobs already wait for a worker.
const WORKERS_BUSY_PAUSE: Duration = Duration::from_millis(100);
/// After an error from Redis.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Run the dispatcher until `stop`.
pub fn spawn(
    limiter: Limiter,
    queue: Queue,
    opts: DispatchOptions,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let wake = limiter.wake_signal();
        let max_idle = limiter.max_idle();
        let mut probe = false;
        loop {
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let pause = match limiter.dispatch(&opts, probe).await {
                Ok(Dispatched::Job { entry, tag, grant }) => {
                    probe = false;
                    hand_off(&limiter, &queue, &entry, tag, &grant).await;
                    continue;
                }
                Ok(Dispatched::NoSlot { retry_in }) => retry_in.unwrap_or(max_idle).min(max_idle),
                Ok(Dispatched::Empty { next_due }) => next_due.unwrap_or(max_idle).min(max_idle),
                Ok(Dispatched::WorkersBusy) => WORKERS_BUSY_PAUSE,
                Ok(Dispatched::NoHealthyKeys { retry_in }) => {
                    // Every account is out: one dispatch finds out whether fal takes a key again.
                    if !probe {
                        probe = true;
                        continue;
                    }
                    probe = false;
                    retry_in.unwrap_or(max_idle).min(max_idle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dispatcher: the line is unavailable");
                    ERROR_PAUSE
                }
            };
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
        }
    })
}

/// Push the dispatched job's task; if that fails, the job goes back to its place in line.
async fn hand_off(limiter: &Limiter, queue: &Queue, entry: &LineEntry, tag: i64, grant: &Grant) {
    let pushed = match entry.job.parse::<JobId>() {
        // `repush`: a job the line handed out before (a requeue) may still have an old task.
        Ok(id) => queue.repush(id, None).await.map_err(|e| e.to_string()),
        Err(_) => {
            tracing::error!(job = %entry.job, "dispatcher: a line entry names no job; dropped");
            let _ = limiter.release(&grant.key_id, &grant.lease).await;
            return;
        }
    };
    match pushed {
        Ok(()) => tracing::debug!(job_id = %entry.job, key = %grant.key_id, dispatch = grant.dispatch, "dispatched"),
        Err(e) => {
            tracing::warn!(job_id = %entry.job, error = %e, "dispatcher: could not push the job; back in line");
            if let Err(e) = limiter.undispatch(entry, tag, grant).await {
                tracing::error!(job_id = %entry.job, error = %e, "dispatcher: could not put the job back in line");
            }
        }
    }
}
