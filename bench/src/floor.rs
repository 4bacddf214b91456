//! The `floor` target: the least a server must do for the scenarios, as a
//! measure of what this machine can physically do. One thread, plain
//! non-blocking sockets (mio's epoll), no HTTP framework, no actors,
//! nothing stored: it accepts streams, writes one pre-encoded SSE frame per
//! delivery, keeps each device's last events (and the broadcasts) to replay
//! after a Last-Event-ID, and sends a heartbeat to a stream idle for the
//! keep-alive period. It answers the requests herald answers, with herald's
//! response head and chunked framing byte for byte, so every scenario runs
//! against it unchanged and herald/floor says how far herald is from the
//! floor. The harness starts it as `herald-bench floor --bind ADDR`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use serde::Deserialize;
use serde_json::value::RawValue;

const LISTENER: Token = Token(usize::MAX);
/// Bytes a stream may leave unwritten before it is cut as a slow consumer
/// (herald cuts at `stream.queue_frames` frames).
const MAX_UNWRITTEN: usize = 4 << 20;
/// The largest request head and body it reads.
const MAX_REQUEST: usize = 1 << 20;
const HEARTBEAT: &[u8] = b"event: heartbeat\ndata: {}\n\n";

#[derive(clap::Args, Debug)]
pub struct FloorArgs {
    #[arg(long)]
    pub bind: SocketAddr,
    /// Idle time after which a stream gets a heartbeat.
    #[arg(long, default_value_t = 15)]
    pub keepalive_secs: u64,
    /// Events kept per device (and broadcasts kept) for replays.
    #[arg(long, default_value_t = 1000)]
    pub buffer_events: usize,
}

pub fn run(args: FloorArgs) -> io::Result<()> {
    let mut listener = TcpListener::bind(args.bind)?;
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut floor = Floor {
        poll,
        conns: HashMap::new(),
        next_token: 0,
        devices: HashMap::new(),
        broadcasts: Log::new('b'),
        keepalive: Duration::from_secs(args.keepalive_secs),
        keep: args.buffer_events,
    };
    let mut events = Events::with_capacity(1024);
    let mut last_sweep = Instant::now();
    loop {
        floor.poll.poll(&mut events, Some(Duration::from_secs(1)))?;
        for event in &events {
            match event.token() {
                LISTENER => floor.accept(&listener),
                token => {
                    if event.is_writable() {
                        floor.flush(token);
                    }
                    if event.is_readable() {
                        floor.read(token);
                    }
                }
            }
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            floor.heartbeats();
        }
    }
}

struct Conn {
    socket: TcpStream,
    input: Vec<u8>,
    /// What the socket did not take yet.
    unwritten: Vec<u8>,
    /// The device whose stream this is, once it is one.
    device: Option<Rc<str>>,
    last_write: Instant,
}

/// Frames of one history, numbered from 1, the newest `keep`.
struct Log {
    kind: char,
    last: u64,
    frames: VecDeque<(u64, Rc<[u8]>)>,
}

impl Log {
    fn new(kind: char) -> Self {
        Self {
            kind,
            last: 0,
            frames: VecDeque::new(),
        }
    }

    /// The chunk-framed SSE frame of the next event.
    fn append(&mut self, event: &str, data: &str, keep: usize) -> Rc<[u8]> {
        self.last += 1;
        let frame = format!(
            "id: {}-{}\nevent: {event}\ndata: {data}\n\n",
            self.kind, self.last
        );
        let chunk: Rc<[u8]> = chunk(frame.as_bytes()).into();
        self.frames.push_back((self.last, Rc::clone(&chunk)));
        if self.frames.len() > keep {
            self.frames.pop_front();
        }
        chunk
    }

    fn after(&self, seq: u64) -> impl Iterator<Item = &Rc<[u8]>> {
        self.frames
            .iter()
            .filter(move |(s, _)| *s > seq)
            .map(|(_, f)| f)
    }
}

#[derive(Default)]
struct Device {
    stream: Option<Token>,
    log: Option<Log>,
}

struct Floor {
    poll: Poll,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    devices: HashMap<Rc<str>, Device>,
    broadcasts: Log,
    keepalive: Duration,
    keep: usize,
}

#[derive(Deserialize)]
struct Publish<'a> {
    event: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// One parsed request: method, path, Last-Event-ID, body.
struct Request {
    method: String,
    path: String,
    last_event_id: Option<String>,
    body: Vec<u8>,
}

impl Floor {
    fn accept(&mut self, listener: &TcpListener) {
        while let Ok((mut socket, _)) = listener.accept() {
            let _ = socket.set_nodelay(true);
            let token = Token(self.next_token);
            self.next_token += 1;
            if (self.poll.registry())
                .register(&mut socket, token, Interest::READABLE)
                .is_err()
            {
                continue;
            }
            let conn = Conn {
                socket,
                input: Vec::new(),
                unwritten: Vec::new(),
                device: None,
                last_write: Instant::now(),
            };
            self.conns.insert(token, conn);
        }
    }

    fn read(&mut self, token: Token) {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return;
            };
            match conn.socket.read(&mut chunk) {
                Ok(0) => return self.close(token),
                Ok(n) if conn.input.len() + n > MAX_REQUEST => return self.close(token),
                Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(token),
            }
        }
        while let Some(request) = self.conns.get_mut(&token).and_then(next_request) {
            self.serve(token, request);
        }
    }

    fn serve(&mut self, token: Token, request: Request) {
        let device = (request.path.strip_prefix("/v1/devices/"))
            .and_then(|rest| rest.strip_suffix("/events"));
        match (request.method.as_str(), device) {
            ("GET", Some(device)) => self.open_stream(token, device, request.last_event_id),
            ("POST", Some(device)) => {
                let answer = match serde_json::from_slice::<Publish>(&request.body) {
                    Ok(publish) => {
                        self.publish(device, publish.event, publish.data.get());
                        ACCEPTED
                    }
                    Err(_) => BAD_REQUEST,
                };
                self.send(token, answer.as_bytes());
            }
            ("POST", None) if request.path == "/v1/broadcast" => {
                let answer = match serde_json::from_slice::<Publish>(&request.body) {
                    Ok(publish) => {
                        self.broadcast(publish.event, publish.data.get());
                        ACCEPTED
                    }
                    Err(_) => BAD_REQUEST,
                };
                self.send(token, answer.as_bytes());
            }
            ("GET", None) if request.path == "/healthz" => self.send(token, HEALTHY.as_bytes()),
            _ => self.send(token, NOT_FOUND.as_bytes()),
        }
    }

    fn open_stream(&mut self, token: Token, device: &str, last_event_id: Option<String>) {
        let device: Rc<str> = device.into();
        let head = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: identity\r\n\
             cache-control: no-cache\r\nvary: Origin, Access-Control-Request-Method, \
             Access-Control-Request-Headers\r\naccess-control-allow-credentials: true\r\n\
             content-type: text/event-stream\r\nx-accel-buffering: no\r\ndate: {}\r\n\r\n",
            httpdate::fmt_http_date(SystemTime::now())
        );
        let mut opening = head.into_bytes();
        opening.extend_from_slice(&chunk(b"retry: 3000\n\n"));
        let entry = self.devices.entry(Rc::clone(&device)).or_default();
        // What came after the client's position, from the history it names.
        if let Some((kind, seq)) = last_event_id.as_deref().and_then(|id| id.split_once('-')) {
            let seq = seq.parse().unwrap_or(u64::MAX);
            let log = match kind {
                "b" => Some(&self.broadcasts),
                _ => entry.log.as_ref(),
            };
            for frame in log.into_iter().flat_map(|log| log.after(seq)) {
                opening.extend_from_slice(frame);
            }
        }
        // One stream per device: a newer one replaces the old.
        let previous = entry.stream.replace(token);
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.device = Some(device);
        }
        if let Some(previous) = previous.filter(|p| *p != token) {
            self.close(previous);
        }
        self.send(token, &opening);
    }

    fn publish(&mut self, device: &str, event: &str, data: &str) {
        let keep = self.keep;
        let entry = self.devices.entry(device.into()).or_default();
        let frame = (entry.log.get_or_insert_with(|| Log::new('u'))).append(event, data, keep);
        if let Some(stream) = entry.stream {
            self.send(stream, &frame);
        }
    }

    fn broadcast(&mut self, event: &str, data: &str) {
        let frame = self.broadcasts.append(event, data, self.keep);
        let streams: Vec<Token> = self.devices.values().filter_map(|d| d.stream).collect();
        for stream in streams {
            self.send(stream, &frame);
        }
    }

    fn heartbeats(&mut self) {
        let now = Instant::now();
        let idle: Vec<Token> = (self.conns.iter())
            .filter(|(_, c)| c.device.is_some() && now - c.last_write >= self.keepalive)
            .map(|(token, _)| *token)
            .collect();
        let heartbeat = chunk(HEARTBEAT);
        for token in idle {
            self.send(token, &heartbeat);
        }
    }

    /// Writes `bytes` now, or queues what the socket does not take.
    fn send(&mut self, token: Token, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        conn.last_write = Instant::now();
        if !conn.unwritten.is_empty() {
            conn.unwritten.extend_from_slice(bytes);
            if conn.unwritten.len() > MAX_UNWRITTEN {
                self.close(token);
            }
            return;
        }
        let written = loop {
            match conn.socket.write(bytes) {
                Ok(n) => break n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break 0,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(token),
            }
        };
        if written < bytes.len() {
            conn.unwritten.extend_from_slice(&bytes[written..]);
            let interest = Interest::READABLE | Interest::WRITABLE;
            let _ = (self.poll.registry()).reregister(&mut conn.socket, token, interest);
        }
    }

    fn flush(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        while !conn.unwritten.is_empty() {
            match conn.socket.write(&conn.unwritten) {
                Ok(n) => {
                    conn.unwritten.drain(..n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(token),
            }
        }
        conn.unwritten = Vec::new();
        let _ = (self.poll.registry()).reregister(&mut conn.socket, token, Interest::READABLE);
    }

    fn close(&mut self, token: Token) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.socket);
        if let Some(device) = conn.device
            && let Some(entry) = self.devices.get_mut(&device)
            && entry.stream == Some(token)
        {
            entry.stream = None;
        }
    }
}

/// The next complete request in `conn`'s input, taken out of it.
fn next_request(conn: &mut Conn) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = parsed.parse(&conn.input).ok()? else {
        return None;
    };
    let header = |name: &str| {
        (parsed.headers.iter())
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let length: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    if conn.input.len() < head + length {
        return None;
    }
    let request = Request {
        method: parsed.method.unwrap_or_default().to_owned(),
        path: parsed.path.unwrap_or_default().to_owned(),
        last_event_id: header("last-event-id"),
        body: conn.input[head..head + length].to_vec(),
    };
    conn.input.drain(..head + length);
    if conn.input.is_empty() {
        // A stream reads nothing more: its buffer goes.
        conn.input = Vec::new();
    }
    Some(request)
}

/// `bytes` as one chunk of a chunked body.
fn chunk(bytes: &[u8]) -> Vec<u8> {
    let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
    framed.extend_from_slice(bytes);
    framed.extend_from_slice(b"\r\n");
    framed
}

const ACCEPTED: &str = "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n\
                        content-length: 34\r\n\r\n{\"delivered\":true,\"buffered\":true}";
const BAD_REQUEST: &str = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
const NOT_FOUND: &str = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
const HEALTHY: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                       content-length: 15\r\n\r\n{\"status\":\"ok\"}";
