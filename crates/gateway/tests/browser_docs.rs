//! Issue I, acceptance 6: the API reference at `/docs` renders the generated spec in headless
//! Chromium with no network but loopback (Redoc is embedded in the gateway). `just test-browser`
//! runs it (it installs Chromium); a screenshot goes to `target/browser/docs.png`.

use std::time::Duration;

use jewelshot_testkit::{browser, Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium: just test-browser"]
async fn browser_the_docs_page_renders_the_spec_offline() {
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let url = format!("{}/docs", stack.gateway_url());
    let page = stack.http.get(&url).send().await.expect("docs");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().expect("csp").to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");

    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || browser::dump_dom(&url, Duration::from_secs(20))
    })
    .await
    .expect("join")
    .expect("dom");
    // Rendered by Redoc from /api/openapi.json: operations, their paths and the schemas.
    for text in ["Submit an edit", "Follow a job live", "/api/jobs/{job_id}/events", "image_url", "queuePosition"] {
        assert!(dom.contains(text), "the rendered page lacks {text:?}:\n{}", &dom[..dom.len().min(3000)]);
    }
    assert!(!dom.contains("Something went wrong"), "Redoc reported an error");
    let shot = browser::screenshot_path("docs.png").expect("target/browser");
    tokio::task::spawn_blocking(move || browser::screenshot(&url, &shot, (1280, 1600), Duration::from_secs(20)))
        .await
        .expect("join")
        .expect("screenshot");
}
