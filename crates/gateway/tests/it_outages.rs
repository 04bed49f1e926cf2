//! The gateway while PostgreSQL is down (a server of the test's own, crashed and started again):
//! submits get 503 with `Retry-After` and a stable code, nothing is half-written, polls of known
//! jobs are still answered (from their Redis snapshots), and it heals by itself.

mod common;

use std::time::{Duration, Instant};

use common::Api;
use serde_json::{json, Value};

fn edit() -> Value {
    json!({ "image_url": "https://cdn.example.com/ring.jpg", "prompt": "white background" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_answers_503_while_postgres_is_down_and_heals() {
    let logs = tempfile::tempdir().expect("tempdir");
    let mut pg = jewelshot_testkit::PgServer::start(logs.path()).await.expect("a PostgreSQL of the test's own");
    let api = Api::start_on(&pg.admin_url, |_| {}).await;
    let key = api.key("pg@example.com").await;
    let (s, first) = api.submit(&key, edit()).await;
    assert_eq!(s, 202, "{first}");

    pg.crash();
    let r =
        api.http.post(format!("{}/api/ai/edit", api.base)).bearer_auth(&key).json(&edit()).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 503);
    let retry: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("Retry-After in seconds");
    assert!(retry >= 1);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "database-unavailable", "{body}");
    // Polls need no Postgres: a client keeps seeing its job (and its place) through the outage.
    let id = first["jobId"].as_str().expect("id");
    let (s, polled) = api.call(reqwest::Method::GET, &format!("/api/jobs/{id}"), Some(&key)).await;
    assert_eq!(
        (s, polled["status"].as_str(), polled["queuePosition"].as_i64()),
        (200, Some("queued"), Some(1)),
        "{polled}"
    );
    // A job Redis holds no snapshot of needs Postgres: 503, not a wrong answer.
    api.line.drop_record(id).await.expect("drop the snapshot");
    let (s, polled) = api.call(reqwest::Method::GET, &format!("/api/jobs/{id}"), Some(&key)).await;
    assert_eq!((s, polled["error"]["code"].as_str()), (503, Some("database-unavailable")), "{polled}");

    pg.start_again().await.expect("postgres back");
    let back = Instant::now();
    let second = loop {
        let (s, b) = api.submit(&key, edit()).await;
        if s == 202 {
            break b;
        }
        assert_eq!(s, 503, "only 503 while the pool heals: {b}");
        assert!(back.elapsed() < Duration::from_secs(15), "the gateway did not heal: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("the gateway answered 202 again {} ms after PostgreSQL returned", back.elapsed().as_millis());

    // Nothing half-written: the accepted jobs, and only they, are recorded and in line.
    let (client, conn) = tokio_postgres::connect(&api.db.direct_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    let rows: i64 = client.query_one("SELECT count(*) FROM jobs", &[]).await.expect("count").get(0);
    assert_eq!(rows, 2, "the refused submissions left no row");
    assert_eq!(api.in_line().await, 2, "and no place in line");
    assert_eq!(second["queuePosition"], 2, "{second}");
}
