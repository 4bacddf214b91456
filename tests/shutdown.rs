//! Shutdown ends streams promptly instead of waiting out the HTTP server's
//! shutdown timeout, and the process exits 0.

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
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--config")
        .arg(&config)
        .args(["--bind", "127.0.0.1:0"])
        .env("HERALD_SERVER__SHUTDOWN_TIMEOUT", "60s")
        .env("RUST_LOG", "info")
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
