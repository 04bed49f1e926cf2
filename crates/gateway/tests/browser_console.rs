//! Issue I, acceptance 4 (the console): the operator console at `/admin` in headless Chromium
//! through WebDriver. A job fails (fal refuses our key); the console, opened with an operator
//! token, lists it under its error code; once fal is back, its Requeue button requeues it and the
//! job completes. A user's API key does not open the console; read-only mode refuses the action.
//! `just test-browser`; screenshots in `target/browser/`.

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use jewelshot_testkit::{browser, browser::WebDriver, Stack, StackOptions};
use serde_json::json;
use sha2::Digest;

const TOKEN: &str = "jso_console-test-operator-token";

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(browser::screenshot_path(name).expect("target/browser"), png).expect("write screenshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and chromedriver: just test-browser"]
async fn browser_the_console_shows_a_failed_job_and_requeues_it() {
    let digest = hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()));
    let mut opts = StackOptions::default();
    opts.gateway_env.insert("JEWELSHOT_CONSOLE__TOKEN_HASHES".into(), format!("[\"{digest}\"]"));
    let mut stack = Stack::start(opts).await.expect("stack");
    let (_, key, _) = stack.user("shop@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("upload");

    // An outage: fal refuses our key, and the job fails.
    let revoke = format!("{}/__keys/test-key-1/revoke", stack.emulator_url());
    stack.http.post(&revoke).send().await.expect("revoke");
    stack.start_worker().expect("worker");
    let (_, body) = stack.submit(&key, &json!({"imageUrl": input, "prompt": "outage"})).await.expect("submit");
    let id = body["jobId"].as_str().expect("id").to_owned();
    let failed = stack.wait_final(&key, &id, Duration::from_secs(30)).await.expect("final");
    assert_eq!(failed["error"]["code"], "upstream-unauthorized", "{failed}");

    // The console's API takes an operator token, never a user's key.
    let overview = format!("{}/admin/api/overview", stack.gateway_url());
    assert_eq!(stack.http.get(&overview).bearer_auth(&key).send().await.expect("get").status(), 401);
    assert_eq!(stack.http.get(&overview).send().await.expect("get").status(), 401);

    let driver = WebDriver::start(&stack.logs).expect("chromedriver");
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(WebDriver::capabilities().expect("capabilities"))
        .connect(&driver.url)
        .await
        .expect("a browser session");
    client.goto(&format!("{}/admin", stack.gateway_url())).await.expect("open the console");
    client.find(Locator::Id("token")).await.expect("token field").send_keys(TOKEN).await.expect("type");
    client.find(Locator::Id("signin-btn")).await.expect("open").click().await.expect("click");
    let row = Locator::Css("table[data-code='upstream-unauthorized'] button.requeue");
    let button = client.wait().at_most(Duration::from_secs(10)).for_element(row).await.expect("the failed job listed");
    assert_eq!(button.attr("data-job").await.expect("attr").as_deref(), Some(id.as_str()));
    let failures = client.find(Locator::Id("failures")).await.expect("failures").text().await.expect("text");
    assert!(failures.contains(&id), "{failures}");
    let cache = client.find(Locator::Id("cache")).await.expect("cache panel").text().await.expect("text");
    assert!(cache.contains("hit rate (1 h)"), "the result cache's panel: {cache}");
    screenshot(&client, "console-failed.png").await;

    // fal is back; requeue from the console.
    stack.http.post(revoke.replace("/revoke", "/restore")).send().await.expect("restore");
    button.click().await.expect("requeue");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let result = loop {
        let t = client.find(Locator::Id("action-result")).await.expect("result").text().await.expect("text");
        if t.contains(": ") || std::time::Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(result.contains(&format!("{id}: requeued")), "{result}");
    // A poll says so at once (not the old `failed` until a worker takes it).
    let (_, now) = stack.get_job(&key, &id).await.expect("poll");
    assert_ne!(now["status"], "failed", "{now}");
    let done = stack.wait_final(&key, &id, Duration::from_secs(60)).await.expect("final");
    assert_eq!(done["status"], "complete", "requeued from the console: {done}");
    let stats = stack.emulator_stats().await.expect("stats");
    assert_eq!(stats["total"]["submitted"], 1, "fal saw the job once, after the outage: {stats}");
    client.find(Locator::Id("refresh")).await.expect("refresh").click().await.expect("click");
    tokio::time::sleep(Duration::from_millis(500)).await;
    screenshot(&client, "console-requeued.png").await;
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_is_off_without_operators_and_read_only_refuses_actions() {
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let base = stack.gateway_url().to_owned();
    assert_eq!(stack.http.get(format!("{base}/admin")).send().await.expect("get").status(), 404);
    assert_eq!(
        stack.http.get(format!("{base}/admin/api/overview")).bearer_auth(TOKEN).send().await.expect("get").status(),
        404
    );
    drop(stack);

    let digest = hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()));
    let mut opts = StackOptions::default();
    opts.gateway_env.insert("JEWELSHOT_CONSOLE__TOKEN_HASHES".into(), format!("[\"{digest}\"]"));
    opts.gateway_env.insert("JEWELSHOT_CONSOLE__READ_ONLY".into(), "true".into());
    let stack = Stack::start(opts).await.expect("stack");
    let (_, key, _) = stack.user("ro@example.com").await.expect("user");
    let (_, body) =
        stack.submit(&key, &json!({"imageUrl": "https://cdn.example.com/a.jpg", "prompt": "p"})).await.expect("submit");
    let id = body["jobId"].as_str().expect("id");
    let base = stack.gateway_url().to_owned();
    let overview: serde_json::Value = stack
        .http
        .get(format!("{base}/admin/api/overview"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(overview["readOnly"], true);
    assert_eq!(overview["queue"]["waitingNormal"], 1, "{overview}");
    assert_eq!(overview["lineHead"][0]["job"]["jobId"], id, "{overview}");
    // The test stack runs with the cache off; the console says so.
    assert_eq!(overview["cache"]["enabled"], false, "{overview}");
    assert!(overview["cache"]["hitRate"].is_null(), "no lookups, no rate: {overview}");
    assert!(
        overview["metrics"].as_array().is_some_and(|m| m
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.starts_with("jewelshot_http_requests_total")))),
        "{overview}"
    );
    let cancel =
        stack.http.post(format!("{base}/admin/api/jobs/{id}/cancel")).bearer_auth(TOKEN).send().await.expect("post");
    assert_eq!(cancel.status(), 403);
    let body: serde_json::Value = cancel.json().await.expect("json");
    assert_eq!(body["error"]["code"], "console-read-only");
    let (_, job) = stack.get_job(&key, id).await.expect("poll");
    assert_eq!(job["status"], "queued", "nothing changed");
}
