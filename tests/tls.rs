//! HTTPS and HTTP/2: with `[server.tls]` herald serves TLS itself and offers
//! HTTP/2 by ALPN. Many device streams share one HTTP/2 connection, each
//! living and ending on its own; the certificate is reloaded on SIGHUP
//! without touching open streams.

mod common;

use common::{
    EventStream, H2Connection, HeraldProcess, PATIENCE, TestCertificate, data_json, error_code,
    herald_command, http1_get, run_to_exit, sample, tls_connect,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// herald serving HTTPS with `cert`, plus `env`.
async fn https_herald(cert: &TestCertificate, env: &[(&str, &str)]) -> HeraldProcess {
    let mut all = cert.env().to_vec();
    all.extend_from_slice(env);
    HeraldProcess::start(&all).await
}

/// herald serving HTTPS with a fresh certificate, plus `env`, and one
/// HTTP/2 connection to it (the certificate's folder lives as long as the
/// test holds it).
async fn over_http2(env: &[(&str, &str)]) -> (HeraldProcess, H2Connection, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::make(dir.path(), "server");
    let herald = https_herald(&cert, env).await;
    let connection = H2Connection::connect(herald.port, &cert.der)
        .await
        .expect("an HTTP/2 connection");
    (herald, connection, dir)
}

/// Opens `count` device streams (`<prefix>-0`, …) on `connection`, each past
/// its `hello`.
async fn open_streams(
    connection: &mut H2Connection,
    prefix: &str,
    count: usize,
) -> Vec<EventStream> {
    let mut streams = Vec::new();
    for i in 0..count {
        let device = format!("{prefix}-{i}");
        let mut stream = connection.open(&device).await.expect("a stream");
        stream.hello().await;
        streams.push(stream);
    }
    streams
}

fn event(n: usize) -> Value {
    json!({"event": "config", "data": {"n": n}})
}

#[actix_web::test]
async fn ten_device_streams_share_one_http2_connection_and_each_gets_its_own_events() {
    let (mut herald, mut connection, _certificate) = over_http2(&[]).await;

    let mut streams = open_streams(&mut connection, "h2", 10).await;
    for i in 0..10 {
        let path = format!("/v1/devices/h2-{i}/events");
        let (status, _) = connection.admin("POST", &path, Some(&event(i))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        assert_eq!(data_json(&stream.next_event().await), json!({"n": i}));
    }

    // Everything went over the one connection: ten streams, the publishes
    // and this request.
    let metrics = connection.metrics().await;
    assert_eq!(sample(&metrics, "herald_connections"), 1.0);
    assert_eq!(sample(&metrics, "herald_streams"), 10.0);
    assert_eq!(
        sample(&metrics, r#"herald_streams_opened_total{proto="h2"}"#),
        10.0
    );
    herald
        .expect_log(&["device.connected", "device=h2-9", "proto=h2"])
        .await;
    herald
        .expect_log(&["http.request", "method=POST", "proto=h2"])
        .await;
}

#[actix_web::test]
async fn a_kick_ends_only_its_own_stream_not_the_connection_or_the_others() {
    let (_herald, mut connection, _certificate) = over_http2(&[]).await;
    let mut streams = open_streams(&mut connection, "kick", 10).await;

    // Device kick-3 connects again, on the same connection: its old stream
    // is kicked. An operator ends kick-5's stream.
    let mut newer = connection.open("kick-3").await.expect("a stream");
    let hello = newer.hello().await;
    let kicked = streams[3].next_event().await;
    assert_eq!(kicked.event.as_deref(), Some("kicked"));
    assert_eq!(data_json(&kicked)["connection_id"], hello["connection_id"]);
    streams[3].expect_end().await;
    let (status, _) = connection
        .admin("DELETE", "/v1/devices/kick-5/connection", None)
        .await;
    assert!(status.is_success(), "{status}");
    while let Some(event) = streams[5].next_or_cut().await {
        assert_ne!(event.event.as_deref(), Some("config"), "{event:?}");
    }

    // The connection and the other streams go on.
    streams[3] = newer;
    for i in 0..10 {
        let path = format!("/v1/devices/kick-{i}/events");
        let (status, _) = connection.admin("POST", &path, Some(&event(i))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    for (i, stream) in streams.iter_mut().enumerate().filter(|(i, _)| *i != 5) {
        assert_eq!(data_json(&stream.next_event().await), json!({"n": i}));
    }
    assert_eq!(sample(&connection.metrics().await, "herald_streams"), 9.0);
}

#[actix_web::test]
async fn the_per_address_stream_limit_counts_streams_not_connections() {
    let (_herald, mut connection, _certificate) =
        over_http2(&[("HERALD_LIMITS__MAX_STREAMS_PER_ADDRESS", "3")]).await;
    let _streams = open_streams(&mut connection, "limited", 3).await;

    let Err((status, body)) = connection.open("limited-3").await else {
        panic!("a fourth stream from the address is refused");
    };
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&body), "too_many_streams");
    // The connection itself is fine: it still answers.
    assert_eq!(sample(&connection.metrics().await, "herald_streams"), 3.0);
}

#[actix_web::test]
async fn http1_clients_get_http1_over_tls_and_plain_http_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::make(dir.path(), "server");
    let herald = https_herald(&cert, &[]).await;

    let status_line = http1_get(herald.port, &cert.der, "/healthz").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");

    let plain = reqwest::Client::new().get(herald.url("/healthz")).send();
    let plain = tokio::time::timeout(PATIENCE, plain)
        .await
        .expect("an outcome");
    assert!(plain.is_err(), "plain HTTP is not answered: {plain:?}");
}

#[actix_web::test]
async fn sighup_reloads_the_certificate_for_new_connections_and_open_streams_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCertificate::make(dir.path(), "server");
    let mut herald = https_herald(&first, &[]).await;
    let mut before = H2Connection::connect(herald.port, &first.der)
        .await
        .expect("the first certificate is served");
    let mut stream = before.open("renewed").await.expect("a stream");
    stream.hello().await;

    // The operator renews the certificate in place and signals herald.
    let second = TestCertificate::make(dir.path(), "renewed");
    second.install_as(&first);
    herald.signal(libc::SIGHUP);
    herald.expect_log(&["tls.reloaded"]).await;

    let refused = tls_connect(herald.port, &first.der, b"h2").await;
    assert!(refused.is_err(), "the old certificate is no longer served");
    let mut after = H2Connection::connect(herald.port, &second.der)
        .await
        .expect("the new certificate is served");
    let (status, _) = after
        .admin("POST", "/v1/devices/renewed/events", Some(&event(1)))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(data_json(&stream.next_event().await), json!({"n": 1}));

    // A broken renewal is refused; the certificate in use stays.
    std::fs::write(&first.cert, "not a certificate").unwrap();
    herald.signal(libc::SIGHUP);
    herald.expect_log(&["tls.reload_failed"]).await;
    let mut still = H2Connection::connect(herald.port, &second.der)
        .await
        .expect("the previous certificate is still served");
    let (status, _) = still
        .admin("POST", "/v1/devices/renewed/events", Some(&event(2)))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(data_json(&stream.next_event().await), json!({"n": 2}));
}

#[actix_web::test]
async fn drain_over_http2_ends_every_stream_and_exits_0() {
    let (herald, mut connection, _certificate) =
        over_http2(&[("HERALD_SERVER__DRAIN_WINDOW", "1s")]).await;
    let streams = open_streams(&mut connection, "drained", 10).await;

    let ends = futures_util::future::join_all(streams.into_iter().map(|mut stream| async move {
        stream.expect_end().await;
    }));
    let (log, _) = tokio::join!(herald.terminate(), ends);
    assert!(log.contains("server.draining streams=10"), "{log}");
    assert_eq!(log.matches("reason=shutdown").count(), 10, "{log}");
}

#[actix_web::test]
async fn a_key_that_does_not_fit_the_certificate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::make(dir.path(), "server");
    let other = TestCertificate::make(dir.path(), "other");
    let mut command = herald_command(&["--bind", "127.0.0.1:0"]);
    command
        .env("HERALD_SERVER__TLS__CERT", &cert.cert)
        .env("HERALD_SERVER__TLS__KEY", &other.key);
    let output = run_to_exit(command).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot serve HTTPS: key") && stderr.contains("does not fit certificate"),
        "{stderr}"
    );
}
