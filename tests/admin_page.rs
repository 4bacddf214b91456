//! The admin page, in a real headless Chromium against a real herald: an
//! operator signs in, sees a device's real EventSource appear live,
//! reads its events, publishes to it from the form and ends it for good. The
//! run takes screenshots of each view at a desktop and a phone width into
//! `$CARGO_TARGET_TMPDIR/admin-page/` (the README's come from there).

mod common;

use std::path::PathBuf;

use chromiumoxide::{
    Page, cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams, page::ScreenshotParams,
};
use common::{ADMIN_TOKEN, HeraldProcess, TestBrowser, eval, wait_for};
use reqwest::StatusCode;
use serde_json::json;

/// Desktop and phone, as (width, height, name).
const WIDTHS: [(i64, i64, &str); 2] = [(1280, 860, "desktop"), (390, 844, "phone")];

/// Types `text` into the element `selector` with real key events.
async fn type_into(page: &Page, selector: &str, text: &str) {
    page.bring_to_front().await.expect("the tab in front");
    let element = page.find_element(selector).await.expect(selector);
    (element.click().await).unwrap_or_else(|err| panic!("click {selector}: {err}"));
    element.type_str(text).await.expect("typing");
}

/// Clicks the element `selector` with real mouse events (in a tab in
/// front: a tab in the background gets no input).
async fn click(page: &Page, selector: &str) {
    page.bring_to_front().await.expect("the tab in front");
    let element = page.find_element(selector).await.expect(selector);
    (element.click().await).unwrap_or_else(|err| panic!("click {selector}: {err}"));
}

/// Where this run's screenshots go.
fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-page");
    std::fs::create_dir_all(&dir).expect("a screenshot folder");
    dir
}

/// Screenshots of the current view at both widths, named `<view>-<width>.png`.
async fn screenshot(page: &Page, view: &str) {
    for (width, height, name) in WIDTHS {
        let metrics = SetDeviceMetricsOverrideParams::new(width, height, 1.0, width < 500);
        page.execute(metrics).await.expect("viewport");
        let params = ScreenshotParams::builder().full_page(true).build();
        let path = screenshots().join(format!("{view}-{name}.png"));
        page.save_screenshot(params, &path)
            .await
            .expect("a screenshot");
    }
}

#[actix_web::test]
async fn an_operator_watches_a_device_publishes_to_it_and_ends_it_for_good() {
    let herald = HeraldProcess::start(&[]).await;
    let browser = TestBrowser::launch().await;
    let admin = browser.open(&herald.url("/admin/")).await;
    type_into(&admin, "#token", ADMIN_TOKEN).await;
    click(&admin, "#sign-in-form button").await;
    let _: bool = wait_for(
        &admin,
        "!document.getElementById('overview').hidden",
        "true",
    )
    .await;
    let _: bool = wait_for(
        &admin,
        "document.getElementById('live').textContent === 'live'",
        "true",
    )
    .await;

    // The device: a real EventSource, in a tab of its own.
    let device = browser.open(&herald.url("/healthz")).await;
    click(&admin, "#nav-devices").await;
    let _: bool = eval(
        &device,
        "window.got = []; window.source = new EventSource('/v1/devices/edge-7/events');
         source.addEventListener('config', e => got.push(e.data)); true",
    )
    .await;
    // It appears in the list without a reload (the admin event stream).
    let row = "document.querySelector('[data-device=\"edge-7\"] .badge.on') !== null";
    let _: bool = wait_for(&admin, row, "true").await;

    let (status, _) = herald
        .publish("edge-7", &json!({"event": "config", "data": {"v": 1}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, reply) = herald
        .publish(
            "edge-7",
            &json!({"event": "greeting", "data": "hello", "retain": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // The list follows the buffer filling (at the pace of the totals).
    let last = reply["id"].as_str().unwrap();
    let listed = "document.querySelector('[data-device=\"edge-7\"]').textContent";
    let _: bool = wait_for(&admin, &format!("{listed}.includes('{last}')"), "true").await;
    screenshot(&admin, "devices").await;

    // Its page shows the events and the retained one.
    click(&admin, "[data-device=\"edge-7\"] a").await;
    let rows = "document.getElementById('event-rows').textContent";
    let shown: String = wait_for(&admin, &format!("{rows}.includes('{{\"v\":1}}')"), rows).await;
    assert!(shown.contains("greeting"), "{shown}");
    let retained = "document.getElementById('retained-rows').textContent";
    let retained: String =
        wait_for(&admin, &format!("{retained}.includes('hello')"), retained).await;
    assert!(retained.starts_with("greeting"), "{retained}");

    // Published from the form: the stream gets exactly what was typed.
    let typed = r#"{"mode": "eco",  "levels": [3, 1]}"#;
    let _: bool = eval(
        &admin,
        "document.getElementById('publish-data').value = ''; true",
    )
    .await;
    type_into(&admin, "#publish-data", typed).await;
    click(&admin, "#publish-form button[type=submit]").await;
    let got: Vec<String> = wait_for(&device, "got.length >= 2", "got").await;
    assert_eq!(got, [r#"{"v":1}"#, typed]);
    let _: bool = wait_for(&admin, &format!("{rows}.includes('levels')"), "true").await;
    screenshot(&admin, "device").await;

    // Ending it with reconnect=false, confirmed, stops the device's
    // EventSource for good.
    click(&admin, "[data-action=block]").await;
    click(&admin, "#confirm-yes").await;
    let state: u8 = wait_for(
        &device,
        "source.readyState === EventSource.CLOSED",
        "source.readyState",
    )
    .await;
    assert_eq!(state, 2);

    click(&admin, "#nav-overview").await;
    let _: bool = wait_for(
        &admin,
        "document.getElementById('activity').textContent.includes('device.kicked')",
        "true",
    )
    .await;
    screenshot(&admin, "overview").await;
    browser.close().await;
}

#[actix_web::test]
async fn a_wrong_token_shows_an_error_and_no_data() {
    let herald = HeraldProcess::start(&[]).await;
    let (status, _) = herald
        .publish("secret-device", &json!({"event": "config", "data": {}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let browser = TestBrowser::launch().await;
    let admin = browser.open(&herald.url("/admin/")).await;
    // With the keyboard alone: the token field has the focus, Enter signs in.
    let focused: String = eval(&admin, "document.activeElement.id").await;
    assert_eq!(focused, "token");
    let field = admin.find_element("#token").await.expect("the token field");
    field.type_str("not-the-admin-token").await.expect("typing");
    field.press_key("Enter").await.expect("Enter");

    let error = "document.getElementById('sign-in-error')";
    let message: String = wait_for(
        &admin,
        &format!("!{error}.hidden"),
        &format!("{error}.textContent"),
    )
    .await;
    assert_eq!(message, "That token was refused.");
    let shown: (bool, bool, String, Option<String>) = eval(
        &admin,
        "[document.getElementById('overview').hidden, document.getElementById('devices').hidden,
          document.body.innerText, sessionStorage.getItem('herald.admin.token')]",
    )
    .await;
    assert!(shown.0 && shown.1, "no view is shown");
    assert!(!shown.2.contains("secret-device"), "{}", shown.2);
    assert_eq!(shown.3, None, "a refused token is not kept");
    screenshot(&admin, "sign-in").await;
    browser.close().await;
}
