//! The stream protocol: opening, live delivery, kicks, heartbeats.

mod common;

use std::time::{Duration, Instant};

use common::{EventStream, TestServer, data_json, seq_of};
use futures_util::future::join_all;
use herald_actors::FlappingPolicy;
use serde_json::json;

#[actix_web::test]
async fn a_stream_opens_with_sse_headers_a_jittered_retry_and_hello() {
    let server = TestServer::start().await;
    let mut retries = Vec::new();
    for _ in 0..8 {
        let mut stream = server.connect("edge-1").await;
        assert_eq!(stream.headers["content-type"], "text/event-stream");
        assert_eq!(stream.headers["cache-control"], "no-cache");
        assert_eq!(stream.headers["x-accel-buffering"], "no");
        let retry = stream.next().await.unwrap().retry.expect("retry first");
        let hello = stream.next_event().await;
        assert_eq!(
            (hello.event.as_deref(), hello.id.as_deref()),
            (Some("hello"), None)
        );
        let hello = data_json(&hello);
        assert_eq!(hello["device_id"], "edge-1");
        assert_eq!(hello["heartbeat_timeout_ms"], 20_000);
        assert_eq!(hello["resumed"], false);
        assert!(
            hello["connection_id"]
                .as_str()
                .is_some_and(|id| id.len() == 36)
        );
        retries.push(retry);
    }
    assert!(
        retries.iter().all(|r| (2_000..=4_000).contains(r)),
        "{retries:?} within 3s ± 1s"
    );
    retries.dedup();
    assert!(
        retries.len() > 1,
        "retry is jittered per connection: {retries:?}"
    );
}

#[actix_web::test]
async fn a_published_event_arrives_live_with_its_id_name_and_data_intact() {
    let server = TestServer::start().await;
    let mut stream = server.connect("edge-1").await;
    stream.hello().await;
    let payloads = [
        json!({"mode": "eco", "limits": [1, 2]}),
        json!("line one\nline two\n\nline four\n"),
        json!(""),
        json!("plain text with ünïcödé"),
        json!(42),
    ];
    let mut ids = Vec::new();
    for data in &payloads {
        let reply = server.publish("edge-1", "config", data.clone()).await;
        assert_eq!(
            (reply["delivered"].clone(), reply["buffered"].clone()),
            (json!(true), json!(true))
        );
        ids.push(reply["id"].as_str().unwrap().to_owned());
    }
    for (data, id) in payloads.iter().zip(&ids) {
        let event = stream.next_event().await;
        let expected = data
            .as_str()
            .map_or_else(|| data.to_string(), str::to_owned);
        assert_eq!(event.id.as_ref(), Some(id));
        assert_eq!(event.event.as_deref(), Some("config"));
        assert_eq!(event.data.as_deref(), Some(expected.as_str()));
    }
    let seqs: Vec<u64> = ids.iter().map(|id| seq_of(id)).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

#[actix_web::test]
async fn a_second_connection_kicks_the_first_which_ends() {
    let server = TestServer::start().await;
    let mut first = server.connect("edge-1").await;
    first.hello().await;
    let mut second = server.connect("edge-1").await;
    let second_id = second.hello().await["connection_id"].clone();

    let kicked = first.next_event().await;
    assert_eq!(
        (kicked.event.as_deref(), kicked.id.as_deref()),
        (Some("kicked"), None)
    );
    assert_eq!(
        data_json(&kicked),
        json!({"reason": "replaced", "connection_id": second_id})
    );
    first.expect_end().await;

    let reply = server.publish("edge-1", "config", json!("after")).await;
    assert_eq!(reply["delivered"], true);
    assert_eq!(second.next_event().await.data.as_deref(), Some("after"));
}

/// Each stream's next event name; a kicked stream must then end.
async fn next_event_names(streams: Vec<EventStream>) -> Vec<String> {
    join_all(streams.into_iter().map(|mut stream| async move {
        let event = stream.next_event().await;
        if event.event.as_deref() == Some("kicked") {
            stream.expect_end().await;
        }
        event.event.unwrap_or_default()
    }))
    .await
}

#[actix_web::test]
async fn a_burst_of_fifty_reconnects_leaves_exactly_one_live_stream() {
    let server = TestServer::start().await;
    // A burst like this is flapping: once detected, newcomers are refused
    // (409) instead of kicking. Either way one stream must end up live.
    let attempts = join_all((0..50).map(|_| async {
        let mut stream = server.try_open("edge-1", &[], "").await?;
        stream.hello().await;
        Ok::<_, common::Refusal>(stream)
    }))
    .await;
    let mut streams = Vec::new();
    for attempt in attempts {
        match attempt {
            Ok(stream) => streams.push(stream),
            Err(refusal) => assert_eq!(
                (refusal.status.as_u16(), refusal.code()),
                (409, "flapping"),
                "a newcomer is refused only as flapping: {refusal:?}"
            ),
        }
    }
    assert!(streams.len() >= 2, "the first reconnects get through");
    server
        .publish("edge-1", "config", json!("after the burst"))
        .await;

    let outcomes = next_event_names(streams).await;
    let live = outcomes.iter().filter(|name| *name == "config").count();
    let kicked = outcomes.iter().filter(|name| *name == "kicked").count();
    assert_eq!((live, kicked), (1, outcomes.len() - 1), "{outcomes:?}");
}

#[actix_web::test]
async fn fifty_rapid_reconnects_with_flapping_allowed_all_kick_and_one_stays_live() {
    let server = TestServer::start_with(|s| s.kicks.flapping_policy = FlappingPolicy::Allow).await;
    let streams = join_all((0..50).map(|_| async {
        let mut stream = server.connect("edge-1").await;
        stream.hello().await;
        stream
    }))
    .await;
    server
        .publish("edge-1", "config", json!("after the burst"))
        .await;
    let outcomes = next_event_names(streams).await;
    let live = outcomes.iter().filter(|name| *name == "config").count();
    assert_eq!((live, outcomes.len()), (1, 50), "{outcomes:?}");
}

#[actix_web::test]
async fn an_idle_stream_gets_id_less_heartbeats_before_its_timeout_and_a_busy_one_gets_none() {
    // Idle after 1 s, dead after 2 s: a heartbeat must come in between. The
    // bounds below follow from these two figures, with the margin as the
    // slack a loaded machine gets; no count is expected per wall-clock span.
    let (timeout, margin) = (Duration::from_secs(2), Duration::from_secs(1));
    let idle_after = timeout - margin;
    let server = TestServer::start_with(|s| {
        s.heartbeat.timeout = timeout;
        s.heartbeat.margin = margin;
    })
    .await;
    let (mut idle, mut busy) = (server.connect("idle").await, server.connect("busy").await);
    idle.hello().await;
    busy.hello().await;

    let heartbeats = 3;
    let idle_reader = async {
        let mut last = Instant::now();
        let mut gaps = Vec::new();
        while gaps.len() < heartbeats {
            let heartbeat = idle.next().await.expect("idle stream open");
            assert_eq!(heartbeat.event.as_deref(), Some("heartbeat"));
            assert_eq!(
                (heartbeat.id.as_deref(), heartbeat.data.as_deref()),
                (None, Some("{}"))
            );
            gaps.push(last.elapsed());
            last = Instant::now();
        }
        gaps
    };
    // The busy stream gets an event every 100 ms, a tenth of its idle time,
    // until the idle one has had its heartbeats.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let publisher = async {
        let mut sent = 0;
        while stopped.try_recv().is_err() {
            server.publish("busy", "tick", json!(sent)).await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent
    };
    let watcher = async {
        let gaps = idle_reader.await;
        stop.send(()).unwrap();
        gaps
    };
    let (gaps, sent) = tokio::join!(watcher, publisher);

    for gap in &gaps {
        // Never before the stream was idle for `idle_after` (less what a
        // delayed earlier receipt can take off), always before `timeout`.
        assert!(
            *gap + Duration::from_millis(200) >= idle_after && *gap < timeout,
            "heartbeats {idle_after:?} after the last write, within {timeout:?}: {gaps:?}"
        );
    }
    let mut ticks = Vec::new();
    for _ in 0..sent {
        ticks.push(busy.next().await.expect("busy stream open"));
    }
    assert!(
        ticks.iter().all(|e| e.event.as_deref() == Some("tick")),
        "no heartbeat on a stream with traffic: {ticks:?}"
    );
}
