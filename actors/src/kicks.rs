//! Kick ping-pong: two clients with one identity would replace each other
//! forever, each `EventSource` reconnecting as soon as it is kicked. Owned by
//! the [`DeviceRegistry`](crate::DeviceRegistry), which asks it before a
//! stream is accepted and tells it about every kick. A kick is a replacement
//! that reached a stream whose client was still there, as the replaced
//! stream decides (see `connection.rs`): a client that closes its stream and
//! reopens it, however fast and however often, is not kicked by itself.
//!
//! - A client that names itself (`instance`) and was kicked by a different
//!   instance is refused if it returns within `instance_window`.
//! - Without instance names, `flapping_kicks` kicks of one device within
//!   `flapping_window` mark it flapping: logged, and under the `refuse` policy
//!   newcomers without an instance are refused for `flapping_cooldown`.
//!
//! A single reconnect that replaces a dead ("zombie") connection is one kick:
//! it always gets through.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::DeviceId;

/// The `[kicks]` config section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KickConfig {
    #[serde(with = "humantime_serde")]
    pub instance_window: Duration,
    pub flapping_kicks: usize,
    #[serde(with = "humantime_serde")]
    pub flapping_window: Duration,
    #[serde(with = "humantime_serde")]
    pub flapping_cooldown: Duration,
    pub flapping_policy: FlappingPolicy,
    /// After an operator's disconnect without reconnect: how long the
    /// device's streams are answered `204`.
    #[serde(with = "humantime_serde")]
    pub reconnect_block: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlappingPolicy {
    /// Refuse newcomers without an instance for the cool-down.
    Refuse,
    /// Only log and flag.
    Allow,
}

impl Default for KickConfig {
    fn default() -> Self {
        Self {
            instance_window: Duration::from_secs(30),
            flapping_kicks: 3,
            flapping_window: Duration::from_secs(10),
            flapping_cooldown: Duration::from_secs(30),
            flapping_policy: FlappingPolicy::Refuse,
            reconnect_block: Duration::from_secs(10 * 60),
        }
    }
}

/// Why a stream was refused (answered `409`, which stops `EventSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this instance was replaced by another instance of the device moments ago")]
    KickedInstance,
    #[error("connections of this device keep replacing each other; try again later")]
    Flapping,
    /// An operator ended this device's stream and asked it not to reconnect.
    #[error("an operator asked this device not to reconnect for now")]
    Blocked,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KickedInstance => "kicked_instance",
            Self::Flapping => "flapping",
            Self::Blocked => "blocked",
        }
    }
}

/// Kicked instances remembered per device; the oldest is forgotten first.
const MAX_KICKED_INSTANCES: usize = 16;

#[derive(Default)]
struct DeviceKicks {
    /// Instances kicked by another instance, and when.
    kicked_instances: Vec<(String, Instant)>,
    /// Recent kicks, oldest first.
    recent: VecDeque<Instant>,
    cooldown_until: Option<Instant>,
    blocked_until: Option<Instant>,
    /// Shown as `flapping` in the admin view until then.
    flagged_until: Option<Instant>,
}

pub struct KickPolicy {
    config: KickConfig,
    devices: HashMap<DeviceId, DeviceKicks>,
}

impl KickPolicy {
    pub fn new(config: KickConfig) -> Self {
        Self {
            config,
            devices: HashMap::new(),
        }
    }

    /// Whether a new stream of `device` (naming itself `instance`) may start.
    pub fn admit(
        &self,
        device: &DeviceId,
        instance: Option<&str>,
        now: Instant,
    ) -> Result<(), Refusal> {
        let Some(kicks) = self.devices.get(device) else {
            return Ok(());
        };
        if kicks.blocked_until.is_some_and(|until| now < until) {
            return Err(Refusal::Blocked);
        }
        match instance {
            Some(instance) => {
                let window = self.config.instance_window;
                let returning = kicks
                    .kicked_instances
                    .iter()
                    .any(|(kicked, at)| kicked == instance && now.duration_since(*at) < window);
                if returning {
                    Err(Refusal::KickedInstance)
                } else {
                    Ok(())
                }
            }
            None if kicks.cooldown_until.is_some_and(|until| now < until) => Err(Refusal::Flapping),
            None => Ok(()),
        }
    }

    /// Records that `old` was kicked by `new`; answers whether the device is
    /// flapping now (the first time it crosses the threshold).
    pub fn record_kick(
        &mut self,
        device: &DeviceId,
        old: Option<&str>,
        new: Option<&str>,
        now: Instant,
    ) -> bool {
        let config = &self.config;
        let kicks = self.devices.entry(device.clone()).or_default();
        if let Some(old) = old
            && Some(old) != new
        {
            // A client inventing instance names must not grow this list.
            let window = config.instance_window;
            let kicked = &mut kicks.kicked_instances;
            kicked.retain(|(name, at)| name != old && now.duration_since(*at) < window);
            if kicked.len() >= MAX_KICKED_INSTANCES {
                kicked.remove(0);
            }
            kicked.push((old.to_owned(), now));
        }
        kicks.recent.push_back(now);
        while kicks
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= config.flapping_window)
        {
            kicks.recent.pop_front();
        }
        let cooling = kicks.cooldown_until.is_some_and(|until| now < until);
        let flapping = kicks.recent.len() >= config.flapping_kicks && !cooling;
        if flapping {
            kicks.recent.clear();
            kicks.flagged_until = Some(now + config.flapping_window.max(config.flapping_cooldown));
            if config.flapping_policy == FlappingPolicy::Refuse {
                kicks.cooldown_until = Some(now + config.flapping_cooldown);
            }
        }
        flapping
    }

    /// Whether `device` was found flapping recently (the admin view's flag).
    pub fn is_flapping(&self, device: &DeviceId, now: Instant) -> bool {
        let flagged = self
            .devices
            .get(device)
            .and_then(|kicks| kicks.flagged_until);
        flagged.is_some_and(|until| now < until)
    }

    pub fn config(&self) -> &KickConfig {
        &self.config
    }

    /// How long an operator's `reconnect=false` refuses a device's streams.
    pub fn reconnect_block(&self) -> Duration {
        self.config.reconnect_block
    }

    /// Refuses every stream of `device` for `reconnect_block` from `now`;
    /// answers how long.
    pub fn block(&mut self, device: &DeviceId, now: Instant) -> Duration {
        self.block_until(device, now + self.config.reconnect_block);
        self.config.reconnect_block
    }

    /// Refuses every stream of `device` until `until` (a block read back
    /// from storage).
    pub fn block_until(&mut self, device: &DeviceId, until: Instant) {
        self.devices
            .entry(device.clone())
            .or_default()
            .blocked_until = Some(until);
    }

    /// Lifts a block set by [`block`](Self::block).
    pub fn unblock(&mut self, device: &DeviceId) {
        if let Some(kicks) = self.devices.get_mut(device) {
            kicks.blocked_until = None;
        }
    }

    /// Forgets what no rule can use any more, so memory follows activity.
    pub fn forget_old(&mut self, now: Instant) {
        let config = &self.config;
        self.devices.retain(|_, kicks| {
            kicks
                .kicked_instances
                .retain(|(_, at)| now.duration_since(*at) < config.instance_window);
            kicks
                .recent
                .retain(|at| now.duration_since(*at) < config.flapping_window);
            kicks.cooldown_until = kicks.cooldown_until.filter(|until| now < *until);
            kicks.blocked_until = kicks.blocked_until.filter(|until| now < *until);
            kicks.flagged_until = kicks.flagged_until.filter(|until| now < *until);
            let timers = [
                kicks.cooldown_until,
                kicks.blocked_until,
                kicks.flagged_until,
            ];
            let nothing_left = kicks.kicked_instances.is_empty() && kicks.recent.is_empty();
            !(nothing_left && timers.iter().all(Option::is_none))
        });
    }

    /// The configured flapping policy, for log lines.
    pub fn policy_name(&self) -> &'static str {
        match self.config.flapping_policy {
            FlappingPolicy::Refuse => "refuse",
            FlappingPolicy::Allow => "allow",
        }
    }

    /// How often [`forget_old`](Self::forget_old) is worth running.
    pub fn forget_interval(&self) -> Duration {
        let config = &self.config;
        let windows = [
            config.instance_window,
            config.flapping_window,
            config.flapping_cooldown,
        ];
        windows
            .into_iter()
            .fold(config.reconnect_block, Duration::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(flapping_policy: FlappingPolicy) -> KickPolicy {
        KickPolicy::new(KickConfig {
            instance_window: Duration::from_secs(30),
            flapping_kicks: 3,
            flapping_window: Duration::from_secs(10),
            flapping_cooldown: Duration::from_secs(60),
            flapping_policy,
            reconnect_block: Duration::from_secs(300),
        })
    }

    fn device() -> DeviceId {
        DeviceId::parse("edge-1").unwrap()
    }

    #[test]
    fn a_kicked_instance_is_refused_within_the_window_only() {
        let mut policy = policy(FlappingPolicy::Refuse);
        let now = Instant::now();
        policy.record_kick(&device(), Some("tab-a"), Some("tab-b"), now);
        assert_eq!(
            policy.admit(&device(), Some("tab-a"), now),
            Err(Refusal::KickedInstance)
        );
        assert_eq!(policy.admit(&device(), Some("tab-b"), now), Ok(()));
        assert_eq!(
            policy.admit(&device(), Some("tab-a"), now + Duration::from_secs(31)),
            Ok(())
        );
    }

    #[test]
    fn an_instance_replacing_itself_is_not_held_against_it() {
        let mut policy = policy(FlappingPolicy::Refuse);
        let now = Instant::now();
        policy.record_kick(&device(), Some("tab-a"), Some("tab-a"), now);
        assert_eq!(policy.admit(&device(), Some("tab-a"), now), Ok(()));
    }

    #[test]
    fn repeated_kicks_without_instances_are_flapping_and_cool_down() {
        let mut policy = policy(FlappingPolicy::Refuse);
        let now = Instant::now();
        assert!(!policy.record_kick(&device(), None, None, now));
        assert_eq!(
            policy.admit(&device(), None, now),
            Ok(()),
            "one reconnect always gets through"
        );
        assert!(!policy.record_kick(&device(), None, None, now));
        assert!(policy.record_kick(&device(), None, None, now));
        assert_eq!(policy.admit(&device(), None, now), Err(Refusal::Flapping));
        assert_eq!(
            policy.admit(&device(), Some("tab-c"), now),
            Ok(()),
            "named instances are judged by name"
        );
        assert_eq!(
            policy.admit(&device(), None, now + Duration::from_secs(61)),
            Ok(())
        );
    }

    #[test]
    fn kicks_spread_beyond_the_window_are_not_flapping_and_the_allow_policy_only_flags() {
        let mut spread = policy(FlappingPolicy::Refuse);
        let now = Instant::now();
        for n in 0..5 {
            assert!(!spread.record_kick(&device(), None, None, now + Duration::from_secs(6 * n)));
        }
        let mut allow = policy(FlappingPolicy::Allow);
        for _ in 0..2 {
            allow.record_kick(&device(), None, None, now);
        }
        assert!(allow.record_kick(&device(), None, None, now));
        assert_eq!(allow.admit(&device(), None, now), Ok(()));
    }

    #[test]
    fn a_blocked_device_is_refused_whatever_its_instance_until_the_block_ends() {
        let mut policy = policy(FlappingPolicy::Allow);
        let now = Instant::now();
        policy.block(&device(), now);
        assert_eq!(policy.admit(&device(), None, now), Err(Refusal::Blocked));
        assert_eq!(
            policy.admit(&device(), Some("tab-a"), now),
            Err(Refusal::Blocked)
        );
        let later = now + Duration::from_secs(301);
        assert_eq!(policy.admit(&device(), None, later), Ok(()));

        policy.block(&device(), now);
        policy.unblock(&device());
        assert_eq!(policy.admit(&device(), None, now), Ok(()), "lifted at once");
    }

    #[test]
    fn the_kicked_instances_of_a_device_are_bounded() {
        let mut policy = policy(FlappingPolicy::Allow);
        let now = Instant::now();
        for n in 0..1000 {
            policy.record_kick(&device(), Some(&format!("tab-{n}")), Some("x"), now);
        }
        assert_eq!(
            policy.devices[&device()].kicked_instances.len(),
            MAX_KICKED_INSTANCES
        );
        assert_eq!(
            policy.admit(&device(), Some("tab-999"), now),
            Err(Refusal::KickedInstance)
        );
    }

    #[test]
    fn old_records_are_forgotten() {
        let mut policy = policy(FlappingPolicy::Refuse);
        let now = Instant::now();
        policy.record_kick(&device(), Some("tab-a"), Some("tab-b"), now);
        policy.forget_old(now + policy.forget_interval());
        assert!(policy.devices.is_empty());
    }
}
