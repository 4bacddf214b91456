//! DeviceRegistry: knows the one live [`DeviceConnection`] of each device and
//! routes events to it.
//!
//! Invariants:
//! - at most one live connection per device: registering a second one makes
//!   it the live one and ends the first, so no event is routed to the first
//!   after the second was registered. Whether that was a kick is not decided
//!   here: the first connection decides it (its client may have closed
//!   before herald noticed) and, if it was, reports it ([`Kicked`]);
//! - a connection's `Begin` (hello and replay) is sent before any `Push` to it,
//!   because both come from this actor in the order the store sent them;
//! - a connection that is gone is forgotten and its session detached, so its
//!   TTL starts: it says so itself when it stops (also after a panic), and a
//!   send that finds its mailbox closed covers any other way of vanishing.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use actix::{dev::SendError, prelude::*};

use crate::{
    ConnectionId, DeviceConnection, DeviceId, Opening, StoredEvent,
    connection::{Begin, Close, DisconnectReason, Kick, Push},
    kicks::{KickConfig, KickPolicy, Refusal},
    session_store::{Detach, SessionStore},
};

/// May a new stream of this device start? Refuses one side of a kick
/// ping-pong (see [`KickPolicy`]). Sent by the stream route.
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct Admit {
    pub device: DeviceId,
    /// The client's own name for itself, if it gave one.
    pub instance: Option<String>,
    pub peer: String,
}

/// Make a connection its device's live one, kicking the previous one. Sent by
/// the store after it attached the connection to the session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
    pub connection: Addr<DeviceConnection>,
    pub instance: Option<String>,
    pub peer: String,
    pub opening: Opening,
}

/// Route each event to its device's live connection; answers, per event,
/// whether a live connection took it. Sent by the store.
#[derive(Message)]
#[rtype(result = "Vec<bool>")]
pub struct DeliverEach {
    pub events: Vec<(DeviceId, StoredEvent)>,
}

/// A stream replaced by a newer one of its device: what the kick rules and
/// the `device.flapping` line need, should the replaced stream find its
/// client still there.
pub struct Replacement {
    /// The newer stream.
    pub by: ConnectionId,
    /// The replaced stream's instance, and the newer one's.
    pub instances: (Option<String>, Option<String>),
    /// The replaced stream's client address, and the newer one's.
    pub peers: (String, String),
}

/// A replacement reached a stream whose client was still there: a kick, for
/// the kick rules. Sent by the replaced connection, before it writes
/// `kicked` (so before its client can come back).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kicked {
    pub device: DeviceId,
    pub replacement: Replacement,
}

/// A connection is gone. Sent by the connection when it stops, and by the
/// heartbeat when it finds a connection dead.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
}

/// End every live stream — in random order, spread evenly over `over`, so
/// their clients come back spread out too — and any that registers later
/// (server shutdown); answers how many there were. Sent by the server's
/// shutdown sequence.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll {
    pub over: Duration,
}

/// End a device's live stream through the admin API. With `reconnect`, the
/// stream just ends (the client comes back); without, it gets `kicked`
/// (reason `admin`) and the device's reconnects are refused for a while.
/// Answers whether there was a live stream. Sent by the admin route.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Disconnect {
    pub device: DeviceId,
    pub reconnect: bool,
}

/// End a device's live stream (the device was deleted). Sent by the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseDevice {
    pub device: DeviceId,
}

/// Which of these devices were found flapping recently, in order. Sent by
/// the admin device views.
#[derive(Message)]
#[rtype(result = "Vec<bool>")]
pub struct Flapping {
    pub devices: Vec<DeviceId>,
}

/// How many devices have a live connection. Sent by the readiness probe
/// and tests.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountLive;

struct Live {
    connection_id: ConnectionId,
    connection: Addr<DeviceConnection>,
    instance: Option<String>,
    peer: String,
}

pub struct DeviceRegistry {
    store: Addr<SessionStore>,
    live: HashMap<DeviceId, Live>,
    kicks: KickPolicy,
    /// Set by `CloseAll`: streams that arrive later are ended at once.
    closing: bool,
}

impl DeviceRegistry {
    pub fn new(store: Addr<SessionStore>, kicks: KickConfig) -> Self {
        Self {
            store,
            live: HashMap::new(),
            kicks: KickPolicy::new(kicks),
            closing: false,
        }
    }

    /// Sends `msg` to the device's live connection; forgets the connection if
    /// its mailbox is closed. Answers whether the connection took it.
    fn send_live<M>(&mut self, device: &DeviceId, msg: M) -> bool
    where
        M: Message + Send + 'static,
        M::Result: Send,
        DeviceConnection: Handler<M>,
    {
        let Some(live) = self.live.get(device) else {
            return false;
        };
        match live.connection.try_send(msg) {
            Ok(()) => true,
            // Connection mailboxes are unbounded, so this does not happen.
            Err(SendError::Full(_)) => false,
            Err(SendError::Closed(_)) => {
                let connection_id = live.connection_id;
                self.forget(device.clone(), connection_id);
                false
            }
        }
    }

    fn forget(&mut self, device: DeviceId, connection_id: ConnectionId) {
        if self
            .live
            .get(&device)
            .is_some_and(|l| l.connection_id == connection_id)
        {
            self.live.remove(&device);
        }
        self.store.do_send(Detach {
            device,
            connection_id,
        });
    }
}

impl Actor for DeviceRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.kicks.forget_interval(), |act, _| {
            act.kicks.forget_old(Instant::now())
        });
    }
}

impl Handler<Admit> for DeviceRegistry {
    type Result = Result<(), Refusal>;

    fn handle(&mut self, msg: Admit, _: &mut Self::Context) -> Self::Result {
        let instance = msg.instance.as_deref();
        self.kicks
            .admit(&msg.device, instance, Instant::now())
            .inspect_err(|refusal| {
                log::info!(
                    "device.refused device={} addr={} instance={} reason={}",
                    msg.device,
                    msg.peer,
                    instance.unwrap_or("-"),
                    refusal.as_str()
                );
            })
    }
}

impl Handler<Register> for DeviceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Self::Context) {
        if self.closing {
            // It unregisters when it stops, which detaches its session.
            msg.connection.do_send(Close {
                reason: DisconnectReason::Shutdown,
            });
            return;
        }
        // A connection can be gone before the store's `Register` for it gets
        // here (its client left at once); it must not kick a healthy one.
        if !msg.connection.connected() {
            return;
        }
        let new = Live {
            connection_id: msg.connection_id,
            connection: msg.connection,
            instance: msg.instance,
            peer: msg.peer,
        };
        let (new_instance, new_peer) = (new.instance.clone(), new.peer.clone());
        if let Some(old) = self.live.insert(msg.device.clone(), new) {
            let replacement = Replacement {
                by: msg.connection_id,
                instances: (old.instance, new_instance),
                peers: (old.peer, new_peer),
            };
            old.connection.do_send(Kick {
                replacement: Some(replacement),
            });
        }
        self.send_live(
            &msg.device,
            Begin {
                opening: msg.opening,
            },
        );
    }
}

impl Handler<DeliverEach> for DeviceRegistry {
    type Result = Vec<bool>;

    fn handle(&mut self, msg: DeliverEach, _: &mut Self::Context) -> Vec<bool> {
        msg.events
            .into_iter()
            .map(|(device, event)| self.send_live(&device, Push { event }))
            .collect()
    }
}

impl Handler<Kicked> for DeviceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Kicked, _: &mut Self::Context) {
        let Replacement {
            instances, peers, ..
        } = msg.replacement;
        let (old, new) = (instances.0.as_deref(), instances.1.as_deref());
        if self
            .kicks
            .record_kick(&msg.device, old, new, Instant::now())
        {
            log::warn!(
                "device.flapping device={} addrs={},{} policy={}",
                msg.device,
                peers.0,
                peers.1,
                self.kicks.policy_name()
            );
        }
    }
}

impl Handler<Unregister> for DeviceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Self::Context) {
        self.forget(msg.device, msg.connection_id);
    }
}

impl Handler<CloseAll> for DeviceRegistry {
    type Result = usize;

    fn handle(&mut self, msg: CloseAll, ctx: &mut Self::Context) -> usize {
        self.closing = true;
        let mut connections: Vec<_> = self.live.values().map(|l| l.connection.clone()).collect();
        fastrand::shuffle(&mut connections);
        let count = connections.len();
        for (n, connection) in connections.into_iter().enumerate() {
            let close = move |_: &mut Self, _: &mut Self::Context| {
                connection.do_send(Close {
                    reason: DisconnectReason::Shutdown,
                });
            };
            let at = msg.over.mul_f64(n as f64 / count as f64);
            ctx.run_later(at, close);
        }
        count
    }
}

impl Handler<Disconnect> for DeviceRegistry {
    type Result = bool;

    fn handle(&mut self, msg: Disconnect, _: &mut Self::Context) -> bool {
        let Some(live) = self.live.remove(&msg.device) else {
            return false;
        };
        if msg.reconnect {
            live.connection.do_send(Close {
                reason: DisconnectReason::Admin,
            });
        } else {
            live.connection.do_send(Kick { replacement: None });
            self.kicks.block(&msg.device, Instant::now());
        }
        true
    }
}

impl Handler<CloseDevice> for DeviceRegistry {
    type Result = ();

    fn handle(&mut self, msg: CloseDevice, _: &mut Self::Context) {
        if let Some(live) = self.live.remove(&msg.device) {
            live.connection.do_send(Close {
                reason: DisconnectReason::Deleted,
            });
        }
    }
}

impl Handler<Flapping> for DeviceRegistry {
    type Result = Vec<bool>;

    fn handle(&mut self, msg: Flapping, _: &mut Self::Context) -> Vec<bool> {
        let now = Instant::now();
        msg.devices
            .iter()
            .map(|device| self.kicks.is_flapping(device, now))
            .collect()
    }
}

impl Handler<CountLive> for DeviceRegistry {
    type Result = usize;

    fn handle(&mut self, _: CountLive, _: &mut Self::Context) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{session_store::SweepExpired, test_support::*};

    /// Makes a connection actor panic, as a bug in it would.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Explode;

    impl Handler<Explode> for DeviceConnection {
        type Result = ();

        fn handle(&mut self, _: Explode, _: &mut Self::Context) {
            panic!("connection exploded (on purpose, in a test)");
        }
    }

    #[actix::test]
    async fn a_second_connection_kicks_the_first() {
        let actors = start_actors(Duration::from_secs(60));
        let dev = device("d1");
        let (_first, mut first_frames, _) = connect(&actors, &dev, None, 8).await;
        expect_signal(&mut first_frames, "hello").await;

        let (_second, mut second_frames, second_id) = connect(&actors, &dev, None, 8).await;
        let kicked = expect_signal(&mut first_frames, "kicked").await;
        assert_eq!(kicked["connection_id"], second_id.to_string());
        assert!(next(&mut first_frames).await.is_none());

        let hello = expect_signal(&mut second_frames, "hello").await;
        assert_eq!(hello["connection_id"], second_id.to_string());
        assert_eq!(count_live(&actors).await, 1);
    }

    #[actix::test]
    async fn only_a_replacement_that_finds_its_client_there_is_a_kick() {
        let strict = KickConfig {
            flapping_kicks: 2,
            flapping_policy: crate::FlappingPolicy::Refuse,
            ..lenient_kicks()
        };
        let ttl = Duration::from_secs(60);
        let actors = crate::start(session_config(ttl), quiet_heartbeat(), strict);
        let dev = device("d1");
        let admit = || Admit {
            device: dev.clone(),
            instance: None,
            peer: "test".to_owned(),
        };
        let kicks = async || {
            let describe = crate::DescribeDevice {
                device: dev.clone(),
            };
            let view = actors.store.send(describe).await.unwrap();
            view.expect("a session").kicks
        };

        // A client that closes its stream and reopens, again and again.
        for _ in 0..5 {
            assert_eq!(actors.registry.send(admit()).await.unwrap(), Ok(()));
            let (_, frames, _) = connect(&actors, &dev, None, 8).await;
            drop(frames);
        }
        assert_eq!(kicks().await, 0);

        // Two live clients replacing each other: the second kick is flapping.
        let (_, mut first, _) = connect(&actors, &dev, None, 8).await;
        expect_signal(&mut first, "hello").await;
        let (_, mut second, _) = connect(&actors, &dev, None, 8).await;
        expect_signal(&mut first, "kicked").await;
        let (_, _third, _) = connect(&actors, &dev, None, 8).await;
        expect_signal(&mut second, "hello").await;
        expect_signal(&mut second, "kicked").await;
        assert_eq!(kicks().await, 2);
        let refused = actors.registry.send(admit()).await.unwrap();
        assert_eq!(refused, Err(Refusal::Flapping));
    }

    #[actix::test]
    async fn a_panicking_connection_does_not_take_the_registry_down() {
        let ttl = Duration::from_millis(50);
        let actors = start_actors(ttl);
        let dev = device("d1");
        let (conn, mut frames, _) = connect(&actors, &dev, None, 8).await;
        expect_signal(&mut frames, "hello").await;
        assert_eq!(count_live(&actors).await, 1);

        assert!(conn.send(Explode).await.is_err());
        let receipt = publish_to(&actors, &dev, "to the dead").await;
        assert!(!receipt.delivered);
        assert_eq!(count_live(&actors).await, 0);

        // Forgetting the connection detached its session, so it expires.
        tokio::time::pause();
        tokio::time::advance(ttl + Duration::from_millis(1)).await;
        actors.store.send(SweepExpired).await.unwrap();
        let position = Some(receipt.id.to_string());
        let (_conn, mut frames, _) = connect(&actors, &dev, position, 8).await;
        expect_signal(&mut frames, "hello").await;
        assert_eq!(
            expect_signal(&mut frames, "reset").await["reason"],
            "expired"
        );
    }

    #[actix::test]
    async fn close_all_ends_live_streams_and_any_that_register_later() {
        let actors = start_actors(Duration::from_secs(60));
        let (_early, mut early_frames, _) = connect(&actors, &device("d1"), None, 8).await;
        expect_signal(&mut early_frames, "hello").await;

        let close_all = CloseAll {
            over: Duration::ZERO,
        };
        assert_eq!(actors.registry.send(close_all).await.unwrap(), 1);
        assert!(next(&mut early_frames).await.is_none());

        let (late, mut late_frames, _) = connect(&actors, &device("d2"), None, 8).await;
        assert!(next(&mut late_frames).await.is_none());
        assert!(stopped(&late).await);
        assert_eq!(count_live(&actors).await, 0);
    }
}
