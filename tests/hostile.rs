//! Hostile input: every one gets its documented 4xx (or its connection
//! closed), the server goes on serving, and no buffered event is lost.

mod common;

use common::{
    EventStream, HeraldProcess, TestServer, data_json, error_code, raw_exchange, raw_status,
    read_json, triples,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Longest `last_event_id` a `reset` echoes back.
const MAX_ECHOED_ID: usize = 128;

/// Events published to a device that has no stream yet: it must get all of
/// them on its first connect, whatever happened in between.
struct Buffered {
    device: &'static str,
    events: Vec<(Option<String>, Option<String>, Option<String>)>,
}

impl Buffered {
    async fn publish(server: &TestServer, device: &'static str) -> Self {
        let mut events = Vec::new();
        for (name, data) in [
            ("config", json!({"mode": "eco"})),
            ("note", json!("two\nlines")),
            ("config", json!({"mode": "boost"})),
        ] {
            let reply = server.publish(device, name, data.clone()).await;
            let data = match data {
                Value::String(text) => text,
                other => other.to_string(),
            };
            let id = reply["id"].as_str().unwrap().to_owned();
            events.push((Some(id), Some(name.to_owned()), Some(data)));
        }
        Self { device, events }
    }

    /// Connects fresh and expects exactly the buffered events, in order.
    async fn assert_all_delivered(&self, server: &TestServer) {
        let mut stream = server.connect(self.device).await;
        assert_eq!(stream.hello().await["resumed"], false);
        let mut received = Vec::new();
        for _ in &self.events {
            received.push(stream.next_event().await);
        }
        assert_eq!(triples(&received), self.events, "{}", self.device);
    }
}

/// Runs `hostile` between two checks that buffered events are delivered:
/// one device checked before, one (buffered before, too) checked after.
async fn survives<F: AsyncFnOnce(&TestServer)>(server: &TestServer, hostile: F) {
    let before = Buffered::publish(server, "witness-before").await;
    let after = Buffered::publish(server, "witness-after").await;
    before.assert_all_delivered(server).await;
    hostile(server).await;
    after.assert_all_delivered(server).await;
}

/// Reads hello and the `reset` after it; answers reset's data.
async fn reset_of(mut stream: EventStream) -> Value {
    let hello = stream.hello().await;
    assert_eq!(hello["resumed"], false);
    let reset = stream.next_event().await;
    assert_eq!(
        (reset.event.as_deref(), reset.id.as_deref()),
        (Some("reset"), None),
        "{reset:?}"
    );
    data_json(&reset)
}

fn echoed(reset: &Value) -> &str {
    reset["last_event_id"].as_str().expect("a string echo")
}

#[actix_web::test]
async fn garbage_last_event_ids_get_a_reset_as_invalid_echoing_what_was_sent() {
    let server = TestServer::start().await;
    survives(&server, async |server| {
        let garbage = [
            "-1",
            "a-b",
            "99999999999999999999999-1",
            "0123456789abcdef-0",
            "0123456789abcdef-01",
            "0123456789abcdef-+1",
            "0123456789ABCDEF-1",
            "0123456789abcdef-99999999999999999999999",
            "-",
        ];
        for (n, id) in garbage.iter().enumerate() {
            let device = format!("header-{n}");
            let reset = reset_of(server.resume(&device, id).await).await;
            assert_eq!(reset["reason"], "invalid", "{id}");
            assert_eq!(echoed(&reset), *id);
        }
        // Whitespace around a header value is not part of it (HTTP trims it).
        let via_query = [
            " 0123456789abcdef-1",
            "0123456789abcdef-1 ",
            "with spaces and ünïcödé ✓",
            "nul\0inside",
            "line\r\nbreak",
            "\u{feff}bom",
            "0123456789abcdef-1\0",
        ];
        for (n, id) in via_query.iter().enumerate() {
            let device = format!("query-{n}");
            let reset = reset_of(server.resume_via_query(&device, id).await).await;
            assert_eq!(reset["reason"], "invalid", "{id:?}");
            assert_eq!(echoed(&reset), *id);
        }
    })
    .await;
}

#[actix_web::test]
async fn a_last_event_id_that_is_not_utf8_gets_a_reset_as_invalid() {
    let server = TestServer::start().await;
    survives(&server, async |server| {
        let raw = reqwest::header::HeaderValue::from_bytes(b"\xff\xfe-1").unwrap();
        let response = server
            .request(Method::GET, "/v1/devices/edge-1/events")
            .header("Last-Event-ID", raw)
            .send()
            .await
            .unwrap();
        let stream = EventStream::from_response(response).await.unwrap();
        let reset = reset_of(stream).await;
        assert_eq!(reset["reason"], "invalid");
        assert!(echoed(&reset).chars().count() <= MAX_ECHOED_ID);
    })
    .await;
}

#[actix_web::test]
async fn an_enormous_last_event_id_gets_a_reset_as_invalid_and_an_echo_of_at_most_128_characters() {
    let server = TestServer::start().await;
    survives(&server, async |server| {
        let enormous = "x".repeat(8 * 1024);
        let near_id = format!("0123456789abcdef-{}", "9".repeat(4096));
        let cases = [
            ("header", enormous.clone()),
            ("header", near_id.clone()),
            ("query", enormous.clone()),
            ("query", "é".repeat(4096)),
            ("query", "\0".repeat(4096)),
        ];
        for (n, (place, id)) in cases.into_iter().enumerate() {
            let device = format!("edge-{n}");
            let stream = match place {
                "header" => server.resume(&device, &id).await,
                _ => server.resume_via_query(&device, &id).await,
            };
            let reset = reset_of(stream).await;
            assert_eq!(reset["reason"], "invalid", "{place}");
            let echo = echoed(&reset);
            assert!(
                echo.chars().count() <= MAX_ECHOED_ID,
                "{place}: the echo is {} characters long",
                echo.chars().count()
            );
            assert!(id.starts_with(echo), "{place}: the echo is what was sent");
        }
    })
    .await;
}

#[actix_web::test]
async fn control_characters_in_device_ids_get_400_invalid_device_id() {
    let server = TestServer::start().await;
    survives(&server, async |server| {
        for device in [
            "a%0D%0Ab", "%0D%0A", "a%00b", "%00", "a%0Ab", "a%09b", "a%7Fb",
        ] {
            for (method, path) in [
                (Method::GET, format!("/v1/devices/{device}/events")),
                (Method::POST, format!("/v1/devices/{device}/events")),
                (Method::DELETE, format!("/v1/devices/{device}")),
            ] {
                let request = server
                    .request(method.clone(), &path)
                    .bearer_auth(server.admin_token())
                    .json(&json!({"event": "config", "data": 1}));
                let (status, reply) = read_json(request).await;
                assert_eq!(
                    (status, error_code(&reply)),
                    (StatusCode::BAD_REQUEST, "invalid_device_id"),
                    "{method} {path}"
                );
            }
        }
    })
    .await;
}

#[actix_web::test]
async fn control_characters_in_event_names_get_400_invalid_event_name() {
    let server = TestServer::start().await;
    survives(&server, async |server| {
        for name in [
            "a\r\nb", "a\nb", "a\rb", "a\u{0}b", "\u{0}", "a\tb", "a\u{7f}b", "id: 1",
        ] {
            let body = json!({"event": name, "data": 1});
            for path in ["/v1/devices/witness-after/events", "/v1/broadcast"] {
                let (status, reply) = server.admin_post(path, &body).await;
                assert_eq!(
                    (status, error_code(&reply)),
                    (StatusCode::BAD_REQUEST, "invalid_event_name"),
                    "{name:?} to {path}"
                );
            }
        }
    })
    .await;
}

#[actix_web::test]
async fn a_header_block_over_actix_limit_is_refused_or_closed_and_the_server_goes_on() {
    let server = TestServer::start().await;
    survives(&server, async |server| {
        let big = "a".repeat(200 * 1024);
        let one_huge_header =
            format!("GET /v1/devices/edge-1/events HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        let many_headers = format!(
            "GET /v1/devices/edge-1/events HTTP/1.1\r\nHost: x\r\n{}\r\n",
            "X-Many: y\r\n".repeat(200)
        );
        let huge_last_event_id = format!(
            "GET /v1/devices/edge-1/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {big}\r\n\r\n"
        );
        for request in [one_huge_header, many_headers, huge_last_event_id] {
            let answer = raw_exchange(server.addr(), request.as_bytes()).await;
            let status = raw_status(&answer);
            assert!(
                answer.is_empty() || matches!(status, Some(400 | 431)),
                "closed, or 400/431: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            );
        }
    })
    .await;
}

#[actix_web::test]
async fn out_of_range_numbers_are_refused_and_edge_numbers_arrive_as_compact_json() {
    let server = TestServer::start().await;
    survives(&server, async |server| {
        let path = "/v1/devices/numbers/events";
        for raw in [
            "1e400", "-1e400", "NaN", "Infinity", "0x10", "01", "+1", ".5",
        ] {
            let body = format!(r#"{{"event":"n","data":{raw}}}"#);
            let request = server
                .request(Method::POST, path)
                .bearer_auth(server.admin_token())
                .header("content-type", "application/json")
                .body(body);
            let (status, reply) = read_json(request).await;
            assert_eq!(
                (status, error_code(&reply)),
                (StatusCode::BAD_REQUEST, "invalid_body"),
                "{raw}"
            );
        }

        // Valid JSON: sent as serde_json writes it back. `-0` is read as the
        // float -0.0; 2^64 fits no integer type and is read as a float;
        // exponents are written with a sign.
        let edges = [
            ("-0", "-0.0"),
            ("-1e308", "-1e+308"),
            ("18446744073709551616", "1.8446744073709552e+19"),
            ("18446744073709551615", "18446744073709551615"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("1E2", "100.0"),
            ("0.1", "0.1"),
            ("5e-324", "5e-324"),
            ("[1.0, -0.0, 1e-7]", "[1.0,-0.0,1e-7]"),
        ];
        let mut stream = server.connect("numbers").await;
        stream.hello().await;
        let mut arrived = Vec::new();
        for (raw, _) in edges {
            let body = format!(r#"{{"event":"n","data":{raw}}}"#);
            let request = server
                .request(Method::POST, path)
                .bearer_auth(server.admin_token())
                .header("content-type", "application/json")
                .body(body);
            let (status, reply) = read_json(request).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{raw}: {reply}");
            let data = stream.next_event().await.data.unwrap_or_default();
            arrived.push((raw, data));
        }
        let expected: Vec<_> = edges.map(|(raw, data)| (raw, data.to_owned())).into();
        assert_eq!(arrived, expected);
    })
    .await;
}

#[actix_web::test]
async fn a_hostile_position_is_logged_escaped_and_capped() {
    let herald = HeraldProcess::start(&[]).await;
    let http = reqwest::Client::new();
    let enormous = "x".repeat(8 * 1024);
    let injection = "\r\n[fake] session.reset device=edge-9 injected=true\n";
    let cases = [
        ("header", enormous.as_str()),
        ("query", enormous.as_str()),
        ("query", injection),
    ];
    for (n, (place, id)) in cases.into_iter().enumerate() {
        let request = http.get(herald.url(&format!("/v1/devices/edge-{n}/events")));
        let request = match place {
            "header" => request.header("Last-Event-ID", id),
            _ => request.query(&[("lastEventId", id)]),
        };
        let stream = EventStream::from_response(request.send().await.unwrap())
            .await
            .unwrap();
        // The reset is logged before it is written.
        assert_eq!(reset_of(stream).await["reason"], "invalid");
    }
    let log = herald.terminate().await;
    let resets: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("session.reset"))
        .collect();
    assert_eq!(resets.len(), cases.len(), "one line per reset:\n{log}");
    assert!(
        log.lines().all(|line| line.starts_with('[')),
        "no injected line:\n{log}"
    );
    assert!(!log.contains("injected=true\n") && log.contains("injected=true"));
    for line in resets {
        assert!(line.len() < 1024, "a capped line: {} bytes", line.len());
    }
}
