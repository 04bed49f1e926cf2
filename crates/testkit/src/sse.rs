//! A Server-Sent Events client for tests and benchmarks: `GET …/events` with a bearer key (and
//! `Last-Event-ID`), read event by event as a browser's `EventSource` would.

use std::{pin::Pin, time::Duration};

use anyhow::Context;
use futures::{Stream, StreamExt};

/// One event: its `id`, its `event` name and its `data` parsed as JSON.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event: String,
    pub data: serde_json::Value,
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// An open stream.
pub struct EventStream {
    body: Body,
    buf: String,
    heartbeats: usize,
    ended: bool,
}

impl EventStream {
    /// Open `url`; fails unless the answer is 200 `text/event-stream`.
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
        key: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut req = http.get(url).bearer_auth(key).header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.context("opening the event stream")?;
        anyhow::ensure!(resp.status() == 200, "event stream answered {}", resp.status());
        let kind = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        anyhow::ensure!(kind.starts_with("text/event-stream"), "content-type {kind}");
        Ok(Self { body: Box::pin(resp.bytes_stream()), buf: String::new(), heartbeats: 0, ended: false })
    }

    /// Comments (`: keep-alive`) read so far.
    pub fn heartbeats(&self) -> usize {
        self.heartbeats
    }

    /// The next event; `None` once the server ended the stream. Fails after `timeout` without one.
    pub async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<Option<Event>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(event) = self.parse(&block)? {
                    return Ok(Some(event));
                }
            }
            if self.ended {
                return Ok(None);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => anyhow::bail!("no event within {timeout:?}"),
                Ok(None) => self.ended = true,
                Ok(Some(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk.context("reading the stream")?)),
            }
        }
    }

    fn parse(&mut self, block: &str) -> anyhow::Result<Option<Event>> {
        let (mut id, mut event, mut data) = (String::new(), String::from("message"), String::new());
        for line in block.lines() {
            if line.starts_with(':') {
                self.heartbeats += 1;
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_owned();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        if data.is_empty() {
            return Ok(None);
        }
        let data = serde_json::from_str(&data).with_context(|| format!("event data is not JSON: {data}"))?;
        Ok(Some(Event { id, event, data }))
    }
}
