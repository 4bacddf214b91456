//! Shared test harness: a real herald on an ephemeral port (the shipped
//! `config.toml`, adjusted per test) and a real SSE client over TCP
//! (reqwest + sse-stream, which reports each event's own fields, so an event
//! without `id:` is visible as such).
//!
//! | file         | helpers                                                    |
//! |--------------|------------------------------------------------------------|
//! | `mod.rs`     | [`TestServer`] (in-process), refusals, JSON, `/metrics`    |
//! | `sse.rs`     | [`EventStream`]: a stream read event by event              |
//! | `raw.rs`     | raw TCP: hostile requests, streams the test closes itself  |
//! | `process.rs` | [`HeraldProcess`]: the real binary, its log, kill, limits  |
//! | `redis.rs`   | [`RedisServer`]: a real redis-server on an ephemeral port  |
//! | `tls.rs`     | test certificates; TLS and HTTP/2 clients                  |
//! | `browser.rs` | [`TestBrowser`]: a real headless Chromium over DevTools    |
#![allow(dead_code)] // each test binary uses a different part of the harness

mod browser;
mod process;
mod raw;
mod redis;
mod sse;
mod tls;

// Each test binary uses a different part of the harness.
#[allow(unused_imports)]
pub use {browser::*, process::*, raw::*, redis::*, sse::*, tls::*};

use std::{path::Path, time::Duration};

use herald::{
    config::Settings,
    startup::{Application, Shutdown},
};
use reqwest::{StatusCode, header::HeaderMap};
use serde_json::{Value, json};

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub base: String,
    pub settings: Settings,
    http: reqwest::Client,
    shutdown: Shutdown,
    /// The embedded store's directory, removed with the server.
    _data: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server on the shipped config with `adjust` applied.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let _ = env_logger::builder().is_test(true).try_init();
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        // The shipped file alone: the test process's environment is not
        // the server's configuration.
        let mut settings = Settings::layer(Some(&config), [])
            .expect("config.toml loads")
            .settings;
        settings.server.bind = "127.0.0.1:0".to_owned();
        settings.server.workers = 2;
        // Tests that shut down do not wait out a drain window unless they
        // set one.
        settings.server.drain_window = Duration::ZERO;
        let data = tempfile::tempdir().expect("a storage directory");
        settings.storage.path = data.path().to_owned();
        adjust(&mut settings);
        settings.validate().expect("adjusted settings are valid");
        Self::launch(settings, data).await
    }

    async fn launch(settings: Settings, data: tempfile::TempDir) -> Self {
        let (base, shutdown) = Self::serve(&settings).await;
        Self {
            base,
            settings,
            http: reqwest::Client::new(),
            shutdown,
            _data: data,
        }
    }

    async fn serve(settings: &Settings) -> (String, Shutdown) {
        let app = Application::build(settings.clone())
            .await
            .expect("server starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let shutdown = app.shutdown_handle();
        actix_web::rt::spawn(app.run_until_stopped());
        (base, shutdown)
    }

    /// Shuts the server down (streams ended, storage closed) and starts a
    /// new one on the same settings and storage directory, on a new port:
    /// what it knows is what its storage backend kept.
    pub async fn restart(&mut self) {
        self.shut_down().await;
        (self.base, self.shutdown) = Self::serve(&self.settings).await;
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
        match self.try_open(device, headers, query).await {
            Ok(stream) => stream,
            Err(refusal) => panic!("stream for {device}: {refusal:?}"),
        }
    }

    /// Like [`open`](Self::open), but a refusal is an answer, not a failure.
    pub async fn try_open(
        &self,
        device: &str,
        headers: &[(&str, &str)],
        query: &str,
    ) -> Result<EventStream, Refusal> {
        self.try_open_with(&self.http, device, headers, query).await
    }

    /// Like [`try_open`](Self::try_open), from a client the test built (e.g.
    /// bound to another source address).
    pub async fn try_open_with(
        &self,
        client: &reqwest::Client,
        device: &str,
        headers: &[(&str, &str)],
        query: &str,
    ) -> Result<EventStream, Refusal> {
        let mut request = client.get(format!("{}/v1/devices/{device}/events{query}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        EventStream::from_response(request.send().await.expect("stream request")).await
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

    /// Publishes events named `tick` to `device`, each as soon as the
    /// previous one was accepted, until [`Publishing::stop`].
    pub fn keep_publishing(&self, device: &str) -> Publishing {
        use tokio::sync::oneshot::{self, error::TryRecvError};

        let (stop, mut stopped) = oneshot::channel();
        let url = self.url(&format!("/v1/devices/{device}/events"));
        let (http, token) = (self.http.clone(), self.admin_token().to_owned());
        let task = actix_web::rt::spawn(async move {
            let mut ids = Vec::new();
            while let Err(TryRecvError::Empty) = stopped.try_recv() {
                let body = json!({ "event": "tick", "data": ids.len() });
                let request = http.post(&url).bearer_auth(&token).json(&body);
                let (status, reply) = read_json(request).await;
                assert_eq!(status, StatusCode::ACCEPTED, "publish: {reply}");
                ids.push(reply["id"].as_str().expect("an event id").to_owned());
            }
            ids
        });
        Publishing { stop, task }
    }

    /// A request built by the test, for malformed input.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `host:port`, for raw TCP.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }
}

/// A request the server answered with an error status instead of a stream.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Refusal {
    pub fn code(&self) -> &str {
        error_code(&self.body)
    }

    /// The `Retry-After` header, in seconds.
    pub fn retry_after(&self) -> u64 {
        self.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a Retry-After in seconds: {self:?}"))
    }
}

/// The `code` of an error body `{"error":{"code":…}}`.
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error body: {body}"))
}

/// The value of the sample `name` (with its labels, as exposed) in a
/// The device ids of a `GET /v1/devices` page, in order.
pub fn device_names(page: &Value) -> Vec<String> {
    let devices = page["devices"].as_array();
    (devices
        .unwrap_or_else(|| panic!("a device page: {page}"))
        .iter())
    .map(|d| d["device"].as_str().expect("a device id").to_owned())
    .collect()
}

/// `/metrics` exposition.
pub fn sample(exposition: &str, name: &str) -> f64 {
    let line = exposition
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '));
    let line = line.unwrap_or_else(|| panic!("no sample {name} in:\n{exposition}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
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

/// Publishes to one device back to back, from a task of its own, until
/// stopped (see [`TestServer::keep_publishing`]).
pub struct Publishing {
    stop: tokio::sync::oneshot::Sender<()>,
    task: actix_web::rt::task::JoinHandle<Vec<String>>,
}

impl Publishing {
    /// Stops after the publish under way; answers the id of every event
    /// published, in order.
    pub async fn stop(self) -> Vec<String> {
        let _ = self.stop.send(());
        self.task.await.expect("the publishing task")
    }
}
