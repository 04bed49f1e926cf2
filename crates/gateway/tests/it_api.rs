//! The gateway in-process on port 0, over a fresh database and an isolated Redis queue.

mod common;

use common::Api;
use serde_json::{json, Value};

fn edit() -> Value {
    json!({ "image_url": "https://cdn.example.com/ring.jpg", "prompt": "white background" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_rejects_bad_input_with_field_codes_and_writes_nothing() {
    let api = Api::start().await;
    let key = api.key("v@example.com").await;
    let with = |k: &str, v: Value| {
        let mut e = edit();
        e[k] = v;
        e
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!({ "image_url": "https://a.example/x.jpg" }), "prompt"),
        (with("prompt", json!("   ")), "prompt"),
        (with("prompt", json!("x".repeat(2001))), "prompt"),
        (with("image_url", json!("ftp://a.example/x.jpg")), "image_url"),
        (with("image_url", json!("not a url")), "image_url"),
        (json!({ "prompt": "x" }), "image_url"),
        (with("priority", json!("urgent")), "priority"),
        (with("webhook_url", json!("https://127.0.0.1/hook")), "webhook_url"),
        (with("webhook_url", json!("https://10.0.0.5/hook")), "webhook_url"),
        (with("webhook_url", json!("https://169.254.169.254/latest/meta-data")), "webhook_url"),
        (with("webhook_url", json!("https://[::1]/hook")), "webhook_url"),
        (with("webhook_url", json!("https://localhost/hook")), "webhook_url"),
        (with("webhook_url", json!("http://example.com/hook")), "webhook_url"),
    ];
    for (body, field) in cases {
        let (status, resp) = api.submit(&key, body.clone()).await;
        assert_eq!(status, 400, "{body} → {resp}");
        assert_eq!(resp["error"]["field"], field, "{body} → {resp}");
        assert!(resp["error"]["code"].as_str().is_some_and(|c| !c.is_empty()), "{resp}");
        assert!(resp["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{resp}");
    }
    let (s, r) = api.submit_raw(&key, "application/json", b"{\"prompt\": ".to_vec()).await;
    assert_eq!((s, r["error"]["code"].as_str()), (400, Some("invalid-json")), "{r}");
    let (s, r) = api.submit_raw(&key, "text/plain", serde_json::to_vec(&edit()).expect("json")).await;
    assert_eq!((s, r["error"]["code"].as_str()), (415, Some("unsupported-media-type")), "{r}");
    let mut big = edit();
    big["padding"] = json!("x".repeat(70 * 1024));
    let (s, r) = api.submit(&key, big).await;
    assert_eq!((s, r["error"]["code"].as_str()), (413, Some("payload-too-large")), "{r}");
    api.assert_nothing_written().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_requires_a_key_and_isolates_users() {
    let api = Api::start().await;
    let a = api.key("a@example.com").await;
    let b = api.key("b@example.com").await;
    for (m, p) in [
        (reqwest::Method::GET, "/api/jobs"),
        (reqwest::Method::GET, "/api/queue"),
        (reqwest::Method::POST, "/api/ai/edit"),
    ] {
        let (s, r) = api.call(m.clone(), p, None).await;
        assert_eq!((s, r["error"]["code"].as_str()), (401, Some("unauthorized")), "{p}: {r}");
        let (s, _) = api.call(m, p, Some("jsk_not-a-real-key")).await;
        assert_eq!(s, 401, "{p} with a bad key");
    }
    let (s, job) = api.submit(&a, edit()).await;
    assert_eq!(s, 202, "{job}");
    let id = job["jobId"].as_str().expect("id");
    let path = format!("/api/jobs/{id}");
    let (s, _) = api.call(reqwest::Method::GET, &path, Some(&a)).await;
    assert_eq!(s, 200);
    let (s_get, r_get) = api.call(reqwest::Method::GET, &path, Some(&b)).await;
    let (s_del, _) = api.call(reqwest::Method::DELETE, &path, Some(&b)).await;
    let (s_none, r_none) = api.call(reqwest::Method::GET, "/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV", Some(&b)).await;
    assert_eq!((s_get, s_del, s_none), (404, 404, 404));
    assert_eq!(r_get, r_none, "another user's job is indistinguishable from none");
    let (s, r) = api.call(reqwest::Method::GET, "/api/jobs", Some(&b)).await;
    assert_eq!(s, 200);
    assert_eq!(r["jobs"].as_array().map(Vec::len), Some(0), "B lists none of A's jobs");
    // A's job is still queued: B's DELETE did nothing.
    let (_, still) = api.call(reqwest::Method::GET, &path, Some(&a)).await;
    assert_eq!(still["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_submits_positions_lists_and_cancels() {
    let api = Api::start().await;
    let key = api.key("p@example.com").await;
    let mut ids = Vec::new();
    for i in 1..=5 {
        let r = api
            .http
            .post(format!("{}/api/ai/edit", api.base))
            .bearer_auth(&key)
            .json(&json!({ "imageUrl": "https://cdn.example.com/r.jpg", "prompt": format!("p{i}") }))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 202);
        let location = r.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["queuePosition"], i, "{body}");
        assert!(body["etaSeconds"].as_i64().is_some_and(|e| e > 0), "{body}");
        assert_eq!(location.as_deref(), body["statusUrl"].as_str());
        ids.push(body["jobId"].as_str().expect("id").to_owned());
    }
    assert_eq!(api.in_line().await, 5);

    // Cancel the second: those behind it move up.
    let (s, c) = api.call(reqwest::Method::DELETE, &format!("/api/jobs/{}", ids[1]), Some(&key)).await;
    assert_eq!((s, c["status"].as_str()), (200, Some("canceled")), "{c}");
    let (s, c) = api.call(reqwest::Method::DELETE, &format!("/api/jobs/{}", ids[1]), Some(&key)).await;
    assert_eq!((s, c["error"]["code"].as_str()), (409, Some("job-not-cancelable")), "{c}");
    let (_, last) = api.call(reqwest::Method::GET, &format!("/api/jobs/{}", ids[4]), Some(&key)).await;
    assert_eq!(last["queuePosition"], 4, "{last}");
    assert_eq!(last["steps"].as_array().map(Vec::len), Some(3));

    // Pages of two, newest first, covering all five.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, page) = api.call(reqwest::Method::GET, &format!("/api/jobs?limit=2&cursor={cursor}"), Some(&key)).await;
        assert_eq!(s, 200, "{page}");
        for j in page["jobs"].as_array().expect("jobs") {
            seen.push(j["jobId"].as_str().expect("id").to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    let (s, page) = api.call(reqwest::Method::GET, "/api/jobs?status=canceled", Some(&key)).await;
    assert_eq!((s, page["jobs"].as_array().map(Vec::len)), (200, Some(1)));
    let (s, r) = api.call(reqwest::Method::GET, "/api/jobs?status=bogus", Some(&key)).await;
    assert_eq!((s, r["error"]["code"].as_str()), (400, Some("invalid-status")));

    let (s, q) = api.call(reqwest::Method::GET, "/api/queue", Some(&key)).await;
    assert_eq!((s, q["queued"].as_i64(), q["processing"].as_i64()), (200, Some(4), Some(0)), "{q}");

    // Scheduled jobs wait at position 0 with scheduledFor set.
    let mut later = edit();
    later["delay_seconds"] = json!(600);
    let (s, body) = api.submit(&key, later).await;
    assert_eq!((s, body["queuePosition"].as_i64()), (202, Some(0)), "{body}");
    let (_, job) =
        api.call(reqwest::Method::GET, &format!("/api/jobs/{}", body["jobId"].as_str().expect("id")), Some(&key)).await;
    assert!(job["scheduledFor"].is_string(), "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_serves_health_readiness_and_openapi() {
    let api = Api::start().await;
    assert_eq!(api.call(reqwest::Method::GET, "/healthz", None).await.0, 200);
    let (s, r) = api.call(reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(s, 200, "{r}");
    let (s, doc) = api.call(reqwest::Method::GET, "/api/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    for path in
        ["/api/ai/edit", "/api/jobs/{job_id}", "/api/jobs", "/api/queue", "/healthz", "/readyz", "/api/openapi.json"]
    {
        assert!(doc["paths"][path].is_object(), "OpenAPI lacks {path}");
    }
    assert!(doc["components"]["schemas"]["JobView"]["properties"]["queuePosition"].is_object(), "camelCase schema");
    // Metrics live on their own listener: the public one answers 404.
    let (s, _) = api.call(reqwest::Method::GET, "/metrics", None).await;
    assert_eq!(s, 404, "no /metrics on the public listener");
    let text =
        api.http.get(format!("{}/metrics", api.metrics)).send().await.expect("metrics").text().await.expect("text");
    assert!(text.contains("jewelshot_http_requests_total{route=\"/healthz\",status=\"200\"}"), "{text}");
    assert!(text.contains("jewelshot_queue_depth{state=\"waiting\"}"), "{text}");
    let (s, r) = api.call(reqwest::Method::GET, "/nope", None).await;
    assert_eq!((s, r["error"]["code"].as_str()), (404, Some("not-found")));
}

/// F acceptance 8 (the part a unit can hold; `just schemathesis` runs the rest): a known path
/// with an undeclared method is 405 with `Allow`, from the spec's own table; the spec states
/// the constraints the server enforces, on parameters where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_answers_undeclared_methods_with_405_and_states_its_constraints() {
    let api = Api::start().await;
    let key = api.key("methods@example.com").await;
    let job = format!("/api/jobs/{}", jewelshot_domain::JobId::generate());
    for (method, path, allow) in [
        (reqwest::Method::TRACE, "/api/jobs", "GET"),
        (reqwest::Method::DELETE, "/api/gallery", "GET"),
        (reqwest::Method::PUT, job.as_str(), "DELETE, GET"),
        (reqwest::Method::GET, "/api/ai/edit", "POST"),
        (reqwest::Method::POST, "/healthz", "GET"),
        (reqwest::Method::DELETE, "/files/u/ab/cd.jpg", "GET"),
    ] {
        let resp = api.http.request(method.clone(), format!("{}{path}", api.base)).bearer_auth(&key).send().await;
        let resp = resp.expect("send");
        let got = resp.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("json");
        assert_eq!((status, got.as_deref()), (405, Some(allow)), "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "method-not-allowed");
    }
    let (s, _) = api.call(reqwest::Method::TRACE, "/api/nope", Some(&key)).await;
    assert_eq!(s, 404, "an unknown path stays 404");

    let (_, doc) = api.call(reqwest::Method::GET, "/api/openapi.json", None).await;
    for path in ["/api/jobs", "/api/gallery"] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().expect("params");
        assert!(params.iter().all(|p| p["in"] == "query"), "{path}: {params:?}");
        let limit = params.iter().find(|p| p["name"] == "limit").expect("limit");
        assert_eq!((limit["schema"]["minimum"].as_i64(), limit["schema"]["maximum"].as_i64()), (Some(1), Some(100)));
        // The bound is the server's: 0 and 101 are refused, 100.0 is the whole number it means.
        for (q, want) in [("0", 400), ("101", 400), ("100.0", 200), ("2.5", 400)] {
            assert_eq!(
                api.call(reqwest::Method::GET, &format!("{path}?limit={q}"), Some(&key)).await.0,
                want,
                "{path} {q}"
            );
        }
    }
    let edit = &doc["components"]["schemas"]["EditRequest"];
    assert_eq!(edit["required"], serde_json::json!(["image_url", "prompt"]));
    assert_eq!(edit["properties"]["prompt"]["maxLength"], 2000);
    assert!(edit["properties"]["image_url"]["pattern"].is_string());
    assert_eq!(doc["paths"]["/api/ai/edit"]["post"]["responses"]["202"]["links"]["GetJob"]["operationId"], "get");
    assert_eq!(doc["components"]["schemas"]["JobStatus"]["enum"][0], "queued", "the wire spelling");
}

/// D6: `Idempotency-Key` per user returns the same job; reused with another body → 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_idempotency_key_returns_the_first_job() {
    let api = Api::start().await;
    let a = api.key("idem-a@example.com").await;
    let b = api.key("idem-b@example.com").await;
    let send = |key: &str, idem: &str, body: Value| {
        api.http
            .post(format!("{}/api/ai/edit", api.base))
            .bearer_auth(key)
            .header("Idempotency-Key", idem)
            .json(&body)
            .send()
    };
    let first = send(&a, "order-42", edit()).await.expect("send");
    assert_eq!(first.status().as_u16(), 202);
    let first: Value = first.json().await.expect("json");
    // The same request again, with the camelCase spelling: the same job, not a second one.
    let again =
        send(&a, "order-42", json!({ "imageUrl": "https://cdn.example.com/ring.jpg", "prompt": "white background" }))
            .await
            .expect("send");
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(again.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["jobId"], first["jobId"]);
    // Another body under the same key: refused.
    let mut other = edit();
    other["prompt"] = json!("black background");
    let r = send(&a, "order-42", other).await.expect("send");
    assert_eq!(r.status().as_u16(), 409);
    let r: Value = r.json().await.expect("json");
    assert_eq!(r["error"]["code"], "idempotency-key-reused");
    // Keys are per user.
    let theirs: Value = send(&b, "order-42", edit()).await.expect("send").json().await.expect("json");
    assert_ne!(theirs["jobId"], first["jobId"]);
    // Concurrent duplicates still make one job.
    let (x, y) = tokio::join!(send(&a, "order-43", edit()), send(&a, "order-43", edit()));
    let (x, y): (Value, Value) = (x.expect("x").json().await.expect("json"), y.expect("y").json().await.expect("json"));
    assert_eq!(x["jobId"], y["jobId"]);
    let counts = api.db.db.queue_counts().await.expect("counts");
    assert_eq!(counts.queued, 3, "order-42 (a), order-42 (b), order-43: three jobs");
    let r = api.submit_raw(&a, "application/json", serde_json::to_vec(&edit()).expect("json")).await;
    assert_eq!(r.0, 202, "no key: an ordinary submit");
    let bad = send(&a, &"x".repeat(300), edit()).await.expect("send");
    assert_eq!(bad.status().as_u16(), 400);
}

/// Acceptance C (per-user limits): submissions per minute and jobs waiting per user are capped
/// with 429, `Retry-After` and the IETF `RateLimit`/`RateLimit-Policy` headers, and nothing is
/// queued when refused; `high` priority needs a plan that includes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_limits_each_user_with_429_and_ratelimit_headers() {
    let api = Api::start_with(|c| {
        c.limits.submits_per_minute = 3;
        c.limits.max_queued_per_user = 0;
    })
    .await;
    let a = api.key("a@example.com").await;
    let b = api.key("b@example.com").await;
    let post =
        |key: &str| api.http.post(format!("{}/api/ai/edit", api.base)).bearer_auth(key.to_owned()).json(&edit()).send();
    let header = |r: &reqwest::Response, name: &str| {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    };
    for remaining in [2, 1, 0] {
        let r = post(&a).await.expect("send");
        assert_eq!(r.status().as_u16(), 202);
        assert_eq!(header(&r, "RateLimit-Policy"), "\"submits\";q=3;w=60");
        let rate = header(&r, "RateLimit");
        assert!(rate.starts_with(&format!("\"submits\";r={remaining};t=")), "{rate}");
    }
    let r = post(&a).await.expect("send");
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = header(&r, "Retry-After").parse().expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(header(&r, "RateLimit").starts_with("\"submits\";r=0;t="));
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate-limited", "{body}");
    // Nothing was queued for the refused one; another user is not affected.
    assert_eq!(api.db.db.queue_counts().await.expect("counts").queued, 3);
    assert_eq!(api.in_line().await, 3);
    assert_eq!(post(&b).await.expect("send").status().as_u16(), 202);

    // Jobs waiting per user.
    let api = Api::start_with(|c| {
        c.limits.submits_per_minute = 0;
        c.limits.max_queued_per_user = 2;
    })
    .await;
    let a = api.key("a@example.com").await;
    let (_, first) = api.submit(&a, edit()).await;
    assert_eq!(api.submit(&a, edit()).await.0, 202);
    let (s, body) = api.submit(&a, edit()).await;
    assert_eq!((s, body["error"]["code"].as_str()), (429, Some("too-many-queued-jobs")), "{body}");
    assert_eq!(api.in_line().await, 2, "the refused job was not enqueued");
    // Concurrent submits cannot slip past the cap together.
    let b = api.key("b@example.com").await;
    let tries = futures::future::join_all((0..6).map(|_| api.submit(&b, edit()))).await;
    assert_eq!(tries.iter().filter(|(s, _)| *s == 202).count(), 2, "{tries:?}");
    // A finished (here: canceled) job makes room.
    let path = format!("/api/jobs/{}", first["jobId"].as_str().expect("id"));
    assert_eq!(api.call(reqwest::Method::DELETE, &path, Some(&a)).await.0, 200);
    assert_eq!(api.submit(&a, edit()).await.0, 202);

    // Priority by plan.
    let mut high = edit();
    high["priority"] = json!("high");
    let (s, body) = api.submit(&api.key("free@example.com").await, high.clone()).await;
    assert_eq!((s, body["error"]["code"].as_str()), (403, Some("priority-not-allowed")), "{body}");
    let pro = api.db.db.create_user("pro@example.com", "pro").await.expect("user");
    let pro_key = api.db.db.create_api_key(pro.id, "t").await.expect("key").key;
    assert_eq!(api.submit(&pro_key, high).await.0, 202);
}

/// Issue I, acceptance 5: a browser preflight from a listed origin is allowed (the methods and
/// headers the API uses, cached for max-age); from another origin, and from any origin while
/// CORS is off, the answer carries no `Access-Control-Allow-Origin`, which the browser refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_allows_cors_preflights_from_listed_origins_only() {
    let app = "https://app.example.com";
    let api = Api::start_with(|c| c.cors.allowed_origins = vec![app.into(), "http://localhost:3000".into()]).await;
    let key = api.key("cors@example.com").await;
    let preflight = |base: String, origin: &'static str| {
        let http = api.http.clone();
        async move {
            http.request(reqwest::Method::OPTIONS, format!("{base}/api/ai/edit"))
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "POST")
                .header("Access-Control-Request-Headers", "authorization, content-type, idempotency-key")
                .send()
                .await
                .expect("preflight")
        }
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase)
    };

    let ok = preflight(api.base.clone(), "https://app.example.com").await;
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(header(&ok, "access-control-allow-origin").as_deref(), Some(app));
    let methods = header(&ok, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("post") && methods.contains("get") && methods.contains("delete"), "{methods}");
    let headers = header(&ok, "access-control-allow-headers").unwrap_or_default();
    assert!(["authorization", "content-type", "idempotency-key"].iter().all(|h| headers.contains(h)), "{headers}");
    assert_eq!(header(&ok, "access-control-max-age").as_deref(), Some("600"));
    assert_eq!(header(&ok, "access-control-allow-credentials"), None, "no credentials unless configured");

    let refused = preflight(api.base.clone(), "https://evil.example.net").await;
    assert_eq!(header(&refused, "access-control-allow-origin"), None, "an unlisted origin is not allowed");

    // The request itself: the listed origin may read the answer and the rate headers.
    let get = |origin: &'static str| {
        let (http, url, key) = (api.http.clone(), format!("{}/api/queue", api.base), key.clone());
        async move { http.get(url).bearer_auth(key).header("Origin", origin).send().await.expect("get") }
    };
    let r = get("https://app.example.com").await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "access-control-allow-origin").as_deref(), Some(app));
    let exposed = header(&r, "access-control-expose-headers").unwrap_or_default();
    assert!(exposed.contains("retry-after") && exposed.contains("location"), "{exposed}");
    // Another origin is served (non-browser clients send Origin too) but may not read it.
    let r = get("https://evil.example.net").await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), None);

    // CORS off (the default): no origin is allowed.
    let off = api.replica(|c| c.cors = Default::default()).await;
    let r = preflight(off, "https://app.example.com").await;
    assert_eq!(header(&r, "access-control-allow-origin"), None);
}
