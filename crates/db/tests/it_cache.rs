//! The result cache's SQL (V12, V13) under the races the services meet: two jobs joining one key
//! at once (one leader, one sharer — never two fal requests), and how a finished request settles
//! the jobs sharing it.

use std::time::Duration;

use jewelshot_db::cache::{Joined, SettledAs};
use jewelshot_testkit::db::fresh_database;

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

async fn insert_job(c: &tokio_postgres::Client, id: &str, user: &str) {
    c.execute(
        "INSERT INTO jobs (id, user_id, status, prompt, input_url, max_attempts) VALUES ($1, $2, 'queued', 'p', 'u', 3)",
        &[&id, &user],
    )
    .await
    .expect("insert job");
}

/// Two new jobs meeting `key`: the first owns the request, the second shares it.
async fn owner_and_sharer(
    db: &jewelshot_db::Db,
    c: &tokio_postgres::Client,
    user: &str,
    key: &str,
) -> (jewelshot_domain::JobId, jewelshot_domain::JobId) {
    let (owner, sharer) = (jewelshot_domain::JobId::generate(), jewelshot_domain::JobId::generate());
    for id in [owner, sharer] {
        insert_job(c, &id.to_string(), user).await;
    }
    assert!(matches!(db.cache_join(owner, key).await.expect("join"), Joined::Leader));
    assert!(matches!(db.cache_join(sharer, key).await.expect("join"), Joined::Shared));
    (owner, sharer)
}

/// A join that waited for another transaction's new entry must see that transaction's job as
/// alive once it commits, and share its request (a STABLE staleness check would read with the
/// waiting statement's old snapshot, take the entry over, and make two fal requests).
#[tokio::test]
async fn it_a_join_that_waited_on_a_new_entry_shares_it() {
    let test = fresh_database().await.expect("database");
    let user = test.db.create_user("ana@example.com", "free").await.expect("user").id.to_string();
    let (a, b) = (client(&test.direct_url).await, client(&test.direct_url).await);
    a.batch_execute("BEGIN").await.expect("begin");
    insert_job(&a, "job-a", &user).await;
    let first: String = a.query_one("SELECT jewelshot_cache_join('job-a', 'k')", &[]).await.expect("join").get(0);
    assert_eq!(first, "leader");
    let second = tokio::spawn(async move {
        insert_job(&b, "job-b", &user).await;
        let row = b.query_one("SELECT jewelshot_cache_join('job-b', 'k')", &[]).await.expect("join");
        row.get::<_, String>(0)
    });
    // b's insert of the entry waits on a's uncommitted one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second join waits for the first's transaction");
    a.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(second.await.expect("second join"), "shared");
    let c = client(&test.direct_url).await;
    let owner: String =
        c.query_one("SELECT job_id FROM result_cache WHERE key = 'k'", &[]).await.expect("entry").get(0);
    assert_eq!(owner, "job-a");
    let shares: Option<String> =
        c.query_one("SELECT shares_job FROM jobs WHERE id = 'job-b'", &[]).await.expect("job").get(0);
    assert_eq!(shares.as_deref(), Some("job-a"));
}

/// A finished request completes its sharers from its own stored image; a canceled one hands
/// the request to the oldest sharer and the rest now share that one's; a second settle changes
/// nothing.
#[tokio::test]
async fn it_settling_completes_or_hands_over_the_sharers() {
    let test = fresh_database().await.expect("database");
    let db = &test.db;
    let user = db.create_user("ben@example.com", "free").await.expect("user").id.to_string();
    let c = client(&test.direct_url).await;
    let ids: Vec<jewelshot_domain::JobId> = (0..6).map(|_| jewelshot_domain::JobId::generate()).collect();
    for id in &ids {
        insert_job(&c, &id.to_string(), &user).await;
    }
    let (done_leader, canceled_leader) = (ids[0], ids[3]);
    for (i, id) in ids.iter().enumerate() {
        let key = if i < 3 { "k1" } else { "k2" };
        let joined = db.cache_join(*id, key).await.expect("join");
        match i {
            0 | 3 => assert!(matches!(joined, Joined::Leader), "{joined:?}"),
            _ => assert!(matches!(joined, Joined::Shared), "{joined:?}"),
        }
    }
    // The first request completes with its image.
    c.execute(
        "UPDATE jobs SET status = 'complete', result_key = 'results/x.jpg', result_url = 'http://f/x.jpg' WHERE id = $1",
        &[&done_leader.to_string()],
    )
    .await
    .expect("complete");
    c.execute(
        "INSERT INTO gallery_images (id, user_id, job_id, storage_key, url, content_type, bytes)
         VALUES ('g1', $1, $2, 'results/x.jpg', 'http://f/x.jpg', 'image/jpeg', 10)",
        &[&user, &done_leader.to_string()],
    )
    .await
    .expect("gallery");
    let settled = db.cache_settle(done_leader, Duration::from_secs(60)).await.expect("settle");
    assert_eq!(settled.len(), 2, "{settled:?}");
    assert!(settled.iter().all(|s| s.outcome == SettledAs::Complete), "{settled:?}");
    assert!(db.cache_settle(done_leader, Duration::from_secs(60)).await.expect("again").is_empty());
    for id in &ids[1..3] {
        let job = db.job(*id).await.expect("read").expect("job");
        assert!(job.cached && job.result_key.as_deref() == Some("results/x.jpg"), "{job:?}");
    }
    // Three gallery entries — the leader's row and the sharers' own jobs (V13) — one object.
    let user_id: jewelshot_domain::UserId = user.parse().expect("user id");
    let gallery = db.list_gallery(user_id, None, 10).await.expect("gallery");
    assert_eq!(gallery.len(), 3, "{gallery:?}");
    assert!(gallery.iter().all(|g| g.storage_key == "results/x.jpg" && g.content_type == "image/jpeg"), "{gallery:?}");
    assert_eq!(
        gallery.iter().filter(|g| g.job_id.as_deref() == Some(g.id.as_str())).count(),
        2,
        "a sharer's entry is its job: {gallery:?}"
    );
    assert_eq!(db.gallery_count_for_job(ids[1]).await.expect("count"), 1);
    let rows: i64 =
        c.query_one("SELECT count(*) FROM gallery_images WHERE user_id = $1", &[&user]).await.expect("rows").get(0);
    assert_eq!(rows, 1, "completing from the cache writes no gallery row");

    // The second request's job is canceled: its oldest sharer takes the request over.
    c.execute("UPDATE jobs SET status = 'canceled' WHERE id = $1", &[&canceled_leader.to_string()])
        .await
        .expect("cancel");
    let settled = db.cache_settle(canceled_leader, Duration::from_secs(60)).await.expect("settle");
    assert_eq!(settled.iter().map(|s| (s.job, s.outcome)).collect::<Vec<_>>(), vec![(ids[4], SettledAs::Promoted)]);
    let last = db.job(ids[5]).await.expect("read").expect("job");
    assert_eq!(last.shares_job, Some(ids[4]), "the rest share the new owner's request");
    assert!(matches!(db.cache_join(ids[4], "k2").await.expect("join"), Joined::Leader), "it owns the entry");

    // A request's job that was itself completed from the cache (a worker met a ready entry on a
    // later attempt) settles its sharers from the image it carries.
    let (owner, sharer) = owner_and_sharer(db, &c, &user, "k3").await;
    c.execute(
        "UPDATE jobs SET status = 'complete', cached = true, gallery_entry = true, result_key = 'results/y.jpg',
                result_url = 'http://f/y.jpg', result_content_type = 'image/webp', result_bytes = 7 WHERE id = $1",
        &[&owner.to_string()],
    )
    .await
    .expect("cached");
    let settled = db.cache_settle(owner, Duration::from_secs(60)).await.expect("settle");
    assert_eq!(settled.iter().map(|s| (s.job, s.outcome)).collect::<Vec<_>>(), vec![(sharer, SettledAs::Complete)]);
    let gallery = db.list_gallery(user_id, None, 100).await.expect("gallery");
    let entry = gallery.iter().find(|g| g.id == sharer.to_string()).expect("the sharer's own entry");
    assert_eq!(
        (entry.job_id.as_deref(), entry.storage_key.as_str(), entry.content_type.as_str(), entry.bytes),
        (Some(sharer.to_string().as_str()), "results/y.jpg", "image/webp", 7),
    );
    let ids: Vec<&str> = gallery.iter().map(|g| g.id.as_str()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first across both sources: {ids:?}");

    // The same, but its owner deleted that entry (its object may be on its way out): the sharer
    // takes the request over instead.
    let (owner, sharer) = owner_and_sharer(db, &c, &user, "k4").await;
    c.execute(
        "UPDATE jobs SET status = 'complete', cached = true, gallery_entry = false, result_key = 'results/z.jpg',
                result_url = 'http://f/z.jpg' WHERE id = $1",
        &[&owner.to_string()],
    )
    .await
    .expect("cached, entry deleted");
    let settled = db.cache_settle(owner, Duration::from_secs(60)).await.expect("settle");
    assert_eq!(settled.iter().map(|s| (s.job, s.outcome)).collect::<Vec<_>>(), vec![(sharer, SettledAs::Promoted)]);
}

/// Upkeep: expired entries go, then the oldest beyond the bound; an evicted result's object is
/// tombstoned only when no gallery entry (a row, or a hit's job) refers to it, and deleted
/// (claimed) only once due and still unreferenced.
#[tokio::test]
async fn it_eviction_bounds_the_cache_and_never_orphans_a_gallery() {
    let test = fresh_database().await.expect("database");
    let db = &test.db;
    let user = db.create_user("cy@example.com", "free").await.expect("user").id.to_string();
    let c = client(&test.direct_url).await;
    for (key, object, age_secs, ttl_secs) in [
        ("old", "results/old.jpg", 300, 3600),
        ("mid", "results/mid.jpg", 200, 3600),
        ("new", "results/new.jpg", 100, 3600),
        ("dead", "results/dead.jpg", 50, 10),
    ] {
        c.execute(
            "INSERT INTO result_cache (key, job_id, storage_key, url, content_type, bytes, ready_at, expires_at)
             VALUES ($1, 'j', $2, 'u', 'image/jpeg', 1, now() - make_interval(secs => $3),
                     now() - make_interval(secs => $3) + make_interval(secs => $4))",
            &[&key, &object, &f64::from(age_secs), &f64::from(ttl_secs)],
        )
        .await
        .expect("entry");
    }
    // A gallery still shows "mid": its object must outlive the entry.
    c.execute(
        "INSERT INTO gallery_images (id, user_id, storage_key, url, content_type, bytes) VALUES ('g', $1, 'results/mid.jpg', 'u', 'image/jpeg', 1)",
        &[&user],
    )
    .await
    .expect("gallery");
    let evicted = db.cache_evict(1, 100).await.expect("evict");
    assert_eq!((evicted.expired, evicted.over_capacity), (1, 2), "{evicted:?}");
    let left: Vec<String> =
        c.query("SELECT key FROM result_cache", &[]).await.expect("left").iter().map(|r| r.get(0)).collect();
    assert_eq!(left, vec!["new".to_owned()], "the newest entry stays");
    let tombstoned: Vec<String> = c
        .query("SELECT storage_key FROM object_tombstones ORDER BY 1", &[])
        .await
        .expect("tombstones")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tombstoned,
        vec!["results/dead.jpg".to_owned(), "results/old.jpg".to_owned()],
        "not mid: a gallery shows it"
    );
    assert!(db.due_orphans(10).await.expect("due").is_empty(), "nothing is due before its grace period");
    c.execute("UPDATE object_tombstones SET due_at = now()", &[]).await.expect("make due");
    // A hit that read "old" before it went committed meanwhile: its job is a gallery entry
    // showing the object (V13), which keeps it.
    c.execute(
        "INSERT INTO jobs (id, user_id, status, prompt, input_url, max_attempts, cached, gallery_entry, result_key)
         VALUES ('h', $1, 'complete', 'p', 'u', 3, true, true, 'results/old.jpg')",
        &[&user],
    )
    .await
    .expect("late hit");
    assert_eq!(db.due_orphans(10).await.expect("due"), vec!["results/dead.jpg".to_owned()]);
    assert!(db.due_orphans(10).await.expect("due").is_empty(), "each claimed once");
}
