//! A webhook receiver for tests: a real HTTP/1.1 listener on port 0 that records every
//! delivery, answers the statuses a test scripts, or accepts and never answers (to hold a
//! sender's connection until it gives up), and counts the connections it holds at once.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Verify `d` with the Standard Webhooks reference library (Python, set up by `just tools`) and
/// `secret`: `Ok("verified")`, or the library's complaint.
pub fn verify_standard_webhooks(secret: &str, d: &Delivery) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let body = dir.path().join("body.json");
    std::fs::write(&body, &d.body).map_err(|e| e.to_string())?;
    let headers = serde_json::json!({
        "webhook-id": d.headers.get("webhook-id"),
        "webhook-timestamp": d.headers.get("webhook-timestamp"),
        "webhook-signature": d.headers.get("webhook-signature"),
    });
    let out = std::process::Command::new(crate::python())
        .arg(crate::repo_root().join("deploy/interop/verify_webhook.py"))
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

/// One request as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

#[derive(Debug, Default)]
struct Shared {
    deliveries: Mutex<Vec<Delivery>>,
    script: Mutex<VecDeque<u16>>,
    status: AtomicU16,
    hang: AtomicBool,
    open: AtomicUsize,
    max_open: AtomicUsize,
}

/// The receiver; it stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    /// `http://127.0.0.1:<port>/hooks/jewelshot`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Answers 200 until told otherwise.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hooks/jewelshot", listener.local_addr()?);
        let shared = Arc::new(Shared { status: AtomicU16::new(200), ..Default::default() });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, s.clone()));
            }
        });
        Ok(Self { url, shared, task })
    }

    /// Answer `status` from now on (after any scripted answers).
    pub fn answer(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Answer these statuses to the next requests, in order, then the standing answer.
    pub fn script(&self, statuses: &[u16]) {
        if let Ok(mut s) = self.shared.script.lock() {
            s.extend(statuses);
        }
    }

    /// Accept and read requests but never answer them (until turned off).
    pub fn hang(&self, on: bool) {
        self.shared.hang.store(on, Ordering::SeqCst);
    }

    /// Every request received so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Connections held open right now, and the most held at once.
    pub fn open(&self) -> (usize, usize) {
        (self.shared.open.load(Ordering::SeqCst), self.shared.max_open.load(Ordering::SeqCst))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection (one request: every answer closes it).
async fn serve(mut sock: TcpStream, s: Arc<Shared>) {
    let now = s.open.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_open.fetch_max(now, Ordering::SeqCst);
    if let Some(d) = read_request(&mut sock).await {
        if let Ok(mut all) = s.deliveries.lock() {
            all.push(d);
        }
        if s.hang.load(Ordering::SeqCst) {
            // Hold the connection until the sender gives up and closes it.
            let mut sink = [0u8; 1024];
            while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
        } else {
            let scripted = s.script.lock().ok().and_then(|mut q| q.pop_front());
            let status = scripted.unwrap_or_else(|| s.status.load(Ordering::SeqCst));
            let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = sock.write_all(head.as_bytes()).await;
        }
    }
    s.open.fetch_sub(1, Ordering::SeqCst);
}

async fn read_request(sock: &mut TcpStream) -> Option<Delivery> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (start, len) = loop {
        let n = sock.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (pos + 4, len);
        }
    };
    while buf.len() < start + len {
        let n = sock.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..start]).into_owned();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Delivery { headers, body: buf[start..start + len].to_vec() })
}
