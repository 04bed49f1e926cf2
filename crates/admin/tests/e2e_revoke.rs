//! F acceptance 7 (and G's cache): a revoked key and an expired `/files` URL are refused on every
//! gateway — two gateway processes over one database; a key revoked with the CLI is refused at
//! once (announced through Redis), one revoked behind their backs within the cache lifetime.

mod common;

use std::time::{Duration, Instant};

use common::jewelshot;
use jewelshot_storage::local::UrlSigner;
use jewelshot_testkit::{Stack, StackOptions};

async fn status(http: &reqwest::Client, url: &str, key: Option<&str>) -> u16 {
    let mut req = http.get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// How long until every gateway refuses `key` with 401 (at most `within`).
async fn refused_everywhere(http: &reqwest::Client, gateways: &[String], key: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for g in gateways {
            all &= status(http, &format!("{g}/api/jobs"), Some(key)).await == 401;
        }
        if all || start.elapsed() > within {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_revoked_key_and_an_expired_file_url_are_refused_on_every_gateway() {
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let second = stack.start_gateway().expect("second gateway");
    let gateways = [stack.gateway_url().to_owned(), second];
    let (_, key, _) = stack.user("revoke@example.com").await.expect("user");
    let (_, other, _) = stack.user("stays@example.com").await.expect("user");
    for g in &gateways {
        assert_eq!(status(&stack.http, &format!("{g}/api/jobs"), Some(&key)).await, 200, "{g}");
    }

    // A file URL signed by one gateway serves on the other (one key), and not once it expired.
    let photo = stack.input_photo_url(&key).await.expect("upload");
    let path = photo.split_once("/files/").map(|(_, p)| p.split('?').next().unwrap_or(p).to_owned()).expect("path");
    let signer = UrlSigner::new(&stack.storage.local);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    for g in &gateways {
        let fresh = format!("{g}/files/{path}?{}", signer.query_until(&path, now + 120));
        assert_eq!(status(&stack.http, &fresh, None).await, 200, "{fresh}");
        let expired = format!("{g}/files/{path}?{}", signer.query_until(&path, now - 1));
        assert_eq!(status(&stack.http, &expired, None).await, 403, "{expired}");
    }

    let (ok, out) = jewelshot(&stack, &["keys", "revoke", &key]);
    assert!(ok, "{out}");
    let took = refused_everywhere(&stack.http, &gateways, &key, Duration::from_secs(10)).await;
    for g in &gateways {
        assert_eq!(status(&stack.http, &format!("{g}/api/jobs"), Some(&key)).await, 401, "{g} still takes it");
        assert_eq!(status(&stack.http, &format!("{g}/api/jobs"), Some(&other)).await, 200, "{g}: another key");
    }
    // The gateways cache keys (auth_cache_ttl_ms, 5 s) and the CLI's announcement made them
    // drop it at once.
    assert!(took < Duration::from_secs(2), "refused everywhere after {took:?}");

    // A key revoked behind the gateways' backs (no announcement) is still served from their
    // caches — a poll asks Postgres nothing about it — and refused once the lifetime ends.
    let revoked = stack.db.db.revoke_api_key(&other).await.expect("revoke").expect("a key");
    assert!(revoked.revoked_at.is_some());
    for g in &gateways {
        assert_eq!(status(&stack.http, &format!("{g}/api/jobs"), Some(&other)).await, 200, "{g}: cached");
    }
    let took = refused_everywhere(&stack.http, &gateways, &other, Duration::from_secs(10)).await;
    assert!(took <= Duration::from_millis(5_500), "refused everywhere within the cache lifetime: {took:?}");
    for g in &gateways {
        assert_eq!(status(&stack.http, &format!("{g}/api/jobs"), Some(&other)).await, 401, "{g}");
    }
}
