//! Two clients, one identity: kick ping-pong ends in a stable state.

mod common;

use common::{HeraldProcess, TestServer, error_code, read_json};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

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
