//! The servers under test: herald (its binary, with the repo's
//! `config.toml` and the bench overrides below; `herald` on its default
//! embedded storage, `herald-memory` on the memory backend, `herald-cluster`
//! two nodes sharing a redis-server, streams on one and publishes on the
//! other, so every delivery crosses nodes; `herald-tls` and `herald-h2`
//! herald serving HTTPS with a certificate made for the run, streams on
//! HTTP/1.1 (one connection each) or HTTP/2 ([`H2_STREAMS_PER_CONNECTION`]
//! per connection)) and nginx with the nchan
//! module (`bench/nchan/nginx.conf.template`; `nchan-cluster` is two of them
//! on one redis-server, laid out like `herald-cluster`). Each server process
//! gets one worker on the server CPUs, the same replay buffer length and the
//! same keep-alive period.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::net;
use crate::procfs;

/// Streams one HTTP/2 connection carries (`herald-h2`): a browser's
/// streams to one site share one connection, and a device SDK may
/// multiplex as many.
pub const H2_STREAMS_PER_CONNECTION: usize = 100;
/// The admin token herald is started with.
const ADMIN_TOKEN: &str = "herald-bench-admin-token";
const NGINX_TEMPLATE: &str = include_str!("../nchan/nginx.conf.template");
const REPO_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// herald on its default storage, the embedded (durable) backend.
    Herald,
    /// herald on the memory backend (nothing survives the process).
    HeraldMemory,
    /// Two herald nodes on one Redis: streams on one, publishes on the other.
    HeraldCluster,
    /// herald serving HTTPS; each stream on an HTTP/1.1 connection of its own.
    HeraldTls,
    /// herald serving HTTPS; streams share HTTP/2 connections.
    HeraldH2,
    Nchan,
    /// A minimal server on plain sockets: one pre-encoded frame written per
    /// delivery (what this machine can physically do; see `floor.rs`).
    Floor,
    /// Two nginx + nchan on one Redis (`nchan_redis_pass`): streams on one,
    /// publishes on the other.
    NchanCluster,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Self::Herald => "herald",
            Self::HeraldMemory => "herald-memory",
            Self::HeraldCluster => "herald-cluster",
            Self::HeraldTls => "herald-tls",
            Self::HeraldH2 => "herald-h2",
            Self::Nchan => "nchan",
            Self::Floor => "floor",
            Self::NchanCluster => "nchan-cluster",
        }
    }

    /// Streams per connection: more than one means HTTP/2.
    pub fn streams_per_connection(self) -> usize {
        match self {
            Self::HeraldH2 => H2_STREAMS_PER_CONNECTION,
            _ => 1,
        }
    }

    /// Where a device's EventSource connects.
    pub fn stream_path(self, device: &str) -> String {
        match self {
            Self::Nchan | Self::NchanCluster => format!("/sub/{device}"),
            _ => format!("/v1/devices/{device}/events"),
        }
    }

    /// The request that publishes `payload` (a JSON object) to one device,
    /// or to every device when `device` is `None`.
    pub fn publish_request(self, device: Option<&str>, payload: &str) -> PublishRequest {
        match self {
            Self::Nchan | Self::NchanCluster => PublishRequest {
                path: format!("/pub/{}", device.unwrap_or("all")),
                body: Bytes::from(payload.to_owned()),
                headers: vec![("content-type", "application/json".to_owned())],
            },
            _ => PublishRequest {
                path: match device {
                    Some(device) => format!("/v1/devices/{device}/events"),
                    None => "/v1/broadcast".to_owned(),
                },
                body: Bytes::from(format!(r#"{{"event":"bench","data":{payload}}}"#)),
                headers: vec![
                    ("content-type", "application/json".to_owned()),
                    ("authorization", format!("Bearer {ADMIN_TOKEN}")),
                ],
            },
        }
    }
}

pub struct PublishRequest {
    pub path: String,
    pub body: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

/// How the servers are started.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub herald_bin: PathBuf,
    pub nginx_bin: PathBuf,
    pub cpus: Vec<usize>,
    /// Replay buffer length per device (herald) or channel (nchan).
    pub buffer_events: usize,
    /// Idle time after which a stream gets a keep-alive.
    pub keepalive_secs: u64,
    /// herald's `log.level` (nginx logs only warnings and has no access log).
    pub herald_log: String,
}

/// A running server; stopped (and waited for) by [`Server::stop`].
pub struct Server {
    pub target: Target,
    child: Child,
    /// Where streams connect.
    pub addr: SocketAddr,
    /// Where publishes go: `addr`, or another node of the cluster.
    pub publish_addr: SocketAddr,
    /// The cluster's other processes: its second node, then Redis.
    others: Vec<Child>,
    scratch: PathBuf,
    /// The certificate (PEM) a TLS target serves, which clients trust.
    pub ca: Option<PathBuf>,
}

impl Server {
    pub async fn start(target: Target, options: &ServerOptions) -> Result<Self, String> {
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let scratch = std::env::temp_dir().join(format!(
            "herald-bench-{}-{}",
            std::process::id(),
            target.name()
        ));
        std::fs::create_dir_all(scratch.join("logs"))
            .map_err(|err| format!("scratch dir {}: {err}", scratch.display()))?;
        let (mut others, mut publish_addr, mut ca) = (Vec::new(), addr, None);
        let mut command = match target {
            Target::HeraldTls | Target::HeraldH2 => {
                let mut command = herald_command(options, addr, "embedded", &scratch);
                let (cert, key) = make_certificate(&scratch)?;
                command
                    .env("HERALD_SERVER__TLS__CERT", &cert)
                    .env("HERALD_SERVER__TLS__KEY", key);
                ca = Some(cert);
                command
            }
            Target::Herald => herald_command(options, addr, "embedded", &scratch),
            Target::HeraldMemory => herald_command(options, addr, "memory", &scratch),
            Target::HeraldCluster => {
                let (redis, url) = start_redis(&scratch, options).await?;
                others.push(redis);
                publish_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
                let mut publishing = herald_command(options, publish_addr, "redis", &scratch);
                publishing.env("HERALD_STORAGE__REDIS__URL", &url);
                others.insert(0, spawn(&mut publishing, options)?);
                let mut streaming = herald_command(options, addr, "redis", &scratch);
                streaming.env("HERALD_STORAGE__REDIS__URL", &url);
                streaming
            }
            Target::Nchan => nginx_command(options, port, &scratch, None)?,
            Target::Floor => floor_command(options, addr)?,
            Target::NchanCluster => {
                let (redis, url) = start_redis(&scratch, options).await?;
                others.push(redis);
                let publish_port = free_port()?;
                publish_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, publish_port));
                let second = scratch.join("publishing");
                std::fs::create_dir_all(&second)
                    .map_err(|err| format!("scratch dir {}: {err}", second.display()))?;
                let mut publishing = nginx_command(options, publish_port, &second, Some(&url))?;
                others.insert(0, spawn(&mut publishing, options)?);
                nginx_command(options, port, &scratch, Some(&url))?
            }
        };
        let child = spawn(&mut command, options)?;
        let mut server = Self {
            target,
            child,
            addr,
            publish_addr,
            others,
            scratch,
            ca,
        };
        let mut ready = server.await_ready(server.addr).await;
        if ready.is_ok() && server.publish_addr != server.addr {
            ready = server.await_ready(server.publish_addr).await;
        }
        if let Err(err) = ready {
            server.stop().await;
            return Err(err);
        }
        Ok(server)
    }

    /// The process whose main thread holds herald's store and registry
    /// (the streaming node's, in a cluster); `None` for the others.
    pub fn store_thread(&self) -> Option<u32> {
        let herald = !matches!(
            self.target,
            Target::Nchan | Target::NchanCluster | Target::Floor
        );
        herald.then(|| self.child.id())
    }

    /// The cluster's Redis, if this is a cluster.
    pub fn redis_pid(&self) -> Option<u32> {
        let cluster = matches!(self.target, Target::HeraldCluster | Target::NchanCluster);
        cluster.then(|| self.others.last().map(Child::id))?
    }

    /// An error if the server has exited (it should run until stopped).
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited during the run: {status}",
                self.target.name()
            )),
            Err(err) => Err(format!("{}: {err}", self.target.name())),
        }
    }

    /// The server's processes: herald's, or nginx's masters and workers,
    /// and the cluster's Redis.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(self.others.iter().map(Child::id));
        if matches!(self.target, Target::Nchan | Target::NchanCluster) {
            let masters = pids.clone();
            pids.extend(masters.into_iter().flat_map(procfs::children));
        }
        pids
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// How publishes and probes reach the server: HTTP/1.1, over TLS when
    /// the server serves it.
    pub fn publish_wire(&self) -> Result<net::Wire, String> {
        match &self.ca {
            None => Ok(net::Wire::Plain),
            Some(ca) => net::Wire::tls(ca, b"http/1.1").map_err(|err| format!("TLS client: {err}")),
        }
    }

    async fn await_ready(&mut self, addr: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited at start-up: {status}",
                    self.target.name()
                ));
            }
            if self.answers(addr).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready within 15 s", self.target.name()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a publish-side request gets an answer: `/healthz` for herald,
    /// a publish to a probe channel's info for nchan.
    async fn answers(&self, addr: SocketAddr) -> bool {
        let path = match self.target {
            Target::Nchan | Target::NchanCluster => "/pub/ready-probe",
            _ => "/healthz",
        };
        let probe = async {
            let wire = self.publish_wire()?;
            let stream = net::connect(Ipv4Addr::LOCALHOST, addr, None).await?;
            let (mut sender, _guard) = net::handshake(&wire, stream).await?;
            let request = hyper::Request::get(path)
                .header("host", self.host())
                .body(http_body_util::Empty::<Bytes>::new())?;
            let response = sender.send_request(request).await?;
            Ok::<_, net::Error>(response.status().as_u16() < 500)
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(true))
        )
    }

    /// Ends the server (SIGTERM; SIGKILL after 20 s) and removes its scratch
    /// directory. nginx's error log is printed first if it holds errors.
    pub async fn stop(mut self) {
        self.show_errors();
        // The servers first, then what they stand on (the cluster's Redis,
        // last in `others`), so no node logs losing it on the way out.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut redis = self.redis_pid().and_then(|_| self.others.pop());
        let children = std::iter::once(&mut self.child).chain(self.others.iter_mut());
        terminate(children, deadline).await;
        terminate(redis.as_mut(), deadline).await;
        self.others.extend(redis);
        let _ = std::fs::remove_dir_all(&self.scratch);
    }

    fn show_errors(&self) {
        let read = |dir: PathBuf| std::fs::read_to_string(dir.join("error.log"));
        let mut log = read(self.scratch.clone()).unwrap_or_default();
        log += &read(self.scratch.join("publishing")).unwrap_or_default();
        for line in log
            .lines()
            .filter(|l| l.contains("[error]") || l.contains("[alert]") || l.contains("[crit]"))
            .take(20)
        {
            eprintln!("nginx: {line}");
        }
    }
}

/// A server the run did not get to stop (an error, a panic) is killed, not
/// left listening and pinned.
impl Drop for Server {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.others.iter_mut()) {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Sends SIGTERM to each of `children` and waits for them (SIGKILL once
/// `deadline` passed).
async fn terminate(children: impl IntoIterator<Item = &mut Child>, deadline: Instant) {
    let children: Vec<_> = children.into_iter().collect();
    for child in &children {
        // SAFETY: kill(2) on the pid of a child this process has not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    for child in children {
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Starts `command` on the server CPUs.
fn spawn(command: &mut Command, options: &ServerOptions) -> Result<Child, String> {
    procfs::pin(command, &options.cpus)?;
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .stdin(Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot start {program}: {err}"))
}

/// A redis-server for a cluster, on the server CPUs, once it answers; and
/// its URL.
async fn start_redis(
    scratch: &std::path::Path,
    options: &ServerOptions,
) -> Result<(Child, String), String> {
    let port = free_port()?;
    let redis = spawn(&mut redis_command(port, scratch), options)?;
    await_redis(port).await?;
    Ok((redis, format!("redis://127.0.0.1:{port}")))
}

/// A redis-server keeping nothing on disk, for the cluster.
fn redis_command(port: u16, scratch: &std::path::Path) -> Command {
    let mut command = Command::new("redis-server");
    command
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(scratch)
        .stdout(Stdio::null());
    command
}

/// Waits until Redis answers `PING`.
async fn await_redis(port: u16) -> Result<(), String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut socket) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            let mut answer = [0; 7];
            let pong = socket.write_all(b"PING\r\n").await.is_ok()
                && socket.read_exact(&mut answer).await.is_ok()
                && &answer == b"+PONG\r\n";
            if pong {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("redis-server not ready within 15 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// herald on `backend`; the embedded one keeps its file in the run's
/// scratch directory (on disk, removed when the server stops).
fn herald_command(
    options: &ServerOptions,
    addr: SocketAddr,
    backend: &str,
    scratch: &std::path::Path,
) -> Command {
    let mut command = Command::new(&options.herald_bin);
    command.args(["--config", REPO_CONFIG, "--bind", &addr.to_string()]);
    for (key, value) in herald_overrides(options) {
        command.env(key, value);
    }
    command
        .env("HERALD_STORAGE__BACKEND", backend)
        .env("HERALD_STORAGE__PATH", scratch.join("herald-data"));
    command
}

/// The bench's overrides of `config.toml`: one HTTP worker (nginx runs one
/// worker process), room for every stream (and connection) from one address, the shared
/// buffer length and keep-alive, and a short drain so runs end quickly.
pub fn herald_overrides(options: &ServerOptions) -> Vec<(&'static str, String)> {
    vec![
        ("HERALD_SERVER__WORKERS", "1".to_owned()),
        ("HERALD_SERVER__DRAIN_WINDOW", "1s".to_owned()),
        ("HERALD_SERVER__SHUTDOWN_TIMEOUT", "1s".to_owned()),
        ("HERALD_ADMIN__TOKENS", ADMIN_TOKEN.to_owned()),
        ("HERALD_LIMITS__MAX_STREAMS", "19800".to_owned()),
        ("HERALD_LIMITS__MAX_STREAMS_PER_ADDRESS", "19800".to_owned()),
        // Above the stream limits (herald requires it), and within what an
        // open-file limit of 20,000 leaves herald for sockets (19,932 with
        // one worker), so it is not lowered.
        ("HERALD_LIMITS__MAX_CONNECTIONS", "19900".to_owned()),
        (
            "HERALD_LIMITS__MAX_CONNECTIONS_PER_ADDRESS",
            "19900".to_owned(),
        ),
        (
            "HERALD_SESSION__BUFFER_EVENTS",
            options.buffer_events.to_string(),
        ),
        // nchan bounds a channel's buffer by count only: herald's byte
        // bounds out of the way too (the bench measures memory, not them).
        ("HERALD_SESSION__BUFFER_BYTES", (64u64 << 20).to_string()),
        ("HERALD_SESSION__MAX_TOTAL_BYTES", (1u64 << 40).to_string()),
        (
            "HERALD_HEARTBEAT__TIMEOUT",
            format!("{}s", options.keepalive_secs + 5),
        ),
        ("HERALD_HEARTBEAT__MARGIN", "5s".to_owned()),
        ("HERALD_LOG__LEVEL", options.herald_log.clone()),
        ("RUST_LOG", options.herald_log.clone()),
    ]
}

/// nginx on nchan's own store, or on the Redis at `redis_url`.
fn nginx_command(
    options: &ServerOptions,
    port: u16,
    scratch: &std::path::Path,
    redis_url: Option<&str>,
) -> Result<Command, String> {
    let (upstream, store) = match redis_url {
        Some(url) => (
            format!("upstream redis {{ nchan_redis_server {url}; }}"),
            "nchan_redis_pass redis;",
        ),
        None => (String::new(), ""),
    };
    let config = NGINX_TEMPLATE
        .replace("@REDIS@", &upstream)
        .replace("@STORE@", store)
        .replace("@PREFIX@", &scratch.display().to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@BUFFER@", &options.buffer_events.to_string())
        .replace("@PING@", &options.keepalive_secs.to_string())
        .replace("@TTL@", "300");
    let path = scratch.join("nginx.conf");
    std::fs::write(&path, config).map_err(|err| format!("{}: {err}", path.display()))?;
    let mut command = Command::new(&options.nginx_bin);
    // -e: nginx would otherwise open its compiled-in error log first.
    command
        .arg("-p")
        .arg(scratch)
        .arg("-e")
        .arg(scratch.join("error.log"))
        .arg("-c")
        .arg(&path);
    Ok(command)
}

/// This binary as the `floor` server, with the shared buffer length and
/// keep-alive.
fn floor_command(options: &ServerOptions, addr: SocketAddr) -> Result<Command, String> {
    let exe = std::env::current_exe().map_err(|err| err.to_string())?;
    let mut command = Command::new(exe);
    command
        .arg("floor")
        .args(["--bind", &addr.to_string()])
        .args(["--keepalive-secs", &options.keepalive_secs.to_string()])
        .args(["--buffer-events", &options.buffer_events.to_string()]);
    Ok(command)
}

/// A self-signed certificate for `localhost` and its key, written to
/// `scratch`; answers both paths.
fn make_certificate(scratch: &std::path::Path) -> Result<(PathBuf, PathBuf), String> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let made = rcgen::generate_simple_self_signed(names).map_err(|err| err.to_string())?;
    let (cert, key) = (scratch.join("tls.crt"), scratch.join("tls.key"));
    std::fs::write(&cert, made.cert.pem()).map_err(|err| err.to_string())?;
    std::fs::write(&key, made.signing_key.serialize_pem()).map_err(|err| err.to_string())?;
    Ok((cert, key))
}

/// A port nothing listens on right now (bound, read, released).
/// A port for a server to listen on: free now, never handed out before by
/// this process, and below the kernel's ephemeral range. A port from that
/// range (what binding port 0 gives) can be taken by any outgoing connection
/// (a cluster node's to Redis) before the server given it gets to bind it.
fn free_port() -> Result<u16, String> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map_err(|err| format!("ip_local_port_range: {err}"))?;
    let first_ephemeral: u16 = (ephemeral.split_whitespace().next())
        .and_then(|first| first.parse().ok())
        .ok_or_else(|| format!("ip_local_port_range: {ephemeral:?}"))?;
    let below = 10_000..first_ephemeral.max(10_001);
    let mut given = GIVEN.lock().map_err(|err| err.to_string())?;
    for _ in 0..1000 {
        let port = fastrand::u16(below.clone());
        if !given.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    Err(format!("no free port in {below:?}"))
}
