//! Connections (`limits.request_timeout`, `server.keep_alive`,
//! `limits.max_connections…`): a connection that is not serving a request is
//! bounded in time, whichever request on it is next; connections are
//! bounded in number, server-wide and per address, with room left for
//! streams, probes and publishes; and the process never runs out of files.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{HeraldProcess, PATIENCE, TestServer, read_json};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    time::Instant,
};

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n";
const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
/// Another source address: Linux routes all of 127/8 to the loopback.
const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
/// How late a cut-off may come on a loaded machine.
const SLACK: Duration = Duration::from_millis(2500);

async fn connect_from(server: SocketAddr, from: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(server).await.expect("connect")
}

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// Asserts this is a connection refusal: `status` and `code`, with
    /// `Retry-After` and `Connection: close`.
    fn assert_refusal(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{self:?}"
        );
        let retry_after: u64 = self.header("retry-after").unwrap().parse().unwrap();
        assert!((10..=60).contains(&retry_after), "{self:?}");
        assert_eq!(self.header("connection"), Some("close"), "{self:?}");
    }
}

async fn read_answer(tcp: &mut TcpStream) -> Answer {
    read_next_answer(tcp, &mut Vec::new()).await
}

/// The next answer on `tcp`, starting with the bytes `buffered` holds
/// already; leaves in `buffered` what came after it (pipelined answers).
async fn read_next_answer(tcp: &mut TcpStream, buffered: &mut Vec<u8>) -> Answer {
    let read = async {
        let mut buf = [0; 4096];
        let end = loop {
            if let Some(end) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before an answer");
            buffered.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8(buffered[..end].to_vec()).unwrap();
        buffered.drain(..end + 4);
        let answer = Answer {
            status: head[9..12].parse().unwrap(),
            head,
            body: Value::Null,
        };
        let length: usize = answer.header("content-length").unwrap().parse().unwrap();
        while buffered.len() < length {
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed within the body");
            buffered.extend_from_slice(&buf[..n]);
        }
        let body: Vec<u8> = buffered.drain(..length).collect();
        Answer {
            body: serde_json::from_slice(&body).unwrap(),
            ..answer
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("an answer within the patience")
}

/// The sequence of the fault: a complete request on a kept-alive
/// connection, then one byte of the next. Answers the stalled connection, or
/// the answer of a connection that was refused (and then closed).
async fn stall(server: SocketAddr, from: IpAddr) -> Result<TcpStream, Answer> {
    let mut tcp = connect_from(server, from).await;
    tcp.write_all(HEALTHZ).await.unwrap();
    let answer = read_answer(&mut tcp).await;
    if answer.status != 200 {
        closed_within(&mut tcp, PATIENCE).await;
        return Err(answer);
    }
    tcp.write_all(b"G").await.unwrap();
    Ok(tcp)
}

/// Reads until the server closes the connection (a reset counts); answers
/// how long that took. Fails if it is still open after `cap`.
async fn closed_within(tcp: &mut TcpStream, cap: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0; 1024];
    tokio::time::timeout(cap, async {
        while let Ok(1..) = tcp.read(&mut buf).await {}
    })
    .await
    .unwrap_or_else(|_| panic!("the connection is still open after {cap:?}"));
    started.elapsed()
}

fn assert_cut_off_after(elapsed: Duration, at_least: Duration, what: &str) {
    assert!(
        elapsed >= at_least && elapsed < at_least + SLACK,
        "{what}: cut off after {elapsed:?}, expected {at_least:?} (+ up to {SLACK:?})"
    );
}

fn socket_addr(server: &TestServer) -> SocketAddr {
    server.addr().parse().unwrap()
}

/// A client whose connections come from `from`.
fn client_from(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .build()
        .unwrap()
}

/// From `client`: a probe, a stream, and a publish the stream receives.
async fn assert_served(base: &str, admin_token: &str, client: &reqwest::Client, device: &str) {
    let (status, _) = read_json(client.get(format!("{base}/healthz"))).await;
    assert_eq!(status, StatusCode::OK, "probe");
    let url = format!("{base}/v1/devices/{device}/events");
    let response = client.get(&url).send().await.expect("stream request");
    let mut stream = common::EventStream::from_response(response)
        .await
        .expect("a stream");
    stream.hello().await;
    let publish = client
        .post(&url)
        .bearer_auth(admin_token)
        .json(&json!({"event": "tick", "data": 1}));
    let (status, reply) = read_json(publish).await;
    assert_eq!(status, StatusCode::ACCEPTED, "publish: {reply}");
    assert_eq!(stream.next_event().await.data.as_deref(), Some("1"));
}

/// A server whose request timeout (answered) is short, and whose keep-alive
/// is far away: it is not what ends these tests' connections.
async fn server_cutting_requests() -> (TestServer, Duration) {
    let request_timeout = Duration::from_secs(2);
    let server = TestServer::start_with(|s| {
        s.limits.request_timeout = request_timeout;
        s.server.keep_alive = Duration::from_secs(60);
    })
    .await;
    (server, request_timeout)
}

#[actix_web::test]
async fn a_later_request_head_that_stalls_is_cut_off_after_request_timeout_and_streams_go_on() {
    let (server, request_timeout) = server_cutting_requests().await;
    let mut stream = server.connect("edge-1").await;
    stream.hello().await;

    // A complete request, then one byte of the next.
    let mut tcp = connect_from(socket_addr(&server), HERE).await;
    tcp.write_all(HEALTHZ).await.unwrap();
    let answer = read_answer(&mut tcp).await;
    assert_eq!(
        (answer.status, &answer.body),
        (200, &json!({"status": "ok"}))
    );
    let started = Instant::now();
    tcp.write_all(b"G").await.unwrap();
    closed_within(&mut tcp, PATIENCE).await;
    assert_cut_off_after(started.elapsed(), request_timeout, "one byte");

    // A head that keeps coming, a byte at a time, gets no more time.
    let mut tcp = connect_from(socket_addr(&server), HERE).await;
    tcp.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_answer(&mut tcp).await.status, 200);
    let started = Instant::now();
    let (mut from_server, mut to_server) = tcp.split();
    let head = b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter();
    let mut bytes = head.chain(std::iter::repeat(&b'a'));
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let dribble = async {
        loop {
            pace.tick().await;
            let byte = *bytes.next().unwrap();
            if to_server.write_all(&[byte]).await.is_err() {
                // The server is gone: wait for the reader to see it.
                std::future::pending::<()>().await;
            }
        }
    };
    let mut buf = [0; 64];
    let closed = async { while let Ok(1..) = from_server.read(&mut buf).await {} };
    tokio::select! {
        () = closed => {}
        () = dribble => {}
        () = tokio::time::sleep(PATIENCE) => panic!("still open after {PATIENCE:?}"),
    }
    assert_cut_off_after(started.elapsed(), request_timeout, "a byte at a time");

    // The stream, open all along, still streams.
    server.publish("edge-1", "tick", json!(1)).await;
    assert_eq!(stream.next_event().await.data.as_deref(), Some("1"));
}

#[actix_web::test]
async fn a_request_body_that_stalls_is_cut_off_after_request_timeout() {
    let (server, request_timeout) = server_cutting_requests().await;
    // A complete publish head announcing 100 bytes, then one of them.
    let head = format!(
        "POST /v1/devices/edge-1/events HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{",
        server.admin_token()
    );
    let mut tcp = connect_from(socket_addr(&server), HERE).await;
    let started = Instant::now();
    tcp.write_all(head.as_bytes()).await.unwrap();
    closed_within(&mut tcp, PATIENCE).await;
    assert_cut_off_after(started.elapsed(), request_timeout, "a stalled body");

    // A whole body in time is published as ever.
    server.publish("edge-1", "tick", json!(1)).await;
}

#[actix_web::test]
async fn an_idle_kept_alive_connection_is_closed_after_keep_alive_and_streams_go_on() {
    // Longer than actix-http's default (5 s), so its default cannot pass.
    let keep_alive = Duration::from_secs(8);
    let server = TestServer::start_with(|s| s.server.keep_alive = keep_alive).await;
    let mut stream = server.connect("edge-1").await;
    stream.hello().await;

    let mut tcp = connect_from(socket_addr(&server), HERE).await;
    tcp.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_answer(&mut tcp).await.status, 200);
    let idle = closed_within(&mut tcp, keep_alive + PATIENCE).await;
    // actix-http, which closes idle connections gently, reads the time from
    // a clock it updates every 500 ms: up to that much early.
    let early = Duration::from_millis(500);
    assert_cut_off_after(idle + early, keep_alive, "idle");

    server.publish("edge-1", "tick", json!(1)).await;
    assert_eq!(stream.next_event().await.data.as_deref(), Some("1"));
}

/// actix-http is patched to read into an empty buffer through the stack and
/// to give the empty buffer back (`patches/README.md`): requests that arrive
/// a byte at a time, several in one segment, and a body well past the first
/// KiB are still read whole, one after another on one connection.
#[actix_web::test]
async fn requests_in_pieces_pipelined_and_past_the_first_kib_are_read_whole_on_one_connection() {
    let server = TestServer::start().await;
    let mut stream = server.connect("edge-1").await;
    stream.hello().await;
    let mut tcp = connect_from(socket_addr(&server), HERE).await;
    tcp.set_nodelay(true).unwrap();

    for byte in HEALTHZ {
        tcp.write_all(std::slice::from_ref(byte)).await.unwrap();
    }
    assert_eq!(read_answer(&mut tcp).await.status, 200, "a byte at a time");

    tcp.write_all(&[HEALTHZ, HEALTHZ].concat()).await.unwrap();
    let mut buffered = Vec::new();
    for _ in 0..2 {
        let answer = read_next_answer(&mut tcp, &mut buffered).await;
        assert_eq!(answer.status, 200, "pipelined");
    }
    assert!(buffered.is_empty(), "more than two answers");

    let data = "x".repeat(6000);
    let body = json!({"event": "big", "data": data}).to_string();
    let publish = format!(
        "POST /v1/devices/edge-1/events HTTP/1.1\r\nHost: herald\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        server.admin_token(),
        body.len()
    );
    tcp.write_all(publish.as_bytes()).await.unwrap();
    let answer = read_answer(&mut tcp).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let delivered = stream.next_event().await.data.unwrap_or_default();
    assert!(
        delivered == data,
        "the body not read whole: {} of {} bytes",
        delivered.len(),
        data.len()
    );
}

#[actix_web::test]
async fn stalled_connections_beyond_the_per_address_limit_get_429_and_other_addresses_are_served() {
    let server = TestServer::start_with(|s| {
        s.limits.max_connections_per_address = 12;
        s.limits.max_streams_per_address = 2;
        // The stalled connections stay for the whole test.
        s.limits.request_timeout = Duration::from_secs(60);
        s.server.keep_alive = Duration::from_secs(60);
    })
    .await;
    let addr = socket_addr(&server);
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(stall(addr, HERE).await.expect("within the limit"));
    }
    for _ in 0..5 {
        let answer = stall(addr, HERE).await.expect_err("over the limit");
        answer.assert_refusal(429, "too_many_connections");
    }

    let elsewhere = client_from(ELSEWHERE);
    assert_served(&server.base, server.admin_token(), &elsewhere, "edge-9").await;

    // The held connections were left alone: each can finish its request.
    for tcp in &mut held {
        tcp.write_all(b"ET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(tcp).await.status, 200);
    }
}

#[actix_web::test]
async fn at_the_stream_limit_probes_and_publishes_still_connect_and_beyond_max_connections_503() {
    let server = TestServer::start_with(|s| {
        s.limits.max_streams = 2;
        s.limits.max_connections = 6;
        s.limits.request_timeout = Duration::from_secs(60);
        s.server.keep_alive = Duration::from_secs(60);
    })
    .await;
    let mut streams = Vec::new();
    for device in ["edge-1", "edge-2"] {
        let mut stream = server.connect(device).await;
        stream.hello().await;
        streams.push(stream);
    }
    // The streams are at their limit; a probe and a publish get in.
    let (status, _) = read_json(server.request(reqwest::Method::GET, "/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    server.publish("edge-1", "tick", json!(1)).await;
    assert_eq!(streams[0].next_event().await.data.as_deref(), Some("1"));

    // Stalled connections take the rest; then every address gets 503.
    let addr = socket_addr(&server);
    let mut held = Vec::new();
    let refusal = loop {
        match stall(addr, HERE).await {
            Ok(tcp) => held.push(tcp),
            Err(answer) => break answer,
        }
        assert!(held.len() < 6, "no refusal within max_connections");
    };
    refusal.assert_refusal(503, "server_full");
    assert!(!held.is_empty(), "the probe and publish left room");
    let answer = stall(addr, ELSEWHERE)
        .await
        .expect_err("the server is full");
    answer.assert_refusal(503, "server_full");

    // A closed connection makes room again, once the server has seen it go.
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    while let Err(answer) = stall(addr, ELSEWHERE).await {
        answer.assert_refusal(503, "server_full");
        assert!(Instant::now() < deadline, "no room within {PATIENCE:?}");
    }
    for (n, stream) in streams.iter_mut().enumerate() {
        let device = format!("edge-{}", n + 1);
        server.publish(&device, "tick", json!(2)).await;
        assert_eq!(stream.next_event().await.data.as_deref(), Some("2"));
    }
}

#[actix_web::test]
async fn under_a_low_open_file_limit_a_flood_of_stalled_connections_never_exhausts_files() {
    const OPEN_FILES: usize = 256;
    let herald = HeraldProcess::start_with_open_files(
        &[
            ("HERALD_LIMITS__MAX_CONNECTIONS_PER_ADDRESS", "100"),
            ("HERALD_LIMITS__MAX_STREAMS_PER_ADDRESS", "50"),
            ("HERALD_LIMITS__REQUEST_TIMEOUT", "60s"),
            ("HERALD_SERVER__KEEP_ALIVE", "60s"),
        ],
        OPEN_FILES as u64,
    )
    .await;
    // More than the process could hold, from one address.
    let addr = SocketAddr::new(HERE, herald.port);
    let (mut held, mut refused) = (Vec::new(), 0);
    for _ in 0..OPEN_FILES + 50 {
        match stall(addr, HERE).await {
            Ok(tcp) => held.push(tcp),
            Err(answer) => {
                answer.assert_refusal(429, "too_many_connections");
                refused += 1;
            }
        }
    }
    assert_eq!((held.len(), refused), (100, OPEN_FILES + 50 - 100));
    let open_files = herald.open_files();
    assert!(
        (100..OPEN_FILES).contains(&open_files),
        "herald holds {open_files} files"
    );

    let elsewhere = client_from(ELSEWHERE);
    let base = format!("http://127.0.0.1:{}", herald.port);
    assert_served(&base, "local-admin-token-change-me", &elsewhere, "edge-1").await;

    drop(held);
    let log = herald.terminate().await;
    assert!(!log.contains("Too many open files"), "{log}");
    // max_connections (19,500 in config.toml) was lowered to fit, and said so.
    assert!(
        log.lines()
            .any(|line| line.contains("server.open_file_limit open_files=256")),
        "{log}"
    );
}
