//! Limits (`[limits]`): open streams server-wide and per address, event
//! size, and the time a client has to send its request. A refusal has a
//! documented status; the streams already open are not disturbed.

mod common;

use std::{net::IpAddr, time::Duration};

use common::{EventStream, PATIENCE, Refusal, TestServer, raw_exchange, raw_status};
use reqwest::StatusCode;
use serde_json::json;
use tokio::time::Instant;

fn assert_refused(refusal: &Refusal, status: u16, code: &str) {
    assert_eq!(
        (refusal.status.as_u16(), refusal.code()),
        (status, code),
        "{refusal:?}"
    );
    let retry_after = refusal.retry_after();
    assert!(
        (10..=60).contains(&retry_after),
        "Retry-After {retry_after} within 10..=60"
    );
}

/// Opens `device`'s stream and reads its hello.
async fn streaming(server: &TestServer, device: &str) -> EventStream {
    let mut stream = server.connect(device).await;
    stream.hello().await;
    stream
}

/// Publishes to `device` and expects `stream` to receive it.
async fn assert_live(server: &TestServer, device: &str, stream: &mut EventStream, n: u32) {
    server.publish(device, "tick", json!(n)).await;
    let event = stream.next_event().await;
    assert_eq!(
        (event.event.as_deref(), event.data),
        (Some("tick"), Some(n.to_string())),
        "{device}"
    );
}

/// Retries opening `device`'s stream until it is accepted: a slot is
/// released when the server notices a closed connection, which it does
/// asynchronously.
async fn open_when_a_slot_frees(server: &TestServer, device: &str) -> EventStream {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match server.try_open(device, &[], "").await {
            Ok(mut stream) => {
                stream.hello().await;
                return stream;
            }
            Err(refusal) if Instant::now() < deadline => {
                assert_eq!(refusal.code(), "server_full", "{refusal:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(refusal) => panic!("no slot came back within {PATIENCE:?}: {refusal:?}"),
        }
    }
}

#[actix_web::test]
async fn beyond_max_streams_a_stream_gets_503_with_retry_after_until_one_closes() {
    let server = TestServer::start_with(|s| s.limits.max_streams = 3).await;
    let devices = ["edge-1", "edge-2", "edge-3"];
    let mut streams = Vec::new();
    for device in devices {
        streams.push(streaming(&server, device).await);
    }

    let refusal = server.try_open("edge-4", &[], "").await.err().unwrap();
    assert_refused(&refusal, 503, "server_full");

    // The three are still streaming, and were not kicked.
    for (n, (device, stream)) in devices.iter().zip(&mut streams).enumerate() {
        assert_live(&server, device, stream, n as u32).await;
    }

    drop(streams.remove(0));
    let mut fourth = open_when_a_slot_frees(&server, "edge-4").await;
    assert_live(&server, "edge-4", &mut fourth, 4).await;
    for (device, stream) in devices[1..].iter().zip(&mut streams) {
        assert_live(&server, device, stream, 5).await;
    }
    // And the server is full again.
    let refusal = server.try_open("edge-5", &[], "").await.err().unwrap();
    assert_refused(&refusal, 503, "server_full");
}

#[actix_web::test]
async fn beyond_max_streams_per_address_a_stream_gets_429_but_other_addresses_are_served() {
    let server = TestServer::start_with(|s| s.limits.max_streams_per_address = 2).await;
    let mut first = streaming(&server, "edge-1").await;
    let mut second = streaming(&server, "edge-2").await;

    let refusal = server.try_open("edge-3", &[], "").await.err().unwrap();
    assert_refused(&refusal, 429, "too_many_streams");

    let other: IpAddr = [127, 0, 0, 2].into();
    let elsewhere = reqwest::Client::builder()
        .local_address(other)
        .build()
        .unwrap();
    let mut third = server
        .try_open_with(&elsewhere, "edge-3", &[], "")
        .await
        .expect("a stream from 127.0.0.2 is accepted");
    third.hello().await;

    assert_live(&server, "edge-1", &mut first, 1).await;
    assert_live(&server, "edge-2", &mut second, 2).await;
    assert_live(&server, "edge-3", &mut third, 3).await;
}

#[actix_web::test]
async fn an_event_over_max_event_bytes_gets_413_and_one_at_the_limit_passes() {
    let server = TestServer::start_with(|s| s.limits.max_event_bytes = 100).await;
    let path = "/v1/devices/edge-1/events";
    // "note" is 4 bytes of name.
    for (data, expected) in [
        (json!("x".repeat(96)), StatusCode::ACCEPTED),
        (json!("x".repeat(97)), StatusCode::PAYLOAD_TOO_LARGE),
        (json!("é".repeat(48)), StatusCode::ACCEPTED),
        (json!("é".repeat(49)), StatusCode::PAYLOAD_TOO_LARGE),
        // Non-string data counts as its compact JSON: ["…"] is 4 more bytes.
        (json!(["x".repeat(92)]), StatusCode::ACCEPTED),
        (json!(["x".repeat(93)]), StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let (status, reply) = server
            .admin_post(path, &json!({"event": "note", "data": data}))
            .await;
        assert_eq!(status, expected, "{data}: {reply}");
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            assert_eq!(reply["error"]["code"], "event_too_large");
        }
    }
    let long_name = "n".repeat(100);
    let (status, reply) = server
        .admin_post(path, &json!({"event": long_name, "data": "x"}))
        .await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &json!("event_too_large"))
    );
    let (status, reply) = server
        .admin_post(
            "/v1/broadcast",
            &json!({"event": "note", "data": "x".repeat(97)}),
        )
        .await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &json!("event_too_large"))
    );

    // Only the three accepted events were buffered, with consecutive ids.
    let mut stream = server.connect("edge-1").await;
    stream.hello().await;
    let mut seqs = Vec::new();
    for data in [
        "x".repeat(96),
        "é".repeat(48),
        json!(["x".repeat(92)]).to_string(),
    ] {
        let event = stream.next_event().await;
        assert_eq!(event.data.as_deref(), Some(data.as_str()));
        seqs.push(common::seq_of(event.id.as_deref().unwrap()));
    }
    assert_eq!(seqs, [1, 2, 3], "a refusal used no id");
}

#[actix_web::test]
async fn a_client_that_stalls_in_its_request_line_is_cut_off_while_streams_go_on() {
    // Not actix-http's own 5 s: the cut-off must follow the setting. Later
    // heads on a connection are tested in `connections.rs`.
    let timeout = Duration::from_secs(2);
    let server = TestServer::start_with(|s| s.limits.request_timeout = timeout).await;
    let mut stream = streaming(&server, "edge-1").await;

    let started = Instant::now();
    let answer = raw_exchange(server.addr(), b"GET /v1/devices/edge-2/ev").await;
    let cut_off_after = started.elapsed();
    assert!(
        answer.is_empty() || raw_status(&answer) == Some(408),
        "closed, or answered 408: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // The deadline runs from the accept, just after `started`; the slack
    // above it is for a loaded machine.
    assert!(
        cut_off_after >= timeout - Duration::from_millis(50)
            && cut_off_after < timeout + Duration::from_millis(2500),
        "cut off {timeout:?} after connecting, not after {cut_off_after:?}"
    );

    // Headers that stop halfway are cut off too.
    let answer = raw_exchange(
        server.addr(),
        b"GET /v1/devices/edge-2/events HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    )
    .await;
    assert!(
        answer.is_empty() || raw_status(&answer) == Some(408),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // The stream, open for longer than the request timeout, still streams.
    assert_live(&server, "edge-1", &mut stream, 1).await;
}
