//! Acceptance A7: the worker's webhook verifies with the Standard Webhooks reference library,
//! and a retried delivery keeps its `webhook-id`.

use std::{collections::HashMap, process::Command, sync::Arc, time::Duration};

use jewelshot_testkit::{python, repo_root, Stack, StackOptions};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Mutex,
};

#[derive(Debug, Clone)]
struct Delivery {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A minimal HTTP receiver: answers 500 to the first delivery and 200 afterwards.
async fn receiver() -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hooks/jewelshot", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head_end, content_length) = loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (None, 0);
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..pos]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (Some(pos + 4), len);
                }
            };
            let Some(start) = head_end else { continue };
            while buf.len() < start + content_length {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let head = String::from_utf8_lossy(&buf[..start]).into_owned();
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
                .collect();
            let body = buf[start..(start + content_length).min(buf.len())].to_vec();
            let mut all = store.lock().await;
            all.push(Delivery { headers, body });
            let status = if all.len() == 1 { "500 Internal Server Error" } else { "200 OK" };
            drop(all);
            let _ = sock
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                .await;
        }
    });
    (url, seen)
}

fn verify_with_standard_webhooks(secret: &str, d: &Delivery) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let body = dir.path().join("body.json");
    std::fs::write(&body, &d.body).map_err(|e| e.to_string())?;
    let headers = json!({
        "webhook-id": d.headers.get("webhook-id"),
        "webhook-timestamp": d.headers.get("webhook-timestamp"),
        "webhook-signature": d.headers.get("webhook-signature"),
    });
    let out = Command::new(python())
        .arg(repo_root().join("deploy/interop/verify_webhook.py"))
        .arg(secret)
        .arg(&body)
        .arg(headers.to_string())
        .output()
        .map_err(|e| format!("running python (`just tools` sets it up): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_webhook_verifies_with_standard_webhooks_and_keeps_its_id() {
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let (_, key, secret) = stack.user("hooks@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("input");
    let (url, seen) = receiver().await;
    stack.start_worker().expect("worker");
    let (status, body) = stack
        .submit(&key, &json!({ "image_url": input, "prompt": "webhook me", "webhook_url": url }))
        .await
        .expect("submit");
    assert_eq!(status, 202, "{body}");
    let id = body["jobId"].as_str().expect("id").to_owned();
    let job = stack.wait_final(&key, &id, Duration::from_secs(30)).await.expect("final");
    assert_eq!(job["status"], "complete", "{job}");

    let mut deliveries = Vec::new();
    for _ in 0..200 {
        deliveries = seen.lock().await.clone();
        if deliveries.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(deliveries.len(), 2, "one failed delivery, then one retry:\n{}", stack.worker_logs());
    let ids: Vec<_> = deliveries.iter().map(|d| d.headers.get("webhook-id").cloned()).collect();
    assert!(ids[0].is_some() && ids[0] == ids[1], "the same webhook-id on every retry: {ids:?}");

    let event: Value = serde_json::from_slice(&deliveries[1].body).expect("json body");
    assert_eq!(event["type"], "job.completed");
    assert_eq!(event["data"]["jobId"], id.as_str());
    assert_eq!(event["data"]["status"], "complete");
    assert_eq!(event["data"]["imageUrl"], job["imageUrl"]);

    for d in &deliveries {
        assert_eq!(verify_with_standard_webhooks(&secret, d), Ok("verified".to_owned()));
    }
    // The check can fail: a tampered body or another user's secret is refused.
    let mut tampered = deliveries[1].clone();
    tampered.body = tampered.body.iter().map(|b| if *b == b'1' { b'2' } else { *b }).collect();
    assert!(verify_with_standard_webhooks(&secret, &tampered).is_err());
    assert!(verify_with_standard_webhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &deliveries[1]).is_err());

    let step = stack.db.db.step(id.parse().expect("id"), jewelshot_domain::StepName::NotifyUser).await.expect("step");
    let output = step.and_then(|s| s.output).unwrap_or_default();
    assert_eq!(output["webhook"]["delivered"], true, "{output}");
    assert_eq!(output["webhook"]["attempts"], 2, "{output}");
}
