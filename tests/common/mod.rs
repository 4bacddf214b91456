//! Shared test harness: a real herald on an ephemeral port (the shipped
//! `config.toml`, adjusted per test) and a real SSE client over TCP
//! (reqwest + sse-stream, which reports each event's own fields, so an event
//! without `id:` is visible as such).
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::{path::Path, time::Duration};

use actix_web::web::Bytes;
use futures_util::{StreamExt as _, stream::BoxStream};
use herald::{
    config::Settings,
    startup::{Application, Shutdown},
};
use reqwest::{
    StatusCode,
    header::{HeaderMap, HeaderName, HeaderValue},
};
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

/// Sends `request` as raw bytes on a new connection and answers everything
/// the server sent before it closed the connection (a reset counts as a
/// close: the server may close before reading all of a hostile request).
/// Fails the test if the connection is still open after [`PATIENCE`].
pub async fn raw_exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may refuse and close before taking all of it.
    let _ = tcp.write_all(request).await;
    let mut answer = Vec::new();
    let read_to_close = async {
        let mut buf = [0; 8192];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read_to_close)
        .await
        .unwrap_or_else(|_| panic!("the server closes the connection within {PATIENCE:?}"));
    answer
}

/// The status code of a raw HTTP/1.1 answer, if it holds one.
pub fn raw_status(answer: &[u8]) -> Option<u16> {
    let answer = String::from_utf8_lossy(answer);
    let rest = answer.strip_prefix("HTTP/1.1 ")?;
    rest.get(..3)?.parse().ok()
}

/// A stream request (with these headers) on a TCP connection of the test's
/// own to `addr`, so that the test knows when its socket is closed (see
/// [`RawStream::close`]); answers the stream, or the refusal.
pub async fn try_open_raw(
    addr: &str,
    device: &str,
    headers: &[(&str, &str)],
) -> Result<RawStream, Refusal> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = tcp.into_split();
    let mut request = format!(
        "GET /v1/devices/{device}/events HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        addr
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    write
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut received = Vec::new();
    let head_end = loop {
        if let Some(at) = find(&received, b"\r\n\r\n") {
            break at + 4;
        }
        let mut buf = [0; 8192];
        let n = tokio::time::timeout(PATIENCE, read.read(&mut buf))
            .await
            .expect("a response head within the patience")
            .expect("read");
        assert!(n > 0, "the server closed without answering");
        received.extend_from_slice(&buf[..n]);
    };
    let status = raw_status(&received).expect("a status line");
    let status = StatusCode::from_u16(status).expect("a status code");
    let headers = raw_headers(&received[..head_end]);
    let mut body = received.split_off(head_end);
    if status != StatusCode::OK {
        // `Connection: close`: the body ends with the connection.
        tokio::time::timeout(PATIENCE, read.read_to_end(&mut body))
            .await
            .expect("the refusal within the patience")
            .expect("read");
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("refusal body is JSON: {}", String::from_utf8_lossy(&body)));
        return Err(Refusal {
            status,
            headers,
            body,
        });
    }
    assert_eq!(
        headers.get("transfer-encoding").map(|v| v.as_bytes()),
        Some(&b"chunked"[..]),
        "a stream is sent in chunks"
    );
    let events = SseStream::from_bytes_stream(dechunked(read, body)).boxed();
    Ok(RawStream {
        stream: EventStream { headers, events },
        write,
    })
}

/// The header lines of a raw HTTP/1.1 head.
fn raw_headers(head: &[u8]) -> HeaderMap {
    let head = std::str::from_utf8(head).expect("an ASCII head");
    let lines = head.split("\r\n").skip(1).filter(|line| !line.is_empty());
    lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("a header line");
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a header name");
            (
                name,
                HeaderValue::from_str(value.trim()).expect("a header value"),
            )
        })
        .collect()
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The decoded body of a chunked response read from `read`, starting with
/// `buffered` (what came with the head). Ends when the server closes the
/// connection (or resets it).
fn dechunked(
    read: tokio::net::tcp::OwnedReadHalf,
    buffered: Vec<u8>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    use tokio::io::AsyncReadExt as _;

    futures_util::stream::unfold((read, buffered), |(mut read, mut buffered)| async move {
        loop {
            if let Some((data, taken)) = first_chunk(&buffered) {
                buffered.drain(..taken);
                return Some((Ok(data), (read, buffered)));
            }
            let mut buf = [0; 8192];
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buffered.extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// The data of the first complete chunk in `buffered`, and how many bytes
/// the chunk takes there.
fn first_chunk(buffered: &[u8]) -> Option<(Bytes, usize)> {
    let line_end = find(buffered, b"\r\n")?;
    let line = std::str::from_utf8(&buffered[..line_end]).expect("a chunk size line");
    let size = line.split(';').next().unwrap_or_default().trim();
    let size = usize::from_str_radix(size, 16).expect("a chunk size");
    let (start, end) = (line_end + 2, line_end + 2 + size);
    let data = buffered.get(start..end)?;
    (buffered.len() >= end + 2).then(|| (Bytes::copy_from_slice(data), end + 2))
}

/// The value of the sample `name` (with its labels, as exposed) in a
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

/// One open SSE stream, read event by event.
pub struct EventStream {
    pub headers: HeaderMap,
    events: BoxStream<'static, Result<Sse, sse_stream::Error>>,
}

impl EventStream {
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
        Ok(Self {
            headers,
            events: SseStream::from_bytes_stream(response.bytes_stream()).boxed(),
        })
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

/// A stream on a TCP connection of the test's own (see
/// [`try_open_raw`]), read like any [`EventStream`].
pub struct RawStream {
    stream: EventStream,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl RawStream {
    /// Closes the connection, as a client closing its stream does: when this
    /// returns, the socket is closed and its FIN (or, with events still
    /// unread, its reset) is sent.
    pub fn close(self) {
        drop(self);
    }
}

impl std::ops::Deref for RawStream {
    type Target = EventStream;

    fn deref(&self) -> &EventStream {
        &self.stream
    }
}

impl std::ops::DerefMut for RawStream {
    fn deref_mut(&mut self) -> &mut EventStream {
        &mut self.stream
    }
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

/// The herald binary on the shipped config, logging at info (the caller may
/// override `RUST_LOG` and any `HERALD_…` variable).
pub fn herald_command(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"));
    command.args(args).env("RUST_LOG", "info");
    command
}

/// A running herald process on an ephemeral port, its stderr (the log)
/// collected line by line.
pub struct HeraldProcess {
    /// `None` once waited for.
    child: Option<std::process::Child>,
    pub port: u16,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
}

impl HeraldProcess {
    /// Starts herald on the shipped config with `--bind 127.0.0.1:0` and
    /// these environment variables; answers once it has logged
    /// `server.started`.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(env, |_| {}).await
    }

    /// Like [`start`](Self::start), with at most `open_files` open files
    /// (soft and hard limit), as a constrained host would give it.
    pub async fn start_with_open_files(env: &[(&str, &str)], open_files: u64) -> Self {
        use std::os::unix::process::CommandExt as _;

        Self::start_with(env, |command| {
            let limit = libc::rlimit {
                rlim_cur: open_files,
                rlim_max: open_files,
            };
            // SAFETY: runs in the forked child before exec; setrlimit is a
            // single async-signal-safe system call on a struct it only reads.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        })
        .await
    }

    async fn start_with(
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> Self {
        let mut command = herald_command(&["--bind", "127.0.0.1:0"]);
        // No drain window unless the test sets one (its `env` comes after).
        command.env("HERALD_SERVER__DRAIN_WINDOW", "0s");
        command.envs(env.iter().copied());
        adjust(&mut command);
        Self::spawn(command).await
    }

    /// Starts `command` (a herald that binds port 0 and logs at info);
    /// answers once it has logged `server.started`.
    pub async fn spawn(mut command: std::process::Command) -> Self {
        use std::io::{BufRead as _, BufReader};

        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("herald binary starts");
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
        std::thread::spawn(move || {
            stderr
                .lines()
                .map_while(Result::ok)
                .for_each(|line| drop(lines_tx.send(line)));
        });
        let mut log = Vec::new();
        let port = loop {
            let line = tokio::time::timeout(PATIENCE, lines.recv())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("server.started is logged:\n{}", log.join("\n")));
            log.push(line.clone());
            if line.contains("server.started") {
                // `port=N` in text format, `"port":N` in JSON.
                let port = line
                    .split(['=', ':', ' ', ',', '}'])
                    .skip_while(|w| !w.ends_with("port") && *w != "\"port\"")
                    .nth(1);
                break port.expect("a port field").parse::<u16>().expect("a port");
            }
        };
        Self {
            child: Some(child),
            port,
            lines,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// How many files the process has open now.
    pub fn open_files(&self) -> usize {
        let pid = self.child.as_ref().expect("running").id();
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/PID/fd is readable")
            .count()
    }

    /// Waits for a log line containing every one of `parts`, and answers it.
    pub async fn expect_log(&mut self, parts: &[&str]) -> String {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.recv())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("no log line with {parts:?}:\n{}", self.log.join("\n")));
            self.log.push(line.clone());
            if parts.iter().all(|part| line.contains(part)) {
                return line;
            }
        }
    }

    /// The log lines read so far.
    pub fn log_lines(&self) -> &[String] {
        &self.log
    }

    /// Sends SIGTERM, expects exit status 0, and answers the whole log.
    pub async fn terminate(mut self) -> String {
        let mut child = self.child.take().expect("not yet waited for");
        let pid = i32::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) on the pid of a child this test spawned and has
        // not yet waited for, so the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::task::spawn_blocking(move || child.wait());
        let Ok(status) = tokio::time::timeout(PATIENCE, status).await else {
            // SAFETY: as above; the child has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("herald did not exit within {PATIENCE:?} of SIGTERM");
        };
        let status = status.expect("wait task").expect("exit status");
        // The child closed its stderr: the reader thread ends the channel.
        while let Some(line) = self.lines.recv().await {
            self.log.push(line);
        }
        let log = self.log.join("\n");
        assert!(status.success(), "exit code 0: {status}\n{log}");
        log
    }
}

impl Drop for HeraldProcess {
    /// A test that failed before [`terminate`](Self::terminate) leaves no
    /// server behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
