//! A value read from a dependency and reused for a while, refreshed by one caller at a time.
//!
//! When it goes stale under load, the first caller refreshes it and every other caller keeps
//! using the stale value meanwhile: hundreds of requests in flight at the moment it expires
//! cost one read, not hundreds (a poll must never wait on, or multiply, a background read).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// See the module docs.
#[derive(Debug)]
pub struct Refreshed<T> {
    every: Duration,
    state: Mutex<Slot<T>>,
    /// Held by the one caller refreshing.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Slot<T> {
    value: Option<(Instant, T)>,
}

impl<T: Clone> Refreshed<T> {
    pub fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new(Slot { value: None }), refreshing: tokio::sync::Mutex::new(()) }
    }

    fn current(&self) -> Option<(bool, T)> {
        let slot = self.state.lock().ok()?;
        slot.value.as_ref().map(|(at, v)| (at.elapsed() < self.every, v.clone()))
    }

    /// The value: fresh, or stale while another caller refreshes it, or read by `load` now.
    pub async fn get<F, Fut>(&self, load: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let stale = match self.current() {
            Some((true, v)) => return v,
            Some((false, v)) => Some(v),
            None => None,
        };
        let turn = match (stale, self.refreshing.try_lock()) {
            (_, Ok(turn)) => turn,
            // Someone is refreshing: use what we have.
            (Some(v), Err(_)) => return v,
            // Nothing yet: wait for the first read, then use it.
            (None, Err(_)) => {
                let turn = self.refreshing.lock().await;
                if let Some((_, v)) = self.current() {
                    return v;
                }
                turn
            }
        };
        if let Some((true, v)) = self.current() {
            return v;
        }
        let fresh = load().await;
        if let Ok(mut slot) = self.state.lock() {
            slot.value = Some((Instant::now(), fresh.clone()));
        }
        drop(turn);
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    #[tokio::test]
    async fn one_read_per_expiry_however_many_ask() {
        let cell = Arc::new(Refreshed::new(Duration::from_millis(50)));
        let reads = Arc::new(AtomicUsize::new(0));
        let ask = |cell: Arc<Refreshed<usize>>, reads: Arc<AtomicUsize>| async move {
            cell.get(|| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                reads.fetch_add(1, Ordering::SeqCst) + 1
            })
            .await
        };
        let first = futures::future::join_all((0..100).map(|_| ask(cell.clone(), reads.clone()))).await;
        assert!(first.iter().all(|v| *v == 1), "everyone waits for the first read: {first:?}");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let second = futures::future::join_all((0..100).map(|_| ask(cell.clone(), reads.clone()))).await;
        assert_eq!(reads.load(Ordering::SeqCst), 2, "one refresh for 100 callers at expiry");
        assert!(second.iter().all(|v| *v == 1 || *v == 2), "the others used the stale value meanwhile");
        assert_eq!(cell.get(|| async { 99 }).await, 2, "fresh again: no read");
    }
}
