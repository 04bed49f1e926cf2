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

/// F acceptance 2, the part that is a count, not a time: a flood of malformed tokens (random
/// lengths and alphabets, JWT look-alikes, near-miss keys, 2,000 requests 50 at a time) reaches
/// Postgres with no statement at all. One key-shaped unknown token then does, so the count can
/// move (`just bench-flood` measures a real user's latency under the same flood).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_a_flood_of_malformed_tokens_costs_postgres_nothing() {
    use futures::StreamExt;
    let api = Api::start().await;
    let before = api.db.transactions().await.expect("stats");
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let alphabet: Vec<char> = "ABCabc012_-+/=.~ é💍\"".chars().collect();
    let tokens: Vec<String> = (0..2000)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 120) as usize + 1;
            let body: String = (0..len).map(|j| alphabet[((seed >> (j % 50)) as usize + j) % alphabet.len()]).collect();
            match i % 4 {
                0 => body,
                1 => format!("jsk_{body}"),
                2 => format!("eyJ{body}.eyJ{body}.{body}"),
                _ => format!("jsk_{}", "A".repeat(42 + (i % 3) * 2)),
            }
        })
        .collect();
    let statuses: Vec<u16> = futures::stream::iter(tokens)
        .map(|t| {
            let req = api.http.get(format!("{}/api/jobs", api.base)).header("authorization", format!("Bearer {t}"));
            async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    // Header values reqwest cannot send are not sent at all; every one sent is refused.
    assert!(statuses.iter().filter(|s| **s != 0).all(|s| *s == 401), "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 401).count() > 1500, "the flood was sent");
    let after = api.db.transactions().await.expect("stats");
    assert_eq!(after - before, 0, "Postgres saw statements for malformed tokens");
    let shaped = format!("jsk_{}", "B".repeat(43));
    assert_eq!(api.call(reqwest::Method::GET, "/api/jobs", Some(&shaped)).await.0, 401);
    assert!(api.db.transactions().await.expect("stats") > after, "a key-shaped token is looked up: the counter moves");
}

/// A request without a valid credential waits `refused_auth_delay_ms` for its 401, whatever
/// was wrong (no header, junk, an unknown key); a valid key is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_answers_refusals_late_and_real_users_at_once() {
    let api = Api::start_with(|c| c.limits.refused_auth_delay_ms = 300).await;
    let key = api.key("prompt@example.com").await;
    let timed = |token: Option<String>| {
        let mut req = api.http.get(format!("{}/api/jobs", api.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let t = std::time::Instant::now();
            let status = req.send().await.expect("send").status().as_u16();
            (status, t.elapsed())
        }
    };
    let wait = std::time::Duration::from_millis(300);
    for token in [None, Some("junk".to_owned()), Some(format!("jsk_{}", "C".repeat(43)))] {
        let (status, took) = timed(token.clone()).await;
        assert_eq!(status, 401, "{token:?}");
        assert!(took >= wait, "{token:?} answered after {took:?}");
    }
    let (status, took) = timed(Some(key)).await;
    assert_eq!(status, 200);
    assert!(took < wait, "a valid key waited {took:?}");
}

/// Open an upload whose body never finishes: headers and a promise of 100 kB, then 16 bytes.
async fn stalled_upload(base: &str, key: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/uploads HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         content-type: image/jpeg\r\ncontent-length: 100000\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.expect("head");
    sock.write_all(&[0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1]).await.expect("some");
    sock
}

/// The status line the server answers on a raw connection, within `within`.
async fn status_of(sock: &mut tokio::net::TcpStream, within: std::time::Duration) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(within, sock.read(&mut buf)).await.ok()?.ok()?;
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    line.split_whitespace().nth(1)?.parse().ok()
}

fn photo() -> Vec<u8> {
    std::fs::read(jewelshot_testkit::fixture_photo()).expect("photo")
}

/// Slow clients: a body that does not arrive within `body_timeout_ms` gets 408, and while it
/// trickles it holds one of its user's upload places — the next one is refused at once (429,
/// before reading) while other users upload as usual; the place frees when the slow one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_slow_uploads_time_out_and_hold_only_their_users_place() {
    let api = Api::start_with(|c| {
        c.uploads.body_timeout_ms = 800;
        c.uploads.max_concurrent_per_user = 1;
    })
    .await;
    let slow_user = api.key("slow@example.com").await;
    let other = api.key("other@example.com").await;
    let mut stalled = stalled_upload(&api.base, &slow_user).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let (s, r) = api.upload(&slow_user, "image/jpeg", photo()).await;
    assert_eq!((s, r["error"]["code"].as_str()), (429, Some("too-many-uploads")), "{r}");
    let (s, r) = api.upload(&other, "image/jpeg", photo()).await;
    assert_eq!(s, 201, "another user is not held up: {r}");

    let started = std::time::Instant::now();
    assert_eq!(status_of(&mut stalled, std::time::Duration::from_secs(5)).await, Some(408));
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "{:?}", started.elapsed());
    let (s, r) = api.upload(&slow_user, "image/jpeg", photo()).await;
    assert_eq!(s, 201, "the place came back: {r}");
}

/// A multipart flood — a thousand tiny non-file parts before the file — is refused, and
/// non-file parts cannot stream past the body limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_caps_multipart_parts_and_their_size() {
    let api = Api::start_with(|c| c.images.max_input_bytes = 64 * 1024).await;
    let key = api.key("flood@example.com").await;
    let boundary = "XyZzY";
    let part = |name: &str, body: &str| {
        format!("--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{body}\r\n")
    };
    let mut many: String = (0..1000).map(|i| part(&format!("f{i}"), "x")).collect();
    many += &format!("--{boundary}--\r\n");
    let ct = format!("multipart/form-data; boundary={boundary}");
    let (s, r) = api.upload(&key, &ct, many.into_bytes()).await;
    assert_eq!((s, r["error"]["code"].as_str()), (400, Some("invalid-multipart")), "{r}");

    let mut big = part("notes", &"y".repeat(100 * 1024));
    big += &format!("--{boundary}--\r\n");
    let (s, r) = api.upload(&key, &ct, big.into_bytes()).await;
    assert_eq!((s, r["error"]["code"].as_str()), (413, Some("payload-too-large")), "{r}");
}

/// A user at their quota is refused before the body is read or compressed: garbage that would
/// be `not-an-image` once read is `storage-quota-exceeded` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_checks_the_quota_before_compressing() {
    let api = Api::start_with(|c| c.uploads.quota_bytes_per_user = 10_000).await;
    let user = api.db.db.create_user("full@example.com", "free").await.expect("user");
    let key = api.db.db.create_api_key(user.id, "t").await.expect("key").key;
    let (s, r) = api.upload(&key, "image/jpeg", b"not an image at all".to_vec()).await;
    assert_eq!((s, r["error"]["code"].as_str()), (415, Some("not-an-image")), "under quota it is read: {r}");
    assert!(api.db.db.reserve_storage(user.id, 10_000, Some(10_000)).await.expect("reserve"));
    let (s, r) = api.upload(&key, "image/jpeg", b"not an image at all".to_vec()).await;
    assert_eq!((s, r["error"]["code"].as_str()), (403, Some("storage-quota-exceeded")), "{r}");
}

/// Probing internal names through `webhook_url`: a name that does not resolve and one that
/// resolves inward get the same answer, and every lookup is counted against the submit rate
/// first (the third probe a minute is a 429, resolved or not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_webhook_probes_reveal_nothing_and_are_rate_limited_first() {
    let api = Api::start_with(|c| c.limits.submits_per_minute = 2).await;
    let key = api.key("probe@example.com").await;
    let with_hook = |hook: &str| serde_json::json!({ "image_url": "https://cdn.example.com/ring.jpg", "prompt": "p", "webhook_url": hook });
    let (s1, inward) = api.submit(&key, with_hook("https://localhost/hook")).await;
    let (s2, missing) = api.submit(&key, with_hook("https://no-such-host.invalid/hook")).await;
    assert_eq!((s1, s2), (400, 400), "{inward} {missing}");
    assert_eq!(inward["error"], missing["error"], "the two answers must not differ");
    let (s3, r) = api.submit(&key, with_hook("https://no-such-host.invalid/hook")).await;
    assert_eq!((s3, r["error"]["code"].as_str()), (429, Some("rate-limited")), "{r}");
    api.assert_nothing_written().await;
}

/// Guessing keys: a client address gets `failed_auth_per_minute` wrong (key-shaped) guesses,
/// then 429 before any lookup — even with a real key — while other clients behind the same
/// trusted proxy carry on. `X-Forwarded-For` is believed only from a trusted proxy: rotating it
/// from anywhere else changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_limits_failed_authentications_per_client_address() {
    async fn get(api: &Api, token: &str, forwarded_for: &str) -> (u16, Option<String>) {
        let r = api
            .http
            .get(format!("{}/api/jobs", api.base))
            .bearer_auth(token)
            .header("x-forwarded-for", forwarded_for)
            .send()
            .await
            .expect("send");
        let s = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        (s, body["error"]["code"].as_str().map(str::to_owned))
    }
    let guess = |i: u32| format!("jsk_{i:0>43}");
    let limited = Some("too-many-auth-failures".to_owned());

    let behind_proxy = Api::start_with(|c| {
        c.limits.failed_auth_per_minute = 3;
        c.gateway.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let real = behind_proxy.key("real@example.com").await;
    for i in 0..3 {
        assert_eq!(get(&behind_proxy, &guess(i), "198.51.100.1, 203.0.113.7").await.0, 401);
    }
    assert_eq!(get(&behind_proxy, &guess(9), "203.0.113.7").await, (429, limited.clone()));
    assert_eq!(get(&behind_proxy, &real, "203.0.113.7").await, (429, limited.clone()), "no lookup at all");
    assert_eq!(get(&behind_proxy, &real, "203.0.113.8").await.0, 200, "a neighbour is not punished");

    let direct = Api::start_with(|c| c.limits.failed_auth_per_minute = 3).await;
    for i in 0..3 {
        let spoofed = format!("192.0.2.{i}");
        assert_eq!(get(&direct, &guess(i), &spoofed).await.0, 401);
    }
    assert_eq!(get(&direct, &guess(7), "192.0.2.200").await, (429, limited), "the header is not believed");
}

/// `/files/…` serves only signed URLs: the one an upload answers with works (and is cached no
/// longer than it lives); without its signature, with another object's, or altered, it is 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_serves_files_only_on_signed_urls() {
    let api = Api::start_with(|c| c.storage.local.url_ttl_secs = 600).await;
    let key = api.key("files@example.com").await;
    let (s, stored) = api.upload(&key, "image/jpeg", photo()).await;
    assert_eq!(s, 201, "{stored}");
    let url = stored["url"].as_str().expect("url").to_owned();
    let fetch = |u: String| {
        let req = api.http.get(u);
        async move {
            let r = req.send().await.expect("fetch");
            let cache = r.headers().get("cache-control").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let status = r.status().as_u16();
            let code =
                r.json::<serde_json::Value>().await.ok().and_then(|b| b["error"]["code"].as_str().map(str::to_owned));
            (status, cache, code)
        }
    };
    let (status, cache, _) = fetch(url.clone()).await;
    assert_eq!(status, 200);
    let max_age: u64 = cache
        .as_deref()
        .and_then(|c| c.split("max-age=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .expect("max-age");
    assert!(max_age <= 660 && max_age > 500, "cached as long as the URL lives: {cache:?}");
    let (bare, query) = url.split_once('?').expect("a signed URL");
    let forbidden = Some("invalid-file-url".to_owned());
    assert_eq!(fetch(bare.to_owned()).await.2, forbidden, "unsigned");
    let other = bare.replace(".jpg", "x.jpg");
    assert_eq!(fetch(format!("{other}?{query}")).await.2, forbidden, "another object's signature");
    let tampered = url.replace("sig=", "sig=0");
    assert_eq!(fetch(tampered).await.2, forbidden, "altered");
    let longer = url.replace("expires=", "expires=9");
    assert_eq!(fetch(longer).await.2, forbidden, "a longer life than signed");
}
