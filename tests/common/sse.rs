//! An SSE stream read event by event, and helpers on its events.

use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::{StreamExt as _, stream::BoxStream};
use reqwest::{StatusCode, header::HeaderMap};
use serde_json::Value;
use sse_stream::{Sse, SseStream};

use super::*;

/// One open SSE stream, read event by event.
pub struct EventStream {
    pub headers: HeaderMap,
    events: BoxStream<'static, Result<Sse, sse_stream::Error>>,
}

impl EventStream {
    /// The stream whose response had these headers and this body.
    pub fn of_body<E: std::error::Error + Send + Sync + 'static>(
        headers: HeaderMap,
        body: impl futures_util::Stream<Item = Result<Bytes, E>> + Send + 'static,
    ) -> Self {
        let body = Box::pin(body);
        Self {
            headers,
            events: SseStream::from_bytes_stream(body).boxed(),
        }
    }

    /// The stream of a `200` response to a stream request the test sent, or
    /// the refusal.
    pub async fn from_response(response: reqwest::Response) -> Result<Self, Refusal> {
        let headers = response.headers().clone();
        if response.status() != StatusCode::OK {
            let status = response.status();
            let bytes = response.bytes().await.expect("refusal body");
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("refusal body is JSON: {}", String::from_utf8_lossy(&bytes))
            });
            return Err(Refusal {
                status,
                headers,
                body,
            });
        }
        Ok(Self::of_body(headers, response.bytes_stream()))
    }

    /// The next SSE event, or `None` when the stream ended. Fails the test
    /// if nothing comes within [`PATIENCE`].
    pub async fn next(&mut self) -> Option<Sse> {
        match tokio::time::timeout(PATIENCE, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(err))) => panic!("malformed stream: {err}"),
            Ok(None) => None,
            Err(_) => panic!("no event within {PATIENCE:?}"),
        }
    }

    /// Like [`next`](Self::next), but a connection cut mid-stream (its
    /// server killed) ends the stream instead of failing the test.
    pub async fn next_or_cut(&mut self) -> Option<Sse> {
        match tokio::time::timeout(PATIENCE, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("no event within {PATIENCE:?}"),
        }
    }

    /// The next event that is not a heartbeat.
    pub async fn next_event(&mut self) -> Sse {
        loop {
            let event = self.next().await.expect("an event, but the stream ended");
            if event.event.as_deref() != Some("heartbeat") {
                return event;
            }
        }
    }

    /// Reads the opening `retry:` and `hello`, answers hello's data.
    pub async fn hello(&mut self) -> Value {
        let retry = self.next().await.expect("retry");
        assert!(
            retry.retry.is_some() && retry.data.is_none(),
            "stream opens with retry: {retry:?}"
        );
        let hello = self.next_event().await;
        assert_eq!(hello.event.as_deref(), Some("hello"));
        assert_eq!(hello.id, None, "hello carries no id");
        data_json(&hello)
    }

    /// Expects the stream to end (after any heartbeats, and the `retry:`
    /// hint a draining server sends last).
    pub async fn expect_end(&mut self) {
        while let Some(event) = self.next().await {
            let retry_hint = event.retry.is_some() && event.data.is_none();
            let heartbeat = event.event.as_deref() == Some("heartbeat");
            assert!(retry_hint || heartbeat, "expected the end, got {event:?}");
        }
    }

    /// Every event that arrives within `window` (the stream stays open).
    pub async fn collect_for(&mut self, window: Duration) -> Vec<Sse> {
        let deadline = tokio::time::Instant::now() + window;
        let mut events = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.next()).await {
            events.push(event.expect("well-formed stream"));
        }
        events
    }
}

pub fn data_json(event: &Sse) -> Value {
    serde_json::from_str(event.data.as_deref().unwrap_or("")).expect("JSON data")
}

/// The events' `(id, event, data)`, for comparing sequences.
pub fn triples(events: &[Sse]) -> Vec<(Option<String>, Option<String>, Option<String>)> {
    events
        .iter()
        .map(|e| (e.id.clone(), e.event.clone(), e.data.clone()))
        .collect()
}

/// The sequence number of an event id (`<epoch>-<seq>`).
pub fn seq_of(id: &str) -> u64 {
    id.rsplit_once('-')
        .and_then(|(_, seq)| seq.parse().ok())
        .expect("an event id")
}

/// Reads a raw response body until its text contains `needle`.
pub async fn read_until<B: AsRef<[u8]>>(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<B>> + Unpin),
    needle: &str,
) {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout(PATIENCE, body.next())
            .await
            .expect("within the patience");
        seen.push_str(&String::from_utf8_lossy(
            chunk.expect("stream open").unwrap().as_ref(),
        ));
    }
}
