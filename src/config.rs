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
const MIN_ADMIN_TOKEN_LEN: usize = 16;

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
        let fail = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        if self.admin.tokens.is_empty() {
            return fail("admin.tokens must hold at least one token");
        }
        if self
            .admin
            .tokens
            .iter()
            .any(|t| t.len() < MIN_ADMIN_TOKEN_LEN)
        {
            return fail("every admin token must be at least 16 characters");
        }
        if self.heartbeat.margin.is_zero() || self.heartbeat.margin >= self.heartbeat.timeout {
            return fail("heartbeat.margin must be above zero and below heartbeat.timeout");
        }
        if self.stream.retry_jitter > self.stream.retry {
            return fail("stream.retry_jitter must not exceed stream.retry");
        }
        if self.stream.queue_frames < MIN_QUEUE_FRAMES {
            return fail("stream.queue_frames must be at least 4");
        }
        if self.session.buffer_events == 0 || self.session.ttl.is_zero() {
            return fail("session.buffer_events and session.ttl must be above zero");
        }
        if self.server.max_body_bytes == 0 {
            return fail("server.max_body_bytes must be above zero");
        }
        Ok(())
    }
}
