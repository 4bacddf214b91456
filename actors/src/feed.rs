//! What operators watch live: streams connecting, disconnecting, kicked,
//! reset, and devices found flapping, as they happen on this node — for the
//! admin event stream (`GET /v1/admin/events`, the admin page's live view).
//!
//! One process-wide channel, like the metrics: each lifecycle step is told
//! where its log line is written, and whoever subscribes reads it. Telling
//! never waits and costs next to nothing while nobody listens. A subscriber
//! that falls more than [`CAPACITY`] steps behind loses the oldest and is
//! told how many (tokio's broadcast), so a slow page never holds up a
//! stream.

use std::sync::LazyLock;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::{ConnectionId, DeviceId};

/// Steps a subscriber may be behind before it loses the oldest.
pub const CAPACITY: usize = 1024;

/// One lifecycle step, named as its log line is.
#[derive(Debug, Clone, Serialize)]
pub struct Lifecycle {
    /// `device.connected`, `device.disconnected`, `device.kicked`,
    /// `session.reset` or `device.flapping`.
    pub event: &'static str,
    pub device: String,
    /// The stream's connection id, if the step is a stream's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<String>,
    /// Why: the log line's `reason` (disconnected, reset), `by` (kicked) or
    /// `policy` (flapping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

static FEED: LazyLock<broadcast::Sender<Lifecycle>> =
    LazyLock::new(|| broadcast::channel(CAPACITY).0);

/// Tells every subscriber of this step (none may be listening: then
/// nothing is allocated).
pub fn tell(
    event: &'static str,
    device: &DeviceId,
    conn: Option<ConnectionId>,
    reason: Option<&str>,
) {
    if FEED.receiver_count() == 0 {
        return;
    }
    let _ = FEED.send(Lifecycle {
        event,
        device: device.to_string(),
        conn: conn.map(|c| c.to_string()),
        reason: reason.map(str::to_owned),
    });
}

/// Every step from now on.
pub fn subscribe() -> broadcast::Receiver<Lifecycle> {
    FEED.subscribe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_gets_every_step_told_after_it_subscribed() {
        // The feed is process-wide: other tests running at the same time
        // tell it their steps too, so only this device's are looked at.
        let device = DeviceId::parse("feed-test-device").unwrap();
        tell("device.connected", &device, None, None);
        let mut feed = subscribe();
        tell("device.kicked", &device, None, Some("admin"));
        let mine: Vec<_> = std::iter::from_fn(|| feed.try_recv().ok())
            .filter(|step| step.device == device.as_str())
            .map(|step| (step.event, step.reason))
            .collect();
        assert_eq!(mine, [("device.kicked", Some("admin".to_owned()))]);
    }
}
