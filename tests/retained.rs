//! Retained events: after any gap a device gets the current state, not a hole.

mod common;

use std::time::Duration;

use common::{EventStream, TestServer, data_json, read_json};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn publish_retained(server: &TestServer, device: &str, event: &str, data: Value) -> String {
    let path = format!("/v1/devices/{device}/events");
    let body = json!({"event": event, "data": data, "retain": true});
    let (status, reply) = server.admin_post(&path, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    reply["id"].as_str().unwrap().to_owned()
}

/// Publishes a retained `config` and an ordinary `note`, and lets a stream
/// read both, so neither is waiting any more. Answers the last id seen.
async fn device_with_state(server: &TestServer, device: &str) -> String {
    let mut stream = server.connect(device).await;
    stream.hello().await;
    publish_retained(server, device, "config", json!({"v": 1})).await;
    server.publish(device, "note", json!("ordinary")).await;
    stream.next_event().await;
    stream.next_event().await.id.unwrap()
}

/// The next events' `(event, data)`, skipping heartbeats.
async fn next_named(stream: &mut EventStream, count: usize) -> Vec<(String, String)> {
    let mut events = Vec::new();
    for _ in 0..count {
        let event = stream.next_event().await;
        events.push((
            event.event.unwrap_or_default(),
            event.data.unwrap_or_default(),
        ));
    }
    events
}

fn named(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(e, d)| (e.to_string(), d.to_string()))
        .collect()
}

/// Publishes `marker` and expects it as the stream's next event: nothing
/// else (no retained event) came before it.
async fn expect_live_next(server: &TestServer, stream: &mut EventStream, device: &str) {
    server.publish(device, "marker", json!("live")).await;
    let event = stream.next_event().await;
    assert_eq!(
        (event.event.as_deref(), event.data.as_deref()),
        (Some("marker"), Some("live"))
    );
}

#[actix_web::test]
async fn a_fresh_connect_gets_the_latest_retained_event_of_each_name_then_live() {
    let server = TestServer::start().await;
    device_with_state(&server, "edge-1").await;
    let mut stream = server.connect("edge-1").await;
    stream.hello().await;
    publish_retained(&server, "edge-1", "config", json!({"v": 2})).await;
    publish_retained(&server, "edge-1", "mode", json!("eco")).await;
    next_named(&mut stream, 2).await;
    drop(stream);

    let mut fresh = server.connect("edge-1").await;
    fresh.hello().await;
    let expected = named(&[("config", r#"{"v":2}"#), ("mode", "eco")]);
    assert_eq!(next_named(&mut fresh, 2).await, expected);
    expect_live_next(&server, &mut fresh, "edge-1").await;
}

#[actix_web::test]
async fn a_resume_from_a_held_position_gets_no_retained_events() {
    let server = TestServer::start().await;
    let last_seen = device_with_state(&server, "edge-1").await;
    let mut stream = server.resume("edge-1", &last_seen).await;
    assert_eq!(stream.hello().await["resumed"], true);
    expect_live_next(&server, &mut stream, "edge-1").await;
}

#[actix_web::test]
async fn every_reset_is_followed_by_the_retained_events_then_live() {
    let server = TestServer::start_with(|s| s.session.buffer_events = 3).await;
    let last_seen = device_with_state(&server, "edge-1").await;
    let future = format!("{}-999", last_seen.split_once('-').unwrap().0);
    let mut stream = server.connect("edge-1").await;
    for (claimed, reason) in [("garbage", "invalid"), (future.as_str(), "future")] {
        stream = server.resume("edge-1", claimed).await;
        stream.hello().await;
        let reset = stream.next_event().await;
        let reason_sent = data_json(&reset)["reason"].clone();
        assert_eq!(
            (reset.event.as_deref(), reason_sent),
            (Some("reset"), json!(reason))
        );
        let config = stream.next_event().await;
        assert_eq!(
            config.id, None,
            "retained events are state: no id, never a position"
        );
        assert_eq!(
            (config.event.as_deref(), config.data.as_deref()),
            (Some("config"), Some(r#"{"v":1}"#))
        );
        expect_live_next(&server, &mut stream, "edge-1").await;
    }

    // The live stream reads five more; four of them push the position it
    // reads first out of the 3-event buffer.
    let mut position = String::new();
    for n in 0..5 {
        server.publish("edge-1", "note", json!(n)).await;
        let id = stream.next_event().await.id.unwrap();
        if n == 0 {
            position = id;
        }
    }
    let mut resumed = server.resume("edge-1", &position).await;
    resumed.hello().await;
    assert_eq!(data_json(&resumed.next_event().await)["reason"], "evicted");
    assert_eq!(
        next_named(&mut resumed, 1).await,
        named(&[("config", r#"{"v":1}"#)])
    );
    expect_live_next(&server, &mut resumed, "edge-1").await;
}

#[actix_web::test]
async fn retained_events_outlive_their_session() {
    let ttl = Duration::from_millis(300);
    let server = TestServer::start_with(|s| s.session.ttl = ttl).await;
    let last_seen = device_with_state(&server, "edge-1").await;

    // Waiting is the point: the session must expire.
    tokio::time::sleep(ttl * 3).await;
    let mut stream = server.resume("edge-1", &last_seen).await;
    stream.hello().await;
    assert_eq!(data_json(&stream.next_event().await)["reason"], "expired");
    let config = stream.next_event().await;
    let config = (
        config.event.as_deref(),
        config.data.as_deref(),
        config.id.as_deref(),
    );
    assert_eq!(config, (Some("config"), Some(r#"{"v":1}"#), None));
    expect_live_next(&server, &mut stream, "edge-1").await;
}

#[actix_web::test]
async fn deleting_a_device_ends_its_stream_and_drops_its_retained_events() {
    let server = TestServer::start().await;
    device_with_state(&server, "edge-1").await;
    let mut stream = server.connect("edge-1").await;
    stream.hello().await;
    next_named(&mut stream, 1).await;

    let delete = || {
        server
            .request(Method::DELETE, "/v1/devices/edge-1")
            .bearer_auth(server.admin_token())
    };
    assert_eq!(read_json(delete()).await.0, StatusCode::NO_CONTENT);
    stream.expect_end().await;
    let (status, reply) = read_json(delete()).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("unknown_device"))
    );

    let mut fresh = server.connect("edge-1").await;
    fresh.hello().await;
    expect_live_next(&server, &mut fresh, "edge-1").await;
}

#[actix_web::test]
async fn a_device_retains_a_bounded_number_of_names_and_a_refusal_changes_nothing() {
    let server = TestServer::start_with(|s| s.session.retained_per_device = 2).await;
    let first = publish_retained(&server, "edge-1", "a", json!(1)).await;
    publish_retained(&server, "edge-1", "b", json!(1)).await;
    let body = json!({"event": "c", "data": 1, "retain": true});
    let (status, reply) = server.admin_post("/v1/devices/edge-1/events", &body).await;
    assert_eq!(
        (status.as_u16(), &reply["error"]["code"]),
        (507, &json!("retained_limit"))
    );
    publish_retained(&server, "edge-1", "a", json!(2)).await;

    let mut stream = server.connect("edge-1").await;
    stream.hello().await;
    let expected = named(&[("a", "1"), ("b", "1"), ("a", "2")]);
    assert_eq!(
        next_named(&mut stream, 3).await,
        expected,
        "the refused event was never buffered"
    );
    expect_live_next(&server, &mut stream, "edge-1").await;
    assert!(first.ends_with("-1"));
}
