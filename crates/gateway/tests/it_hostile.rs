//! Attacks on the gateway (issue F), each sent as an attacker would.

mod common;

use common::Api;

/// A bearer token that cannot be a key (prefix, length, alphabet) is refused before any I/O:
/// with PostgreSQL unreachable it still gets 401, while a key-shaped unknown token needs the
/// database and gets 503 — so the first never reached it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_refuses_tokens_that_cannot_be_keys_without_touching_the_database() {
    let api = Api::start_with(|c| {
        c.database.url = "postgres://postgres@127.0.0.1:1/unreachable".into();
        c.database.timeout_ms = 300;
    })
    .await;
    let get = |token: String| {
        let req = api.http.get(format!("{}/api/jobs", api.base)).bearer_auth(token);
        async move { req.send().await.expect("send").status().as_u16() }
    };
    let shaped = format!("jsk_{}", "A".repeat(43));
    for junk in ["x".repeat(200), "jsk_short".into(), format!("{shaped}=="), format!("jsk_{}", "*".repeat(43))] {
        assert_eq!(get(junk.clone()).await, 401, "{junk}");
    }
    assert_eq!(get(shaped).await, 503, "a key-shaped token is looked up (and the database is down)");
}
