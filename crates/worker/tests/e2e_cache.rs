//! The result cache end to end (issue I, acceptances 1 and 2): the same photo bytes under two
//! URLs with an equivalent prompt make one fal request and two complete jobs sharing one stored
//! object; `cache: false` makes a second request; ten identical submissions at once make one
//! request and ten complete jobs; a hit completes in the submit itself and counts against
//! neither the queue cap nor the fal limiter; deleting one gallery entry never breaks another's.

use std::{collections::HashMap, path::Path, time::Duration};

use jewelshot_domain::cache::{CacheScope, CacheSettings};
use jewelshot_testkit::{hooks, servers, Stack, StackOptions};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn cached_stack(scope: CacheScope) -> StackOptions {
    let mut opts =
        StackOptions::emulator(&["--latency-ms", "300-500", "--max-concurrent", "4", "--max-per-minute", "0"]);
    opts.cache = Some(CacheSettings { scope, ..CacheSettings::default() });
    opts
}

async fn fal_requests(stack: &Stack) -> u64 {
    let stats = stack.emulator_stats().await.expect("emulator stats");
    stats["total"]["submitted"].as_u64().expect("submitted count")
}

/// Stored results (objects under `results/`).
fn result_objects(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.join("results")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if !path.to_string_lossy().contains(".tmp-") {
                out.push(path.strip_prefix(root).unwrap_or(&path).display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The path of a served URL, without its signature.
fn object_path(url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    path.split("/files/").nth(1).unwrap_or(path).to_owned()
}

async fn fetch(stack: &Stack, url: &str) -> Vec<u8> {
    let r = stack.http.get(url).send().await.expect("fetch image");
    assert_eq!(r.status(), 200, "{url}");
    r.bytes().await.expect("image bytes").to_vec()
}

async fn submit(stack: &Stack, key: &str, body: Value) -> Value {
    let (status, answer) = stack.submit(key, &body).await.expect("submit");
    assert_eq!(status, 202, "{answer}");
    answer
}

async fn complete(stack: &Stack, key: &str, id: &str) -> Value {
    let job = stack.wait_final(key, id, WAIT).await.expect("final");
    assert_eq!(job["status"], "complete", "{job}\n{}", stack.worker_logs());
    job
}

async fn gallery(stack: &Stack, key: &str) -> Vec<Value> {
    let r =
        stack.http.get(format!("{}/api/gallery", stack.gateway_url())).bearer_auth(key).send().await.expect("gallery");
    let page: Value = r.json().await.expect("gallery json");
    page["images"].as_array().cloned().unwrap_or_default()
}

/// Acceptance 1: two URLs serving the same bytes, the prompt spelled differently → one fal
/// request, two complete jobs, one stored object; `cache: false` → a second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cache_same_bytes_under_two_urls_is_one_request() {
    let mut stack = Stack::start(cached_stack(CacheScope::User)).await.expect("stack");
    let (_, key, _) = stack.user("ana@example.com").await.expect("user");
    let photo = std::fs::read(jewelshot_testkit::processes::fixture_photo()).expect("photo");
    let host = servers::serve_files(HashMap::from([("/a.jpg".into(), photo.clone()), ("/b.jpg".into(), photo)]))
        .await
        .expect("file server");
    stack.start_worker().expect("worker");

    let first =
        submit(&stack, &key, json!({ "image_url": format!("{host}/a.jpg"), "prompt": "Enhance lighting" })).await;
    let first = complete(&stack, &key, first["jobId"].as_str().expect("id")).await;
    assert_eq!(first["cached"], false, "{first}");
    assert_eq!(fal_requests(&stack).await, 1);

    let second =
        submit(&stack, &key, json!({ "imageUrl": format!("{host}/b.jpg"), "prompt": "  enhance   LIGHTING " })).await;
    let second = complete(&stack, &key, second["jobId"].as_str().expect("id")).await;
    assert_eq!(second["cached"], true, "the same bytes and prompt are a hit: {second}");
    assert_eq!(fal_requests(&stack).await, 1, "a hit makes no fal request");
    assert!(second["steps"].as_array().expect("steps").iter().all(|s| s["status"] == "complete"), "{second}");

    let (a, b) = (first["imageUrl"].as_str().expect("url"), second["imageUrl"].as_str().expect("url"));
    assert_eq!(object_path(a), object_path(b), "both jobs show the one stored object");
    assert_eq!(fetch(&stack, a).await, fetch(&stack, b).await);
    assert_eq!(result_objects(&stack.files).len(), 1, "{:?}", result_objects(&stack.files));
    let images = gallery(&stack, &key).await;
    assert_eq!(images.len(), 2, "each job has its own gallery entry: {images:?}");

    let fresh = submit(
        &stack,
        &key,
        json!({ "image_url": format!("{host}/a.jpg"), "prompt": "Enhance lighting", "cache": false }),
    )
    .await;
    let fresh = complete(&stack, &key, fresh["jobId"].as_str().expect("id")).await;
    assert_eq!(fresh["cached"], false, "{fresh}");
    assert_eq!(fal_requests(&stack).await, 2, "`cache: false` asks fal again");
    assert_eq!(result_objects(&stack.files).len(), 2);

    // Another user's identical request is not theirs to reuse (scope `user`).
    let (_, other, _) = stack.user("ben@example.com").await.expect("user");
    let theirs =
        submit(&stack, &other, json!({ "image_url": format!("{host}/b.jpg"), "prompt": "Enhance lighting" })).await;
    let theirs = complete(&stack, &other, theirs["jobId"].as_str().expect("id")).await;
    assert_eq!(theirs["cached"], false, "{theirs}");
    assert_eq!(fal_requests(&stack).await, 3);

    let (_, queue) = get(&stack, &key, "/api/queue").await;
    let cache = &queue["cache"];
    assert_eq!((cache["enabled"].as_bool(), cache["scope"].as_str()), (Some(true), Some("user")), "{queue}");
    assert_eq!(cache["hits"], 1, "{queue}");
    assert_eq!(cache["lookups"], 3, "the job with `cache: false` is no lookup: {queue}");
    stack.drop_database().await.expect("drop database");
}

async fn get(stack: &Stack, key: &str, path: &str) -> (u16, Value) {
    let r = stack.http.get(format!("{}{path}", stack.gateway_url())).bearer_auth(key).send().await.expect("get");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Acceptance 1: ten identical submissions at once — of an upload (met at submit) and of an
/// outside URL (met by the workers) — make one fal request each and ten complete jobs. The ones
/// waiting on another's request are out of the line: they are not counted as queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cache_ten_identical_at_once_share_one_request() {
    let mut stack = Stack::start(cached_stack(CacheScope::User)).await.expect("stack");
    let (_, key, _) = stack.user("ana@example.com").await.expect("user");
    let upload = stack.input_photo_url(&key).await.expect("upload");

    // No worker yet: the submits meet the cache at the gateway.
    let body = json!({ "image_url": upload, "prompt": "white background" });
    let answers = futures::future::join_all((0..10).map(|_| stack.submit(&key, &body))).await;
    let mut ids = Vec::new();
    for answer in answers {
        let (status, answer) = answer.expect("submit");
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["status"], "queued", "{answer}");
        ids.push(answer["jobId"].as_str().expect("id").to_owned());
    }
    let (_, queue) = get(&stack, &key, "/api/queue").await;
    assert_eq!(queue["queued"], 1, "one job calls fal, nine share its request: {queue}");
    assert_eq!(queue["cache"]["sharing"], 9, "{queue}");
    // A sharer's place is its request's: first in line.
    for id in &ids {
        let (_, job) = stack.get_job(&key, id).await.expect("poll");
        assert_eq!((job["status"].as_str(), job["queuePosition"].as_i64()), (Some("queued"), Some(1)), "{job}");
    }

    stack.start_worker().expect("worker");
    let mut cached = 0;
    for id in &ids {
        let job = complete(&stack, &key, id).await;
        cached += usize::from(job["cached"] == true);
    }
    assert_eq!(cached, 9, "nine completed from the one request's result");
    assert_eq!(fal_requests(&stack).await, 1);
    assert_eq!(result_objects(&stack.files).len(), 1, "{:?}", result_objects(&stack.files));

    // Outside URLs: a worker hashes each before asking fal.
    let photo = std::fs::read(jewelshot_testkit::processes::fixture_photo()).expect("photo");
    let files: HashMap<String, Vec<u8>> = (0..10).map(|i| (format!("/p{i}.jpg"), photo.clone())).collect();
    let host = servers::serve_files(files).await.expect("file server");
    let answers = futures::future::join_all((0..10).map(|i| {
        let body = json!({ "image_url": format!("{host}/p{i}.jpg"), "prompt": "marble backdrop" });
        let stack = &stack;
        let key = &key;
        async move { stack.submit(key, &body).await }
    }))
    .await;
    let mut cached = 0;
    for answer in answers {
        let (status, answer) = answer.expect("submit");
        assert_eq!(status, 202, "{answer}");
        let job = complete(&stack, &key, answer["jobId"].as_str().expect("id")).await;
        cached += usize::from(job["cached"] == true);
    }
    assert_eq!(cached, 9);
    assert_eq!(fal_requests(&stack).await, 2, "one request for ten outside URLs of the same bytes");
    stack.drop_database().await.expect("drop database");
}

/// Acceptance 2: a hit of an upload completes in the submit (status `complete`, its image in the
/// 202), though the user is at the cap of waiting jobs, and the fal limiter counts no start for
/// it. A hit with a webhook is announced like any finished job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cache_hit_at_submit_skips_cap_and_limiter() {
    let mut opts = cached_stack(CacheScope::User);
    opts.gateway_env.insert("JEWELSHOT_LIMITS__MAX_QUEUED_PER_USER".into(), "1".into());
    let mut stack = Stack::start(opts).await.expect("stack");
    let (_, key, secret) = stack.user("ana@example.com").await.expect("user");
    let first_upload = stack.input_photo_url(&key).await.expect("upload");
    let second_upload = stack.input_photo_url(&key).await.expect("upload again");
    assert_ne!(first_upload, second_upload, "two uploads, two URLs");
    stack.start_worker().expect("worker");

    let made = submit(&stack, &key, json!({ "image_url": first_upload, "prompt": "studio light" })).await;
    let made = complete(&stack, &key, made["jobId"].as_str().expect("id")).await;
    // A job scheduled an hour out keeps the user at the cap of one waiting job.
    submit(&stack, &key, json!({ "image_url": first_upload, "prompt": "later", "delay_seconds": 3600 })).await;
    let (status, refused) =
        stack.submit(&key, &json!({ "image_url": first_upload, "prompt": "another" })).await.expect("submit");
    assert_eq!((status, refused["error"]["code"].as_str()), (429, Some("too-many-queued-jobs")), "{refused}");

    let (_, before) = get(&stack, &key, "/api/queue").await;
    let hook = hooks::Receiver::start().await.expect("webhook receiver");
    let hit =
        submit(&stack, &key, json!({ "image_url": second_upload, "prompt": "Studio Light", "webhook_url": hook.url }))
            .await;
    assert_eq!((hit["status"].as_str(), hit["cached"].as_bool()), (Some("complete"), Some(true)), "{hit}");
    assert_eq!(hit["queuePosition"], 0, "{hit}");
    let image = hit["imageUrl"].as_str().expect("the 202 carries the image");
    assert_eq!(object_path(image), object_path(made["imageUrl"].as_str().expect("url")));
    assert_eq!(fal_requests(&stack).await, 1);
    let (_, after) = get(&stack, &key, "/api/queue").await;
    let started = |q: &Value| q["upstream"]["keys"][0]["startedInWindow"].as_u64();
    assert_eq!(started(&before), started(&after), "the limiter counted no start: {before} {after}");

    // A request that hit lately takes the one-statement path: the same answer.
    let again = submit(&stack, &key, json!({ "image_url": second_upload, "prompt": "studio light" })).await;
    assert_eq!((again["status"].as_str(), again["cached"].as_bool()), (Some("complete"), Some(true)), "{again}");
    let (_, polled) = stack.get_job(&key, again["jobId"].as_str().expect("id")).await.expect("poll");
    assert!(polled["steps"].as_array().expect("steps").iter().all(|s| s["status"] == "complete"), "{polled}");
    // Once the stored result is gone, the same request is a job like any other: the cap holds.
    let sql = stack.db.client().await.expect("sql");
    sql.execute("DELETE FROM result_cache", &[]).await.expect("evict everything");
    let body = json!({ "image_url": second_upload, "prompt": "studio light" });
    let (status, fresh) = stack.submit(&key, &body).await.expect("submit");
    assert_eq!((status, fresh["error"]["code"].as_str()), (429, Some("too-many-queued-jobs")), "{fresh}");
    assert_eq!(fal_requests(&stack).await, 1);

    let id = hit["jobId"].as_str().expect("id");
    stack.wait_notification(&key, id, "delivered", WAIT).await.expect("notified");
    let delivery = hook
        .deliveries()
        .into_iter()
        .find(|d| String::from_utf8_lossy(&d.body).contains(id))
        .expect("the hit's webhook");
    hooks::verify_standard_webhooks(&secret, &delivery).expect("signed");
    let event: Value = serde_json::from_slice(&delivery.body).expect("json");
    assert_eq!(event["type"], "job.completed", "{event}");
    stack.drop_database().await.expect("drop database");
}

/// Deleting one entry never breaks another's: the object stays while any gallery entry refers
/// to it, and goes (after the grace period) once none does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cache_deleting_one_entry_keeps_the_others_image() {
    let mut stack = Stack::start(cached_stack(CacheScope::Shared)).await.expect("stack");
    let (_, ana, _) = stack.user("ana@example.com").await.expect("user");
    let (_, ben, _) = stack.user("ben@example.com").await.expect("user");
    let photo = std::fs::read(jewelshot_testkit::processes::fixture_photo()).expect("photo");
    let host = servers::serve_files(HashMap::from([("/x.jpg".into(), photo)])).await.expect("file server");
    stack.start_worker().expect("worker");
    let body = json!({ "image_url": format!("{host}/x.jpg"), "prompt": "gold tint" });
    let first = submit(&stack, &ana, body.clone()).await;
    complete(&stack, &ana, first["jobId"].as_str().expect("id")).await;
    let second = submit(&stack, &ben, body).await;
    let second = complete(&stack, &ben, second["jobId"].as_str().expect("id")).await;
    assert_eq!(second["cached"], true, "scope `shared`: another user's result is reused: {second}");
    assert_eq!(fal_requests(&stack).await, 1);
    let objects = result_objects(&stack.files);
    assert_eq!(objects.len(), 1);

    let delete = |key: String, id: String| {
        let url = format!("{}/api/gallery/{id}", stack.gateway_url());
        let http = stack.http.clone();
        async move { http.delete(url).bearer_auth(key).send().await.expect("delete").status().as_u16() }
    };
    let ana_image = gallery(&stack, &ana).await[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(delete(ben.clone(), ana_image.clone()).await, 404, "another user's image is not found");
    assert_eq!(delete(ana.clone(), ana_image.clone()).await, 204);
    assert_eq!(delete(ana.clone(), ana_image).await, 404, "gone");
    // Ben's image is still served (fetch asserts a 200).
    assert!(!fetch(&stack, second["imageUrl"].as_str().expect("url")).await.is_empty());
    assert_eq!(result_objects(&stack.files), objects, "ben's entry keeps the object");

    let ben_image = gallery(&stack, &ben).await[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(delete(ben.clone(), ben_image).await, 204);
    // Nothing refers to it now: it goes once its grace period is over (made due at once here).
    let sql = stack.db.client().await.expect("sql");
    let due = sql.execute("UPDATE object_tombstones SET due_at = now()", &[]).await.expect("make due");
    assert_eq!(due, 1, "one object tombstoned");
    let gone = tokio::time::timeout(WAIT, async {
        while !result_objects(&stack.files).is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the unreferenced object was not deleted:\n{}", stack.worker_logs());
    stack.drop_database().await.expect("drop database");
}

/// Submit `request`, wait for it to complete; whether it was `cached`.
async fn cached_run(stack: &Stack, key: &str, request: &Value) -> Value {
    let job = submit(stack, key, request.clone()).await;
    complete(stack, key, job["jobId"].as_str().expect("id")).await["cached"].clone()
}

/// The cache follows the model the workers run, not a gateway setting: a result made by model A
/// is reused while the fleet runs A; once the fleet runs B the same request asks fal again (and
/// B's result is reused from then on); while the fleet runs both, requests bypass the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cache_follows_the_model_the_workers_run() {
    let mut stack = Stack::start(cached_stack(CacheScope::User)).await.expect("stack");
    let (_, key, _) = stack.user("ana@example.com").await.expect("user");
    let photo = std::fs::read(jewelshot_testkit::processes::fixture_photo()).expect("photo");
    let host = servers::serve_files(HashMap::from([("/a.jpg".into(), photo)])).await.expect("file server");
    let run_on = |model: &'static str| move |c: &mut jewelshot_worker::Config| c.fal.client.model = model.into();
    let request = json!({ "image_url": format!("{host}/a.jpg"), "prompt": "white background" });
    // The gateway reads the fleet's model at most every 2 s.
    let settle = || tokio::time::sleep(Duration::from_millis(2_500));

    let a = stack.start_worker_with(run_on("fal-ai/model-a")).expect("worker on model A");
    settle().await;
    assert_eq!(cached_run(&stack, &key, &request).await, false);
    assert_eq!(cached_run(&stack, &key, &request).await, true, "model A's result, reused while the fleet runs A");
    assert_eq!(fal_requests(&stack).await, 1);

    // A rollout: A stops (withdrawing its model), B starts.
    stack.workers[a].sigterm(Duration::from_secs(30)).expect("worker A stops");
    stack.start_worker_with(run_on("fal-ai/model-b")).expect("worker on model B");
    settle().await;
    assert_eq!(cached_run(&stack, &key, &request).await, false, "model A's result is not model B's");
    assert_eq!(fal_requests(&stack).await, 2);
    assert_eq!(cached_run(&stack, &key, &request).await, true, "model B's result, reused while the fleet runs B");
    assert_eq!(fal_requests(&stack).await, 2);

    // Two models live at once: nobody can say which one a request will meet.
    stack.start_worker_with(run_on("fal-ai/model-a")).expect("worker on model A again");
    settle().await;
    assert_eq!(cached_run(&stack, &key, &request).await, false, "a mixed fleet bypasses the cache");
    assert_eq!(cached_run(&stack, &key, &request).await, false, "and keeps bypassing it");
    assert_eq!(fal_requests(&stack).await, 4);
}
