//! The record's statements, run both ways a process may reach Postgres (`JEWELSHOT_DATABASE__
//! POOLER`): prepared once per connection, or one-round-trip unnamed statements behind a
//! transaction pooler. Every test here runs in both modes.

use std::sync::{Arc, Mutex};

use chrono::Utc;
use jewelshot_db::{
    deliveries::{AttemptEnd, NewDelivery},
    jobs::{Begun, CancelOutcome, Inserted, Submission},
    snapshot::ChangeSink,
    sql::Pooler,
    Db, DbConfig, DbError,
};
use jewelshot_domain::{
    edit::WebhookPolicy, DeliveryState, EditRequest, JobId, JobStatus, NewEdit, StepName, StepStatus, UserId,
};
use jewelshot_testkit::db::fresh_database;

const MODES: [Pooler; 2] = [Pooler::None, Pooler::Transaction];

/// Where `mode` connects: prepared statements need the database itself; unnamed ones also go
/// through the test run's PgBouncer when there is one (`just test-pooler`).
fn url_for(test: &jewelshot_testkit::db::TestDb, mode: Pooler) -> String {
    match mode {
        Pooler::None => test.direct_url.clone(),
        Pooler::Transaction => test.url.clone(),
    }
}

/// A handle on a fresh database in `mode`, over one connection (so what it prepared is seen).
async fn db_in(mode: Pooler) -> (Db, jewelshot_testkit::db::TestDb) {
    let test = fresh_database().await.expect("database");
    let cfg = DbConfig { url: url_for(&test, mode), max_connections: 1, pooler: mode, ..Default::default() };
    let db = Db::connect(&cfg).expect("pool").with_keyring(test.db.keyring().clone());
    (db, test)
}

fn edit(prompt: &str, webhook: bool) -> NewEdit {
    let raw = EditRequest {
        image_url: Some("https://example.com/ring.jpg".into()),
        prompt: Some(prompt.into()),
        webhook_url: webhook.then(|| "https://hooks.example.com/x".into()),
        ..Default::default()
    };
    NewEdit::parse(raw, WebhookPolicy { allow_insecure: false }, Utc::now()).expect("valid edit")
}

/// Three attempts, a cap of `cap` and the idempotency key `key` for a request hashing to `hash`.
fn how<'a>(cap: i64, key: &'a str, hash: &'a str) -> Submission<'a> {
    Submission { max_attempts: 3, queued_cap: Some(cap), idempotency: Some((key, hash)), ..Default::default() }
}

async fn user(db: &Db) -> UserId {
    db.create_user(&format!("{}@example.com", ulid::Ulid::generate()), "free").await.expect("user").id
}

#[tokio::test]
async fn statements_are_prepared_once_per_connection_or_never_behind_a_transaction_pooler() {
    for mode in MODES {
        let (db, _test) = db_in(mode).await;
        let owner = user(&db).await;
        for i in 0..5 {
            // Without a cap the bare INSERT, with one the submit function.
            for cap in [None, Some(100)] {
                let id = JobId::generate();
                db.insert_job(id, owner, &edit(&format!("p{i}"), false), 3, cap).await.expect("insert");
                assert!(db.job_snapshot(id, Some(owner)).await.expect("snapshot").is_some());
            }
        }
        let prepared = db.prepared_statements().await.expect("prepared statements");
        let count = |needle: &str| prepared.iter().filter(|s| s.contains(needle)).count();
        let (inserts, submits, snapshots) =
            (count("INSERT INTO jobs"), count("jewelshot_submit"), count("snapshot_rev"));
        match mode {
            Pooler::None => {
                assert_eq!((inserts, submits, snapshots), (1, 1, 1), "each prepared once for five calls: {prepared:#?}")
            }
            Pooler::Transaction => assert!(prepared.is_empty(), "nothing prepared: {prepared:#?}"),
        }
    }
}

/// With `group_insert` (the default), plain submits that arrive together share statements (`group`), each caller gets its own
/// committed row, and a row that cannot be written (its user does not exist) fails alone.
#[tokio::test]
async fn concurrent_plain_submits_share_statements_and_a_bad_row_fails_alone() {
    for mode in MODES {
        let test = fresh_database().await.expect("database");
        let cfg = DbConfig {
            url: url_for(&test, mode),
            max_connections: 2,
            pooler: mode,
            group_insert: true,
            ..Default::default()
        };
        let db = Db::connect(&cfg).expect("pool");
        let owner = user(&db).await;
        let ghost = UserId::generate();
        let plain = Submission { max_attempts: 3, ..Default::default() };
        let submits = (0..200).map(|i| {
            let (db, plain) = (db.clone(), plain);
            let who = if i == 77 { ghost } else { owner };
            async move {
                let id = JobId::generate();
                (i, id, db.submit_job(id, who, &edit(&format!("p{i}"), i % 3 == 0), &plain).await)
            }
        });
        for (i, id, r) in futures::future::join_all(submits).await {
            match r {
                Err(DbError::Query(_)) if i == 77 => {}
                Ok(Inserted::New(job)) if i != 77 => {
                    assert_eq!((job.id, job.user_id, job.prompt.as_str()), (id, owner, format!("p{i}").as_str()));
                    assert_eq!(job.webhook_url.is_some(), i % 3 == 0, "{mode:?} {i}");
                    assert_eq!((job.status, job.max_attempts), (JobStatus::Queued, 3));
                }
                other => panic!("{mode:?} submit {i}: {:?}", other.map(|_| "a row")),
            }
        }
        let stored: i64 = test
            .client()
            .await
            .expect("client")
            .query_one("SELECT count(*) FROM jobs WHERE user_id = $1", &[&owner.to_string()])
            .await
            .expect("count")
            .get(0);
        assert_eq!(stored, 199, "{mode:?}");
        let (statements, rows) = db.group_inserts();
        assert_eq!(rows, 199, "{mode:?}");
        // Batches of up to 64, then the one that held the bad row again row by row.
        assert!(statements <= 80, "{mode:?}: {statements} statements for {rows} rows");
    }
}

/// A fault that is not one row's (here: no server at all) is every caller of the batch's
/// answer at once, as it would have been alone — not a retry storm of one statement per row.
#[tokio::test]
async fn a_batch_without_a_server_fails_all_its_callers_once() {
    let cfg = DbConfig {
        url: "postgres://postgres@127.0.0.1:1/nothing".into(),
        max_connections: 2,
        timeout_ms: 300,
        ..Default::default()
    };
    let db = Db::connect(&cfg).expect("pool");
    let plain = Submission { max_attempts: 3, ..Default::default() };
    let submits = (0..40).map(|i| {
        let db = db.clone();
        async move { db.submit_job(JobId::generate(), UserId::generate(), &edit(&format!("p{i}"), false), &plain).await }
    });
    for r in futures::future::join_all(submits).await {
        let e = r.expect_err("no server");
        assert!(e.is_unavailable(), "{e:?}");
        assert_eq!(e.code(), "database-unavailable");
    }
    let (statements, rows) = db.group_inserts();
    assert_eq!(rows, 0);
    // Two writers: a batch each (or a few), never one attempt per row.
    assert!(statements <= 10, "{statements} attempts for 40 submits");
}

/// The result cache's submits are grouped too, each kind in its own statement: recent hits
/// (completed from a stored entry; none written when the entry is gone) and lookups with an
/// upload's hash, where identical submits in one batch share one job's request as they do one
/// by one, and a stored result completes them at once.
#[tokio::test]
async fn concurrent_hits_and_cache_lookups_share_statements_and_keep_their_outcomes() {
    for mode in MODES {
        let test = fresh_database().await.expect("database");
        let cfg = DbConfig { url: url_for(&test, mode), max_connections: 2, pooler: mode, ..Default::default() };
        let db = Db::connect(&cfg).expect("pool");
        let owner = user(&db).await;
        let upload = format!("uploads/{owner}/ring.jpg");
        let c = test.client().await.expect("client");
        c.batch_execute(&format!(
            "INSERT INTO uploads (id, user_id, storage_key, content_type, bytes, original_bytes, width, height, content_sha256)
             VALUES ('up1', '{owner}', '{upload}', 'image/jpeg', 10, 10, 4, 4, 'abc');
             INSERT INTO jobs (id, user_id, status, prompt, input_url, max_attempts) VALUES ('maker', '{owner}', 'complete', 'p', 'u', 3);
             INSERT INTO result_cache (key, job_id, storage_key, url, content_type, bytes, width, height, ready_at, expires_at)
             VALUES ('stored:abc', 'maker', 'results/r.jpg', 'https://cdn.example.com/r.jpg', 'image/jpeg', 99, 8, 8,
                     now(), now() + interval '1 hour')"
        ))
        .await
        .expect("an upload and a stored result");
        let e = edit("white background", false);
        let looked_up = |basis: &'static str| {
            let (db, e, upload) = (db.clone(), e.clone(), upload.clone());
            async move {
                let how = Submission {
                    max_attempts: 3,
                    cache_basis: Some(basis),
                    input_key: Some(&upload),
                    ..Default::default()
                };
                db.submit_job(JobId::generate(), owner, &e, &how).await.expect("submit")
            }
        };
        let hit = |entry: &'static str| {
            let (db, e) = (db.clone(), e.clone());
            async move { db.submit_hit(JobId::generate(), owner, &e, 3, None, entry).await.expect("hit") }
        };
        let (hits, gone, fresh, stored) = futures::join!(
            futures::future::join_all((0..40).map(|_| hit("stored:abc"))),
            hit("nothing:abc"),
            futures::future::join_all((0..20).map(|_| looked_up("fresh"))),
            futures::future::join_all((0..10).map(|_| looked_up("stored"))),
        );
        for job in &hits {
            let job = job.as_ref().expect("a stored entry completes the submit");
            assert_eq!(
                (job.status, job.cached, job.result_key.as_deref()),
                (JobStatus::Complete, true, Some("results/r.jpg"))
            );
        }
        assert!(gone.is_none(), "{mode:?}: no row for an entry that is not there");
        let leaders: Vec<JobId> =
            fresh.iter().filter_map(|i| if let Inserted::New(j) = i { Some(j.id) } else { None }).collect();
        assert_eq!(leaders.len(), 1, "{mode:?}: one of the identical submits makes the request");
        for i in &fresh {
            match i {
                Inserted::New(_) => {}
                Inserted::Shared(j) => assert_eq!(j.shares_job, Some(leaders[0]), "{mode:?}"),
                other => panic!("{mode:?}: an identical submit shares the request, not {other:?}"),
            }
        }
        for i in &stored {
            assert!(matches!(i, Inserted::Cached(j) if j.status == JobStatus::Complete && j.cached), "{mode:?}: {i:?}");
        }
        let (statements, rows) = db.group_inserts();
        assert_eq!(rows, 70, "{mode:?}");
        assert!(statements <= 20, "{mode:?}: {statements} statements for {rows} rows");
        let written: i64 = c
            .query_one("SELECT count(*) FROM jobs WHERE user_id = $1 AND id <> 'maker'", &[&owner.to_string()])
            .await
            .expect("count")
            .get(0);
        assert_eq!(written, 70, "{mode:?}");
    }
}

#[tokio::test]
async fn submits_replay_their_key_and_respect_the_cap_in_one_statement() {
    for mode in MODES {
        let (db, _test) = db_in(mode).await;
        let owner = user(&db).await;
        let first = JobId::generate();
        let e = edit("enhance lighting", false);
        let Inserted::New(job) = db.submit_job(first, owner, &e, &how(2, "k1", "h1")).await.expect("submit") else {
            panic!("{mode:?}: a new key makes a job")
        };
        assert_eq!((job.id, job.status, job.rev), (first, JobStatus::Queued, 1));
        match db.submit_job(JobId::generate(), owner, &e, &how(2, "k1", "h1")).await.expect("replay") {
            Inserted::Existing { job, same_request: true } => assert_eq!(job.id, first),
            other => panic!("{mode:?}: the same key and request replay the first job, not {other:?}"),
        }
        match db.submit_job(JobId::generate(), owner, &e, &how(2, "k1", "other")).await.expect("reuse") {
            Inserted::Existing { job, same_request: false } => assert_eq!(job.id, first),
            other => panic!("{mode:?}: another request under the key is told so, not {other:?}"),
        }
        db.insert_job(JobId::generate(), owner, &e, 3, Some(2)).await.expect("second job");
        let refused = db.insert_job(JobId::generate(), owner, &e, 3, Some(2)).await;
        assert!(matches!(refused, Err(DbError::QueuedCapReached { cap: 2 })), "{mode:?}: {refused:?}");
        // The key of a refused submit is not taken, and a replay still answers at the cap.
        match db.submit_job(JobId::generate(), owner, &e, &how(2, "k1", "h1")).await.expect("replay") {
            Inserted::Existing { job, .. } => assert_eq!(job.id, first),
            other => panic!("{mode:?}: {other:?}"),
        }
        let listed = db.list_jobs(Some(owner), None, None, 10).await.expect("list");
        assert_eq!(listed.len(), 2, "{mode:?}: exactly the two jobs were written");
    }
}

#[tokio::test]
async fn a_submit_records_its_trace_by_either_statement_and_a_replay_keeps_the_first() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for mode in MODES {
        let (db, test) = db_in(mode).await;
        let owner = user(&db).await;
        let e = edit("white background", false);
        // The bare INSERT (no cap, no key) and the submit function (a key).
        let bare = Submission { max_attempts: 3, trace_parent: Some(tp), ..Default::default() };
        let keyed = Submission { idempotency: Some(("t1", "h")), ..bare };
        for how in [bare, keyed] {
            let Inserted::New(job) = db.submit_job(JobId::generate(), owner, &e, &how).await.expect("submit") else {
                panic!("{mode:?}: a new job")
            };
            assert_eq!(job.trace_parent.as_deref(), Some(tp), "{mode:?}: {how:?}");
            let read = db.job(job.id).await.expect("read").expect("row");
            assert_eq!(read.trace_parent.as_deref(), Some(tp), "{mode:?}: read back");
        }
        let replay =
            Submission { trace_parent: Some("00-11111111111111111111111111111111-2222222222222222-01"), ..keyed };
        match db.submit_job(JobId::generate(), owner, &e, &replay).await.expect("replay") {
            Inserted::Existing { job, .. } => assert_eq!(job.trace_parent.as_deref(), Some(tp), "{mode:?}"),
            other => panic!("{mode:?}: {other:?}"),
        }
        let untraced = db.insert_job(JobId::generate(), owner, &e, 3, None).await.expect("untraced");
        assert_eq!(untraced.trace_parent, None);
        // A gateway of the previous release calls the eleven-argument form during an upgrade.
        let old = test.client().await.expect("client");
        let row = old
            .query_one(
                "SELECT s.outcome, (s.job).trace_parent FROM jewelshot_submit($1, $2, 'normal', 'p', 'https://example.com/a.jpg',
                        NULL, NULL, 3, 5::bigint, NULL, NULL) s",
                &[&JobId::generate().to_string(), &owner.to_string()],
            )
            .await
            .expect("the previous release's call");
        assert_eq!((row.get::<_, String>(0), row.get::<_, Option<String>>(1)), ("new".to_owned(), None));
    }
}

/// Collects what the handle reports changed.
#[derive(Default)]
struct Seen(Mutex<Vec<JobId>>);

impl ChangeSink for Seen {
    fn changed(&self, jobs: &[JobId]) {
        self.0.lock().expect("lock").extend_from_slice(jobs);
    }
}

impl Seen {
    fn take(&self) -> Vec<JobId> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }
}

#[tokio::test]
async fn a_jobs_life_reports_every_change_and_its_snapshot_revision_only_grows() {
    for mode in MODES {
        let (db, _test) = db_in(mode).await;
        let seen = Arc::new(Seen::default());
        let db = db.with_changes(seen.clone());
        let owner = user(&db).await;
        let id = JobId::generate();
        let mut last = 0;
        let mut step = |what: &str, snap: &jewelshot_db::snapshot::JobSnapshot, seen: &Seen| {
            assert!(snap.rev > last, "{mode:?}: {what} raised the revision ({} after {last})", snap.rev);
            last = snap.rev;
            assert_eq!(seen.take(), vec![id], "{mode:?}: {what} was reported once");
        };
        let snap = |db: &Db| {
            let db = db.clone();
            async move { db.job_snapshot(id, None).await.expect("read").expect("exists") }
        };

        db.insert_job(id, owner, &edit("white background", true), 3, None).await.expect("insert");
        let s = snap(&db).await;
        assert_eq!(s.view.steps.iter().map(|s| s.status).collect::<Vec<_>>(), vec![StepStatus::Pending; 3]);
        step("submit", &s, &seen);

        let Begun::Started(_) = db.begin_attempt(id, "w1", std::time::Duration::from_secs(30)).await.expect("begin")
        else {
            panic!("{mode:?}: a queued job starts")
        };
        let s = snap(&db).await;
        assert_eq!((s.view.status, s.view.attempts), (JobStatus::Processing, 1));
        step("begin", &s, &seen);

        db.start_step(id, StepName::GenerateImage).await.expect("start");
        step("start generate", &snap(&db).await, &seen);
        db.complete_step(id, StepName::GenerateImage, &serde_json::json!({"url": "x"})).await.expect("complete");
        let s = snap(&db).await;
        assert_eq!(s.view.steps[0].status, StepStatus::Complete);
        assert!(s.view.steps[0].finished_at.is_some());
        step("complete generate", &s, &seen);

        db.complete_job(id, "results/u/j.jpg", "http://x/files/results/u/j.jpg").await.expect("complete job");
        let s = snap(&db).await;
        assert_eq!((s.view.status, s.result_key.as_deref()), (JobStatus::Complete, Some("results/u/j.jpg")));
        assert!(s.view.notification.is_none(), "{mode:?}: no delivery recorded yet");
        step("complete job", &s, &seen);

        let message = format!("msg_{id}");
        let d = NewDelivery {
            job_id: id,
            user_id: owner,
            message_id: &message,
            event: "job.completed",
            url: "https://hooks.example.com/x",
            max_attempts: 3,
        };
        db.enqueue_delivery(&d).await.expect("delivery");
        let s = snap(&db).await;
        assert_eq!(s.view.notification.as_ref().map(|n| n.state), Some(DeliveryState::Pending));
        step("delivery owed", &s, &seen);

        let claimed = db.claim_deliveries("w1", 10, 2, std::time::Duration::from_secs(60)).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        step("delivery claimed", &snap(&db).await, &seen);
        let end = AttemptEnd::Failed {
            code: "webhook-rejected",
            message: "no",
            retry_in: std::time::Duration::ZERO,
            permanent: false,
        };
        assert!(db.end_attempt(id, "w1", end).await.expect("end"));
        let s = snap(&db).await;
        let n = s.view.notification.clone().expect("notification");
        assert_eq!(
            (n.state, n.attempts, n.error.map(|e| e.code)),
            (DeliveryState::Pending, 1, Some("webhook-rejected".into()))
        );
        step("delivery failed once", &s, &seen);

        // Heartbeats and checkpoints change nothing a client sees: not reported.
        db.heartbeat("w1", &[id]).await.expect("heartbeat");
        assert!(seen.take().is_empty(), "{mode:?}: a heartbeat is not a change");

        let job = db.job(id).await.expect("job").expect("exists");
        db.fail_job(id, "x", "y").await.expect("no-op on a finished job");
        assert!(seen.take().is_empty(), "{mode:?}: a refused transition reports nothing");
        let requeued = db.requeue_job(&job, true).await.expect("requeue").expect("requeued");
        assert_eq!(requeued.status, JobStatus::Queued);
        let s = snap(&db).await;
        assert_eq!(
            s.view.steps.iter().map(|s| (s.status, s.attempts)).collect::<Vec<_>>(),
            vec![(StepStatus::Pending, 0); 3]
        );
        step("requeue from the start", &s, &seen);

        let CancelOutcome::Canceled(_) = db.cancel_job(id, Some(owner)).await.expect("cancel") else {
            panic!("{mode:?}: a queued job cancels")
        };
        assert_eq!(snap(&db).await.view.status, JobStatus::Canceled);
        step("cancel", &snap(&db).await, &seen);

        let other = user(&db).await;
        assert!(db.job_snapshot(id, Some(other)).await.expect("read").is_none(), "another user's job reads as none");
        let many = db.job_snapshots(&[id, JobId::generate()]).await.expect("batch");
        assert_eq!(many.len(), 1);
        assert_eq!(many[0], snap(&db).await, "{mode:?}: the batch read is the same snapshot");
    }
}

/// Retries of one submit racing each other (the client timed out and sent it again): exactly one
/// job, and every retry gets it — even when that job takes the user's last place under the cap.
#[tokio::test]
async fn concurrent_retries_of_one_key_get_the_first_job_even_at_the_cap() {
    for mode in MODES {
        let test = fresh_database().await.expect("database");
        let cfg = DbConfig { url: url_for(&test, mode), max_connections: 16, pooler: mode, ..Default::default() };
        let db = Db::connect(&cfg).expect("pool").with_keyring(test.db.keyring().clone());
        let owner = user(&db).await;
        let e = edit("one submit, sent many times", false);
        let tries = (0..16).map(|_| {
            let (db, e) = (db.clone(), e.clone());
            async move { db.submit_job(JobId::generate(), owner, &e, &how(1, "retry-key", "h")).await }
        });
        let mut ids = Vec::new();
        for outcome in futures::future::join_all(tries).await {
            match outcome {
                Ok(Inserted::New(job)) | Ok(Inserted::Existing { job, same_request: true }) => ids.push(job.id),
                other => panic!("{mode:?}: a retry must get the first job, not {other:?}"),
            }
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "{mode:?}: one job for all the retries");
        assert_eq!(db.list_jobs(Some(owner), None, None, 10).await.expect("list").len(), 1);
    }
}
