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

/// Tells every subscriber of this step (none may be listening).
pub fn tell(
    event: &'static str,
    device: &DeviceId,
    conn: Option<ConnectionId>,
    reason: Option<String>,
) {
    if FEED.receiver_count() == 0 {
        return;
    }
    let _ = FEED.send(Lifecycle {
        event,
        device: device.to_string(),
        conn: conn.map(|c| c.to_string()),
        reason,
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
        let device = DeviceId::parse("d1").unwrap();
        tell("device.connected", &device, None, None);
        let mut feed = subscribe();
        tell("device.kicked", &device, None, Some("admin".to_owned()));
        let step = feed.try_recv().expect("a step");
        assert_eq!(
            (step.event, step.reason.as_deref()),
            ("device.kicked", Some("admin"))
        );
        assert!(
            feed.try_recv().is_err(),
            "nothing from before it subscribed"
        );
    }
}
