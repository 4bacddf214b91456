//! A real headless Chromium (Debian's `chromium`, installed by
//! `.ci/install-chromium`), driven over the DevTools protocol.

use std::time::Duration;

use chromiumoxide::{Browser, BrowserConfig, Page};
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;

/// How long a page may take for what a test waits on: several round trips
/// of a browser that shares two cores with the server.
pub const PAGE_PATIENCE: Duration = Duration::from_secs(20);

/// One headless Chromium with a profile of its own, killed when dropped
/// (chromiumoxide starts it with `kill_on_drop`).
pub struct TestBrowser {
    browser: Browser,
    _profile: tempfile::TempDir,
}

impl TestBrowser {
    pub async fn launch() -> Self {
        let executable = which("chromium").unwrap_or_else(|| {
            panic!("chromium is not installed: run .ci/install-chromium (Debian's package)")
        });
        let profile = tempfile::tempdir().expect("a profile directory");
        let config = BrowserConfig::builder()
            .chrome_executable(executable)
            .user_data_dir(profile.path())
            // Running as root (CI containers) needs it.
            .no_sandbox()
            // The test's self-signed certificate, in this test browser only.
            .arg("--ignore-certificate-errors")
            .launch_timeout(PAGE_PATIENCE)
            .request_timeout(PAGE_PATIENCE)
            .build()
            .expect("a browser configuration");
        let (browser, mut handler) = Browser::launch(config).await.expect("chromium starts");
        tokio::spawn(async move { while handler.next().await.is_some() {} });
        Self {
            browser,
            _profile: profile,
        }
    }

    /// A new tab at `url`, loaded. The tab is made blank first, so that it
    /// accepts the test's certificate (chromiumoxide tells each new tab to)
    /// before it navigates.
    pub async fn open(&self, url: &str) -> Page {
        let open = async {
            let page = self.browser.new_page("about:blank").await?;
            page.goto(url).await?.wait_for_navigation().await?;
            chromiumoxide::Result::<Page>::Ok(page)
        };
        tokio::time::timeout(PAGE_PATIENCE, open)
            .await
            .expect("the page loads in time")
            .expect("the page loads")
    }
}

impl TestBrowser {
    /// Kills the browser and waits for it (rather than leaving it to be
    /// reaped in the background).
    pub async fn close(mut self) {
        let _ = self.browser.kill().await;
        let _ = self.browser.wait().await;
    }
}

/// Evaluates `script` in `page` (a promise is awaited) and answers its value.
pub async fn eval<T: DeserializeOwned>(page: &Page, script: &str) -> T {
    let result = tokio::time::timeout(PAGE_PATIENCE, page.evaluate(script))
        .await
        .unwrap_or_else(|_| panic!("no answer within {PAGE_PATIENCE:?} from {script}"))
        .unwrap_or_else(|err| panic!("{script}: {err}"));
    result.into_value().expect("a JSON value")
}

/// Waits until `condition` (a JavaScript expression) holds in `page`, then
/// answers the value of `answer`; fails the test with the value of `answer`
/// if that takes longer than [`PAGE_PATIENCE`].
pub async fn wait_for<T: DeserializeOwned>(page: &Page, condition: &str, answer: &str) -> T {
    let script = format!(
        "new Promise(resolve => {{ const check = () => ({condition}) ? resolve({answer}) \
         : setTimeout(check, 20); check(); }})"
    );
    match tokio::time::timeout(PAGE_PATIENCE, page.evaluate(script.as_str())).await {
        Ok(result) => (result
            .unwrap_or_else(|err| panic!("{script}: {err}"))
            .into_value())
        .expect("a JSON value"),
        Err(_) => {
            let now: serde_json::Value = eval(page, &format!("JSON.stringify({answer})")).await;
            panic!("{condition} did not hold within {PAGE_PATIENCE:?}; {answer} = {now}")
        }
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
