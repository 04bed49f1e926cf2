//! A fal answer that names URLs on another host (a compromised or spoofed upstream, a proxy in
//! the way) must never receive our key: the submit fails as a bad response and nothing is sent
//! to the foreign host, neither for a fresh submit nor for a stored request that points there.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use jewelshot_fal::{EditInput, FalClient, FalConfig, FalError, QueuedRequest, Secret};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A one-route HTTP server on port 0 answering every request with `body`; counts requests.
async fn server(body: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = sock.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    });
    (base, hits)
}

#[tokio::test]
async fn it_never_sends_the_key_to_a_host_fal_names() {
    let (foreign, foreign_hits) = server(r#"{"status":"COMPLETED"}"#.into()).await;
    let answer = format!(
        r#"{{"request_id":"r1","status_url":"{foreign}/r1/status","response_url":"{foreign}/r1","cancel_url":"{foreign}/r1/cancel"}}"#
    );
    let (queue, queue_hits) = server(answer).await;
    let cfg = FalConfig { queue_url: queue, key: Secret("the-key".into()), ..Default::default() };
    let fal = FalClient::new(cfg).expect("client");
    let input = EditInput { image_url: "https://a.example/x.jpg".into(), prompt: "p".into() };
    let err = fal.submit(&input).await.expect_err("foreign URLs are refused");
    assert!(matches!(err, FalError::BadResponse(_)), "{err:?}");
    assert_eq!(queue_hits.load(Ordering::SeqCst), 1);

    let stored = QueuedRequest {
        request_id: "r1".into(),
        status_url: format!("{foreign}/r1/status"),
        response_url: format!("{foreign}/r1"),
        cancel_url: format!("{foreign}/r1/cancel"),
        queue_position: None,
    };
    assert!(matches!(fal.status(&stored).await, Err(FalError::BadResponse(_))));
    assert!(matches!(fal.result(&stored).await, Err(FalError::BadResponse(_))));
    assert!(matches!(fal.cancel(&stored).await, Err(FalError::BadResponse(_))));
    assert_eq!(foreign_hits.load(Ordering::SeqCst), 0, "the foreign host never heard from us");
}
