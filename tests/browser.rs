//! In a real browser: why herald serves HTTP/2. A headless Chromium page
//! opens ten EventSources to herald. Over plain HTTP/1.1 the browser holds
//! at most six connections to one site, so only six streams open and the
//! others wait for one of them to close; over TLS, HTTP/2 carries all ten
//! on one connection.

mod common;

use common::{H2Connection, HeraldProcess, TestBrowser, TestCertificate, sample, wait_for};
use reqwest::StatusCode;
use serde_json::json;

/// A script that opens ten EventSources (devices `<prefix>-0` …) and keeps,
/// in `window.streams`, how many said `hello` and the `config` data each got.
fn open_ten(prefix: &str) -> String {
    format!(
        "window.streams = {{ opened: 0, got: {{}}, sources: [] }};
         for (let i = 0; i < 10; i++) {{
           const source = new EventSource(`/v1/devices/{prefix}-${{i}}/events`);
           source.addEventListener('hello', () => {{ streams.opened++; }});
           source.addEventListener('config', e => {{ streams.got[i] = JSON.parse(e.data); }});
           streams.sources.push(source);
         }}
         true"
    )
}

/// How many of the ten got their `config` event.
const GOT: &str = "Object.keys(streams.got).length";

#[actix_web::test]
async fn over_http1_a_page_gets_only_six_streams_at_once() {
    let herald = HeraldProcess::start(&[]).await;
    let browser = TestBrowser::launch().await;
    let page = browser.open(&herald.url("/healthz")).await;
    let _: bool = common::eval(&page, &open_ten("h1")).await;

    let opened: u32 = wait_for(&page, "streams.opened >= 6", "streams.opened").await;
    assert_eq!(opened, 6);
    for i in 0..10 {
        let event = json!({"event": "config", "data": {"n": i}});
        let (status, _) = herald.publish(&format!("h1-{i}"), &event).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let got: u32 = wait_for(&page, &format!("{GOT} >= 6"), GOT).await;
    assert_eq!(got, 6);
    // The other four were never connected: the browser holds them back.
    let opened_total = r#"herald_streams_opened_total{proto="h1"}"#;
    assert_eq!(sample(&herald.metrics().await, opened_total), 6.0);

    // One closes: a waiting one takes its connection and gets the event
    // published while it waited.
    let closed: u32 = common::eval(
        &page,
        "(() => { const i = Number(Object.keys(streams.got)[0]); \
         streams.sources[i].close(); return i; })()",
    )
    .await;
    let got: u32 = wait_for(&page, &format!("{GOT} >= 7"), GOT).await;
    assert_eq!(got, 7, "device h1-{closed} closed, one more got its event");
    assert_eq!(sample(&herald.metrics().await, opened_total), 7.0);
    browser.close().await;
}

#[actix_web::test]
async fn over_tls_http2_gives_a_page_all_ten_streams_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::make(dir.path(), "server");
    let herald = HeraldProcess::start(&cert.env()).await;
    let browser = TestBrowser::launch().await;
    let page = browser
        .open(&format!("https://127.0.0.1:{}/healthz", herald.port))
        .await;
    let _: bool = common::eval(&page, &open_ten("h2")).await;

    let opened: u32 = wait_for(&page, "streams.opened >= 10", "streams.opened").await;
    assert_eq!(opened, 10);
    let mut admin = H2Connection::connect(herald.port, &cert.der)
        .await
        .expect("an HTTP/2 connection");
    for i in 0..10 {
        let event = json!({"event": "config", "data": {"n": i}});
        let path = format!("/v1/devices/h2-{i}/events");
        let (status, _) = admin.admin("POST", &path, Some(&event)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let got: serde_json::Value = wait_for(&page, &format!("{GOT} >= 10"), "streams.got").await;
    for i in 0..10 {
        assert_eq!(got[i.to_string()], json!({"n": i}));
    }
    let metrics = admin.metrics().await;
    assert_eq!(
        sample(&metrics, r#"herald_streams_opened_total{proto="h2"}"#),
        10.0
    );
    browser.close().await;
}
