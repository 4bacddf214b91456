//! Typed configuration: `config.toml`, then `HERALD_SECTION__KEY` environment
//! overrides (layered by the `config` crate), then command-line flags. Each
//! actor gets only its own section.

use std::{path::Path, time::Duration};

use config::{Config, Environment, File, FileFormat};
use herald_actors::{HeartbeatConfig, SessionConfig};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub stream: StreamSettings,
    pub session: SessionConfig,
    pub heartbeat: HeartbeatConfig,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub tokens: Vec<String>,
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
const MAX_BUFFER_EVENTS: usize = 1_000_000;
/// Upper bound for every duration: far beyond any sensible value, and far
/// below what would overflow a clock computation.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Settings {
    /// Reads `path` (it must exist), then the environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let settings: Self = Config::builder()
            .add_source(File::from(path).format(FileFormat::Toml).required(true))
            .add_source(
                Environment::with_prefix("HERALD")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("admin.tokens"),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
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
        let durations = [
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
            session.buffer_bytes >= self.server.max_body_bytes,
            "session.buffer_bytes must be at least server.max_body_bytes, so any event fits".into(),
        )?;
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
