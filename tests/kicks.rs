//! Two clients, one identity: kick ping-pong ends in a stable state.

mod common;

use common::{HeraldProcess, TestServer, error_code, read_json, read_until, sample, try_open_raw};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sse_stream::Sse;

const ADMIN: &str = "local-admin-token-change-me";

/// The status and error code of a stream request that is refused.
async fn refused(server: &TestServer, query: &str) -> (StatusCode, Value) {
    let request = server.request(Method::GET, &format!("/v1/devices/edge-1/events{query}"));
    let (status, body) = read_json(request).await;
    (status, body["error"]["code"].clone())
}

#[actix_web::test]
async fn a_kicked_instance_that_comes_back_is_refused_and_the_other_stays_live() {
    let server = TestServer::start().await;
    let mut tab_a = server.open("edge-1", &[], "?instance=tab-a").await;
    tab_a.hello().await;
    let mut tab_b = server.open("edge-1", &[], "?instance=tab-b").await;
    tab_b.hello().await;
    assert_eq!(tab_a.next_event().await.event.as_deref(), Some("kicked"));
    tab_a.expect_end().await;

    // What EventSource in tab A does next: reconnect. 409 stops it.
    assert_eq!(
        refused(&server, "?instance=tab-a").await,
        (StatusCode::CONFLICT, json!("kicked_instance"))
    );
    server
        .publish("edge-1", "config", json!("still here"))
        .await;
    assert_eq!(tab_b.next_event().await.data.as_deref(), Some("still here"));
}

#[actix_web::test]
async fn an_instance_replacing_its_own_zombie_gets_through_at_once() {
    let server = TestServer::start().await;
    let mut zombie = server.open("edge-1", &[], "?instance=box-7").await;
    zombie.hello().await;
    let mut fresh = server.open("edge-1", &[], "?instance=box-7").await;
    fresh.hello().await;
    let mut plain = server.connect("edge-2").await;
    plain.hello().await;
    let mut plain_again = server.connect("edge-2").await;
    assert_eq!(
        plain_again.hello().await["device_id"],
        "edge-2",
        "one reconnect is never flapping"
    );
}

#[actix_web::test]
async fn clients_without_instances_that_keep_kicking_each_other_are_cooled_down() {
    let server = TestServer::start_with(|s| s.kicks.flapping_kicks = 3).await;
    let mut streams: Vec<common::EventStream> = Vec::new();
    for _ in 0..4 {
        let mut stream = server.connect("edge-1").await;
        stream.hello().await;
        // The stream it replaced was live: kicked, which its client reads
        // before it comes back.
        if let Some(replaced) = streams.last_mut() {
            assert_eq!(replaced.next_event().await.event.as_deref(), Some("kicked"));
        }
        streams.push(stream);
    }
    // Three kicks: flapping. The newcomer is refused; the live one stays.
    assert_eq!(
        refused(&server, "").await,
        (StatusCode::CONFLICT, json!("flapping"))
    );
    server.publish("edge-1", "config", json!("stable")).await;
    let live = streams.last_mut().unwrap();
    assert_eq!(live.next_event().await.data.as_deref(), Some("stable"));
    // A named instance is judged by its name, not by the device's flapping.
    let mut named = server.open("edge-1", &[], "?instance=tab-c").await;
    named.hello().await;
}

#[actix_web::test]
async fn an_instance_name_follows_the_name_rule() {
    let server = TestServer::start().await;
    let (status, code) = refused(&server, "?instance=has%20space").await;
    assert_eq!(
        (status, code),
        (StatusCode::BAD_REQUEST, json!("invalid_instance"))
    );
}

#[actix_web::test]
async fn the_log_says_why_a_client_was_refused_and_names_both_flapping_addresses() {
    let mut herald = HeraldProcess::start(&[("HERALD_KICKS__FLAPPING_KICKS", "2")]).await;
    let base = herald.url("/v1/devices/edge-1/events");
    let url = |query: &str| format!("{base}{query}");
    let mut open = Vec::new();
    for query in ["?instance=tab-a", "?instance=tab-b"] {
        let response = reqwest::get(url(query)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }
    // Tab A's client is there: the kick counts as it reaches the stream.
    herald.expect_log(&["device.kicked", "device=edge-1"]).await;
    let refused = reqwest::get(url("?instance=tab-a")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    herald
        .expect_log(&[
            "device.refused",
            "device=edge-1",
            "instance=tab-a",
            "reason=kicked_instance",
        ])
        .await;

    // Two more kicks without instances: flapping, logged at warn with both
    // addresses.
    for _ in 0..2 {
        open.push(reqwest::get(url("")).await.unwrap());
    }
    let flapping = herald
        .expect_log(&["device.flapping", "device=edge-1"])
        .await;
    assert!(flapping.contains("WARN"), "{flapping}");
    let addrs = flapping
        .split_whitespace()
        .find_map(|f| f.strip_prefix("addrs="))
        .unwrap();
    assert_eq!(
        addrs
            .split(',')
            .filter(|a| a.starts_with("127.0.0.1:"))
            .count(),
        2,
        "{flapping}"
    );
    let refused = reqwest::get(url("")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(&refused.json().await.unwrap()), "flapping");
    herald
        .expect_log(&["device.refused", "reason=flapping"])
        .await;
}

/// Adds the ids of published events to `received`; anything but those and
/// heartbeats (a `kicked`, a `reset`) fails the test.
fn take(received: &mut Vec<String>, events: impl IntoIterator<Item = Sse>) {
    for event in events {
        match event.event.as_deref() {
            Some("tick") => received.push(event.id.expect("a published event has an id")),
            Some("heartbeat") => {}
            _ => panic!("only published events and heartbeats: {event:?}"),
        }
    }
}

/// A page reload, an app restart, an `EventSource` closed and reopened: the
/// client closes its stream and, its socket closed, opens a new one at once
/// with its position, 50 times, while events keep coming. Its old stream had
/// no client any more, so the new one kicks no one: under the strictest kick
/// rule it is never refused, and every event arrives once, in order.
#[actix_web::test]
async fn a_client_that_closes_and_reopens_at_once_is_never_refused_and_misses_nothing() {
    let server = TestServer::start_with(|s| s.kicks.flapping_kicks = 2).await;
    let mut stream = try_open_raw(server.addr(), "edge-1", &[]).await.unwrap();
    stream.hello().await;
    let publishing = server.keep_publishing("edge-1");
    let mut received = vec![];
    for round in 0..50 {
        if round % 10 == 0 {
            take(&mut received, [stream.next_event().await]);
        }
        stream.close();
        let position = [("Last-Event-ID", received.last().unwrap().as_str())];
        stream = match try_open_raw(server.addr(), "edge-1", &position).await {
            Ok(stream) => stream,
            Err(refusal) => panic!("round {round}: the reopened stream was refused: {refusal:?}"),
        };
        assert_eq!(stream.hello().await["resumed"], true, "round {round}");
    }
    let published = publishing.stop().await;
    while received.last() != published.last() {
        take(&mut received, [stream.next_event().await]);
    }
    assert_eq!(received, published, "every event once, in order");

    let view = server
        .request(Method::GET, "/v1/devices/edge-1")
        .bearer_auth(server.admin_token());
    let (_, view) = read_json(view).await;
    assert_eq!(
        (view["kicks"].clone(), view["flapping"].clone()),
        (json!(0), json!(false)),
        "{view}"
    );
}

/// Whether a stream was kicked is decided once, and the admin view, the
/// metric and the log all follow from it: live clients replacing each other
/// and an operator's kick count, a client closing and reopening does not.
#[actix_web::test]
async fn the_admin_view_the_metric_and_the_log_count_the_same_kicks() {
    let mut herald = HeraldProcess::start(&[("HERALD_KICKS__FLAPPING_POLICY", "allow")]).await;
    let client = reqwest::Client::new();
    let (stream_url, view_url) = (
        herald.url("/v1/devices/edge-1/events"),
        herald.url("/v1/devices/edge-1"),
    );
    let metrics_url = herald.url("/metrics");
    let open = async || {
        let mut body = client.get(&stream_url).send().await.unwrap().bytes_stream();
        read_until(&mut body, "event: hello").await;
        body
    };
    let counts = async || {
        let (_, view) = read_json(client.get(&view_url).bearer_auth(ADMIN)).await;
        let exposition = client.get(&metrics_url).send().await.unwrap();
        let exposition = exposition.text().await.unwrap();
        (
            view["kicks"].as_u64(),
            sample(&exposition, "herald_kicks_total"),
        )
    };
    // Live clients replacing each other: three kicks, each read by the
    // client it ends. The third newcomer is a stream the test can close.
    let mut live = open().await;
    for _ in 0..2 {
        let newer = open().await;
        read_until(&mut live, "event: kicked").await;
        herald.expect_log(&["device.kicked", "device=edge-1"]).await;
        live = newer;
    }
    let addr = format!("127.0.0.1:{}", herald.port);
    let mut stream = try_open_raw(&addr, "edge-1", &[]).await.unwrap();
    stream.hello().await;
    read_until(&mut live, "event: kicked").await;
    herald.expect_log(&["device.kicked", "device=edge-1"]).await;
    // That client closes and reopens, again and again: no kick.
    for _ in 0..20 {
        stream.close();
        stream = try_open_raw(&addr, "edge-1", &[]).await.unwrap();
        stream.hello().await;
    }
    assert_eq!(
        counts().await,
        (Some(3), 3.0),
        "after closing and reopening"
    );

    // An operator's kick: the fourth.
    let disconnect = client
        .delete(herald.url("/v1/devices/edge-1/connection?reconnect=false"))
        .bearer_auth(ADMIN);
    assert_eq!(disconnect.send().await.unwrap().status(), 204);
    assert_eq!(stream.next_event().await.event.as_deref(), Some("kicked"));
    herald.expect_log(&["device.kicked", "device=edge-1"]).await;
    assert_eq!(counts().await, (Some(4), 4.0), "after the operator's kick");
    let log = herald.terminate().await;
    let kick_lines = log.lines().filter(|l| l.contains("device.kicked")).count();
    assert_eq!(kick_lines, 4, "{log}");
}
