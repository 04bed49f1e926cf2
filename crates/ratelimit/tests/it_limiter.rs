//! The limiter against a real Redis: atomic under contention, both limits per key, leases that
//! expire, the pool's choice of key, cool-downs and disabled keys, the line's order, wake-ups.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use jewelshot_ratelimit::{Decision, Grant, LimitError, Limiter, LimiterConfig, PoolKey, WindowLimiter};
use tokio_util::sync::CancellationToken;

/// A grant as a worker would hold it, for the calls that act on one.
fn grant(key_id: &str, grant_id: &str, lease: &str) -> Grant {
    Grant {
        key_id: key_id.into(),
        grant_id: grant_id.into(),
        lease: lease.into(),
        waited: Duration::ZERO,
        dispatch: 0,
        probe: false,
    }
}

fn key(id: &str, per_minute: u32, concurrent: u32) -> PoolKey {
    PoolKey { id: id.into(), max_per_minute: per_minute, max_concurrent: concurrent }
}

async fn limiter(keys: Vec<PoolKey>, tune: impl FnOnce(&mut LimiterConfig)) -> (Limiter, CancellationToken) {
    let url = jewelshot_testkit::redis_url();
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let conn = client.get_connection_manager().await.expect("redis");
    let mut cfg = LimiterConfig::new(format!("jewelshot-test:rl:{}", ulid::Ulid::generate()));
    tune(&mut cfg);
    let limiter = Limiter::new(conn, cfg, keys);
    limiter.register().await.expect("register");
    let stop = CancellationToken::new();
    limiter.spawn_waker(client, stop.clone());
    // Let the subscription settle so the first release is heard.
    tokio::time::sleep(Duration::from_millis(50)).await;
    (limiter, stop)
}

#[tokio::test]
async fn concurrent_slots_are_never_exceeded_under_contention() {
    let (l, stop) = limiter(vec![key("a", 0, 3)], |_| {}).await;
    let holding = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (l, holding, peak, stop) = (l.clone(), holding.clone(), peak.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let g = l.acquire(&format!("job-{i}"), i as f64, &stop).await.expect("acquire");
            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            holding.fetch_sub(1, Ordering::SeqCst);
            l.release(&g.key_id, &g.lease).await.expect("release");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3, "exactly the key's three slots were used at the peak");
    stop.cancel();
}

#[tokio::test]
async fn starts_per_window_are_never_exceeded() {
    let window = Duration::from_millis(600);
    let (l, stop) = limiter(vec![key("a", 4, 0)], |c| c.window = window).await;
    let starts = Arc::new(Mutex::new(Vec::new()));
    let begun = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (l, starts, stop) = (l.clone(), starts.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let g = l.acquire(&format!("job-{i}"), i as f64, &stop).await.expect("acquire");
            starts.lock().expect("lock").push(Instant::now());
            l.confirm(&g).await.expect("confirm");
            l.release(&g.key_id, &g.lease).await.expect("release");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let mut starts = starts.lock().expect("lock").clone();
    starts.sort();
    for w in starts.windows(5) {
        assert!(w[4] - w[0] >= window, "five starts inside one window: {:?}", w[4] - w[0]);
    }
    // 12 starts at 4 per window take two full windows, and not much more (waiters are woken by
    // the window, not by polling).
    let took = begun.elapsed();
    assert!(took >= window * 2, "{took:?}");
    assert!(took < window * 2 + Duration::from_millis(400), "{took:?}");
    stop.cancel();
}

#[tokio::test]
async fn an_abandoned_slot_comes_back_when_its_lease_expires() {
    let (l, stop) = limiter(vec![key("a", 0, 1)], |c| c.lease = Duration::from_millis(300)).await;
    let _crashed = l.acquire("job-1", 1.0, &stop).await.expect("first");
    let t = Instant::now();
    let g = l.acquire("job-2", 2.0, &stop).await.expect("second");
    assert!(t.elapsed() >= Duration::from_millis(250), "{:?}", t.elapsed());
    assert_eq!(g.key_id, "a");
    stop.cancel();
}

#[tokio::test]
async fn the_key_with_most_room_is_chosen_and_resting_keys_are_skipped() {
    let (l, stop) = limiter(vec![key("small", 0, 1), key("big", 0, 3)], |_| {}).await;
    let first = l.acquire("j1", 1.0, &stop).await.expect("j1");
    assert_eq!(first.key_id, "big");
    // big 2 free, small 1 free → big again; then 1 and 1 → the first listed.
    assert_eq!(l.acquire("j2", 2.0, &stop).await.expect("j2").key_id, "big");

    // A 429 on big: it rests, and its refused start does not count.
    let third = l.acquire("j3", 3.0, &stop).await.expect("j3");
    assert_eq!(third.key_id, "small");
    l.release(&third.key_id, &third.lease).await.expect("release");
    let on_big = grant("big", "g-x", "j2");
    l.refused(&on_big, Duration::from_millis(400)).await.expect("cool");
    let snap = l.snapshot().await.expect("snapshot");
    let big = snap.iter().find(|k| k.id == "big").expect("big");
    assert!(big.cooling_down && big.healthy);
    assert_eq!(l.acquire("j4", 4.0, &stop).await.expect("j4").key_id, "small");

    // Disabled: out of the pool; with nothing else healthy, a look says so at once.
    let on_small = grant("small", "g-y", "j4");
    l.disable(&on_small, Duration::from_secs(60)).await.expect("disable");
    let on_big = grant("big", "g-z", "j1");
    l.disable(&on_big, Duration::from_secs(60)).await.expect("disable");
    let snap = l.snapshot().await.expect("snapshot");
    assert!(snap.iter().all(|k| !k.healthy), "{snap:?}");
    assert!(matches!(l.try_acquire("g5", "j5", 5.0).await, Ok(Decision::NoHealthyKeys { .. })));
    // With every key out, a start is still granted — as a probe; fal accepting it brings the key back.
    let probe = l.acquire("j5", 5.0, &stop).await.expect("probe");
    assert!(probe.probe, "{probe:?}");
    l.confirm(&probe).await.expect("confirm");
    let snap = l.snapshot().await.expect("snapshot");
    assert_eq!(snap.iter().filter(|k| k.healthy).count(), 1, "{snap:?}");
    l.release(&probe.key_id, &probe.lease).await.expect("release");
    let after = l.acquire("j6", 6.0, &stop).await.expect("j6");
    assert!(!after.probe && after.key_id == probe.key_id, "{after:?}");
    stop.cancel();
}

#[tokio::test]
async fn the_line_is_served_in_ticket_order_and_woken_promptly() {
    let (l, stop) = limiter(vec![key("a", 0, 1)], |c| c.max_idle = Duration::from_secs(5)).await;
    let holder = l.acquire("holder", 0.0, &stop).await.expect("holder");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // Arrive in scrambled order; the tickets decide.
    for ticket in [5u32, 2, 4, 1, 3] {
        let (l, order, stop) = (l.clone(), order.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let g = l.acquire(&format!("t{ticket}"), f64::from(ticket), &stop).await.expect("acquire");
            let granted = Instant::now();
            order.lock().expect("lock").push((ticket, g.dispatch));
            tokio::time::sleep(Duration::from_millis(20)).await;
            let released = Instant::now();
            l.release(&g.key_id, &g.lease).await.expect("release");
            (granted, released)
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Everyone is in line now.
    match l.try_acquire("probe", "probe", 100.0).await.expect("probe") {
        Decision::Wait { rank, free, .. } => assert_eq!((rank, free), (5, 0)),
        other => panic!("{other:?}"),
    }
    let released = Instant::now();
    l.release(&holder.key_id, &holder.lease).await.expect("release");
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.expect("task"));
    }
    // Served by ticket, and numbered in that order after the holder (dispatch 1).
    assert_eq!(*order.lock().expect("lock"), vec![(1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]);
    // Wake-up latency: from a release to the next waiter's grant (max_idle is 5 s, so only the
    // published wake-up can explain a fast hand-over).
    times.sort();
    let mut gaps = vec![times[0].0 - released];
    for w in times.windows(2) {
        gaps.push(w[1].0.saturating_duration_since(w[0].1));
    }
    let worst = gaps.iter().max().copied().unwrap_or_default();
    println!("wake-up latency release→grant: {gaps:?}");
    assert!(worst < Duration::from_millis(250), "slow hand-over: {gaps:?}");
    stop.cancel();
}

#[tokio::test]
async fn a_waiter_that_stops_leaves_the_line() {
    let (l, stop) = limiter(vec![key("a", 0, 1)], |_| {}).await;
    let _holder = l.acquire("holder", 0.0, &stop).await.expect("holder");
    let mine = CancellationToken::new();
    let waiting = {
        let (l, mine) = (l.clone(), mine.clone());
        tokio::spawn(async move { l.acquire("quitter", 1.0, &mine).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    mine.cancel();
    assert!(matches!(waiting.await.expect("task"), Err(LimitError::Canceled)));
    // The quitter is gone: the next waiter is first in line.
    match l.try_acquire("next", "next", 2.0).await.expect("look") {
        Decision::Wait { rank, .. } => assert_eq!(rank, 0),
        other => panic!("{other:?}"),
    }
    stop.cancel();
}

#[tokio::test]
async fn the_window_counter_allows_exactly_the_limit_and_says_when_more_fit() {
    let client = redis::Client::open(jewelshot_testkit::redis_url().as_str()).expect("redis url");
    let conn = client.get_connection_manager().await.expect("redis");
    let w = WindowLimiter::new(conn, format!("jewelshot-test:win:{}", ulid::Ulid::generate()), Duration::from_secs(3));
    let window = Duration::from_millis(500);
    let mut hits = Vec::new();
    for _ in 0..4 {
        hits.push(w.hit("user-1", 3, window).await.expect("hit"));
    }
    assert_eq!(
        hits.iter().map(|h| (h.allowed, h.remaining)).collect::<Vec<_>>(),
        vec![(true, 2), (true, 1), (true, 0), (false, 0)]
    );
    assert!(hits[3].reset <= window && hits[3].reset > Duration::from_millis(300), "{:?}", hits[3].reset);
    // Another subject has its own window.
    assert!(w.hit("user-2", 3, window).await.expect("hit").allowed);
    tokio::time::sleep(hits[3].reset + Duration::from_millis(20)).await;
    assert!(w.hit("user-1", 3, window).await.expect("hit").allowed, "the window moved on");
}
