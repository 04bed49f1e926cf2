//! The dispatch line against a real Redis: fair between users, FIFO within one, `high` first at
//! the configured share, positions equal to the real dispatch order, scheduled jobs, handoffs.

use std::time::Duration;

use jewelshot_ratelimit::{
    DispatchOptions, Dispatched, Enqueued, Limiter, LimiterConfig, LineEntry, LinePlace, PoolKey, QueueKeys,
};

const BURST: u32 = 4;

async fn limiter(keys: Vec<PoolKey>) -> (Limiter, String) {
    let url = jewelshot_testkit::redis_url();
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let conn = client.get_connection_manager().await.expect("redis");
    let prefix = format!("jewelshot-test:line:{}", ulid::Ulid::generate());
    let limiter = Limiter::new(conn, LimiterConfig::new(prefix.clone()), keys);
    (limiter, prefix)
}

fn unlimited() -> Vec<PoolKey> {
    vec![PoolKey { id: "k".into(), max_per_minute: 0, max_concurrent: 0 }]
}

fn opts(prefix: &str) -> DispatchOptions {
    DispatchOptions {
        high_burst: BURST,
        ahead: 0,
        ready_list: format!("{prefix}:ready"),
        scheduled_set: format!("{prefix}:scheduled"),
    }
}

fn job(seq: i64, user: &str, high: bool) -> LineEntry {
    LineEntry { seq, high, user: user.into(), job: format!("job-{seq}") }
}

/// Dispatch until the line is empty; the jobs in dispatch order.
async fn drain(l: &Limiter, o: &DispatchOptions) -> Vec<LineEntry> {
    let mut out = Vec::new();
    loop {
        match l.dispatch(o, false).await.expect("dispatch") {
            Dispatched::Job { entry, .. } => out.push(entry),
            Dispatched::Empty { .. } => return out,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Acceptance C3: user A queues 200 jobs, then user B queues 1 → B's job is among the next
/// dispatches (at most the number of users with queued work), and A's stay FIFO.
#[tokio::test]
async fn a_second_user_is_not_stuck_behind_a_backlog() {
    let (l, prefix) = limiter(unlimited()).await;
    let o = opts(&prefix);
    for seq in 1..=200 {
        l.enqueue(&job(seq, "ana", false), None).await.expect("enqueue");
    }
    // One of A's jobs is already under way when B arrives.
    assert!(matches!(l.dispatch(&o, false).await.expect("dispatch"), Dispatched::Job { .. }));
    l.enqueue(&job(201, "ben", false), None).await.expect("enqueue");
    assert_eq!(l.position(&job(201, "ben", false), BURST).await.expect("position"), LinePlace::Queued(2));

    let order = drain(&l, &o).await;
    let b_at = order.iter().position(|e| e.user == "ben").expect("B dispatched") + 1;
    assert!(b_at <= 2, "B's job was dispatch #{b_at} after A's 200");
    let a: Vec<i64> = order.iter().filter(|e| e.user == "ana").map(|e| e.seq).collect();
    assert_eq!(a, (2..=200).collect::<Vec<_>>(), "one user's jobs stay FIFO");
}

/// Round-robin between three users however unevenly they queued.
#[tokio::test]
async fn users_take_turns() {
    let (l, prefix) = limiter(unlimited()).await;
    let mut seq = 0;
    for (user, n) in [("ana", 6), ("ben", 2), ("cy", 3)] {
        for _ in 0..n {
            seq += 1;
            l.enqueue(&job(seq, user, false), None).await.expect("enqueue");
        }
    }
    let users: Vec<String> = drain(&l, &opts(&prefix)).await.into_iter().map(|e| e.user).collect();
    assert_eq!(users, ["ana", "ben", "cy", "ana", "ben", "cy", "ana", "cy", "ana", "ana", "ana"]);
}

/// Acceptance C4: 20 `high` jobs submitted behind 100 `normal` ones start before the remaining
/// normal ones, while normal jobs still get 1 in every `BURST + 1` dispatches.
#[tokio::test]
async fn high_goes_first_but_normal_keeps_its_share() {
    let (l, prefix) = limiter(unlimited()).await;
    for seq in 1..=100 {
        l.enqueue(&job(seq, &format!("u{}", seq % 7), false), None).await.expect("enqueue");
    }
    for seq in 101..=120 {
        l.enqueue(&job(seq, &format!("u{}", seq % 3), true), None).await.expect("enqueue");
    }
    let order = drain(&l, &opts(&prefix)).await;
    let classes: String = order.iter().map(|e| if e.high { 'H' } else { 'N' }).collect();
    assert_eq!(&classes[..25], "HHHHNHHHHNHHHHNHHHHNHHHHN", "{classes}");
    assert!(classes[25..].chars().all(|c| c == 'N'));
    assert_eq!(order.len(), 120);
}

/// Acceptance C7 (line level): with no new arrivals, every job's reported position equals the
/// number of jobs dispatched before it, plus one — across users, both classes and a streak in
/// progress.
#[tokio::test]
async fn positions_equal_the_dispatch_order() {
    let (l, prefix) = limiter(unlimited()).await;
    let o = opts(&prefix);
    // A deterministic mix: 5 users of uneven weight, one job in 3 high.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut jobs = Vec::new();
    for seq in 1..=300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let user = format!("u{}", [0, 0, 0, 1, 1, 2, 3, 4][(x % 8) as usize]);
        let e = job(seq, &user, x % 3 == 0);
        l.enqueue(&e, None).await.expect("enqueue");
        jobs.push(e);
        // Dispatch some while others arrive, so virtual time and the streak are mid-flight.
        if seq % 10 == 0 {
            for _ in 0..2 {
                l.dispatch(&o, false).await.expect("dispatch");
            }
        }
    }
    let mut reported = std::collections::HashMap::new();
    for e in &jobs {
        if let LinePlace::Queued(p) = l.position(e, BURST).await.expect("position") {
            reported.insert(e.job.clone(), p);
        }
    }
    assert!(reported.len() > 200, "most jobs are still queued");
    // All of them in one look: the same places, the dispatched ones included.
    let each: Vec<LinePlace> = {
        let mut v = Vec::new();
        for e in &jobs {
            v.push(l.position(e, BURST).await.expect("position"));
        }
        v
    };
    assert_eq!(l.positions(&jobs, BURST).await.expect("positions"), each);
    assert!(each.len() > reported.len(), "the dispatched ones are among them");
    assert!(l.positions(&[], BURST).await.expect("none").is_empty());
    let highs_left = jobs.iter().filter(|e| e.high && reported.contains_key(&e.job)).count();
    assert!(highs_left > 20, "both classes are deep enough to interleave: {highs_left} highs");
    let order = drain(&l, &o).await;
    assert_eq!(order.len(), reported.len());
    for (i, e) in order.iter().enumerate() {
        assert_eq!(reported[&e.job], i as u64 + 1, "{} reported {} but went #{}", e.job, reported[&e.job], i + 1);
    }
}

/// A scheduled job waits outside the line (position 0), says when it is due, then joins.
#[tokio::test]
async fn scheduled_jobs_join_the_line_when_due() {
    let (l, prefix) = limiter(unlimited()).await;
    let o = opts(&prefix);
    let e = job(1, "ana", false);
    let due = unix_ms() + 400;
    assert_eq!(l.enqueue(&e, Some(due)).await.expect("enqueue"), Enqueued::Scheduled);
    assert_eq!(l.position(&e, BURST).await.expect("position"), LinePlace::Scheduled);
    match l.dispatch(&o, false).await.expect("dispatch") {
        Dispatched::Empty { next_due: Some(d) } => assert!(d <= Duration::from_millis(400), "{d:?}"),
        other => panic!("unexpected {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(matches!(l.dispatch(&o, false).await.expect("dispatch"), Dispatched::Job { .. }));
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A dispatched job holds a slot until a worker claims it; a claim happens once; a failed handoff
/// puts the job back at the head and frees the slot; a canceled job leaves the line.
#[tokio::test]
async fn handoff_claim_undispatch_and_remove() {
    let (l, prefix) = limiter(vec![PoolKey { id: "k".into(), max_per_minute: 0, max_concurrent: 1 }]).await;
    let o = opts(&prefix);
    let (a, b, c) = (job(1, "ana", false), job(2, "ben", false), job(3, "cy", false));
    for e in [&a, &b, &c] {
        l.enqueue(e, None).await.expect("enqueue");
    }
    let Dispatched::Job { entry, tag, grant } = l.dispatch(&o, false).await.expect("dispatch") else {
        panic!("a dispatch")
    };
    assert_eq!(entry, a);
    assert_eq!(l.position(&a, BURST).await.expect("position"), LinePlace::Dispatched);
    assert_eq!(l.enqueue(&a, None).await.expect("enqueue"), Enqueued::AlreadyDispatched);
    // The one slot is taken.
    assert!(matches!(l.dispatch(&o, false).await.expect("dispatch"), Dispatched::NoSlot { .. }));

    l.undispatch(&entry, tag, &grant).await.expect("undispatch");
    assert_eq!(l.position(&a, BURST).await.expect("position"), LinePlace::Queued(1));
    let Dispatched::Job { entry, grant, .. } = l.dispatch(&o, false).await.expect("dispatch") else {
        panic!("a dispatch")
    };
    assert_eq!(entry, a, "back at the head of the line");
    let claimed = l.claim(&a.job).await.expect("claim").expect("a grant to claim");
    assert_eq!((claimed.key_id.as_str(), claimed.grant_id.as_str()), ("k", grant.grant_id.as_str()));
    assert_eq!(l.claim(&a.job).await.expect("claim"), None, "claimed once");
    assert_eq!(l.position(&a, BURST).await.expect("position"), LinePlace::Absent);

    assert!(l.remove(&b).await.expect("remove"));
    assert_eq!(l.position(&c, BURST).await.expect("position"), LinePlace::Queued(1));
    l.release("k", &a.job).await.expect("release");
    let Dispatched::Job { entry, .. } = l.dispatch(&o, false).await.expect("dispatch") else { panic!("a dispatch") };
    assert_eq!(entry, c);
}

/// The work queue stays short: no dispatch while `ahead` dispatched jobs wait for a worker.
#[tokio::test]
async fn dispatch_stops_while_workers_have_enough_ready() {
    let (l, prefix) = limiter(unlimited()).await;
    let o = DispatchOptions { ahead: 2, ..opts(&prefix) };
    l.enqueue(&job(1, "ana", false), None).await.expect("enqueue");
    let url = jewelshot_testkit::redis_url();
    let mut conn =
        redis::Client::open(url.as_str()).expect("url").get_multiplexed_async_connection().await.expect("redis");
    redis::cmd("RPUSH").arg(&o.ready_list).arg("x").arg("y").query_async::<i64>(&mut conn).await.expect("rpush");
    assert_eq!(l.dispatch(&o, false).await.expect("dispatch"), Dispatched::WorkersBusy);
    redis::cmd("LPOP").arg(&o.ready_list).query_async::<String>(&mut conn).await.expect("lpop");
    // A pushed task parked in the scheduled set (due now) waits for a worker too.
    redis::cmd("ZADD").arg(&o.scheduled_set).arg(1).arg("z").query_async::<i64>(&mut conn).await.expect("zadd");
    assert_eq!(l.dispatch(&o, false).await.expect("dispatch"), Dispatched::WorkersBusy);
    redis::cmd("ZREM").arg(&o.scheduled_set).arg("z").query_async::<i64>(&mut conn).await.expect("zrem");
    assert!(matches!(l.dispatch(&o, false).await.expect("dispatch"), Dispatched::Job { .. }));
}

/// The reconciler's question: which jobs does Redis hold nowhere? In line, scheduled, freshly
/// dispatched, or anywhere in the work queue counts as held; a dispatch whose handoff never
/// happened stops counting once its slot lease has passed.
#[tokio::test]
async fn absent_finds_what_redis_lost() {
    let url = jewelshot_testkit::redis_url();
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let conn = client.get_connection_manager().await.expect("redis");
    let prefix = format!("jewelshot-test:line:{}", ulid::Ulid::generate());
    let mut cfg = LimiterConfig::new(prefix.clone());
    cfg.lease = Duration::from_millis(300);
    let l = Limiter::new(conn, cfg, unlimited());
    let q = QueueKeys {
        ready: format!("{prefix}:q:ready"),
        scheduled: format!("{prefix}:q:scheduled"),
        workers: format!("{prefix}:q:workers"),
        inflight_prefix: format!("{prefix}:q:inflight"),
    };
    let jobs: Vec<LineEntry> = (1..=6).map(|i| job(i, "ana", false)).collect();
    l.enqueue(&jobs[0], None).await.expect("in line");
    l.enqueue(&jobs[1], Some(unix_ms() + 60_000)).await.expect("scheduled");
    l.enqueue(&jobs[2], None).await.expect("in line");
    // jobs[0] (the head) is dispatched: held while its lease runs.
    assert!(matches!(l.dispatch(&opts(&prefix), false).await.expect("dispatch"), Dispatched::Job { .. }));
    let mut c = client.get_multiplexed_async_connection().await.expect("redis");
    let inflight = format!("{prefix}:q:inflight:w1");
    redis::pipe()
        .rpush(&q.ready, &jobs[3].job)
        .zadd(&q.workers, "w1", 1)
        .sadd(&inflight, &jobs[4].job)
        .query_async::<()>(&mut c)
        .await
        .expect("work queue");
    let absent: Vec<String> = l.absent(&q, &jobs).await.expect("absent").into_iter().map(|e| e.job).collect();
    assert_eq!(absent, [jobs[5].job.clone()], "only the job held nowhere");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let absent: Vec<String> = l.absent(&q, &jobs).await.expect("absent").into_iter().map(|e| e.job).collect();
    assert_eq!(absent, [jobs[0].job.clone(), jobs[5].job.clone()], "a handoff that never happened");
    assert_eq!(l.enqueue(&jobs[0], None).await.expect("re-line"), Enqueued::InLine);
}

fn record(job: &str, rev: i64, data: &str, entry: Option<LineEntry>) -> jewelshot_ratelimit::JobRecord {
    jewelshot_ratelimit::JobRecord {
        job: job.into(),
        rev,
        data: data.as_bytes().to_vec(),
        entry,
        ttl: Duration::from_secs(60),
    }
}

/// A job's record (its poll snapshot) beside the line: an older revision never replaces a newer
/// one, and one read gives the record with the job's place while it waits.
#[tokio::test]
async fn records_keep_the_newest_revision_and_read_with_their_place() {
    let (l, prefix) = limiter(unlimited()).await;
    let o = opts(&prefix);
    assert_eq!(l.read_record("job-9", BURST).await.expect("read"), None, "no record yet");

    // Submitted: in line, record written and place read, one script.
    let first = job(1, "ana", false);
    let second = job(2, "ana", false);
    let (queued, place) =
        l.submit(&first, None, &record("job-1", 1, "v1", Some(first.clone())), BURST).await.expect("submit");
    assert_eq!((queued, place), (Enqueued::InLine, LinePlace::Queued(1)));
    l.submit(&second, None, &record("job-2", 1, "w1", Some(second.clone())), BURST).await.expect("submit");
    assert_eq!(l.read_record("job-2", BURST).await.expect("read"), Some((b"w1".to_vec(), Some(LinePlace::Queued(2)))));

    // Writers race: rev 3 lands, then a late rev 2 is ignored; an equal revision rewrites.
    let written = l
        .write_records(&[record("job-1", 3, "v3", None), record("job-1", 2, "v2", Some(first.clone()))])
        .await
        .expect("write");
    assert_eq!(written, 1, "only the newer of the two is kept");
    assert_eq!(l.read_record("job-1", BURST).await.expect("read"), Some((b"v3".to_vec(), None)), "no line entry");
    assert_eq!(l.write_records(&[record("job-1", 3, "v3", None)]).await.expect("write"), 1);

    // The place follows the line: job-1 dispatched, job-2 goes from 2nd to "starting".
    assert!(matches!(l.dispatch(&o, false).await.expect("dispatch"), Dispatched::Job { .. }));
    assert_eq!(l.read_record("job-2", BURST).await.expect("read").and_then(|r| r.1), Some(LinePlace::Queued(1)));
    assert!(matches!(l.dispatch(&o, false).await.expect("dispatch"), Dispatched::Job { .. }));
    assert_eq!(l.read_record("job-2", BURST).await.expect("read").and_then(|r| r.1), Some(LinePlace::Dispatched));

    // A pipeline of scripts survives Redis forgetting them (SCRIPT FLUSH: a restart, a failover).
    let url = jewelshot_testkit::redis_url();
    let mut raw =
        redis::Client::open(url.as_str()).expect("url").get_multiplexed_async_connection().await.expect("redis");
    redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut raw).await.expect("flush scripts");
    assert_eq!(l.write_records(&[record("job-1", 4, "v4", None)]).await.expect("write after flush"), 1);

    // Renewed records live on; dropped ones are gone.
    l.touch_records(&["job-1".into()], Duration::from_secs(600)).await.expect("touch");
    let ttl: i64 = redis::cmd("PTTL").arg(l.record_key("job-1")).query_async(&mut raw).await.expect("pttl");
    assert!(ttl > 60_000, "renewed past its first 60 s: {ttl} ms");
    l.drop_record("job-1").await.expect("drop");
    assert_eq!(l.read_record("job-1", BURST).await.expect("read"), None);
}

/// An invalidated record serves nothing, and only a newer revision may bring it back: a write
/// from a read made before the change cannot restore the old state.
#[tokio::test]
async fn an_invalidated_record_takes_only_newer_revisions() {
    let (l, _) = limiter(unlimited()).await;
    l.write_records(&[record("job-7", 5, "before", None)]).await.expect("write");
    l.invalidate_record("job-7").await.expect("invalidate");
    assert_eq!(l.read_record("job-7", BURST).await.expect("read"), None, "nothing served");
    assert_eq!(l.write_records(&[record("job-7", 5, "stale", None)]).await.expect("write"), 0, "equal refused");
    assert_eq!(l.write_records(&[record("job-7", 4, "older", None)]).await.expect("write"), 0, "older refused");
    assert_eq!(l.write_records(&[record("job-7", 6, "after", None)]).await.expect("write"), 1, "newer kept");
    assert_eq!(l.read_record("job-7", BURST).await.expect("read"), Some((b"after".to_vec(), None)));
    // Back to the ordinary rule: an equal revision rewrites again.
    assert_eq!(l.write_records(&[record("job-7", 6, "after", None)]).await.expect("write"), 1);
    // Invalidating a record that does not exist leaves nothing behind.
    l.invalidate_record("job-8").await.expect("invalidate");
    assert_eq!(l.write_records(&[record("job-8", 1, "first", None)]).await.expect("write"), 1);
}

/// ETAs' mean generation time: per-minute sums over the window, whatever the rate of jobs.
#[tokio::test]
async fn the_mean_generation_time_is_kept_per_minute() {
    let (l, _) = limiter(unlimited()).await;
    let hour = Duration::from_secs(3600);
    assert_eq!(l.mean_generation(hour).await.expect("mean"), None, "none recorded yet");
    for secs in [20.0, 30.0, 40.0, 50.0] {
        l.record_generation(Duration::from_secs_f64(secs), hour).await.expect("record");
    }
    let mean = l.mean_generation(hour).await.expect("mean").expect("some");
    assert!((mean - 35.0).abs() < 1e-6, "{mean}");
}
