//! What `just soak` measures and how it tells a leak from noise.
//!
//! Each series (a process's RSS or open descriptors, Redis's memory, Postgres's connections) is
//! sampled once a minute. Over the judged part of the run — the last two thirds, where the system
//! has warmed up (the last 40 minutes of an hour) — a least-squares line gives the slope and its
//! standard error. A series *grows* when its line rises over that span by more than three
//! standard errors (a slope the scatter cannot explain) **and** by more than a floor: 1 % of the
//! series' mean or `min_units`, whichever is larger (one descriptor, or an allocator's step of a
//! MiB, is not a leak). The floor grows with the process, so it is also printed as a rate a day.

/// A least-squares fit of one series over the judged span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    /// Units per minute.
    pub slope: f64,
    /// The slope's standard error (residuals over n − 2).
    pub slope_se: f64,
    /// How far the line rises over the judged span (slope × span).
    pub rise: f64,
    pub mean: f64,
    /// The rise the noise allows: max(3 standard errors, 1 % of the mean, `min_units`) over the span.
    pub tolerance: f64,
}

impl Trend {
    pub fn grows(&self) -> bool {
        self.rise > self.tolerance
    }

    /// The slope as a rate a day (what a leak of this size costs a long-running pod).
    pub fn per_day(&self) -> f64 {
        self.slope * 60.0 * 24.0
    }
}

/// Fit `points` (minute, value) from `from_minute` on; `None` with fewer than three points.
pub fn trend(points: &[(f64, f64)], from_minute: f64, min_units: f64) -> Option<Trend> {
    let judged: Vec<(f64, f64)> = points.iter().copied().filter(|(t, _)| *t >= from_minute).collect();
    if judged.len() < 3 {
        return None;
    }
    let n = judged.len() as f64;
    let (mt, mv) = (judged.iter().map(|p| p.0).sum::<f64>() / n, judged.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = judged.iter().map(|(t, _)| (t - mt).powi(2)).sum();
    let sxy: f64 = judged.iter().map(|(t, v)| (t - mt) * (v - mv)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let residuals: f64 = judged.iter().map(|(t, v)| (v - (mv + slope * (t - mt))).powi(2)).sum();
    let slope_se = (residuals / (n - 2.0)).sqrt() / sxx.sqrt();
    let span = judged.last().map_or(0.0, |p| p.0) - judged[0].0;
    let tolerance = (3.0 * slope_se * span).max(0.01 * mv.abs()).max(min_units);
    Some(Trend { slope, slope_se, rise: slope * span, mean: mv, tolerance })
}

/// Resident memory (MiB) and open descriptors of a live process, from `/proc`.
pub fn process_sample(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64;
    Some((kb / 1024.0, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed pseudo-random wobble in [-1, 1].
    fn wobble(i: usize) -> f64 {
        ((i * 7919 % 101) as f64 / 50.0) - 1.0
    }

    #[test]
    fn a_noisy_flat_series_does_not_grow_and_a_slow_leak_does() {
        let flat: Vec<(f64, f64)> = (0..60).map(|i| (i as f64, 60.0 + 1.5 * wobble(i))).collect();
        let t = trend(&flat, 20.0, 1.0).expect("enough points");
        assert!(!t.grows(), "{t:?}");
        assert!(t.slope.abs() < 0.05, "{t:?}");
        // 0.2 MiB a minute: 8 MiB over the judged 40 minutes, well inside the wobble's reach
        // from point to point but not over the span.
        let leak: Vec<(f64, f64)> = (0..60).map(|i| (i as f64, 60.0 + 0.2 * i as f64 + 1.5 * wobble(i))).collect();
        let t = trend(&leak, 20.0, 1.0).expect("enough points");
        assert!(t.grows(), "{t:?}");
        assert!((t.slope - 0.2).abs() < 0.05, "{t:?}");
    }

    #[test]
    fn a_slow_leak_in_a_large_process_is_not_hidden_by_its_size() {
        // 0.25 MiB a minute on 200 MiB: 360 MiB a day, the kind that reaches a pod's limit.
        let leak: Vec<(f64, f64)> = (0..60).map(|i| (i as f64, 200.0 + 0.25 * i as f64 + 2.0 * wobble(i))).collect();
        let t = trend(&leak, 20.0, 1.0).expect("points");
        assert!(t.grows(), "{t:?}");
        assert!((t.per_day() - 360.0).abs() < 60.0, "{}", t.per_day());
        let flat: Vec<(f64, f64)> = (0..60).map(|i| (i as f64, 200.0 + 2.0 * wobble(i))).collect();
        assert!(!trend(&flat, 20.0, 1.0).expect("points").grows());
    }

    #[test]
    fn a_warm_up_before_the_judged_span_is_not_a_leak_and_one_descriptor_is_noise() {
        // Caches fill in the first minutes, then stay.
        let warm: Vec<(f64, f64)> = (0..60).map(|i| (i as f64, 80.0 - 40.0 * (-(i as f64) / 4.0).exp())).collect();
        assert!(!trend(&warm, 20.0, 1.0).expect("points").grows());
        let fds: Vec<(f64, f64)> = (0..60).map(|i| (i as f64, if i < 40 { 30.0 } else { 31.0 })).collect();
        assert!(!trend(&fds, 20.0, 2.0).expect("points").grows());
        assert_eq!(trend(&fds[..21], 20.0, 2.0), None, "two points are not a trend");
    }

    #[test]
    fn this_process_can_be_sampled() {
        let (rss, fds) = process_sample(std::process::id()).expect("our own /proc");
        assert!(rss > 1.0 && fds >= 3.0, "{rss} MiB, {fds} fds");
    }
}
