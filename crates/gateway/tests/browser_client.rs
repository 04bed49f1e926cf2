//! Issue I, acceptance 4 (the client): the web client at `/` driven in headless Chromium through
//! WebDriver (chromedriver), with no network but loopback. It signs in with a key, uploads a
//! fixture photo (the compression is shown), submits behind three other jobs, shows the place in
//! line falling over the live status stream, then the result image — checked loaded by the
//! browser, not only present in the DOM. `just test-browser`; screenshots in `target/browser/`.

use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use jewelshot_testkit::{browser, browser::WebDriver, fixture_photo, Stack, StackOptions};
use serde_json::json;

async fn text(client: &Client, id: &str) -> String {
    match client.find(Locator::Id(id)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn wait_text(client: &Client, id: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let t = text(client, id).await;
        if ok(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "#{id} still reads {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(browser::screenshot_path(name).expect("target/browser"), png).expect("write screenshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and chromedriver: just test-browser"]
async fn browser_the_web_client_uploads_submits_and_shows_the_result_live() {
    // One generation at a time, each a while: the browser's job waits behind three others.
    let opts = StackOptions::emulator(&["--latency-ms", "700-900", "--max-concurrent", "1", "--max-per-minute", "0"]);
    let mut stack = Stack::start(opts).await.expect("stack");
    let (_, key, _) = stack.user("browser@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("upload");
    for i in 0..3 {
        let (status, body) =
            stack.submit(&key, &json!({"imageUrl": input, "prompt": format!("ahead {i}")})).await.expect("submit");
        assert_eq!(status, 202, "{body}");
    }

    let driver = WebDriver::start(&stack.logs).expect("chromedriver");
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(WebDriver::capabilities().expect("capabilities"))
        .connect(&driver.url)
        .await
        .expect("a browser session");
    client.goto(&format!("{}/", stack.gateway_url())).await.expect("open the client");

    client.find(Locator::Id("key")).await.expect("key field").send_keys(&key).await.expect("type the key");
    client.find(Locator::Id("signin-btn")).await.expect("sign in").click().await.expect("click");
    client.wait().for_element(Locator::Css("#edit:not([hidden])")).await.expect("signed in");

    let photo = fixture_photo();
    let file = client.find(Locator::Id("photo")).await.expect("file input");
    file.send_keys(&photo.display().to_string()).await.expect("choose the photo");
    let compression = wait_text(&client, "compression", Duration::from_secs(20), |t| t.contains('→')).await;
    println!("upload: {compression}");
    client.find(Locator::Id("submit")).await.expect("submit").click().await.expect("click");
    let first = wait_text(&client, "position", Duration::from_secs(10), |t| t.parse::<u32>().is_ok()).await;
    assert_eq!(first, "4", "three jobs ahead");
    screenshot(&client, "client-queued.png").await;

    // Now the line moves; the page follows it over the live stream.
    stack.start_worker().expect("worker");
    let mut seen: Vec<u32> = vec![4];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = text(&client, "status").await;
        if let Ok(p) = text(&client, "position").await.parse::<u32>() {
            if seen.last() != Some(&p) {
                seen.push(p);
            }
        }
        if status == "complete" {
            break;
        }
        assert!(!["failed", "canceled"].contains(&status.as_str()), "the job ended {status}");
        assert!(Instant::now() < deadline, "not complete within a minute; positions {seen:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!("positions shown: {seen:?}");
    assert!(seen.len() >= 3 && seen.windows(2).all(|w| w[1] < w[0]), "the place in line fell: {seen:?}");

    // The result image loaded (decoded by the browser), beside the original.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let loaded = client
            .execute(
                "const a = document.getElementById('after'), b = document.getElementById('before');\
                 return [a.complete ? a.naturalWidth : 0, b.complete ? b.naturalWidth : 0];",
                vec![],
            )
            .await
            .expect("script");
        let widths: Vec<u64> = serde_json::from_value(loaded).expect("widths");
        if widths.iter().all(|w| *w > 0) {
            println!("before/after image widths: {widths:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the result image did not load: {widths:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.wait().for_element(Locator::Css("#gallery li img")).await.expect("the result in the gallery");
    screenshot(&client, "client-complete.png").await;
    client.close().await.expect("close");
}
