//! Typed configuration: `config.toml`, then `HERALD_SECTION__KEY` environment
//! overrides (layered by the `config` crate), then command-line flags. Each
//! actor gets only its own section.

use std::{path::Path, time::Duration};

use config::{Config, Environment, File, FileFormat};
use herald_actors::{HeartbeatConfig, KickConfig, SessionConfig};

use crate::logging::LogFormat;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub auth: AuthSettings,
    pub cors: CorsSettings,
    pub limits: LimitSettings,
    pub stream: StreamSettings,
    pub session: SessionConfig,
    pub heartbeat: HeartbeatConfig,
    pub kicks: KickConfig,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: String,
    /// 0: one per CPU core.
    pub workers: usize,
    /// Accept queue length (the kernel caps it at net.core.somaxconn).
    pub backlog: u32,
    pub max_body_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// On shutdown, the open streams are ended spread over this long.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// How long a connection may stay idle between requests.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub tokens: Vec<String>,
}

/// Who may open a device's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceAuth {
    /// Anyone: for local use only.
    Open,
    /// A device token for that device.
    Token,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub devices: DeviceAuth,
    /// HS256 secret of device tokens.
    pub secret: String,
    /// Cookie that may carry a device token.
    pub cookie: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Exact origins (`https://app.example.com`) allowed cross-origin access.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Open streams, server-wide.
    pub max_streams: usize,
    /// Open streams from one remote address.
    pub max_streams_per_address: usize,
    /// Bytes of one event (name and data).
    pub max_event_bytes: usize,
    /// Devices one multi-device publish may name.
    pub max_devices_per_publish: usize,
    /// Time a client has to send its request headers.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Open connections, server-wide (streams and all others).
    pub max_connections: usize,
    /// Open connections from one remote address.
    pub max_connections_per_address: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_jitter: Duration,
    pub queue_frames: usize,
}

impl StreamSettings {
    /// The `retry:` for one connection: `retry` moved by up to ± `retry_jitter`.
    pub fn jittered_retry(&self) -> Duration {
        let (low, high) = (
            self.retry - self.retry_jitter,
            self.retry + self.retry_jitter,
        );
        let ms = fastrand::u128(low.as_millis()..=high.as_millis());
        Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    /// How often the `server.stats` line is logged.
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
}

/// A configuration that cannot be loaded or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Frames a stream needs room for before any live event: hello, reset, replay.
const MIN_QUEUE_FRAMES: usize = 4;
const MAX_QUEUE_FRAMES: usize = 65_536;
const MIN_ADMIN_TOKEN_LEN: usize = 16;
const MIN_DEVICE_SECRET_LEN: usize = 32;
const MAX_BUFFER_EVENTS: usize = 1_000_000;
/// Upper bound for every duration: far beyond any sensible value, and far
/// below what would overflow a clock computation.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Settings {
    /// Reads `path` (it must exist), then the environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut settings: Self = Config::builder()
            .add_source(File::from(path).format(FileFormat::Toml).required(true))
            .add_source(
                Environment::with_prefix("HERALD")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("admin.tokens")
                    .with_list_parse_key("cors.allowed_origins"),
            )
            .build()?
            .try_deserialize()?;
        settings.take_secrets_verbatim();
        settings.validate()?;
        Ok(settings)
    }

    /// Environment values are parsed as numbers where they look like numbers,
    /// which would turn an all-digit secret into a float: secrets are read
    /// again, as they are.
    fn take_secrets_verbatim(&mut self) {
        if let Ok(secret) = std::env::var("HERALD_AUTH__SECRET") {
            self.auth.secret = secret;
        }
        if let Ok(tokens) = std::env::var("HERALD_ADMIN__TOKENS") {
            self.admin.tokens = tokens.split(',').map(str::to_owned).collect();
        }
    }

    /// Rejects values that would make the server misbehave rather than fail.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, msg: String| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid(msg))
            }
        };
        let tokens = &self.admin.tokens;
        check(
            !tokens.is_empty(),
            "admin.tokens must hold at least one token".into(),
        )?;
        check(
            tokens.iter().all(|t| t.len() >= MIN_ADMIN_TOKEN_LEN),
            format!("every admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
        )?;
        check(
            self.auth.devices == DeviceAuth::Open
                || self.auth.secret.len() >= MIN_DEVICE_SECRET_LEN,
            format!(
                "auth.secret must be at least {MIN_DEVICE_SECRET_LEN} bytes when auth.devices = \"token\""
            ),
        )?;
        check(
            self.cors
                .allowed_origins
                .iter()
                .all(|o| is_origin(o)),
            "cors.allowed_origins must list exact origins like https://app.example.com (scheme and host, no path, no *)"
                .into(),
        )?;
        let limits = &self.limits;
        check(
            limits.max_streams > 0 && limits.max_streams_per_address > 0 && limits.max_devices_per_publish > 0,
            "limits.max_streams, max_streams_per_address and max_devices_per_publish must be above zero".into(),
        )?;
        // Every stream is a connection: room above the stream limits lets a
        // client whose streams are at their limit still publish and probe.
        check(
            limits.max_connections > limits.max_streams
                && limits.max_connections_per_address > limits.max_streams_per_address,
            "limits.max_connections must be above limits.max_streams, and max_connections_per_address above max_streams_per_address".into(),
        )?;
        check(
            limits.max_event_bytes > 0 && limits.max_event_bytes <= self.session.buffer_bytes,
            "limits.max_event_bytes must be above zero and at most session.buffer_bytes".into(),
        )?;
        check(
            self.kicks.flapping_kicks >= 2,
            "kicks.flapping_kicks must be at least 2".into(),
        )?;
        check(
            self.server.drain_window <= MAX_DURATION,
            "server.drain_window must be at most 30 days".into(),
        )?;
        // actix-http reads its clock every 500 ms: shorter timeouts misfire.
        check(
            limits.request_timeout >= Duration::from_secs(1),
            "limits.request_timeout must be at least 1s".into(),
        )?;
        let durations = [
            ("kicks.instance_window", self.kicks.instance_window),
            ("kicks.flapping_window", self.kicks.flapping_window),
            ("kicks.flapping_cooldown", self.kicks.flapping_cooldown),
            ("kicks.reconnect_block", self.kicks.reconnect_block),
            ("limits.request_timeout", limits.request_timeout),
            ("server.keep_alive", self.server.keep_alive),
            ("log.stats_interval", self.log.stats_interval),
            ("session.ttl", self.session.ttl),
            ("heartbeat.timeout", self.heartbeat.timeout),
            ("stream.retry", self.stream.retry),
            ("server.shutdown_timeout", self.server.shutdown_timeout),
        ];
        for (key, value) in durations {
            check(
                !value.is_zero() && value <= MAX_DURATION,
                format!(
                    "{key} must be above zero and at most {} days",
                    MAX_DURATION.as_secs() / 86_400
                ),
            )?;
        }
        let heartbeat = &self.heartbeat;
        check(
            !heartbeat.margin.is_zero() && heartbeat.margin < heartbeat.timeout,
            "heartbeat.margin must be above zero and below heartbeat.timeout".into(),
        )?;
        check(
            self.stream.retry_jitter <= self.stream.retry,
            "stream.retry_jitter must not exceed stream.retry".into(),
        )?;
        check(
            (MIN_QUEUE_FRAMES..=MAX_QUEUE_FRAMES).contains(&self.stream.queue_frames),
            format!(
                "stream.queue_frames must be between {MIN_QUEUE_FRAMES} and {MAX_QUEUE_FRAMES}"
            ),
        )?;
        check(
            (1..=MAX_BUFFER_EVENTS).contains(&self.session.buffer_events),
            format!("session.buffer_events must be between 1 and {MAX_BUFFER_EVENTS}"),
        )?;
        check(
            self.server.max_body_bytes > 0,
            "server.max_body_bytes must be above zero".into(),
        )?;
        let session = &self.session;

        check(
            session.max_total_bytes >= session.buffer_bytes,
            "session.max_total_bytes must be at least session.buffer_bytes".into(),
        )?;
        check(
            session.max_sessions > 0,
            "session.max_sessions must be above zero".into(),
        )
    }
}

/// What a browser sends as `Origin`: `http(s)://host[:port]`, nothing after.
fn is_origin(origin: &str) -> bool {
    origin.split_once("://").is_some_and(|(scheme, host)| {
        matches!(scheme, "http" | "https")
            && !host.is_empty()
            && !host.contains(['/', '*', '?', '#'])
    })
}
