//! What the admin page reads, through the same admin API anyone can call:
//! a device's newest and retained events, the device list by id prefix, the
//! live admin event stream; and the page itself, served with headers fit
//! for an admin page.

mod common;

use common::{EventStream, TestServer, device_names, error_code, read_json};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn get(server: &TestServer, path: &str) -> reqwest::RequestBuilder {
    server
        .request(Method::GET, path)
        .bearer_auth(server.admin_token())
}

#[actix_web::test]
async fn a_device_buffer_shows_its_newest_events_with_ids_and_its_retained_ones() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(server.publish("edge-1", "config", json!({"n": n})).await["id"].clone());
    }
    let body = json!({"event": "mode", "data": "eco", "retain": true});
    let (status, _) = read_json(
        server
            .request(Method::POST, "/v1/devices/edge-1/events")
            .bearer_auth(server.admin_token())
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let (status, buffer) = read_json(get(&server, "/v1/devices/edge-1/buffer?limit=3")).await;
    assert_eq!(status, StatusCode::OK, "{buffer}");
    let events: Vec<(Value, Value)> = (buffer["events"].as_array().unwrap().iter())
        .map(|e| (e["id"].clone(), e["data"].clone()))
        .collect();
    assert_eq!(
        events[..2],
        [
            (ids[3].clone(), json!(r#"{"n":3}"#)),
            (ids[4].clone(), json!(r#"{"n":4}"#))
        ]
    );
    assert_eq!(buffer["events"][2]["event"], "mode");
    assert_eq!(buffer["complete"], true);
    assert_eq!(
        buffer["retained"],
        json!([{"event": "mode", "data": "eco"}])
    );

    let (_, view) = read_json(get(&server, "/v1/devices/edge-1")).await;
    let limits = &server.settings.session;
    assert_eq!(
        view["limits"],
        json!({
            "buffer_events": limits.buffer_events,
            "buffer_bytes": limits.buffer_bytes,
            "retained": limits.retained_per_device,
        })
    );
    let (status, body) = read_json(get(&server, "/v1/devices/nobody/buffer")).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "unknown_device")
    );
}

#[actix_web::test]
async fn the_device_list_filters_by_id_prefix() {
    let server = TestServer::start().await;
    for device in ["hall-1", "kitchen-1", "kitchen-2", "kitchenette"] {
        server.publish(device, "config", json!(1)).await;
    }
    let (_, page) = read_json(get(&server, "/v1/devices?prefix=kitchen-")).await;
    assert_eq!(device_names(&page), ["kitchen-1", "kitchen-2"]);
    let (_, page) = read_json(get(
        &server,
        "/v1/devices?prefix=kitchen&limit=1&after=kitchen-1",
    ))
    .await;
    assert_eq!(device_names(&page), ["kitchen-2"]);
    let (status, body) = read_json(get(&server, "/v1/devices?prefix=bad%20prefix")).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_device_id")
    );
}

#[actix_web::test]
async fn the_admin_event_stream_tells_each_stream_lifecycle_step_and_the_totals() {
    let server = TestServer::start().await;
    let refused = server.request(Method::GET, "/v1/admin/events").send().await;
    assert_eq!(refused.unwrap().status(), StatusCode::UNAUTHORIZED);
    let response = get(&server, "/v1/admin/events").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut feed = EventStream::of_body(response.headers().clone(), response.bytes_stream());

    let mut stream = server.connect("edge-9").await;
    let hello = stream.hello().await;
    let conn = hello["connection_id"].clone();
    let mut replacement = server.connect("edge-9").await;
    replacement.hello().await;

    let mut steps = Vec::new();
    let mut stats = None;
    while steps.len() < 4 || stats.is_none() {
        let event = feed.next().await.expect("the feed stays open");
        // The stream opens with its `retry:` hint alone.
        let Some(data) = event.data.as_deref() else {
            continue;
        };
        let data: Value = serde_json::from_str(data).unwrap();
        match event.event.as_deref() {
            Some("device") => steps.push(data),
            Some("stats") => stats = Some(data),
            other => panic!("unexpected {other:?}"),
        }
    }
    let first = |name: &str| {
        (steps.iter())
            .find(|s| s["event"] == name)
            .unwrap_or_else(|| panic!("no {name} in {steps:?}"))
            .clone()
    };
    assert_eq!(first("device.connected")["conn"], conn);
    assert_eq!(first("device.connected")["device"], "edge-9");
    let kicked = first("device.kicked");
    assert_eq!(
        (kicked["conn"].clone(), kicked["device"].clone()),
        (conn.clone(), json!("edge-9"))
    );
    let stats = stats.unwrap();
    // The totals of /v1/stats, as numbers.
    for figure in [
        "streams",
        "sessions",
        "delivered",
        "kicks",
        "resets_expired",
    ] {
        assert!(stats[figure].is_u64(), "{figure} in {stats}");
    }
    let disconnected = first("device.disconnected");
    assert_eq!(
        (disconnected["conn"].clone(), disconnected["reason"].clone()),
        (conn, json!("kicked"))
    );
}

#[actix_web::test]
async fn the_admin_page_is_served_with_a_strict_policy_and_api_answers_are_not_cached() {
    let server = TestServer::start().await;
    for path in [
        "/admin/",
        "/admin/app.js",
        "/admin/api.js",
        "/admin/app.css",
    ] {
        let response = server.request(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            (response.headers().get(name))
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let policy = header("content-security-policy");
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert_eq!(header("x-frame-options"), "DENY");
    }
    let page = server.request(Method::GET, "/admin/").send().await.unwrap();
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="app.js">"#));
    assert!(!html.contains("<script>"), "no inline script");

    let answer = get(&server, "/v1/stats").send().await.unwrap();
    assert_eq!(answer.headers()["cache-control"], "no-store");

    let without = TestServer::start_with(|settings| settings.admin.ui = false).await;
    let response = without
        .request(Method::GET, "/admin/")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
