//! The process: startup failures exit non-zero with a message; shutdown ends
//! streams promptly instead of waiting out the HTTP server's shutdown timeout,
//! and exits 0.

mod common;

use std::{process::Command, time::Duration};

use common::{
    HeraldProcess, PATIENCE, TestServer, error_code, herald_command, read_json, read_until,
};
use futures_util::{StreamExt as _, future::join_all};
use reqwest::Method;
use serde_json::json;

#[test]
fn a_taken_address_or_an_invalid_config_exits_non_zero_with_a_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let output = herald_command(&["--bind", &taken]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {taken}")),
        "{stderr}"
    );

    // Validation through `config check`, which exits either way: were a
    // check missing, starting the server would serve instead of failing.
    let output = herald_command(&["config", "check"])
        .env("HERALD_HEARTBEAT__MARGIN", "30s")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("heartbeat.margin must be above zero and below heartbeat.timeout"),
        "{stderr}"
    );

    // No room above the streams of one address for its probes and publishes.
    let output = herald_command(&["config", "check"])
        .env("HERALD_LIMITS__MAX_CONNECTIONS_PER_ADDRESS", "1000")
        .env("HERALD_LIMITS__MAX_STREAMS_PER_ADDRESS", "1000")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("max_connections_per_address above max_streams_per_address"),
        "{stderr}"
    );

    let mut missing = Command::new(env!("CARGO_BIN_EXE_herald"));
    let output = missing
        .args(["--config", "/nonexistent/herald.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/herald.toml"));
}

#[actix_web::test]
async fn shutting_down_ends_every_open_stream() {
    let server =
        TestServer::start_with(|s| s.server.shutdown_timeout = Duration::from_secs(60)).await;
    let mut streams = join_all(["a", "b", "c"].map(|device| async {
        let mut stream = server.connect(device).await;
        stream.hello().await;
        stream
    }))
    .await;
    // Were the streams not ended first, this would wait the full 60 s.
    tokio::time::timeout(PATIENCE, server.shut_down())
        .await
        .expect("shutdown completes");
    for stream in &mut streams {
        stream.expect_end().await;
    }
}

#[actix_web::test]
async fn sigterm_ends_streams_and_the_process_exits_0() {
    // Were the streams not ended first, shutdown would wait the full 60 s.
    let herald = HeraldProcess::start(&[
        ("HERALD_SERVER__SHUTDOWN_TIMEOUT", "60s"),
        ("HERALD_SERVER__DRAIN_WINDOW", "200ms"),
    ])
    .await;
    let response = reqwest::get(herald.url("/v1/devices/edge-1/events"))
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    read_until(&mut body, "event: hello").await;

    let log = herald.terminate().await;
    while let Some(chunk) = tokio::time::timeout(PATIENCE, body.next())
        .await
        .expect("stream ends")
    {
        if chunk.is_err() {
            break;
        }
    }
    for expected in [
        "server.signal signal=SIGTERM",
        "server.draining streams=1",
        "reason=shutdown",
        "server.stopped",
    ] {
        assert!(log.contains(expected), "log has {expected:?}:\n{log}");
    }
}

#[actix_web::test]
async fn while_draining_publishes_get_503_and_streams_end_after_retry() {
    let server = TestServer::start().await;
    // Opens a keep-alive connection; draining stops accepting new ones, and
    // requests on kept connections are what this is about.
    server.publish("edge-1", "config", json!(1)).await;
    server.drain().await;

    let body = json!({"event": "config", "data": 2});
    let (status, reply) = server.admin_post("/v1/devices/edge-1/events", &body).await;
    assert_eq!(
        (status.as_u16(), &reply["error"]["code"]),
        (503, &json!("unavailable"))
    );
    let mut stream = server.connect("edge-1").await;
    assert!(
        stream.next().await.and_then(|e| e.retry).is_some(),
        "retry: first"
    );
    // Then the end (after the drain's retry hint), so EventSource reconnects.
    stream.expect_end().await;
}

#[actix_web::test]
async fn healthz_answers_and_readyz_turns_unready_while_draining() {
    let server = TestServer::start().await;
    let (status, body) = read_json(server.request(Method::GET, "/healthz")).await;
    assert_eq!((status.as_u16(), body), (200, json!({"status": "ok"})));
    server.publish("edge-1", "config", json!(1)).await;
    let (status, body) = read_json(server.request(Method::GET, "/readyz")).await;
    assert_eq!(
        (status.as_u16(), &body["status"], &body["sessions"]),
        (200, &json!("ready"), &json!(1))
    );

    server.drain().await;
    let (status, body) = read_json(server.request(Method::GET, "/readyz")).await;
    assert_eq!((status.as_u16(), error_code(&body)), (503, "not_ready"));
}

#[actix_web::test]
async fn on_sigterm_streams_end_spread_over_the_drain_window_and_the_process_exits_0() {
    let window = Duration::from_secs(2);
    let herald = HeraldProcess::start(&[("HERALD_SERVER__DRAIN_WINDOW", "2s")]).await;
    let mut streams = Vec::new();
    for n in 0..20 {
        let response = reqwest::get(herald.url(&format!("/v1/devices/edge-{n}/events")))
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        read_until(&mut body, "event: hello").await;
        streams.push(body);
    }
    let signalled = std::time::Instant::now();
    let ends = tokio::spawn(join_all(streams.into_iter().map(|mut body| async move {
        let mut after_signal = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            after_signal.extend_from_slice(&chunk);
        }
        let hinted = String::from_utf8_lossy(&after_signal).contains("retry: ");
        assert!(
            hinted,
            "a retry: hint before the end: {:?}",
            String::from_utf8_lossy(&after_signal)
        );
        signalled.elapsed()
    })));
    let log = herald.terminate().await;
    let ends = ends.await.unwrap();
    let (first, last) = (ends.iter().min().unwrap(), ends.iter().max().unwrap());
    assert!(
        *last < window + Duration::from_secs(1),
        "all within the window: {ends:?}"
    );
    assert!(
        *last - *first > window / 2,
        "spread, not all at once: {ends:?}"
    );
    assert!(
        log.contains("server.draining streams=20 window_ms=2000"),
        "{log}"
    );
}
