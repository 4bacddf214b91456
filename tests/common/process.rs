//! The real herald binary as a process, its log read line by line.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;

use super::*;

/// The shipped config's admin token (local use only).
pub const ADMIN_TOKEN: &str = "local-admin-token-change-me";

/// The herald binary on the shipped config, logging at info (the caller may
/// override `RUST_LOG` and any `HERALD_…` variable).
pub fn herald_command(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"));
    command.args(args).env("RUST_LOG", "info");
    command
}

/// Runs a herald that is expected to refuse to start; answers its exit
/// status and output. Fails the test if it is still running after
/// [`PATIENCE`] (it started serving instead).
pub async fn run_to_exit(mut command: std::process::Command) -> std::process::Output {
    use std::process::Stdio;

    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald binary starts");
    let pid = i32::try_from(child.id()).expect("a pid");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(PATIENCE, output).await {
        Ok(output) => output.expect("wait task").expect("herald's output"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of a child this test spawned, which
            // was still running (so not reaped) at the timeout.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("herald was expected to exit but still runs after {PATIENCE:?}");
        }
    }
}

/// What `answer` yields; fails the test if that takes longer than
/// [`PATIENCE`] (a request herald never answers fails, instead of hanging).
async fn answered<T>(what: &str, answer: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, answer)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}"))
}

/// Sets `resource` to `value` (soft and hard) in the child before exec, and
/// ignores `ignored` there (an ignored disposition survives exec).
fn limit_in_child(
    command: &mut std::process::Command,
    resource: libc::__rlimit_resource_t,
    value: u64,
    ignored: Option<libc::c_int>,
) {
    use std::os::unix::process::CommandExt as _;

    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: runs in the forked child before exec; signal and setrlimit are
    // async-signal-safe system calls, and the rlimit struct is only read.
    unsafe {
        command.pre_exec(move || {
            if let Some(signal) = ignored
                && libc::signal(signal, libc::SIG_IGN) == libc::SIG_ERR
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setrlimit(resource, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A running herald process on an ephemeral port, its stderr (the log)
/// collected line by line.
pub struct HeraldProcess {
    /// `None` once waited for.
    child: Option<std::process::Child>,
    pub port: u16,
    http: reqwest::Client,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
    /// The storage directory made for this process, unless the test gave
    /// its own (`HERALD_STORAGE__PATH`).
    _data: Option<tempfile::TempDir>,
}

impl HeraldProcess {
    /// Starts herald on the shipped config with `--bind 127.0.0.1:0` and
    /// these environment variables; answers once it has logged
    /// `server.started`.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(env, |_| {}).await
    }

    /// Like [`start`](Self::start), on the store in `dir`
    /// (`HERALD_STORAGE__PATH`, before `env`): a later start on `dir` finds
    /// what this process kept.
    pub async fn start_on(dir: &Path, env: &[(&str, &str)]) -> Self {
        let dir = dir.to_str().expect("a UTF-8 storage path");
        let mut all = vec![("HERALD_STORAGE__PATH", dir)];
        all.extend_from_slice(env);
        Self::start(&all).await
    }

    /// Like [`start`](Self::start), with at most `open_files` open files
    /// (soft and hard limit), as a constrained host would give it.
    pub async fn start_with_open_files(env: &[(&str, &str)], open_files: u64) -> Self {
        Self::start_with(env, |command| {
            limit_in_child(command, libc::RLIMIT_NOFILE, open_files, None);
        })
        .await
    }

    /// Like [`start`](Self::start), unable to make any file larger than
    /// `bytes` (RLIMIT_FSIZE, soft and hard), as a full disk would: a write
    /// or `ftruncate` beyond it fails with `EFBIG` (`SIGXFSZ`, which would
    /// kill the process, is ignored).
    pub async fn start_with_file_size_limit(env: &[(&str, &str)], bytes: u64) -> Self {
        Self::start_with(env, |command| {
            limit_in_child(command, libc::RLIMIT_FSIZE, bytes, Some(libc::SIGXFSZ));
        })
        .await
    }

    async fn start_with(
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> Self {
        let mut command = herald_command(&["--bind", "127.0.0.1:0"]);
        // No drain window unless the test sets one (its `env` comes after).
        command.env("HERALD_SERVER__DRAIN_WINDOW", "0s");
        // Each process its own store, unless the test names one.
        let data = tempfile::tempdir().expect("a storage directory");
        command.env("HERALD_STORAGE__PATH", data.path());
        command.envs(env.iter().copied());
        adjust(&mut command);
        let mut process = Self::spawn(command).await;
        process._data = Some(data);
        process
    }

    /// Starts `command` (a herald that binds port 0 and logs at info);
    /// answers once it has logged `server.started`.
    pub async fn spawn(mut command: std::process::Command) -> Self {
        use std::io::{BufRead as _, BufReader};

        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("herald binary starts");
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
        std::thread::spawn(move || {
            stderr
                .lines()
                .map_while(Result::ok)
                .for_each(|line| drop(lines_tx.send(line)));
        });
        let mut log = Vec::new();
        let port = loop {
            let line = tokio::time::timeout(PATIENCE, lines.recv())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("server.started is logged:\n{}", log.join("\n")));
            log.push(line.clone());
            if line.contains("server.started") {
                // `port=N` in text format, `"port":N` in JSON.
                let port = line
                    .split(['=', ':', ' ', ',', '}'])
                    .skip_while(|w| !w.ends_with("port") && *w != "\"port\"")
                    .nth(1);
                break port.expect("a port field").parse::<u16>().expect("a port");
            }
        };
        Self {
            child: Some(child),
            port,
            http: reqwest::Client::new(),
            lines,
            log,
            _data: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Publishes `body` (`{"event","data","retain"}`) to `device` with the
    /// admin token; answers status and JSON body.
    pub async fn publish(&self, device: &str, body: &Value) -> (StatusCode, Value) {
        let url = self.url(&format!("/v1/devices/{device}/events"));
        let request = self.http.post(url).bearer_auth(ADMIN_TOKEN).json(body);
        answered("publish", read_json(request)).await
    }

    /// The `/metrics` exposition.
    pub async fn metrics(&self) -> String {
        let request = self.http.get(self.url("/metrics"));
        let response = answered("metrics", async { request.send().await.unwrap() }).await;
        response.text().await.expect("a metrics body")
    }

    /// An admin request (`GET`, `DELETE`, …) without a body; answers status
    /// and JSON body (`Null` when empty).
    pub async fn admin(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        let request = self.http.request(method, self.url(path));
        answered(path, read_json(request.bearer_auth(ADMIN_TOKEN))).await
    }

    /// A stream for `device` (the shipped config's streams need no token),
    /// resuming from `last_event_id` if given; or the refusal (a `204` is
    /// one with an empty body, `Null`).
    pub async fn try_open(
        &self,
        device: &str,
        last_event_id: Option<&str>,
    ) -> Result<EventStream, Refusal> {
        self.try_open_at(&format!("/v1/devices/{device}/events"), last_event_id)
            .await
    }

    /// Like [`try_open`](Self::try_open), for a client naming itself
    /// `instance`.
    pub async fn try_open_as(&self, device: &str, instance: &str) -> Result<EventStream, Refusal> {
        let path = format!("/v1/devices/{device}/events?instance={instance}");
        self.try_open_at(&path, None).await
    }

    async fn try_open_at(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<EventStream, Refusal> {
        let mut request = self.http.get(self.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = answered("stream request", request.send()).await;
        let response = response.expect("stream request");
        if response.status() == StatusCode::NO_CONTENT {
            // Stop, without an error (an operator's block): no body.
            return Err(Refusal {
                status: response.status(),
                headers: response.headers().clone(),
                body: Value::Null,
            });
        }
        answered("stream refusal", EventStream::from_response(response)).await
    }

    /// Like [`try_open`](Self::try_open), but a refusal fails the test.
    pub async fn open(&self, device: &str, last_event_id: Option<&str>) -> EventStream {
        match self.try_open(device, last_event_id).await {
            Ok(stream) => stream,
            Err(refusal) => panic!("stream for {device}: {refusal:?}"),
        }
    }

    /// How many files the process has open now.
    pub fn open_files(&self) -> usize {
        let pid = self.child.as_ref().expect("running").id();
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/PID/fd is readable")
            .count()
    }

    /// Waits for a log line containing every one of `parts`, and answers it.
    pub async fn expect_log(&mut self, parts: &[&str]) -> String {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.recv())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("no log line with {parts:?}:\n{}", self.log.join("\n")));
            self.log.push(line.clone());
            if parts.iter().all(|part| line.contains(part)) {
                return line;
            }
        }
    }

    /// The log lines read so far.
    pub fn log_lines(&self) -> &[String] {
        &self.log
    }

    /// Sends `signal` (SIGHUP, …) and goes on.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("not yet waited for");
        let pid = i32::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) on the pid of a child this test spawned and has
        // not yet waited for, so the pid cannot have been reused.
        unsafe { libc::kill(pid, signal) };
    }

    /// Sends SIGKILL — no shutdown of any kind, as a crash or the OOM killer
    /// — reaps the process, and answers the whole log.
    pub async fn kill(mut self) -> String {
        use std::os::unix::process::ExitStatusExt as _;

        let mut child = self.child.take().expect("not yet waited for");
        child.kill().expect("SIGKILL sent");
        let status = tokio::task::spawn_blocking(move || child.wait());
        let status = tokio::time::timeout(PATIENCE, status)
            .await
            .expect("a killed process is reaped at once")
            .expect("wait task")
            .expect("exit status");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "killed: {status}");
        while let Some(line) = self.lines.recv().await {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    /// Sends SIGTERM, expects exit status 0, and answers the whole log.
    pub async fn terminate(mut self) -> String {
        let mut child = self.child.take().expect("not yet waited for");
        let pid = i32::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) on the pid of a child this test spawned and has
        // not yet waited for, so the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::task::spawn_blocking(move || child.wait());
        let Ok(status) = tokio::time::timeout(PATIENCE, status).await else {
            // SAFETY: as above; the child has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("herald did not exit within {PATIENCE:?} of SIGTERM");
        };
        let status = status.expect("wait task").expect("exit status");
        // The child closed its stderr: the reader thread ends the channel.
        while let Some(line) = self.lines.recv().await {
            self.log.push(line);
        }
        let log = self.log.join("\n");
        assert!(status.success(), "exit code 0: {status}\n{log}");
        log
    }
}

impl Drop for HeraldProcess {
    /// A test that failed before [`terminate`](Self::terminate) leaves no
    /// server behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
