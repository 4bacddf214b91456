//! The admin API's contract: authentication, validation, documented errors,
//! and that bad input never costs a buffered event.

mod common;

use common::{TestServer, data_json, device_names, read_json};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error body: {body}"))
}

#[actix_web::test]
async fn admin_routes_refuse_a_missing_token_with_401_and_a_wrong_one_with_403() {
    let server = TestServer::start().await;
    let body = json!({"event": "config", "data": 1});
    for path in ["/v1/devices/edge-1/events", "/v1/broadcast"] {
        let (status, reply) = read_json(server.request(Method::POST, path).json(&body)).await;
        assert_eq!(
            (status, error_code(&reply)),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{path}"
        );

        let wrong = server
            .request(Method::POST, path)
            .bearer_auth("not-the-admin-token")
            .json(&body);
        let (status, reply) = read_json(wrong).await;
        assert_eq!(
            (status, error_code(&reply)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{path}"
        );

        let not_bearer = server
            .request(Method::POST, path)
            .basic_auth("admin", Some(server.admin_token()));
        let (status, _) = read_json(not_bearer.json(&body)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[actix_web::test]
async fn bad_device_ids_get_400_on_streams_and_publishes() {
    let server = TestServer::start().await;
    let too_long = "x".repeat(129);
    for device in [
        "bad%20id",
        "a%2Fb",
        "%C3%A9",
        "semi;colon",
        too_long.as_str(),
    ] {
        let path = format!("/v1/devices/{device}/events");
        let (status, reply) = read_json(server.request(Method::GET, &path)).await;
        assert_eq!(
            (status, error_code(&reply)),
            (StatusCode::BAD_REQUEST, "invalid_device_id"),
            "{device}"
        );
        let (status, reply) = server
            .admin_post(&path, &json!({"event": "config", "data": 1}))
            .await;
        assert_eq!(
            (status, error_code(&reply)),
            (StatusCode::BAD_REQUEST, "invalid_device_id"),
            "{device}"
        );
    }
}

#[actix_web::test]
async fn malformed_publishes_get_documented_errors() {
    let server = TestServer::start().await;
    let path = "/v1/devices/edge-1/events";
    let cases = [
        (json!({"data": 1}), "invalid_body"),
        (json!({"event": "config"}), "invalid_body"),
        (
            json!({"event": "config", "data": 1, "extra": true}),
            "invalid_body",
        ),
        (json!({"event": 7, "data": 1}), "invalid_body"),
        (json!({"event": "hello", "data": 1}), "invalid_event_name"),
        (
            json!({"event": "heartbeat", "data": 1}),
            "invalid_event_name",
        ),
        (
            json!({"event": "has space", "data": 1}),
            "invalid_event_name",
        ),
        (json!({"event": "", "data": 1}), "invalid_event_name"),
        (
            json!({"event": "config", "data": "carriage\rreturn"}),
            "invalid_data",
        ),
    ];
    for (body, code) in cases {
        let (status, reply) = server.admin_post(path, &body).await;
        assert_eq!(
            (status, error_code(&reply)),
            (StatusCode::BAD_REQUEST, code),
            "{body}"
        );
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    let authed = || {
        server
            .request(Method::POST, path)
            .bearer_auth(server.admin_token())
    };
    let truncated = authed()
        .header("content-type", "application/json")
        .body(r#"{"event":"config","da"#);
    let (status, reply) = read_json(truncated).await;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::BAD_REQUEST, "invalid_body")
    );

    let not_utf8 = authed()
        .header("content-type", "application/json")
        .body(vec![b'{', 0xff, 0xfe, b'}']);
    let (status, reply) = read_json(not_utf8).await;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::BAD_REQUEST, "invalid_body")
    );

    let text = authed()
        .header("content-type", "text/plain")
        .body(r#"{"event":"config","data":1}"#);
    let (status, reply) = read_json(text).await;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
}

#[actix_web::test]
async fn a_body_over_the_limit_gets_413() {
    let server = TestServer::start_with(|s| s.server.max_body_bytes = 1024).await;
    let big = json!({"event": "config", "data": "x".repeat(2048)});
    let (status, reply) = server.admin_post("/v1/devices/edge-1/events", &big).await;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    let (status, _) = server.admin_post("/v1/broadcast", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let fits = json!({"event": "config", "data": "x".repeat(900)});
    assert_eq!(
        server
            .admin_post("/v1/devices/edge-1/events", &fits)
            .await
            .0,
        StatusCode::ACCEPTED
    );
}

#[actix_web::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let server = TestServer::start().await;
    let (status, reply) = read_json(server.request(Method::GET, "/v2/nothing")).await;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, reply) = read_json(server.request(Method::PUT, "/v1/devices/edge-1/events")).await;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[actix_web::test]
async fn rejected_requests_leave_buffered_events_untouched() {
    let server = TestServer::start_with(|s| s.server.max_body_bytes = 1024).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(server.publish("edge-1", "config", json!(n)).await["id"].clone());
    }
    let path = "/v1/devices/edge-1/events";
    server
        .admin_post(path, &json!({"event": "config", "data": "x".repeat(4096)}))
        .await;
    server
        .admin_post(path, &json!({"event": "reset", "data": 1}))
        .await;
    server.admin_post(path, &json!({"event": "config"})).await;
    server
        .admin_post("/v1/broadcast", &json!({"event": "config", "data": "a\rb"}))
        .await;
    read_json(
        server
            .request(Method::POST, path)
            .json(&json!({"event": "config", "data": 9})),
    )
    .await;

    let mut stream = server.connect("edge-1").await;
    stream.hello().await;
    for (n, id) in ids.iter().enumerate() {
        let event = stream.next_event().await;
        assert_eq!(
            (json!(event.id), event.data),
            (id.clone(), Some(n.to_string()))
        );
    }
    let next = server.publish("edge-1", "config", json!("next")).await;
    assert!(
        next["id"].as_str().unwrap().ends_with("-4"),
        "rejected requests consumed no id: {next}"
    );
}

#[actix_web::test]
async fn a_multi_device_publish_reaches_each_listed_device_once() {
    let server = TestServer::start().await;
    let mut online = server.connect("online").await;
    online.hello().await;
    let body =
        json!({"devices": ["online", "offline", "online"], "event": "config", "data": {"v": 3}});
    let (status, reply) = server.admin_post("/v1/publish", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let results = reply["results"].as_array().unwrap();
    let devices: Vec<_> = results
        .iter()
        .map(|r| (r["device"].clone(), r["delivered"].clone()))
        .collect();
    assert_eq!(
        devices,
        [
            (json!("online"), json!(true)),
            (json!("offline"), json!(false))
        ]
    );
    let event = online.next_event().await;
    assert_eq!(
        (event.id.as_ref(), event.data.as_deref()),
        (
            results[0]["id"].as_str().map(str::to_owned).as_ref(),
            Some(r#"{"v":3}"#)
        )
    );
    let mut later = server.connect("offline").await;
    later.hello().await;
    assert_eq!(
        later.next_event().await.id.as_deref(),
        results[1]["id"].as_str()
    );
}

#[actix_web::test]
async fn a_multi_device_publish_is_all_or_nothing_and_bounded_in_devices() {
    let server = TestServer::start_with(|s| s.limits.max_devices_per_publish = 2).await;
    let cases = [
        (
            json!({"devices": [], "event": "e", "data": 1}),
            "invalid_device_count",
        ),
        (
            json!({"devices": ["a", "b", "c"], "event": "e", "data": 1}),
            "invalid_device_count",
        ),
        (
            json!({"devices": ["a", "bad id"], "event": "e", "data": 1}),
            "invalid_device_id",
        ),
        (
            json!({"devices": ["a"], "event": "reset", "data": 1}),
            "invalid_event_name",
        ),
        (
            json!({"devices": ["a"], "event": "e", "data": 1, "extra": 1}),
            "invalid_body",
        ),
    ];
    for (body, code) in cases {
        let (status, reply) = server.admin_post("/v1/publish", &body).await;
        assert_eq!(
            (status, error_code(&reply)),
            (StatusCode::BAD_REQUEST, code),
            "{body}"
        );
    }
    // Nothing above was published: "a" gets only what follows.
    let first = server.publish("a", "e", json!("first")).await;
    assert!(first["id"].as_str().unwrap().ends_with("-1"), "{first}");
}

#[actix_web::test]
async fn an_admin_disconnect_ends_the_stream_and_the_device_may_come_straight_back() {
    let server = TestServer::start().await;
    let mut stream = server.connect("edge-1").await;
    stream.hello().await;
    let disconnect = || server.request(Method::DELETE, "/v1/devices/edge-1/connection");
    assert_eq!(read_json(disconnect()).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        read_json(disconnect().bearer_auth(server.admin_token()))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    stream.expect_end().await;
    let mut again = server.connect("edge-1").await;
    again.hello().await;
}

#[actix_web::test]
async fn an_admin_disconnect_without_reconnect_kicks_and_answers_the_next_attempts_204() {
    let server = TestServer::start().await;
    let mut stream = server.connect("edge-1").await;
    stream.hello().await;
    let path = "/v1/devices/edge-1/connection?reconnect=false";
    let answer = read_json(
        server
            .request(Method::DELETE, path)
            .bearer_auth(server.admin_token()),
    )
    .await;
    assert_eq!(answer.0, StatusCode::NO_CONTENT);
    let kicked = stream.next_event().await;
    assert_eq!(
        (kicked.event.as_deref(), data_json(&kicked)),
        (Some("kicked"), json!({"reason": "admin"}))
    );
    stream.expect_end().await;

    for _ in 0..2 {
        let (status, body) =
            read_json(server.request(Method::GET, "/v1/devices/edge-1/events")).await;
        assert_eq!(
            (status, body),
            (StatusCode::NO_CONTENT, Value::Null),
            "EventSource stops on 204"
        );
    }
    let mut other = server.connect("edge-2").await;
    other.hello().await;

    let unknown = server
        .request(Method::DELETE, "/v1/devices/nobody/connection")
        .bearer_auth(server.admin_token());
    let (status, body) = read_json(unknown).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_connected")
    );
}

#[actix_web::test]
async fn the_device_views_show_connection_buffer_and_history_and_page_by_cursor() {
    let server = TestServer::start().await;
    let mut stream = server.connect("edge-1").await;
    stream.hello().await;
    let mut replacement = server.connect("edge-1").await;
    replacement.hello().await;
    // Counted as the kick reaches the first stream, before its client reads it.
    assert_eq!(stream.next_event().await.event.as_deref(), Some("kicked"));
    let last = server.publish("edge-1", "config", json!("abc")).await;
    for device in ["edge-2", "edge-3"] {
        server.publish(device, "config", json!(1)).await;
    }
    let get = |path: &str| {
        server
            .request(Method::GET, path)
            .bearer_auth(server.admin_token())
    };

    let (status, view) = read_json(get("/v1/devices/edge-1")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        (view["connected"].clone(), view["last_event_id"].clone()),
        (json!(true), last["id"].clone())
    );
    assert_eq!(
        (
            view["buffered_events"].clone(),
            view["buffered_bytes"].clone()
        ),
        (json!(1), json!(9))
    );
    assert_eq!(
        (
            view["reconnects"].clone(),
            view["kicks"].clone(),
            view["flapping"].clone()
        ),
        (json!(1), json!(1), json!(false))
    );
    assert!(view["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(
        view["connected_since"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let (_, page) = read_json(get("/v1/devices?limit=2")).await;
    assert_eq!(
        (device_names(&page), page["next"].clone()),
        (
            vec!["edge-1".to_owned(), "edge-2".to_owned()],
            json!("edge-2")
        )
    );
    let (_, page) = read_json(get("/v1/devices?limit=2&after=edge-2")).await;
    assert_eq!(
        (device_names(&page), page["next"].clone()),
        (vec!["edge-3".to_owned()], Value::Null)
    );
    let (_, offline) = read_json(get("/v1/devices?connected=false")).await;
    assert_eq!(device_names(&offline), ["edge-2", "edge-3"]);

    let (status, body) = read_json(get("/v1/devices/nobody")).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "unknown_device")
    );
    assert_eq!(
        read_json(server.request(Method::GET, "/v1/devices"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

#[actix_web::test]
async fn the_openapi_document_is_served() {
    let server = TestServer::start().await;
    let (status, document) = read_json(server.request(Method::GET, "/v1/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    assert!(document["paths"]["/v1/publish"]["post"]["security"].is_array());
}

#[actix_web::test]
async fn every_admin_operation_in_the_openapi_document_refuses_missing_and_wrong_tokens() {
    let server = TestServer::start().await;
    let (_, document) = read_json(server.request(Method::GET, "/v1/openapi.json")).await;
    let mut checked = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        let path = path.replace("{device_id}", "edge-1");
        for (method, operation) in operations.as_object().unwrap() {
            if operation.get("security").is_none() {
                continue;
            }
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let request = || {
                server
                    .request(method.clone(), &path)
                    .json(&json!({"event": "e", "data": 1}))
            };
            let (status, body) = read_json(request()).await;
            assert_eq!(
                (status, error_code(&body)),
                (StatusCode::UNAUTHORIZED, "unauthorized"),
                "{method} {path}"
            );
            let (status, body) = read_json(request().bearer_auth("not-an-admin-token")).await;
            assert_eq!(
                (status, error_code(&body)),
                (StatusCode::FORBIDDEN, "forbidden"),
                "{method} {path}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 10, "every admin operation was tried");
}
