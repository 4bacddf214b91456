//! Cross-origin access: the configured origins only, each echoed exactly and
//! with credentials (cookies for `withCredentials` EventSource), never `*`;
//! every other origin gets no allow header at all.

mod common;

use std::time::Duration;

use common::TestServer;
use herald::{config::DeviceAuth, tokens::DeviceTokens};
use herald_actors::DeviceId;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::json;

const CONSOLE: &str = "https://console.example.com";

/// Origins that are not the console, some of them close to it.
const OTHERS: [&str; 5] = [
    "https://evil.example.com",
    "http://console.example.com",
    "https://console.example.com.evil.net",
    "https://console.example.com:8443",
    "null",
];

async fn console_server() -> TestServer {
    TestServer::start_with(|s| {
        s.cors.allowed_origins = vec![CONSOLE.into()];
        s.auth.devices = DeviceAuth::Token;
    })
    .await
}

/// A preflight for an admin publish from `origin`: status and headers.
async fn preflight(server: &TestServer, origin: &str) -> (StatusCode, HeaderMap) {
    let response = server
        .request(Method::OPTIONS, "/v1/devices/x/events")
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    (response.status(), response.headers().clone())
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

/// The lower-cased, comma-separated items of a list header.
fn items(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|item| item.trim().to_ascii_lowercase())
        .collect()
}

/// A preflight refused: none of the allow headers.
fn assert_no_allow_headers(headers: &HeaderMap, context: &str) {
    for name in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-methods",
        "access-control-allow-headers",
    ] {
        assert!(
            headers.get(name).is_none(),
            "{context}: no {name}, got {headers:?}"
        );
    }
}

/// A response the page may not read: no allow-origin (actix-cors adds
/// `allow-credentials: true` to every response, which without a matching
/// allow-origin lets nothing through).
fn assert_no_allow_origin(headers: &HeaderMap, context: &str) {
    assert!(
        headers.get("access-control-allow-origin").is_none(),
        "{context}: no access-control-allow-origin, got {headers:?}"
    );
}

fn cookie(server: &TestServer, device: &str) -> String {
    let token = DeviceTokens::new(&server.settings.auth.secret)
        .mint(&DeviceId::parse(device).unwrap(), Duration::from_secs(3600));
    format!("{}={token}", server.settings.auth.cookie)
}

#[actix_web::test]
async fn a_preflight_from_the_allowed_origin_gets_that_exact_origin_with_credentials() {
    let server = console_server().await;
    let (status, headers) = preflight(&server, CONSOLE).await;
    assert!(status.is_success(), "{status} {headers:?}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some(CONSOLE)
    );
    assert_eq!(
        header(&headers, "access-control-allow-credentials"),
        Some("true")
    );
    assert!(items(&headers, "access-control-allow-methods").contains(&"post".to_owned()));
    let allowed = items(&headers, "access-control-allow-headers");
    for needed in ["authorization", "content-type"] {
        assert!(
            allowed.contains(&needed.to_owned()),
            "{needed}: {allowed:?}"
        );
    }
    assert!(items(&headers, "vary").contains(&"origin".to_owned()));
}

#[actix_web::test]
async fn a_stream_from_the_allowed_origin_with_the_device_cookie_is_readable_cross_origin() {
    let server = console_server().await;
    let cookie = cookie(&server, "edge-1");
    let mut stream = server
        .open("edge-1", &[("Origin", CONSOLE), ("Cookie", &cookie)], "")
        .await;
    assert_eq!(
        header(&stream.headers, "access-control-allow-origin"),
        Some(CONSOLE)
    );
    assert_eq!(
        header(&stream.headers, "access-control-allow-credentials"),
        Some("true")
    );
    assert!(items(&stream.headers, "vary").contains(&"origin".to_owned()));
    assert_eq!(stream.hello().await["device_id"], "edge-1");
}

#[actix_web::test]
async fn the_console_can_publish_cross_origin_and_read_the_reply() {
    let server = console_server().await;
    let publish = server
        .request(Method::POST, "/v1/devices/edge-1/events")
        .header("Origin", CONSOLE)
        .bearer_auth(server.admin_token())
        .json(&json!({"event": "config", "data": 1}));
    let response = publish.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        Some(CONSOLE)
    );
}

#[actix_web::test]
async fn a_refused_stream_from_the_allowed_origin_is_readable_so_the_page_can_tell_why() {
    let server = console_server().await;
    let refusal = server
        .try_open("edge-1", &[("Origin", CONSOLE)], "")
        .await
        .err()
        .unwrap();
    assert_eq!(refusal.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&refusal.headers, "access-control-allow-origin"),
        Some(CONSOLE)
    );
}

#[actix_web::test]
async fn other_origins_get_no_allow_header_on_preflights_streams_or_publishes() {
    let server = console_server().await;
    for (n, origin) in OTHERS.into_iter().enumerate() {
        // One device per origin: reopening one device's stream again and
        // again would make it flapping.
        let device = format!("edge-{n}");
        let (status, headers) = preflight(&server, origin).await;
        // actix-cors refuses a preflight from an unlisted origin outright.
        assert_eq!(status, StatusCode::BAD_REQUEST, "{origin}");
        assert_no_allow_headers(&headers, &format!("preflight from {origin}"));

        // A foreign page's stream with the device cookie is refused (it
        // would kick the device's real stream), without any allow header.
        let cookie = cookie(&server, &device);
        let headers = [("Origin", origin), ("Cookie", cookie.as_str())];
        let refused = server.try_open(&device, &headers, "").await.err().unwrap();
        assert_eq!(refused.code(), "origin_not_allowed", "{origin}");
        assert_no_allow_origin(&refused.headers, &format!("stream from {origin}"));

        let refusal = server
            .try_open("edge-2", &[("Origin", origin)], "")
            .await
            .err()
            .unwrap();
        assert_no_allow_origin(&refusal.headers, &format!("refusal for {origin}"));
    }
}

#[actix_web::test]
async fn by_default_no_origin_is_allowed_cross_origin_access() {
    let server = TestServer::start().await;
    assert!(server.settings.cors.allowed_origins.is_empty());
    for (n, origin) in [CONSOLE].iter().chain(&OTHERS).enumerate() {
        let (status, headers) = preflight(&server, origin).await;
        assert!(status.is_client_error(), "{origin}: {status}");
        assert_no_allow_headers(&headers, &format!("preflight from {origin}"));
        let device = format!("edge-{n}");
        let stream = server.open(&device, &[("Origin", origin)], "").await;
        assert_no_allow_origin(&stream.headers, &format!("stream from {origin}"));
    }
}

#[actix_web::test]
async fn an_admin_refusal_for_the_allowed_origin_is_readable_cross_origin() {
    let server = console_server().await;
    let publish = || {
        server
            .request(Method::POST, "/v1/devices/edge-1/events")
            .header("Origin", CONSOLE)
            .json(&json!({"event": "config", "data": 1}))
    };
    // Refused by the handler: an invalid name.
    let invalid = server
        .request(Method::POST, "/v1/devices/edge-1/events")
        .header("Origin", CONSOLE)
        .bearer_auth(server.admin_token())
        .json(&json!({"event": "hello", "data": 1}));
    let response = invalid.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        Some(CONSOLE)
    );
    // Refused by the admin middleware: no token, a wrong token.
    for (request, expected) in [
        (publish(), StatusCode::UNAUTHORIZED),
        (
            publish().bearer_auth("not-an-admin-token-at-all"),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected);
        assert_eq!(
            header(response.headers(), "access-control-allow-origin"),
            Some(CONSOLE),
            "the console can read why it got {expected}: {:?}",
            response.headers()
        );
    }
}

#[actix_web::test]
async fn only_pages_of_the_allowed_origins_may_use_the_device_cookie() {
    let server = console_server().await;
    let with_cookie = |origin: &str| {
        let request = server.request(Method::GET, "/v1/devices/edge-1/events");
        request
            .header("Cookie", cookie(&server, "edge-1"))
            .header("Origin", origin)
    };
    let (status, body) = common::read_json(with_cookie("https://evil.example")).await;
    assert_eq!(
        (status, common::error_code(&body)),
        (StatusCode::FORBIDDEN, "origin_not_allowed")
    );
    let allowed = with_cookie(CONSOLE).send().await.unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);

    // A bearer token is no ambient credential: any caller that has it may use it.
    let token = DeviceTokens::new(&server.settings.auth.secret)
        .mint(&DeviceId::parse("edge-2").unwrap(), Duration::from_secs(60));
    let request = server
        .request(Method::GET, "/v1/devices/edge-2/events")
        .bearer_auth(token);
    let response = request
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
