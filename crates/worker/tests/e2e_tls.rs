//! Issue H ("managed services as they really are"): TLS to Postgres and Redis. A Postgres and a
//! Redis of the test's own serve a certificate from a CA of its own; the gateway and the worker
//! get `sslmode=require` and `rediss://` URLs and trust the CA through `SSL_CERT_FILE`, as they
//! would a managed service's. A job runs end to end, every connection the processes hold to
//! Postgres is encrypted (pg_stat_ssl), and a client that does not trust the CA is refused.

use std::time::Duration;

use jewelshot_db::{Db, DbConfig};
use jewelshot_testkit::{Stack, StackOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_job_runs_with_postgres_and_redis_reached_over_verified_tls() {
    let mut stack = Stack::start(StackOptions { tls: true, ..StackOptions::default() }).await.expect("stack");
    stack.start_worker().expect("worker");
    let (_, key, _) = stack.user("tls@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("upload");
    let (status, body) =
        stack.submit(&key, &json!({"imageUrl": input, "prompt": "enhance lighting"})).await.expect("submit");
    assert_eq!(status, 202, "{body}");
    let id = body["jobId"].as_str().expect("job id").to_owned();
    let done = stack.wait_final(&key, &id, Duration::from_secs(60)).await.expect("final");
    assert_eq!(done["status"], "complete", "{done}");

    let tls = stack.tls.as_ref().expect("a TLS stack");
    // The processes only have the TLS port's rediss:// URL: the job went through Redis over TLS.
    assert!(tls.redis_url.starts_with("rediss://"));
    let (admin, conn) = tokio_postgres::connect(&tls.postgres.admin_url, tokio_postgres::NoTls).await.expect("admin");
    tokio::spawn(conn);
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*), min(s.version)
               FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
              WHERE a.application_name = 'jewelshot-tls'",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let (encrypted, all, version): (i64, i64, Option<String>) = (row.get(0), row.get(1), row.get(2));
    assert!(all >= 2, "the gateway and the worker hold connections ({all})");
    assert_eq!(encrypted, all, "every connection of the processes is encrypted ({version:?})");
    assert!(version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")), "{version:?}");

    // This test process does not trust the CA (no SSL_CERT_FILE): it is refused by both.
    let cfg = DbConfig { url: tls.database_url.clone(), max_connections: 1, ..Default::default() };
    let refused = match Db::connect(&cfg) {
        Ok(untrusted) => untrusted.ping().await.is_err(),
        Err(_) => true, // no trusted roots at all on this machine: refused before connecting
    };
    assert!(refused, "a certificate from an unknown CA must not be accepted");
    let redis = redis::Client::open(tls.redis_url.as_str()).expect("client");
    let refused = tokio::time::timeout(Duration::from_secs(5), redis.get_multiplexed_async_connection()).await;
    assert!(matches!(refused, Ok(Err(_))), "Redis over TLS with an unknown CA must fail");
}
