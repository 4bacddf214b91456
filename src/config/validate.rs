//! Checks a configuration as a whole: values that would make the server
//! misbehave rather than fail, and what has no safe default but is needed.

use std::time::Duration;

use super::{ConfigError, DeviceAuth, Settings};

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
            "admin.tokens is not set: give at least one admin token \
             (HERALD_ADMIN__TOKENS=<token>, or tokens in the [admin] section of the config file)"
                .into(),
        )?;
        check(
            tokens.iter().all(|t| t.len() >= MIN_ADMIN_TOKEN_LEN),
            format!("every admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
        )?;
        check(
            self.auth.devices == DeviceAuth::Open || !self.auth.secret.is_empty(),
            "auth.secret is not set, and device streams need tokens (auth.devices = \"token\"): \
             set HERALD_AUTH__SECRET (at least 32 bytes), or secret in the [auth] section"
                .into(),
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
        let tls = &self.server.tls;
        check(
            tls.cert.as_os_str().is_empty() == tls.key.as_os_str().is_empty(),
            "server.tls.cert and server.tls.key go together: set both (HTTPS) or neither (plain HTTP)"
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
        // An honest client on a slow network needs about this long; and
        // actix-http's keep-alive clock, which a short value would race,
        // ticks every 500 ms.
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

impl Settings {
    /// The secret that signs device tokens, for `herald token`: it needs
    /// only this, not a whole server configuration.
    pub fn token_secret(&self) -> Result<&str, ConfigError> {
        if self.auth.secret.len() >= MIN_DEVICE_SECRET_LEN {
            Ok(&self.auth.secret)
        } else {
            Err(ConfigError::Invalid(format!(
                "auth.secret must be set and at least {MIN_DEVICE_SECRET_LEN} bytes to mint \
                 device tokens (HERALD_AUTH__SECRET, or secret in the [auth] section)"
            )))
        }
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
