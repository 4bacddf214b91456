//! SessionStore: owns every device's [`Session`] — its replay buffer and its
//! id sequence — and is the single entry point for publishing and for
//! attaching a stream.
//!
//! Invariants:
//! - every published event is appended here first and gets the next id of its
//!   session, whether or not the device is connected;
//! - the store forwards to the [`DeviceRegistry`] with FIFO sends from this one
//!   actor, so a stream's replay (sent in `Register`) always reaches it before
//!   any event published after the replay was cut: nothing lost, nothing twice;
//! - a session with no attached stream is removed `ttl` after it detached; the
//!   sweep visits only sessions that are due (an index ordered by expiry).

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use actix::prelude::*;
use bytestring::ByteString;
use serde::Deserialize;

use crate::{
    ConnectionId, DeviceConnection, DeviceId, Epoch, EventId, EventName, Session,
    registry::{Deliver, DeliverEach, DeviceRegistry, Register},
};

/// The `[session]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Events each session's replay buffer holds; the oldest are evicted first.
    pub buffer_events: usize,
    /// How long a session is kept after its last stream ended.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

/// Attach a new stream to its device's session (creating the session if
/// needed). The store decides where the stream starts and hands the stream,
/// with its replay, to the registry. Sent by the stream route.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
    pub connection: Addr<DeviceConnection>,
    /// The client's claimed position, untrusted.
    pub last_event_id: Option<String>,
}

/// Publish one event to one device. Sent by the admin publish route.
#[derive(Message)]
#[rtype(result = "PublishReceipt")]
pub struct Publish {
    pub device: DeviceId,
    pub name: EventName,
    pub data: ByteString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishReceipt {
    pub id: EventId,
    /// Handed to the device's live stream (otherwise it waits in the buffer).
    pub delivered: bool,
}

/// Publish one event to every device that has a session. Sent by the admin
/// broadcast route.
#[derive(Message)]
#[rtype(result = "BroadcastReceipt")]
pub struct Broadcast {
    pub name: EventName,
    pub data: ByteString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastReceipt {
    /// Sessions that buffered the event.
    pub buffered: usize,
    /// Of those, how many had a live stream it was handed to.
    pub delivered: usize,
}

/// A stream ended; its session starts counting down its TTL unless another
/// stream is already attached. Sent by the registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
}

/// Ends sessions whose TTL has passed. Sent by the store to itself on a timer
/// and by tests.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SweepExpired;

struct Entry {
    session: Session,
    /// Set while detached: when the session ends.
    expires_at: Option<Instant>,
}

pub struct SessionStore {
    config: SessionConfig,
    registry: Addr<DeviceRegistry>,
    boot: u32,
    sessions_created: u32,
    sessions: HashMap<DeviceId, Entry>,
    expiries: BTreeSet<(Instant, DeviceId)>,
}

impl SessionStore {
    pub fn new(config: SessionConfig, registry: Addr<DeviceRegistry>) -> Self {
        Self {
            config,
            registry,
            boot: fastrand::u32(..),
            sessions_created: 0,
            sessions: HashMap::new(),
            expiries: BTreeSet::new(),
        }
    }

    fn sweep_interval(&self) -> Duration {
        (self.config.ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    fn session(&mut self, device: &DeviceId) -> &mut Entry {
        let epoch = Epoch::new(self.boot, self.sessions_created);
        let created = &mut self.sessions_created;
        self.sessions.entry(device.clone()).or_insert_with(|| {
            *created = created.wrapping_add(1);
            log::debug!("session.created device={device}");
            Entry {
                session: Session::new(epoch),
                expires_at: None,
            }
        })
    }

    fn append(
        &mut self,
        device: &DeviceId,
        name: EventName,
        data: ByteString,
    ) -> crate::StoredEvent {
        let max_events = self.config.buffer_events;
        let now = Instant::now();
        let ttl = self.config.ttl;
        let entry = self.session(device);
        let event = entry.session.append(name, data, max_events);
        // A session created by a publish has no stream yet: it lives for one
        // TTL waiting for its device, like a session whose stream ended.
        let arm = !entry.session.is_attached() && entry.expires_at.is_none();
        if arm {
            entry.expires_at = Some(now + ttl);
            self.expiries.insert((now + ttl, device.clone()));
        }
        event
    }
}

impl Actor for SessionStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.sweep_interval(), |_, ctx| ctx.notify(SweepExpired));
    }
}

impl Supervised for SessionStore {
    fn restarting(&mut self, _: &mut Self::Context) {
        log::error!(
            "actor.restarted actor=session_store sessions={}",
            self.sessions.len()
        );
    }
}

impl Handler<Attach> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: Attach, _: &mut Self::Context) {
        let entry = self.session(&msg.device);
        let was_due = entry.expires_at.take();
        let opening = entry
            .session
            .attach(msg.connection_id, msg.last_event_id.as_deref());
        if let Some(at) = was_due {
            self.expiries.remove(&(at, msg.device.clone()));
        }
        self.registry.do_send(Register {
            device: msg.device,
            connection_id: msg.connection_id,
            connection: msg.connection,
            opening,
        });
    }
}

impl Handler<Publish> for SessionStore {
    type Result = ResponseFuture<PublishReceipt>;

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> Self::Result {
        let event = self.append(&msg.device, msg.name, msg.data);
        let id = event.id;
        // `send` enqueues now (the registry's mailbox is unbounded), keeping
        // FIFO order with `Register`; only the answer is awaited.
        let delivery = self.registry.send(Deliver {
            device: msg.device,
            event,
        });
        Box::pin(async move {
            PublishReceipt {
                id,
                delivered: delivery.await.unwrap_or(false),
            }
        })
    }
}

impl Handler<Broadcast> for SessionStore {
    type Result = ResponseFuture<BroadcastReceipt>;

    fn handle(&mut self, msg: Broadcast, _: &mut Self::Context) -> Self::Result {
        let max_events = self.config.buffer_events;
        let events: Vec<_> = self
            .sessions
            .iter_mut()
            .map(|(device, entry)| {
                let event = entry
                    .session
                    .append(msg.name.clone(), msg.data.clone(), max_events);
                (device.clone(), event)
            })
            .collect();
        let buffered = events.len();
        let delivery = self.registry.send(DeliverEach { events });
        Box::pin(async move {
            BroadcastReceipt {
                buffered,
                delivered: delivery.await.unwrap_or(0),
            }
        })
    }
}

impl Handler<Detach> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: Detach, _: &mut Self::Context) {
        let Some(entry) = self.sessions.get_mut(&msg.device) else {
            return;
        };
        if entry.session.detach(msg.connection_id) {
            let at = Instant::now() + self.config.ttl;
            entry.expires_at = Some(at);
            self.expiries.insert((at, msg.device));
        }
    }
}

impl Handler<SweepExpired> for SessionStore {
    type Result = ();

    fn handle(&mut self, _: SweepExpired, _: &mut Self::Context) {
        let now = Instant::now();
        while let Some((at, device)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expiries.remove(&(at, device.clone()));
            if let Some(entry) = self.sessions.get(&device)
                && entry.expires_at == Some(at)
            {
                log::info!(
                    "session.expired device={device} buffered={}",
                    entry.session.buffered()
                );
                self.sessions.remove(&device);
            }
        }
    }
}
