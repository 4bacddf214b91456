//! Shared test harness: a real herald on an ephemeral port (the shipped
//! `config.toml`, adjusted per test) and a real SSE client over TCP
//! (reqwest + sse-stream, which reports each event's own fields, so an event
//! without `id:` is visible as such).
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::{path::Path, time::Duration};

use futures_util::{StreamExt as _, stream::BoxStream};
use herald::{
    config::Settings,
    startup::{Application, Shutdown},
};
use reqwest::{StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use sse_stream::{Sse, SseStream};

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub base: String,
    pub settings: Settings,
    http: reqwest::Client,
    shutdown: Shutdown,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server on the shipped config with `adjust` applied.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let _ = env_logger::builder().is_test(true).try_init();
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let mut settings = Settings::load(&config).expect("config.toml loads");
        settings.server.bind = "127.0.0.1:0".to_owned();
        settings.server.workers = 2;
        adjust(&mut settings);
        settings.validate().expect("adjusted settings are valid");
        let app = Application::build(settings.clone()).expect("server starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let shutdown = app.shutdown_handle();
        actix_web::rt::spawn(app.run_until_stopped());
        Self {
            base,
            settings,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    pub fn admin_token(&self) -> &str {
        &self.settings.admin.tokens[0]
    }

    pub async fn shut_down(&self) {
        self.shutdown.shut_down().await;
    }

    /// The first step of shutdown only: the server keeps its connections.
    pub async fn drain(&self) {
        self.shutdown.drain().await;
    }

    /// A fresh stream (no position).
    pub async fn connect(&self, device: &str) -> EventStream {
        self.open(device, &[], "").await
    }

    /// A stream resuming from `last_event_id`, sent as the header.
    pub async fn resume(&self, device: &str, last_event_id: &str) -> EventStream {
        self.open(device, &[("Last-Event-ID", last_event_id)], "")
            .await
    }

    /// A stream resuming from `last_event_id`, sent as the query parameter.
    pub async fn resume_via_query(&self, device: &str, last_event_id: &str) -> EventStream {
        let query = format!("?lastEventId={}", urlencode(last_event_id));
        self.open(device, &[], &query).await
    }

    /// A stream with the given request headers and query string (`?…` or "").
    pub async fn open(&self, device: &str, headers: &[(&str, &str)], query: &str) -> EventStream {
        let mut request = self
            .http
            .get(format!("{}/v1/devices/{device}/events{query}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("stream request");
        assert_eq!(response.status(), StatusCode::OK, "stream for {device}");
        let headers = response.headers().clone();
        EventStream {
            headers,
            events: SseStream::from_bytes_stream(response.bytes_stream()).boxed(),
        }
    }

    /// Publishes and expects `202`; answers the reply body.
    pub async fn publish(&self, device: &str, event: &str, data: Value) -> Value {
        let path = format!("/v1/devices/{device}/events");
        let (status, body) = self
            .admin_post(&path, &json!({ "event": event, "data": data }))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "publish to {device}: {body}");
        body
    }

    /// Broadcasts and expects `202`; answers the reply body.
    pub async fn broadcast(&self, event: &str, data: Value) -> Value {
        let (status, body) = self
            .admin_post("/v1/broadcast", &json!({ "event": event, "data": data }))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "broadcast: {body}");
        body
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let request = self
            .http
            .post(self.url(path))
            .bearer_auth(self.admin_token())
            .json(body);
        read_json(request).await
    }

    /// A request built by the test, for malformed input.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Sends and answers status and JSON body (`Null` when the body is empty).
pub async fn read_json(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request");
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, body)
}

fn urlencode(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One open SSE stream, read event by event.
pub struct EventStream {
    pub headers: HeaderMap,
    events: BoxStream<'static, Result<Sse, sse_stream::Error>>,
}

impl EventStream {
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

    /// Expects the stream to end (after any heartbeats).
    pub async fn expect_end(&mut self) {
        while let Some(event) = self.next().await {
            assert_eq!(
                event.event.as_deref(),
                Some("heartbeat"),
                "expected the end, got {event:?}"
            );
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
