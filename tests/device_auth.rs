//! Device tokens on streams (`auth.devices = "token"`): where a token may come
//! from, what is refused and how, that a device token is never an admin
//! token, that `herald token` mints working tokens, and that no token ever
//! reaches the log.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{HeraldProcess, TestServer, data_json, error_code, herald_command, read_json};
use herald::{config::DeviceAuth, tokens::DeviceTokens};
use herald_actors::DeviceId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "a-test-device-secret-at-least-32-bytes";
const HOUR: Duration = Duration::from_secs(3600);

async fn token_server() -> TestServer {
    TestServer::start_with(|s| {
        s.auth.devices = DeviceAuth::Token;
        s.auth.secret = SECRET.to_owned();
    })
    .await
}

fn mint(secret: &str, device: &str, ttl: Duration) -> String {
    DeviceTokens::new(secret).mint(&DeviceId::parse(device).unwrap(), ttl)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A correctly signed token for `device` whose `exp` passed a minute ago.
fn expired(secret: &str, device: &str) -> String {
    let claims = json!({"sub": device, "aud": "herald-device", "iat": unix_now() - 120, "exp": unix_now() - 60});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn cookie(server: &TestServer, token: &str) -> String {
    format!("{}={token}", server.settings.auth.cookie)
}

/// Opens `device`'s stream with `headers`/`query`; expects a refusal.
async fn refused(
    server: &TestServer,
    device: &str,
    headers: &[(&str, &str)],
    query: &str,
) -> (StatusCode, String) {
    let refusal = server
        .try_open(device, headers, query)
        .await
        .err()
        .unwrap_or_else(|| {
            panic!("{device} {headers:?} {query}: expected a refusal, got a stream")
        });
    (refusal.status, refusal.code().to_owned())
}

#[actix_web::test]
async fn a_stream_without_a_token_gets_401_with_a_bearer_challenge() {
    let server = token_server().await;
    let refusal = server.try_open("edge-1", &[], "").await.err().unwrap();
    assert_eq!(
        (refusal.status, refusal.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(refusal.headers["www-authenticate"], "Bearer");
    let unauthorized = (StatusCode::UNAUTHORIZED, "unauthorized".to_owned());
    let empty_bearer = [("Authorization", "Bearer ")];
    assert_eq!(
        refused(&server, "edge-1", &empty_bearer, "").await,
        unauthorized
    );
    assert_eq!(
        refused(&server, "edge-1", &[], "?token=").await,
        unauthorized
    );
}

#[actix_web::test]
async fn garbage_expired_and_foreign_tokens_get_401_from_every_place_a_token_may_come_from() {
    let server = token_server().await;
    let forged = mint("another-secret-that-is-also-32-bytes-long", "edge-1", HOUR);
    let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJlZGdlLTEiLCJleHAiOjk5OTk5OTk5OTl9.";
    let bad = [
        "garbage".to_owned(),
        "a.b.c".to_owned(),
        unsigned.to_owned(),
        expired(SECRET, "edge-1"),
        forged,
    ];
    for token in &bad {
        let places = [
            (vec![("Authorization", bearer(token))], String::new()),
            (vec![("Cookie", cookie(&server, token))], String::new()),
            (vec![], format!("?token={token}")),
        ];
        for (headers, query) in places {
            let headers: Vec<_> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(
                refused(&server, "edge-1", &headers, &query).await,
                (StatusCode::UNAUTHORIZED, "unauthorized".to_owned()),
                "{token} in {headers:?} {query}"
            );
        }
    }
}

#[actix_web::test]
async fn a_token_for_another_device_gets_403_wrong_device() {
    let server = token_server().await;
    let token = mint(SECRET, "edge-a", HOUR);
    assert_eq!(
        refused(&server, "edge-b", &[("Authorization", &bearer(&token))], "").await,
        (StatusCode::FORBIDDEN, "wrong_device".to_owned())
    );
    assert_eq!(
        refused(&server, "edge-b", &[], &format!("?token={token}")).await,
        (StatusCode::FORBIDDEN, "wrong_device".to_owned())
    );
}

#[actix_web::test]
async fn a_valid_token_opens_the_stream_from_the_header_the_cookie_or_the_query() {
    let server = token_server().await;
    // One device per case: reopening one device's stream again and again
    // would make it flapping.
    let token = |device: &str| mint(SECRET, device, HOUR);
    let places = [
        (
            "edge-1",
            vec![("Authorization", bearer(&token("edge-1")))],
            String::new(),
        ),
        (
            "edge-2",
            vec![("Cookie", cookie(&server, &token("edge-2")))],
            String::new(),
        ),
        (
            "edge-3",
            vec![(
                "Cookie",
                format!("other=1; {}", cookie(&server, &token("edge-3"))),
            )],
            String::new(),
        ),
        ("edge-4", vec![], format!("?token={}", token("edge-4"))),
        (
            "edge-5",
            vec![],
            format!("?lastEventId=&token={}", token("edge-5")),
        ),
    ];
    for (device, headers, query) in places {
        let headers: Vec<_> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut stream = server.open(device, &headers, &query).await;
        assert_eq!(
            stream.hello().await["device_id"],
            device,
            "{headers:?} {query}"
        );
    }
}

#[actix_web::test]
async fn the_bearer_header_wins_over_the_cookie_and_the_cookie_over_the_query() {
    let server = token_server().await;
    let good = mint(SECRET, "edge-1", HOUR);
    let other = mint(SECRET, "edge-2", HOUR);
    // Header (wrong device) over a good cookie and query.
    let query = format!("?token={good}");
    let (cookie_good, cookie_other) = (cookie(&server, &good), cookie(&server, &other));
    assert_eq!(
        refused(
            &server,
            "edge-1",
            &[("Authorization", &bearer(&other)), ("Cookie", &cookie_good)],
            &query
        )
        .await,
        (StatusCode::FORBIDDEN, "wrong_device".to_owned())
    );
    // Cookie (wrong device) over a good query.
    assert_eq!(
        refused(&server, "edge-1", &[("Cookie", &cookie_other)], &query).await,
        (StatusCode::FORBIDDEN, "wrong_device".to_owned())
    );
    // And the good header over a wrong cookie and query.
    let mut stream = server
        .open(
            "edge-1",
            &[("Authorization", &bearer(&good)), ("Cookie", &cookie_other)],
            &format!("?token={other}"),
        )
        .await;
    stream.hello().await;
}

#[actix_web::test]
async fn a_device_token_never_opens_an_admin_route() {
    let server = token_server().await;
    let token = mint(SECRET, "edge-1", HOUR);
    let body = json!({"event": "config", "data": 1});
    let requests = [
        server
            .request(Method::POST, "/v1/devices/edge-1/events")
            .json(&body),
        server.request(Method::POST, "/v1/broadcast").json(&body),
        server.request(Method::DELETE, "/v1/devices/edge-1"),
    ];
    for request in requests {
        let (status, reply) = read_json(request.bearer_auth(&token)).await;
        assert_eq!(
            (status, error_code(&reply)),
            (StatusCode::FORBIDDEN, "forbidden")
        );
    }
    // Nothing was published: a fresh stream gets no event.
    server.publish("edge-1", "marker", json!(1)).await;
    let mut stream = server
        .open("edge-1", &[("Authorization", &bearer(&token))], "")
        .await;
    stream.hello().await;
    let first = stream.next_event().await;
    assert_eq!(
        (first.event.as_deref(), first.data.as_deref()),
        (Some("marker"), Some("1"))
    );
}

#[actix_web::test]
async fn in_the_default_open_mode_a_stream_needs_no_token() {
    let server = TestServer::start().await;
    assert_eq!(server.settings.auth.devices, DeviceAuth::Open);
    let mut stream = server.connect("edge-1").await;
    assert_eq!(stream.hello().await["device_id"], "edge-1");
    // A token that would be refused in token mode is ignored, not checked.
    let mut stream = server.open("edge-2", &[], "?token=garbage").await;
    assert_eq!(stream.hello().await["device_id"], "edge-2");
}

#[actix_web::test]
async fn herald_token_prints_a_token_for_that_device_only_valid_for_its_ttl() {
    let output = herald_command(&["token", "--device", "edge-1", "--ttl", "1h"])
        .env("HERALD_AUTH__DEVICES", "token")
        .output()
        .expect("herald token runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout.trim_end_matches('\n');
    assert_eq!(token.lines().count(), 1, "one line: {stdout:?}");

    // A server with the shipped secret accepts it for edge-1 only.
    let server = TestServer::start_with(|s| s.auth.devices = DeviceAuth::Token).await;
    let auth = [("Authorization", bearer(token))];
    let auth: Vec<_> = auth.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut stream = server.open("edge-1", &auth, "").await;
    assert_eq!(stream.hello().await["device_id"], "edge-1");
    assert_eq!(
        refused(&server, "edge-2", &auth, "").await,
        (StatusCode::FORBIDDEN, "wrong_device".to_owned())
    );

    // Its claims: the device and an hour.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    validation.set_audience(&["herald-device"]);
    let secret = server.settings.auth.secret.as_bytes();
    let claims: Value = jsonwebtoken::decode(token, &DecodingKey::from_secret(secret), &validation)
        .expect("signed with the shipped secret")
        .claims;
    assert_eq!(claims["sub"], "edge-1");
    let (exp, iat) = (
        claims["exp"].as_u64().unwrap(),
        claims["iat"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 3600, "{claims}");
    assert!(iat.abs_diff(unix_now()) < 60, "{claims}");
}

#[actix_web::test]
async fn no_token_ever_appears_in_the_log_even_at_debug_level() {
    let herald =
        HeraldProcess::start(&[("HERALD_AUTH__DEVICES", "token"), ("RUST_LOG", "debug")]).await;
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let settings = herald::config::Settings::layer(Some(&config), [])
        .unwrap()
        .settings;
    let (secret, cookie_name) = (&settings.auth.secret, &settings.auth.cookie);
    let stale = expired(secret, "edge-1");
    let forged = mint("another-secret-that-is-also-32-bytes-long", "edge-1", HOUR);
    let http = reqwest::Client::new();
    let stream_url = |device: &str| herald.url(&format!("/v1/devices/{device}/events"));

    // (device, token, where, expected status); one accepted device per place.
    let places = ["header", "cookie", "query"];
    let good: Vec<String> = places
        .iter()
        .map(|place| mint(secret, &format!("edge-{place}"), HOUR))
        .collect();
    let mut cases = Vec::new();
    for (place, good) in places.into_iter().zip(&good) {
        let device = format!("edge-{place}");
        cases.push((device, good, place, StatusCode::OK));
        cases.push(("edge-other".to_owned(), good, place, StatusCode::FORBIDDEN));
        cases.push(("edge-1".to_owned(), &stale, place, StatusCode::UNAUTHORIZED));
        cases.push((
            "edge-1".to_owned(),
            &forged,
            place,
            StatusCode::UNAUTHORIZED,
        ));
    }
    for (device, token, place, expected) in cases {
        let request = http.get(stream_url(&device));
        let request = match place {
            "header" => request.bearer_auth(token),
            "cookie" => request.header("Cookie", format!("{cookie_name}={token}")),
            _ => request.query(&[("token", token)]),
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected, "{device} {place}");
        if expected == StatusCode::OK {
            // Wait for the stream to open, so its log lines are written.
            let mut body = response.bytes_stream();
            let mut opening = Vec::new();
            while !String::from_utf8_lossy(&opening).contains("event: hello") {
                use futures_util::StreamExt as _;
                opening.extend_from_slice(&body.next().await.expect("stream open").unwrap());
            }
        }
    }
    // A device token on an admin route.
    let response = http
        .post(herald.url("/v1/devices/edge-header/events"))
        .bearer_auth(&good[0])
        .json(&json!({"event": "config", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let log = herald.terminate().await;
    for token in good.iter().chain([&stale, &forged]) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "a JWT: {token}");
        for secret_part in [token.as_str(), parts[1], parts[2]] {
            assert!(
                !log.contains(secret_part),
                "the log holds a token part {secret_part:?}:\n{log}"
            );
        }
    }
    assert!(!log.contains(secret.as_str()), "the log holds the secret");
    for place in places {
        assert!(
            log.contains(&format!("device.connected device=edge-{place}")),
            "{log}"
        );
    }
    for reason in ["reason=wrong_device", "reason=expired", "reason=invalid"] {
        assert!(
            log.lines()
                .any(|line| line.contains("auth.refused") && line.contains(reason)),
            "the log has auth.refused with {reason}:\n{log}"
        );
    }
}

#[actix_web::test]
async fn a_refused_stream_does_not_take_over_the_devices_live_stream() {
    let server = token_server().await;
    let token = mint(SECRET, "edge-1", HOUR);
    let mut live = server
        .open("edge-1", &[("Authorization", &bearer(&token))], "")
        .await;
    live.hello().await;
    let intruder = mint(SECRET, "edge-2", HOUR);
    for headers in [
        vec![],
        vec![("Authorization", bearer(&intruder))],
        vec![("Authorization", bearer(&expired(SECRET, "edge-1")))],
    ] {
        let headers: Vec<_> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        refused(&server, "edge-1", &headers, "").await;
    }
    server.publish("edge-1", "config", json!({"v": 1})).await;
    let event = live.next_event().await;
    assert_eq!(
        event.event.as_deref(),
        Some("config"),
        "not kicked: {event:?}"
    );
    assert_eq!(data_json(&event), json!({"v": 1}));
}

#[actix_web::test]
async fn a_jwt_signed_with_the_secret_but_meant_for_another_audience_is_refused() {
    let server = token_server().await;
    let now = unix_now();
    for claims in [
        json!({"sub": "edge-1", "iat": now, "exp": now + 60}),
        json!({"sub": "edge-1", "aud": "billing", "iat": now, "exp": now + 60}),
    ] {
        let key = EncodingKey::from_secret(server.settings.auth.secret.as_bytes());
        let token = jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap();
        let bearer = format!("Bearer {token}");
        let auth = [("Authorization", bearer.as_str())];
        assert_eq!(
            refused(&server, "edge-1", &auth, "").await,
            (StatusCode::UNAUTHORIZED, "unauthorized".to_owned()),
            "{claims}"
        );
    }
}
