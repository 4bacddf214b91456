//! `/metrics`, `/v1/stats` and the `server.stats` line move as a scripted
//! scenario says. A fresh process, so every counter starts at zero.

mod common;

use common::{HeraldProcess, read_until, sample};
use serde_json::{Value, json};

const ADMIN: &str = "local-admin-token-change-me";

#[actix_web::test]
async fn metrics_stats_and_the_stats_line_follow_a_scripted_scenario() {
    let mut herald = HeraldProcess::start(&[("HERALD_LOG__STATS_INTERVAL", "1s")]).await;
    let client = reqwest::Client::new();
    let stream_url = herald.url("/v1/devices/edge-1/events");
    let mut first = client.get(&stream_url).send().await.unwrap().bytes_stream();
    read_until(&mut first, "event: hello").await;
    for n in 0..3 {
        let body = json!({"event": "config", "data": n});
        let publish = client
            .post(&stream_url)
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(publish.status(), 202);
    }
    read_until(&mut first, "data: 2").await;
    let bad = json!({"event": "hello", "data": 1});
    assert_eq!(
        client
            .post(&stream_url)
            .bearer_auth(ADMIN)
            .json(&bad)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    // A second stream with a garbage position: one reset, one kick.
    let mut second = client
        .get(&stream_url)
        .header("Last-Event-ID", "garbage")
        .send()
        .await
        .unwrap()
        .bytes_stream();
    read_until(&mut second, "event: reset").await;
    read_until(&mut first, "event: kicked").await;

    let exposition = client
        .get(herald.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expected = [
        ("herald_events_published_total", 3.0),
        ("herald_events_delivered_total", 3.0),
        ("herald_publish_to_write_seconds_count", 3.0),
        ("herald_kicks_total", 1.0),
        ("herald_resets_total{reason=\"invalid\"}", 1.0),
        (
            "herald_rejected_requests_total{reason=\"invalid_event_name\"}",
            1.0,
        ),
        ("herald_sessions", 1.0),
        ("herald_buffered_events", 3.0),
    ];
    for (name, value) in expected {
        assert_eq!(sample(&exposition, name), value, "{name}");
    }
    assert!(
        (1.0..=2.0).contains(&sample(&exposition, "herald_streams")),
        "the kicked stream may still be closing"
    );

    let stats: Value = client
        .get(herald.url("/v1/stats"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            stats["published"].clone(),
            stats["resets_invalid"].clone(),
            stats["kicks"].clone()
        ),
        (json!(3), json!(1), json!(1))
    );
    assert_eq!(
        client
            .get(herald.url("/v1/stats"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Each line counts what happened since the previous one: they add up.
    let field = |line: &str, key: &str| -> u64 {
        let value = line
            .split(' ')
            .find_map(|f| f.strip_prefix(&format!("{key}=")));
        value
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    let (mut published, mut resets) = (0, 0);
    while published < 3 || resets < 1 {
        let line = herald.expect_log(&["server.stats"]).await;
        published += field(&line, "published");
        resets += field(&line, "resets_invalid");
        assert_eq!(field(&line, "sessions"), 1, "{line}");
    }
    assert_eq!((published, resets), (3, 1));
    herald.terminate().await;
}
