//! Retry delays: exponential with full jitter, never shorter than what the upstream asked for.

use std::time::Duration;

use rand::Rng;

/// Delay before retry number `attempt` (1-based): uniform in `[base·2^(attempt-1) / 2,
/// base·2^(attempt-1)]`, capped at `max_ms`, and at least `retry_after` when given.
pub fn backoff(attempt: u32, base_ms: u64, max_ms: u64, retry_after: Option<Duration>) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(20)).min(max_ms.max(1));
    let jittered = rand::rng().random_range(exp / 2..=exp.max(1));
    let d = Duration::from_millis(jittered);
    match retry_after {
        Some(ra) if ra > d => ra,
        _ => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_honours_retry_after() {
        for _ in 0..100 {
            let d1 = backoff(1, 100, 10_000, None).as_millis();
            assert!((50..=100).contains(&d1), "{d1}");
            let d4 = backoff(4, 100, 10_000, None).as_millis();
            assert!((400..=800).contains(&d4), "{d4}");
            assert!(backoff(30, 100, 1_000, None).as_millis() <= 1_000);
            assert!(backoff(1, 100, 1_000, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
    }
}
