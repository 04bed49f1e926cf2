//! What jemalloc holds, as gauges beside the process's RSS: live bytes (`allocated`), the pages
//! they sit in (`active`), what is resident (`resident`, which includes dirty pages not yet
//! returned), what is mapped but returned (`retained`) and jemalloc's own bookkeeping
//! (`metadata`). An RSS that rises while `allocated` stays flat is the allocator keeping pages;
//! one that rises with `allocated` is something holding on to memory.
//!
//! The gateway and the worker run on jemalloc (their `#[global_allocator]`), and it serves the C
//! codecs' `malloc` too, so these figures cover the whole heap.

use std::time::Duration;

use jewelshot_domain::metric_names as m;
use tikv_jemalloc_ctl::{epoch, stats};

/// How often [`spawn_gauges`] reads jemalloc's statistics.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// jemalloc's figures now, by state, in bytes; `None` when its statistics cannot be read.
pub fn snapshot() -> Option<[(&'static str, usize); 5]> {
    // The statistics are cached; advancing the epoch refreshes them.
    epoch::advance().ok()?;
    Some([
        ("allocated", stats::allocated::read().ok()?),
        ("active", stats::active::read().ok()?),
        ("resident", stats::resident::read().ok()?),
        ("retained", stats::retained::read().ok()?),
        ("metadata", stats::metadata::read().ok()?),
    ])
}

/// How many arenas jemalloc runs for threads (`opt.narenas`; it adds one for allocations of
/// 8 MiB and more) and whether its purging thread is on: what a binary's `malloc_conf`
/// changed, for its start-up log line.
pub fn settings() -> String {
    let arenas = tikv_jemalloc_ctl::opt::narenas::read().map_or_else(|e| e.to_string(), |n| n.to_string());
    let purging = tikv_jemalloc_ctl::background_thread::read().map_or_else(|e| e.to_string(), |b| b.to_string());
    format!("jemalloc, {arenas} arenas, background purging {purging}")
}

/// Set `jewelshot_allocator_bytes{state}` every `every`, on a thread of its own, for the life of
/// the process (the gauges reach whichever recorder is installed by then).
pub fn spawn_gauges(every: Duration) {
    let spawned = std::thread::Builder::new().name("allocator-stats".into()).spawn(move || loop {
        match snapshot() {
            Some(figures) => {
                for (state, bytes) in figures {
                    metrics::gauge!(m::ALLOCATOR_BYTES, "state" => state).set(bytes as f64);
                }
            }
            None => {
                tracing::debug!("jemalloc statistics unavailable; allocator gauges stopped");
                return;
            }
        }
        std::thread::sleep(every);
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "allocator statistics thread not started");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures move with what is allocated (this test binary's Rust allocations reach
    /// jemalloc through the C `malloc` it replaces).
    #[test]
    fn allocated_follows_a_live_buffer() {
        let _turn = crate::HEAP_TEST.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = snapshot().expect("jemalloc statistics");
        let held: Vec<u8> = vec![7; 64 << 20];
        let during = snapshot().expect("jemalloc statistics");
        let grew = during[0].1.saturating_sub(before[0].1);
        assert!(grew >= 60 << 20, "allocated grew by {grew} bytes with a 64 MiB buffer live");
        assert!(during[2].1 >= during[0].1, "resident {} below allocated {}", during[2].1, during[0].1);
        drop(held);
        let after = snapshot().expect("jemalloc statistics");
        assert!(after[0].1 < during[0].1, "allocated did not fall after the buffer was freed");
    }
}
