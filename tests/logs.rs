//! Log lines are an API: stable event names and fields, in text and in JSON.

mod common;

use common::{HeraldProcess, read_until};
use serde_json::{Map, Value};

/// A scenario that logs connect, reset, kick, disconnect and expiry, against
/// a real herald writing `format`; answers the log lines.
async fn scenario(format: &str) -> (HeraldProcess, Vec<String>) {
    let mut herald = HeraldProcess::start(&[
        ("HERALD_LOG__FORMAT", format),
        ("HERALD_SESSION__TTL", "200ms"),
    ])
    .await;
    let url = herald.url("/v1/devices/edge-1/events");
    let client = reqwest::Client::new();
    let mut first = client.get(&url).send().await.unwrap().bytes_stream();
    herald.expect_log(&["device.connected", "edge-1"]).await;
    let second = client
        .get(&url)
        .header("Last-Event-ID", "garbage")
        .send()
        .await
        .unwrap();
    herald.expect_log(&["session.reset", "edge-1"]).await;
    // The first client reads its `kicked` (logged before it is written):
    // had it closed first, it would not have been kicked.
    read_until(&mut first, "event: kicked").await;
    drop((first, second));
    herald.expect_log(&["session.expired", "edge-1"]).await;
    let events = [
        "device.connected",
        "session.reset",
        "device.kicked",
        "client_gone",
        "session.expired",
    ];
    let lines = events
        .iter()
        .map(|event| {
            let line = herald.log_lines().iter().find(|line| line.contains(event));
            line.unwrap_or_else(|| panic!("no {event} line")).clone()
        })
        .collect();
    (herald, lines)
}

/// The fields of a text line (`event key=value …`).
fn text_fields(line: &str) -> Map<String, Value> {
    let message = line.split_once("] ").map_or(line, |(_, m)| m);
    let mut words = message.split(' ');
    let mut fields = Map::new();
    fields.insert("event".into(), words.next().unwrap_or_default().into());
    for word in words {
        if let Some((key, value)) = word.split_once('=') {
            fields.insert(key.into(), value.trim_matches('"').into());
        }
    }
    fields
}

fn json_fields(line: &str) -> Map<String, Value> {
    match serde_json::from_str(line) {
        Ok(Value::Object(fields)) => fields,
        other => panic!("not a JSON object per line: {line} ({other:?})"),
    }
}

/// Every scenario line has its event and the documented fields.
fn check(lines: &[String], parse: fn(&str) -> Map<String, Value>) {
    let expected: [(&str, &[&str]); 5] = [
        (
            "device.connected",
            &["device", "conn", "addr", "resumed", "replayed"],
        ),
        (
            "session.reset",
            &["device", "conn", "reason", "last_event_id"],
        ),
        ("device.kicked", &["device", "conn", "by"]),
        (
            "device.disconnected",
            &["device", "conn", "reason", "duration_ms"],
        ),
        ("session.expired", &["device", "buffered"]),
    ];
    for (line, (event, keys)) in lines.iter().zip(expected) {
        let fields = parse(line);
        assert_eq!(fields["event"], event, "{line}");
        for key in keys {
            assert!(fields.contains_key(*key), "{event} has {key}: {line}");
        }
    }
    let reset = parse(&lines[1]);
    assert_eq!(
        (reset["reason"].as_str(), reset["last_event_id"].as_str()),
        (Some("invalid"), Some("garbage"))
    );
}

#[actix_web::test]
async fn text_lines_carry_the_event_name_and_key_value_fields() {
    let (herald, lines) = scenario("text").await;
    check(&lines, text_fields);
    herald.terminate().await;
}

#[actix_web::test]
async fn json_lines_are_one_object_each_with_ts_level_event_and_typed_fields() {
    let (herald, lines) = scenario("json").await;
    check(&lines, json_fields);
    let connected = json_fields(&lines[0]);
    assert_eq!(
        (connected["level"].as_str(), connected["resumed"].as_bool()),
        (Some("INFO"), Some(false))
    );
    assert!(connected["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')));
    assert!(json_fields(&lines[3])["duration_ms"].is_u64());
    let log = herald.terminate().await;
    for line in log.lines() {
        json_fields(line);
    }
}

#[actix_web::test]
async fn every_request_gets_one_access_line_with_its_path_but_never_its_query() {
    let mut herald = HeraldProcess::start(&[]).await;
    let client = reqwest::Client::new();
    let stream = client
        .get(herald.url("/v1/devices/edge-1/events?token=query-secret-1234"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let refused = client
        .get(herald.url("/v1/devices/bad%20id/events?lastEventId=query-secret-5678"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    let connect = herald
        .expect_log(&[
            "http.request",
            "method=GET",
            "path=\"/v1/devices/edge-1/events\"",
            "status=200",
        ])
        .await;
    assert!(connect.contains("duration_ms="), "{connect}");
    herald.expect_log(&["http.request", "status=400"]).await;
    drop((stream, refused));
    let log = herald.terminate().await;
    assert!(
        !log.contains("query-secret"),
        "no query string is logged:\n{log}"
    );
}

/// A client that stops reading, fed until herald cuts it; answers the
/// `stream.slow_consumer` and `device.disconnected` lines.
async fn slow_consumer(format: &str) -> (HeraldProcess, String, String) {
    let mut herald = HeraldProcess::start(&[
        ("HERALD_LOG__FORMAT", format),
        ("HERALD_STREAM__QUEUE_FRAMES", "4"),
        ("HERALD_LIMITS__MAX_EVENT_BYTES", "65536"),
        ("HERALD_SERVER__MAX_BODY_BYTES", "131072"),
    ])
    .await;
    let address = herald.url("").trim_start_matches("http://").to_owned();
    let mut stuck = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = "GET /v1/devices/stuck/events HTTP/1.1\r\nHost: herald\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut stuck, request.as_bytes())
        .await
        .unwrap();
    herald.expect_log(&["device.connected", "stuck"]).await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({"event": "bulk", "data": "x".repeat(32 * 1024)});
    for _ in 0..2000 {
        let reply: Value = client
            .post(herald.url("/v1/devices/stuck/events"))
            .bearer_auth("local-admin-token-change-me")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if reply["delivered"] == false {
            break;
        }
    }
    let slow = herald.expect_log(&["stream.slow_consumer", "stuck"]).await;
    let gone = herald.expect_log(&["device.disconnected", "slow"]).await;
    drop(stuck);
    (herald, slow, gone)
}

#[actix_web::test]
async fn a_slow_consumer_is_logged_with_its_cut_in_both_formats() {
    let (herald, slow, gone) = slow_consumer("text").await;
    let (slow, gone) = (text_fields(&slow), text_fields(&gone));
    assert_eq!(
        (slow["event"].as_str(), slow["queue"].as_str()),
        (Some("stream.slow_consumer"), Some("4"))
    );
    assert_eq!(gone["reason"].as_str(), Some("slow"));
    herald.terminate().await;

    let (herald, slow, gone) = slow_consumer("json").await;
    let (slow, gone) = (json_fields(&slow), json_fields(&gone));
    assert_eq!(
        (slow["level"].as_str(), slow["queue"].as_u64()),
        (Some("WARN"), Some(4))
    );
    assert_eq!(
        (gone["event"].as_str(), gone["reason"].as_str()),
        (Some("device.disconnected"), Some("slow"))
    );
    herald.terminate().await;
}

#[actix_web::test]
async fn refused_publishes_and_evictions_are_logged() {
    let mut herald = HeraldProcess::start(&[
        ("RUST_LOG", "debug"),
        ("HERALD_SESSION__BUFFER_EVENTS", "2"),
    ])
    .await;
    let client = reqwest::Client::new();
    let url = herald.url("/v1/devices/edge-9/events");
    let publish = |event: &str| {
        let body = serde_json::json!({"event": event, "data": 1});
        let request = client.post(&url);
        request
            .bearer_auth("local-admin-token-change-me")
            .json(&body)
            .send()
    };
    assert_eq!(publish("hello").await.unwrap().status(), 400);
    herald
        .expect_log(&["publish.rejected", "reason=invalid_event_name", "devices=1"])
        .await;
    for _ in 0..3 {
        assert_eq!(publish("config").await.unwrap().status(), 202);
    }
    herald
        .expect_log(&["buffer.evicted", "device=edge-9", "events=1", "held=2"])
        .await;
    herald.terminate().await;
}
