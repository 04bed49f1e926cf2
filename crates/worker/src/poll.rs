//! How an idle worker looks for new tasks.
//!
//! apalis-core 1.0's `IntervalStrategy` re-arms its timer after a tick without polling it, so no
//! waker is registered for the next tick and an idle worker stalls until its next heartbeat
//! (30 s by default) — seen here as jobs waiting seconds for an idle worker. This strategy
//! re-arms and polls in one go, so a tick is always pending.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use apalis::prelude::{PollSnapshot, PollStrategy};
use tokio::time::{Instant, Sleep};

/// Wake the worker every `period`, reliably.
#[derive(Debug)]
pub struct SteadyInterval {
    period: Duration,
    next: Pin<Box<Sleep>>,
}

impl SteadyInterval {
    pub fn new(period: Duration) -> Self {
        Self { period, next: Box::pin(tokio::time::sleep(period)) }
    }
}

impl Clone for SteadyInterval {
    fn clone(&self) -> Self {
        Self::new(self.period)
    }
}

impl PollStrategy for SteadyInterval {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut fired = false;
        // Re-arm until the timer is pending again: that registers the waker for the next tick.
        while self.next.as_mut().poll(cx).is_ready() {
            fired = true;
            self.next.as_mut().reset(Instant::now() + self.period);
        }
        if fired {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use super::*;

    /// Count wake-ups over a span with nothing else polling: every tick must wake the task.
    #[tokio::test]
    async fn keeps_waking_while_idle() {
        struct Driver {
            s: SteadyInterval,
            wakes: Arc<AtomicUsize>,
        }
        impl Future for Driver {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                if self.s.poll_drive(cx, &PollSnapshot::default()).is_ready() {
                    self.wakes.fetch_add(1, Ordering::SeqCst);
                }
                Poll::Pending
            }
        }
        let wakes = Arc::new(AtomicUsize::new(0));
        let driver = Driver { s: SteadyInterval::new(Duration::from_millis(20)), wakes: wakes.clone() };
        let _ = tokio::time::timeout(Duration::from_millis(210), driver).await;
        let n = wakes.load(Ordering::SeqCst);
        assert!((6..=11).contains(&n), "expected about 10 ticks in 210 ms, saw {n}");
    }
}
