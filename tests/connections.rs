//! Connections (`limits.request_timeout`, `server.keep_alive`): a
//! connection that is not serving a request is bounded in time, whichever
//! request on it is next.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{PATIENCE, TestServer};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    time::Instant,
};

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n";
const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
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
}

async fn read_answer(tcp: &mut TcpStream) -> Answer {
    let read = async {
        let mut bytes = Vec::new();
        let mut buf = [0; 4096];
        let end = loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before an answer");
            bytes.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8(bytes[..end].to_vec()).unwrap();
        let mut body = bytes[end + 4..].to_vec();
        let answer = Answer {
            status: head[9..12].parse().unwrap(),
            head,
            body: Value::Null,
        };
        let length: usize = answer.header("content-length").unwrap().parse().unwrap();
        while body.len() < length {
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed within the body");
            body.extend_from_slice(&buf[..n]);
        }
        Answer {
            body: serde_json::from_slice(&body).unwrap(),
            ..answer
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("an answer within the patience")
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

#[actix_web::test]
async fn a_later_request_head_that_stalls_is_cut_off_after_request_timeout_and_streams_go_on() {
    let request_timeout = Duration::from_secs(2);
    let server = TestServer::start_with(|s| {
        s.limits.request_timeout = request_timeout;
        // Far away: it is not what ends these connections.
        s.server.keep_alive = Duration::from_secs(60);
    })
    .await;
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
