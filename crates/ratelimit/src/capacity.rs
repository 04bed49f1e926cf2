//! What the pool's accounts allow, read from their registered limits and current use: one
//! definition of "the pool's capacity" for ETAs, `GET /api/queue` and the CLI. One unlimited
//! healthy account makes the pool unlimited in that dimension.

use serde::Serialize;

/// One key's state, for `GET /api/queue` and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub id: String,
    pub max_per_minute: u32,
    pub max_concurrent: u32,
    /// The rate window the limits apply to.
    pub window_ms: u64,
    /// Starts inside the current window.
    pub started_in_window: u64,
    pub in_flight: u64,
    pub healthy: bool,
    pub cooling_down: bool,
    /// How long ago each start in the window began, oldest first, in milliseconds (for ETAs:
    /// each ages out of the window, and frees its start, at `window_ms` − age). Rate-limited
    /// keys only.
    #[serde(skip)]
    pub window_ages_ms: Vec<u64>,
}

/// How fast the upstream can take jobs, from the pool's registered limits and current use.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    /// Starts per window the healthy accounts allow together (None = unlimited).
    pub per_minute: Option<u32>,
    /// Requests they may run at once together (None = unlimited).
    pub concurrent: Option<u32>,
    /// Starts per second the healthy accounts allow on average (None = unlimited).
    pub starts_per_sec: Option<f64>,
    /// The rate limit as the upstream applies it (None = unlimited).
    pub window: Option<RateWindow>,
}

/// The pool's rate window: when its next starts can happen.
#[derive(Debug, Clone, PartialEq)]
pub struct RateWindow {
    pub window_secs: f64,
    /// Seconds from now until each of the next `quota` starts may happen, ascending: 0 for every
    /// start free now, then, for each start already in the window, the moment it ages out. Each
    /// repeats one window later, and so on.
    pub offsets: Vec<f64>,
}

impl Capacity {
    /// The healthy accounts' capacity; `None` when no account is healthy (or none registered).
    pub fn of(keys: &[KeyStatus]) -> Option<Self> {
        let healthy: Vec<&KeyStatus> = keys.iter().filter(|k| k.healthy).collect();
        if healthy.is_empty() {
            return None;
        }
        let unlimited_rate = healthy.iter().any(|k| k.max_per_minute == 0);
        let unlimited_lanes = healthy.iter().any(|k| k.max_concurrent == 0);
        let rate: f64 =
            healthy.iter().map(|k| f64::from(k.max_per_minute) / (k.window_ms.max(1) as f64 / 1000.0)).sum();
        let mut offsets = Vec::new();
        for k in &healthy {
            let window = k.window_ms as f64 / 1000.0;
            let spent: Vec<f64> = k
                .window_ages_ms
                .iter()
                .take(k.max_per_minute as usize)
                .map(|age| (window - *age as f64 / 1000.0).max(0.0))
                .collect();
            offsets.extend(std::iter::repeat_n(0.0, (k.max_per_minute as usize).saturating_sub(spent.len())));
            offsets.extend(spent);
        }
        offsets.sort_by(f64::total_cmp);
        let window_secs = healthy.iter().map(|k| k.window_ms).max().unwrap_or(60_000) as f64 / 1000.0;
        let total = |f: fn(&KeyStatus) -> u32| healthy.iter().map(|k| f(k)).sum::<u32>();
        Some(Self {
            per_minute: (!unlimited_rate).then(|| total(|k| k.max_per_minute)),
            concurrent: (!unlimited_lanes).then(|| total(|k| k.max_concurrent)),
            starts_per_sec: (!unlimited_rate).then_some(rate),
            window: (!unlimited_rate).then_some(RateWindow { window_secs, offsets }),
        })
    }

    /// Seconds until the job at `position` (1 = next) completes: when it can start, then its
    /// own generation (`mean`). It can start once the jobs ahead have started, which the slower
    /// of two limits decides: the rate window (the k-th job ahead takes the k-th of the window's
    /// coming starts — free ones now, then each spent one as it ages out, a window apart), and
    /// the lanes turning over every `mean`.
    pub fn eta_seconds(&self, position: i64, mean: f64, fallback_lanes: f64) -> i64 {
        let ahead = (position - 1).max(0) as usize;
        let by_rate = match &self.window {
            Some(w) if !w.offsets.is_empty() => {
                let q = w.offsets.len();
                (ahead / q) as f64 * w.window_secs + w.offsets[ahead % q]
            }
            _ => 0.0,
        };
        let lanes = self.concurrent.map(f64::from).unwrap_or(if self.window.is_some() {
            f64::INFINITY
        } else {
            fallback_lanes
        });
        let by_lanes = if lanes.is_finite() && lanes > 0.0 { ahead as f64 / lanes * mean } else { 0.0 };
        (by_rate.max(by_lanes) + mean).ceil() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pm: u32, conc: u32, healthy: bool) -> KeyStatus {
        KeyStatus {
            id: "k".into(),
            max_per_minute: pm,
            max_concurrent: conc,
            window_ms: 60_000,
            started_in_window: 0,
            in_flight: 0,
            healthy,
            cooling_down: false,
            window_ages_ms: Vec::new(),
        }
    }

    #[test]
    fn eta_follows_the_slower_of_rate_and_lanes() {
        // 3 × 15/min; 3 × 4 lanes turning over every 30 s = 0.4 starts/s → lanes bind.
        let cap = Capacity::of(&[key(15, 4, true), key(15, 4, true), key(15, 4, true)]).expect("cap");
        assert_eq!(cap.eta_seconds(1, 30.0, 4.0), 30);
        assert_eq!(cap.eta_seconds(41, 30.0, 4.0), 130);
        // Unlimited lanes: the window binds — 45 start at once, the next 45 a window later.
        let cap = Capacity::of(&[key(15, 0, true), key(15, 0, true), key(15, 0, true)]).expect("cap");
        assert_eq!(cap.eta_seconds(45, 30.0, 4.0), 30);
        assert_eq!(cap.eta_seconds(46, 30.0, 4.0), 90);
        assert_eq!(cap.eta_seconds(136, 30.0, 4.0), 210);
        // Starts already spent in the window come back as they age out: ten started 20 s ago
        // free up 40 s from now, and again a window later.
        let mut spent = key(15, 0, true);
        spent.started_in_window = 10;
        spent.window_ages_ms = vec![20_000; 10];
        let cap = Capacity::of(&[spent, key(15, 0, true), key(15, 0, true)]).expect("cap");
        assert_eq!(cap.eta_seconds(35, 30.0, 4.0), 30);
        assert_eq!(cap.eta_seconds(36, 30.0, 4.0), 70);
        assert_eq!(cap.eta_seconds(45, 30.0, 4.0), 70);
        assert_eq!(cap.eta_seconds(46, 30.0, 4.0), 90);
        assert_eq!(cap.eta_seconds(81, 30.0, 4.0), 130);
        // A disabled key adds nothing; none healthy → no capacity known.
        let one = Capacity::of(&[key(15, 0, true), key(15, 0, false)]).expect("cap");
        assert_eq!(one.eta_seconds(16, 30.0, 4.0), 90);
        assert!(Capacity::of(&[key(15, 4, false)]).is_none());
    }

    #[test]
    fn one_unlimited_healthy_account_makes_the_pool_unlimited() {
        let cap = Capacity::of(&[key(15, 4, true), key(20, 2, true), key(99, 9, false)]).expect("cap");
        assert_eq!((cap.per_minute, cap.concurrent), (Some(35), Some(6)));
        let cap = Capacity::of(&[key(15, 0, true), key(0, 2, true)]).expect("cap");
        assert_eq!((cap.per_minute, cap.concurrent), (None, None));
        assert!(cap.window.is_none() && cap.starts_per_sec.is_none());
    }
}
