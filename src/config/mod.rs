//! Typed configuration. Every key has a built-in default that is safe in
//! production; a config file and then `HERALD_<SECTION>__<KEY>` environment
//! variables are laid over the defaults ([`layers`]), and the result is
//! checked as a whole ([`validate`]). Each actor gets only its own section.
//!
//! What has no safe default is left empty and refused at startup: admin
//! tokens, and the device-token secret when device streams need tokens.

mod layers;
mod validate;

use std::{path::PathBuf, time::Duration};

use herald_actors::{HeartbeatConfig, KickConfig, SessionConfig, StorageConfig};
use serde::{Deserialize, Serialize};

use crate::logging::LogFormat;

pub use layers::{Loaded, Source, keys_in_file, known_keys};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub auth: AuthSettings,
    pub cors: CorsSettings,
    pub limits: LimitSettings,
    pub stream: StreamSettings,
    pub session: SessionConfig,
    pub storage: StorageConfig,
    pub heartbeat: HeartbeatConfig,
    pub kicks: KickConfig,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
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
    /// This node's name in logs and admin views, and among several nodes
    /// on one Redis; empty: `node-` and 8 random hex digits, drawn at start.
    pub node_id: String,
    pub tls: TlsSettings,
}

/// `[server.tls]`: with both files named, herald serves HTTPS, HTTP/2 and
/// HTTP/1.1 offered by ALPN (see `tls.rs`); with neither, plain HTTP/1.1.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file: the certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM file: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            // Loopback: exposing the server is a decision, not a default.
            bind: "127.0.0.1:8080".to_owned(),
            workers: 0,
            backlog: 4096,
            max_body_bytes: 64 * 1024,
            shutdown_timeout: Duration::from_secs(5),
            drain_window: Duration::from_secs(10),
            keep_alive: Duration::from_secs(15),
            node_id: String::new(),
            tls: TlsSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// No default: an admin token built into the binary would be public.
    pub tokens: Vec<String>,
    /// Serve the admin page at `/admin/`.
    pub ui: bool,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            ui: true,
        }
    }
}

/// Who may open a device's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceAuth {
    /// Anyone: for local use only.
    Open,
    /// A device token for that device.
    Token,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub devices: DeviceAuth,
    /// HS256 secret of device tokens. No default, for the same reason as
    /// admin tokens.
    pub secret: String,
    /// Cookie that may carry a device token.
    pub cookie: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            devices: DeviceAuth::Token,
            secret: String::new(),
            cookie: "herald_token".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// Exact origins (`https://app.example.com`) allowed cross-origin access.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
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

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_streams: 19_000,
            max_streams_per_address: 1000,
            max_event_bytes: 64 * 1024,
            max_devices_per_publish: 1000,
            request_timeout: Duration::from_secs(5),
            max_connections: 19_500,
            max_connections_per_address: 1100,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_jitter: Duration,
    pub queue_frames: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            retry: Duration::from_secs(3),
            retry_jitter: Duration::from_secs(1),
            queue_frames: 256,
        }
    }
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    /// How often the `server.stats` line is logged.
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
            stats_interval: Duration::from_secs(60),
        }
    }
}

/// A configuration that cannot be loaded or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("cannot read configuration file {path}: {message}")]
    File { path: String, message: String },
    #[error("unknown configuration key {key} in {path}")]
    UnknownKey { key: String, path: String },
    #[error(
        "unknown configuration variable {variable}: herald has no key {key} \
         (variables are HERALD_<SECTION>__<KEY>)"
    )]
    UnknownVariable { variable: String, key: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}
