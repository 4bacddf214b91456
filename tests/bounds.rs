//! Bounds: each buffer by events and bytes (oldest evicted first); sessions
//! and bytes server-wide, where a refusal has a documented status and
//! changes nothing.

mod common;

use common::{TestServer, data_json, read_json, seq_of};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or_default()
}

async fn try_publish(server: &TestServer, device: &str, data: Value) -> (StatusCode, Value) {
    let body = json!({"event": "note", "data": data});
    server
        .admin_post(&format!("/v1/devices/{device}/events"), &body)
        .await
}

#[actix_web::test]
async fn a_buffer_over_its_byte_bound_evicts_its_oldest_events_first() {
    // Each event is 4 bytes of name + 100 of data: three fit in 350 bytes.
    let server = TestServer::start_with(|s| {
        s.limits.max_event_bytes = 350;
        s.session.buffer_bytes = 350;
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..6 {
        let data = format!("{n}").repeat(100);
        ids.push(
            server.publish("edge-1", "note", json!(data)).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Just before the oldest kept event: held. One earlier: gone.
    let mut held = server.resume("edge-1", &ids[2]).await;
    assert_eq!(held.hello().await["resumed"], true);
    for n in 3..6 {
        assert_eq!(
            held.next_event().await.data,
            Some(format!("{n}").repeat(100))
        );
    }
    let mut gone = server.resume("edge-1", &ids[1]).await;
    gone.hello().await;
    assert_eq!(data_json(&gone.next_event().await)["reason"], "evicted");
}

#[actix_web::test]
async fn a_publish_over_the_server_wide_byte_bound_gets_507_and_changes_nothing() {
    let server = TestServer::start_with(|s| {
        s.limits.max_event_bytes = 1024;
        s.session.buffer_bytes = 4096;
        s.session.max_total_bytes = 4096;
    })
    .await;
    let chunk = "x".repeat(900);
    let mut accepted = Vec::new();
    let refusal = loop {
        let device = format!("edge-{}", accepted.len() % 3);
        let (status, reply) = try_publish(&server, &device, json!(chunk)).await;
        if status != StatusCode::ACCEPTED {
            break (status, reply, device);
        }
        accepted.push((device, reply["id"].as_str().unwrap().to_owned()));
        assert!(accepted.len() < 10, "4096 bytes hold at most 4 such events");
    };
    let (status, reply, device) = refusal;
    assert_eq!((status.as_u16(), code(&reply)), (507, "storage_full"));
    let broadcast = json!({"event": "note", "data": chunk});
    let (status, reply) = server.admin_post("/v1/broadcast", &broadcast).await;
    assert_eq!((status.as_u16(), code(&reply)), (507, "storage_full"));

    // Small events still fit, and the refusals used no id.
    let (status, reply) = try_publish(&server, &device, json!("small")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let previous = accepted
        .iter()
        .rev()
        .find(|(d, _)| *d == device)
        .map_or(0, |(_, id)| seq_of(id));
    assert_eq!(seq_of(reply["id"].as_str().unwrap()), previous + 1);
    let mut stream = server.connect(&device).await;
    stream.hello().await;
    for (_, id) in accepted.iter().filter(|(d, _)| *d == device) {
        assert_eq!(stream.next_event().await.id.as_ref(), Some(id));
    }
    assert_eq!(stream.next_event().await.data.as_deref(), Some("small"));
}

/// A broadcast stores its payload once, and the server-wide bound counts it
/// once, however many devices buffer it; its bytes are given back with the
/// last buffer holding it.
#[actix_web::test]
async fn a_broadcast_payload_counts_once_against_the_server_wide_bound() {
    let mut server = TestServer::start_with(|s| {
        s.limits.max_event_bytes = 1024;
        s.session.buffer_bytes = 4096;
        s.session.max_total_bytes = 4096;
    })
    .await;
    for n in 0..8 {
        try_publish(&server, &format!("edge-{n}"), json!("hi")).await;
    }
    let broadcast = json!({"event": "note", "data": "x".repeat(900), "retain": true});
    // Counted per device, one such broadcast (8 × 904 bytes) would not fit;
    // counted once, four do (each device's retained copy is the same payload).
    for _ in 0..4 {
        let (status, reply) = server.admin_post("/v1/broadcast", &broadcast).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    }
    let (status, reply) = server.admin_post("/v1/broadcast", &broadcast).await;
    assert_eq!((status.as_u16(), code(&reply)), (507, "storage_full"));
    // Read back from storage, shared payloads still count once.
    server.restart().await;
    let smaller = json!({"event": "note", "data": "z".repeat(400)});
    let (status, reply) = server.admin_post("/v1/broadcast", &smaller).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");

    // While one device still buffers the payloads they count; once none
    // does, their room is free again.
    let delete = |n: u32| {
        let path = format!("/v1/devices/edge-{n}");
        server
            .request(Method::DELETE, &path)
            .bearer_auth(server.admin_token())
    };
    for n in 0..7 {
        assert_eq!(read_json(delete(n)).await.0, StatusCode::NO_CONTENT);
    }
    let (status, _) = try_publish(&server, "newcomer", json!("y".repeat(900))).await;
    assert_eq!(status.as_u16(), 507);
    assert_eq!(read_json(delete(7)).await.0, StatusCode::NO_CONTENT);
    let (status, reply) = try_publish(&server, "newcomer", json!("y".repeat(900))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
}

#[actix_web::test]
async fn the_session_bound_refuses_publishes_with_507_and_streams_with_503() {
    let server = TestServer::start_with(|s| s.session.max_sessions = 2).await;
    try_publish(&server, "a", json!(1)).await;
    try_publish(&server, "b", json!(1)).await;

    let (status, reply) = try_publish(&server, "c", json!(1)).await;
    assert_eq!((status.as_u16(), code(&reply)), (507, "too_many_sessions"));
    let response = server
        .request(Method::GET, "/v1/devices/d/events")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u32 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((10..=60).contains(&retry_after));
    assert_eq!(code(&response.json().await.unwrap()), "server_full");

    // Devices that have a session keep working; deleting one makes room.
    let mut stream = server.connect("a").await;
    stream.hello().await;
    assert_eq!(stream.next_event().await.data.as_deref(), Some("1"));
    let delete = server
        .request(Method::DELETE, "/v1/devices/b")
        .bearer_auth(server.admin_token());
    assert_eq!(read_json(delete).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        try_publish(&server, "c", json!(1)).await.0,
        StatusCode::ACCEPTED
    );
}
