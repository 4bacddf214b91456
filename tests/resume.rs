//! Resuming: replay from a position, offline delivery, expiry, resets.

mod common;

use std::time::Duration;

use common::{EventStream, TestServer, data_json, seq_of, triples};
use herald::config::Settings;
use herald_actors::BackendKind;
use serde_json::json;

/// Connects `device`, publishes one event it receives, and answers that
/// event's id; the stream is dropped (the device goes offline — the server
/// may take a moment to notice, which these tests do not depend on).
async fn device_that_saw_one_event(server: &TestServer, device: &str) -> String {
    let mut stream = server.connect(device).await;
    stream.hello().await;
    server.publish(device, "config", json!("seen")).await;
    stream.next_event().await.id.expect("an id")
}

async fn publish_numbered(
    server: &TestServer,
    device: &str,
    range: std::ops::Range<u32>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for n in range {
        let reply = server.publish(device, "note", json!(format!("n{n}"))).await;
        ids.push(reply["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Reads `count` events and checks they are the numbered notes with `ids`.
async fn expect_notes(stream: &mut EventStream, ids: &[String], first: u32) {
    let mut got = Vec::new();
    for _ in ids {
        got.push(stream.next_event().await);
    }
    let expected: Vec<_> = ids
        .iter()
        .zip(first..)
        .map(|(id, n)| {
            (
                Some(id.clone()),
                Some("note".to_owned()),
                Some(format!("n{n}")),
            )
        })
        .collect();
    assert_eq!(triples(&got), expected);
}

#[actix_web::test]
async fn a_device_resuming_with_last_event_id_gets_exactly_what_it_missed_then_live() {
    let server = TestServer::start().await;
    let last_seen = device_that_saw_one_event(&server, "edge-1").await;
    let missed = publish_numbered(&server, "edge-1", 0..5).await;

    let mut stream = server.resume("edge-1", &last_seen).await;
    assert_eq!(stream.hello().await["resumed"], true);
    expect_notes(&mut stream, &missed, 0).await;

    let live = server.publish("edge-1", "note", json!("live")).await;
    assert_eq!(live["delivered"], true);
    let event = stream.next_event().await;
    assert_eq!(
        (event.id, event.data.as_deref()),
        (live["id"].as_str().map(str::to_owned), Some("live"))
    );
}

#[actix_web::test]
async fn the_last_event_id_query_parameter_resumes_like_the_header() {
    let server = TestServer::start().await;
    let last_seen = device_that_saw_one_event(&server, "edge-1").await;
    let missed = publish_numbered(&server, "edge-1", 0..5).await;

    let mut stream = server.resume_via_query("edge-1", &last_seen).await;
    assert_eq!(stream.hello().await["resumed"], true);
    expect_notes(&mut stream, &missed, 0).await;
}

#[actix_web::test]
async fn events_published_while_a_replay_is_in_flight_are_neither_lost_nor_duplicated() {
    let server = TestServer::start().await;
    let last_seen = device_that_saw_one_event(&server, "edge-1").await;
    publish_numbered(&server, "edge-1", 0..400).await;

    // The device resumes while a publisher keeps going; every event after
    // its position must arrive once, in order, whichever side wins the race.
    let publisher = async {
        let mut last = String::new();
        for n in 400..600 {
            last = server
                .publish("edge-1", "note", json!(format!("n{n}")))
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        last
    };
    let reader = async {
        let mut stream = server.resume("edge-1", &last_seen).await;
        stream.hello().await;
        let mut seqs = Vec::new();
        while seqs.len() < 600 {
            seqs.push(seq_of(&stream.next_event().await.id.expect("an id")));
        }
        seqs
    };
    let (last, seqs) = tokio::join!(publisher, reader);
    assert_eq!(seq_of(&last), 601);
    assert_eq!(seqs, (2..=601).collect::<Vec<_>>());
}

#[actix_web::test]
async fn events_published_to_a_device_that_never_connected_wait_for_it() {
    let server = TestServer::start().await;
    let waiting = publish_numbered(&server, "newcomer", 0..3).await;
    let reply = server.publish("newcomer", "note", json!("n3")).await;
    assert_eq!(
        (reply["delivered"].clone(), reply["buffered"].clone()),
        (json!(false), json!(true))
    );
    let mut stream = server.connect("newcomer").await;
    assert_eq!(stream.hello().await["resumed"], false);
    expect_notes(&mut stream, &waiting, 0).await;
    assert_eq!(stream.next_event().await.data.as_deref(), Some("n3"));
}

#[actix_web::test]
async fn a_broadcast_reaches_connected_devices_and_waits_for_offline_ones() {
    let server = TestServer::start().await;
    let mut online = server.connect("online").await;
    online.hello().await;
    server.publish("offline", "config", json!("before")).await;

    let reply = server
        .broadcast("notice", json!({"maintenance": true}))
        .await;
    assert_eq!(reply, json!({"delivered": 1, "buffered": 2}));
    assert_eq!(online.next_event().await.event.as_deref(), Some("notice"));
    let mut later = server.connect("offline").await;
    later.hello().await;
    assert_eq!(later.next_event().await.data.as_deref(), Some("before"));
    assert_eq!(
        later.next_event().await.data.as_deref(),
        Some(r#"{"maintenance":true}"#)
    );
}

#[actix_web::test]
async fn a_session_expires_after_its_ttl_and_a_late_resume_is_told_so() {
    let ttl = Duration::from_millis(300);
    let server = TestServer::start_with(|s| s.session.ttl = ttl).await;
    let last_seen = device_that_saw_one_event(&server, "edge-1").await;
    let within = device_that_saw_one_event(&server, "edge-2").await;

    // Within the TTL the session is still there.
    let mut early = server.resume("edge-2", &within).await;
    assert_eq!(early.hello().await["resumed"], true);

    // Waiting is the point here: nothing happens until the TTL has passed.
    tokio::time::sleep(ttl * 3).await;
    let mut late = server.resume("edge-1", &last_seen).await;
    assert_eq!(late.hello().await["resumed"], false);
    let reset = late.next_event().await;
    assert_eq!(
        (reset.event.as_deref(), reset.id.as_deref()),
        (Some("reset"), None)
    );
    assert_eq!(
        data_json(&reset),
        json!({"reason": "expired", "last_event_id": last_seen})
    );
}

#[actix_web::test]
async fn a_lost_position_gets_reset_first_then_what_no_stream_was_given_then_live() {
    let server = TestServer::start().await;
    let last_seen = device_that_saw_one_event(&server, "edge-1").await;
    let future = format!("{}-{}", last_seen.split_once('-').unwrap().0, 99);
    for (claimed, reason) in [("garbage", "invalid"), (future.as_str(), "future")] {
        let waiting = publish_numbered(&server, "edge-1", 0..2).await;
        let mut stream = server.resume("edge-1", claimed).await;
        assert_eq!(stream.hello().await["resumed"], false);
        let reset = stream.next_event().await;
        assert_eq!(
            (reset.event.as_deref(), reset.id.as_deref()),
            (Some("reset"), None)
        );
        assert_eq!(
            data_json(&reset),
            json!({"reason": reason, "last_event_id": claimed})
        );
        expect_notes(&mut stream, &waiting, 0).await;
        server.publish("edge-1", "config", json!("live")).await;
        assert_eq!(stream.next_event().await.data.as_deref(), Some("live"));
    }
}

/// On the embedded backend (the default) a restart is invisible to a
/// resuming client: same history, same ids, exactly what it missed.
#[actix_web::test]
async fn after_a_restart_an_old_position_resumes_exactly_where_it_was() {
    let mut server = TestServer::start().await;
    let last_seen = device_that_saw_one_event(&server, "edge-1").await;
    let missed = publish_numbered(&server, "edge-1", 0..2).await;
    server.restart().await;

    let mut stream = server.resume("edge-1", &last_seen).await;
    assert_eq!(stream.hello().await["resumed"], true);
    expect_notes(&mut stream, &missed, 0).await;
    let live = publish_numbered(&server, "edge-1", 2..3).await;
    assert_eq!(seq_of(&live[0]), seq_of(&missed[1]) + 1, "ids go on");
    expect_notes(&mut stream, &live, 2).await;
}

/// With nothing kept across the restart (the memory backend, or a wiped
/// data directory), an old position cannot be trusted.
#[actix_web::test]
async fn after_a_restart_without_storage_an_old_position_is_reset_as_unknown_epoch_never_replayed()
{
    let memory = |s: &mut Settings| s.storage.backend = BackendKind::Memory;
    let mut server = TestServer::start_with(memory).await;
    let last_seen = device_that_saw_one_event(&server, "edge-1").await;
    server.restart().await;
    let after = server;
    let waiting = publish_numbered(&after, "edge-1", 0..2).await;
    assert!(
        seq_of(&waiting[0]) <= seq_of(&last_seen),
        "the new history reuses small numbers"
    );
    let mut stream = after.resume("edge-1", &last_seen).await;
    stream.hello().await;
    let reset = stream.next_event().await;
    assert_eq!(
        data_json(&reset),
        json!({"reason": "unknown_epoch", "last_event_id": last_seen})
    );
    expect_notes(&mut stream, &waiting, 0).await;
}

#[actix_web::test]
async fn a_fresh_connect_is_reset_when_events_meant_for_it_were_evicted_unseen() {
    let server = TestServer::start_with(|s| s.session.buffer_events = 3).await;
    let ids = publish_numbered(&server, "edge-1", 0..5).await;
    let mut stream = server.connect("edge-1").await;
    stream.hello().await;
    let reset = stream.next_event().await;
    assert_eq!(
        data_json(&reset),
        json!({"reason": "evicted", "last_event_id": null})
    );
    expect_notes(&mut stream, &ids[2..], 2).await;
}

#[actix_web::test]
async fn the_header_wins_over_the_query_and_an_empty_header_defers_to_it() {
    let server = TestServer::start().await;
    let last_seen = device_that_saw_one_event(&server, "edge-1").await;
    let missed = publish_numbered(&server, "edge-1", 0..2).await;
    let query = format!("?lastEventId={last_seen}");

    let mut both = server
        .open("edge-1", &[("Last-Event-ID", missed[0].as_str())], &query)
        .await;
    both.hello().await;
    expect_notes(&mut both, &missed[1..], 1).await;

    let mut empty_header = server
        .open("edge-1", &[("Last-Event-ID", "")], &query)
        .await;
    assert_eq!(empty_header.hello().await["resumed"], true);
    expect_notes(&mut empty_header, &missed, 0).await;
}
