//! The process: startup failures exit non-zero with a message; shutdown ends
//! streams promptly instead of waiting out the HTTP server's shutdown timeout,
//! and exits 0.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use common::{PATIENCE, TestServer};
use futures_util::{StreamExt as _, future::join_all};
use serde_json::json;

/// The herald binary on the shipped config, logging at info.
fn herald(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"));
    command.args(args).env("RUST_LOG", "info");
    command
}

#[test]
fn a_taken_address_or_an_invalid_config_exits_non_zero_with_a_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let output = herald(&["--bind", &taken]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {taken}")),
        "{stderr}"
    );

    let output = herald(&[])
        .env("HERALD_HEARTBEAT__MARGIN", "30s")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("heartbeat.margin must be above zero and below heartbeat.timeout"),
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
    let mut child = herald(&["--bind", "127.0.0.1:0"])
        .env("HERALD_SERVER__SHUTDOWN_TIMEOUT", "60s")
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald binary starts");

    let (lines_tx, lines) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    thread::spawn(move || {
        stderr
            .lines()
            .map_while(Result::ok)
            .for_each(|line| drop(lines_tx.send(line)))
    });
    let mut log = Vec::new();
    let port = loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .expect("server.started is logged");
        log.push(line.clone());
        if let Some((_, rest)) = line.split_once("server.started ") {
            let port = rest
                .split_whitespace()
                .find_map(|field| field.strip_prefix("port="));
            break port.expect("port= field").parse::<u16>().unwrap();
        }
    };

    let response = reqwest::get(format!("http://127.0.0.1:{port}/v1/devices/edge-1/events"))
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut opening = Vec::new();
    while !String::from_utf8_lossy(&opening).contains("event: hello") {
        opening.extend_from_slice(&body.next().await.expect("stream open").unwrap());
    }

    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait());
    let status = tokio::time::timeout(PATIENCE, status)
        .await
        .expect("exits within the patience")
        .unwrap();
    assert!(status.unwrap().success(), "exit code 0");
    while let Some(chunk) = tokio::time::timeout(PATIENCE, body.next())
        .await
        .expect("stream ends")
    {
        if chunk.is_err() {
            break;
        }
    }

    log.extend(lines.iter());
    let log = log.join("\n");
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
    assert!(
        stream.next().await.is_none(),
        "then the end, so EventSource reconnects"
    );
}
