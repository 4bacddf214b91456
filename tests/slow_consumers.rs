//! Slow consumers: a client that stops reading is cut off without holding up
//! anyone else, and resumes without a gap.

mod common;

use std::time::{Duration, Instant};

use common::{PATIENCE, TestServer};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Size of each event sent to the stuck device: large, so its socket buffers
/// and its queue fill after a few hundred events at most.
const PAYLOAD_BYTES: usize = 32 * 1024;
/// The stuck device must be cut off well before this many publishes.
const MAX_PUBLISHES: usize = 2_000;
/// What a healthy client beside the stuck one may wait for an event: a
/// generous bound, not a benchmark.
const LATENCY_BOUND: Duration = Duration::from_millis(500);

/// A stream client on raw TCP that reads only when told to: once it stops,
/// the server's writes pile up in the kernel buffers and then in its queue.
struct StuckClient {
    socket: TcpStream,
    received: Vec<u8>,
}

impl StuckClient {
    async fn open(server: &TestServer, device: &str) -> Self {
        let addr = server.base.trim_start_matches("http://");
        let mut socket = TcpStream::connect(addr).await.expect("TCP connect");
        let request = format!(
            "GET /v1/devices/{device}/events HTTP/1.1\r\nHost: {addr}\r\n\
             Accept: text/event-stream\r\n\r\n"
        );
        socket
            .write_all(request.as_bytes())
            .await
            .expect("request sent");
        Self {
            socket,
            received: Vec::new(),
        }
    }

    /// Reads until `needle` has arrived, and not a byte more than the reads
    /// that brought it.
    async fn read_until(&mut self, needle: &str) {
        let needle = needle.as_bytes();
        let mut chunk = vec![0; 64 * 1024];
        while !self.received.windows(needle.len()).any(|w| w == needle) {
            let read = tokio::time::timeout(PATIENCE, self.socket.read(&mut chunk))
                .await
                .expect("the stream keeps coming")
                .expect("read");
            assert!(read > 0, "the stream ended before {needle:?}");
            self.received.extend_from_slice(&chunk[..read]);
        }
    }
}

/// A `PAYLOAD_BYTES` string that starts with its number.
fn payload(n: usize) -> String {
    let mut data = format!("{n:06}:");
    data.extend(std::iter::repeat_n('x', PAYLOAD_BYTES - data.len()));
    data
}

fn id_in(reply: &Value) -> String {
    reply["id"].as_str().expect("an id in the reply").to_owned()
}

#[actix_web::test]
async fn a_client_that_stops_reading_is_cut_off_without_slowing_others_and_resumes_gap_free() {
    let server = TestServer::start_with(|s| {
        s.stream.queue_frames = 8;
        s.server.max_body_bytes = 2 * PAYLOAD_BYTES;
        s.session.buffer_events = 2 * MAX_PUBLISHES;
        s.session.buffer_bytes = 2 * MAX_PUBLISHES * PAYLOAD_BYTES;
    })
    .await;
    let mut healthy = server.connect("healthy").await;
    healthy.hello().await;

    let mut stuck = StuckClient::open(&server, "stuck").await;
    stuck.read_until("event: hello\n").await;
    let seen = id_in(&server.publish("stuck", "bulk", json!(payload(0))).await);
    stuck.read_until(&format!("id: {seen}\n")).await;
    // From here on the stuck client reads nothing, but keeps its socket open.

    let mut missed = Vec::new();
    let mut latencies = Vec::new();
    let mut cut_off = false;
    for n in 1..=MAX_PUBLISHES {
        let data = payload(n);
        let reply = server.publish("stuck", "bulk", json!(data)).await;
        missed.push((id_in(&reply), data));

        let sent = Instant::now();
        let tick = server.publish("healthy", "tick", json!(n)).await;
        let event = healthy.next_event().await;
        latencies.push(sent.elapsed());
        assert_eq!(
            (event.id, event.data),
            (Some(id_in(&tick)), Some(n.to_string()))
        );

        if reply["delivered"] == false {
            cut_off = true;
            break;
        }
    }
    assert!(
        cut_off,
        "the stuck stream was still taking events after {MAX_PUBLISHES} publishes"
    );
    assert!(
        missed.len() > server.settings.stream.queue_frames,
        "cut off after {} events, before its queue could be full",
        missed.len()
    );
    let slowest = latencies.iter().max().expect("latencies");
    assert!(
        *slowest < LATENCY_BOUND,
        "a healthy client waited {slowest:?} for an event (bound {LATENCY_BOUND:?}) \
         while its neighbour was stuck"
    );

    // While it is away, events wait for it.
    for n in missed.len() + 1..=missed.len() + 3 {
        let data = payload(n);
        let reply = server.publish("stuck", "bulk", json!(data)).await;
        assert_eq!(reply["delivered"], false, "{reply}");
        missed.push((id_in(&reply), data));
    }

    let mut back = server.resume("stuck", &seen).await;
    assert_eq!(back.hello().await["resumed"], true);
    for (n, (id, data)) in missed.iter().enumerate() {
        let event = back.next_event().await;
        assert_eq!(
            (event.id.as_deref(), event.event.as_deref()),
            (Some(id.as_str()), Some("bulk")),
            "missed event {n} of {}",
            missed.len()
        );
        assert!(
            event.data.as_deref() == Some(data.as_str()),
            "missed event {n} ({id}) came back with other data"
        );
    }
    // Exactly those: the next event is the next one published.
    let live = server.publish("stuck", "bulk", json!("live")).await;
    let event = back.next_event().await;
    assert_eq!(
        (event.id, event.data.as_deref()),
        (Some(id_in(&live)), Some("live"))
    );
    drop(stuck);
}
