//! SessionStore: owns every device's [`Session`] (replay buffer and id
//! sequence) and [`Retained`] events, and is the single entry point for
//! publishing and for attaching a stream.
//!
//! Invariants:
//! - every published event is appended here first and gets the next id of its
//!   session, whether or not the device is connected;
//! - the store forwards to the [`DeviceRegistry`] with FIFO sends from this one
//!   actor, so a stream's replay (sent in `Register`) always reaches it before
//!   any event published after the replay was cut: nothing lost, nothing twice;
//! - a publish that would break a bound (sessions, bytes, retained names) is
//!   refused before anything changes;
//! - a session with no attached stream is removed `ttl` after it detached; the
//!   sweep visits only sessions that are due (an index ordered by expiry).
//!   Retained events outlive it.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use actix::prelude::*;
use bytestring::ByteString;
use serde::Deserialize;

use crate::{
    BufferLimits, ConnectionId, DeviceConnection, DeviceId, Epoch, EventId, EventName, Progress,
    Session, StoredEvent,
    registry::{CloseDevice, DeliverEach, DeviceRegistry, Register},
    retained::{Retained, signed},
};

/// The `[session]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Events each session's replay buffer holds; the oldest are evicted first.
    pub buffer_events: usize,
    /// Bytes (names and data) each session's replay buffer holds.
    pub buffer_bytes: usize,
    /// Distinct event names a device may retain.
    pub retained_per_device: usize,
    /// Sessions the server holds at most.
    pub max_sessions: usize,
    /// Bytes all buffers and retained events hold together at most.
    pub max_total_bytes: usize,
    /// How long a session is kept after its last stream ended.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl SessionConfig {
    fn limits(&self) -> BufferLimits {
        BufferLimits {
            events: self.buffer_events,
            bytes: self.buffer_bytes,
        }
    }
}

/// A bound that refused a request; nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the server already holds its maximum of {0} sessions")]
    TooManySessions(usize),
    #[error("the server's buffers already hold their maximum of {0} bytes")]
    StorageFull(usize),
    #[error("the device already retains its maximum of {0} event names")]
    RetainedLimit(usize),
}

/// Attach a new stream to its device's session (creating the session if
/// needed). The store decides where the stream starts and hands the stream,
/// with its replay, to the registry. Sent by the stream route.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Attach {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
    pub connection: Addr<DeviceConnection>,
    /// Where the connection reports what it wrote.
    pub progress: Progress,
    /// The client's claimed position, untrusted.
    pub last_event_id: Option<String>,
    /// The client's own name for itself, if it gave one.
    pub instance: Option<String>,
    /// The client's address, for logs.
    pub peer: String,
}

/// Publish one event to each of these devices: all or, if a bound refuses,
/// none. Answers one receipt per device, in order. Sent by the admin publish
/// routes.
#[derive(Message)]
#[rtype(result = "Result<Vec<PublishReceipt>, StoreError>")]
pub struct Publish {
    /// Distinct devices (a device named twice would get the event twice).
    pub devices: Vec<DeviceId>,
    pub name: EventName,
    pub data: ByteString,
    /// Also keep it as the device's latest event of this name.
    pub retain: bool,
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
#[rtype(result = "Result<BroadcastReceipt, StoreError>")]
pub struct Broadcast {
    pub name: EventName,
    pub data: ByteString,
    pub retain: bool,
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

/// Forget a device: its session, buffer and retained events; its stream is
/// ended. Answers whether there was anything to forget. Sent by the admin
/// delete route.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct DeleteDevice {
    pub device: DeviceId,
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
    retained: HashMap<DeviceId, Retained>,
    expiries: BTreeSet<(Instant, DeviceId)>,
    /// Bytes held by all buffers and retained events.
    total_bytes: usize,
}

impl SessionStore {
    pub fn new(config: SessionConfig, registry: Addr<DeviceRegistry>) -> Self {
        Self {
            config,
            registry,
            boot: fastrand::u32(..),
            sessions_created: 0,
            sessions: HashMap::new(),
            retained: HashMap::new(),
            expiries: BTreeSet::new(),
            total_bytes: 0,
        }
    }

    fn sweep_interval(&self) -> Duration {
        (self.config.ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Refuses a publish of `size` bytes named `name` to `devices` that would
    /// break a bound.
    fn admit<'a>(
        &self,
        devices: impl Iterator<Item = &'a DeviceId>,
        name: &EventName,
        size: usize,
        retain: bool,
    ) -> Result<(), StoreError> {
        let config = &self.config;
        let mut growth: isize = 0;
        let mut new_sessions = 0;
        for device in devices {
            let retained = self.retained.get(device);
            growth += match self.sessions.get(device) {
                Some(entry) => entry.session.growth_if_appended(size, config.limits()),
                None => {
                    new_sessions += 1;
                    signed(size)
                }
            };
            if retain {
                let room =
                    retained.is_none_or(|r| r.has_room_for(name, config.retained_per_device));
                if !room {
                    return Err(StoreError::RetainedLimit(config.retained_per_device));
                }
                growth += retained.map_or(signed(size), |r| r.growth_if_kept(name, size));
            }
        }
        if self.sessions.len() + new_sessions > config.max_sessions {
            return Err(StoreError::TooManySessions(config.max_sessions));
        }
        if growth > 0 && self.total_bytes.saturating_add_signed(growth) > config.max_total_bytes {
            return Err(StoreError::StorageFull(config.max_total_bytes));
        }
        Ok(())
    }

    /// The device's session, created if it has none. Bounds are the caller's
    /// to check.
    fn session(&mut self, device: &DeviceId) -> &mut Entry {
        let Self {
            sessions,
            boot,
            sessions_created,
            ..
        } = self;
        sessions.entry(device.clone()).or_insert_with(|| {
            // Epochs repeat only after 2^32 sessions in one boot.
            let session = Session::new(Epoch::new(*boot, *sessions_created));
            *sessions_created = sessions_created.wrapping_add(1);
            log::debug!("session.created device={device}");
            Entry {
                session,
                expires_at: None,
            }
        })
    }

    /// Appends to the device's session (and retained events), keeping the
    /// byte count; the caller has admitted it.
    fn append(
        &mut self,
        device: &DeviceId,
        name: EventName,
        data: ByteString,
        retain: bool,
    ) -> StoredEvent {
        let limits = self.config.limits();
        let entry = self.session(device);
        let before = entry.session.bytes();
        let event = entry.session.append(name, data, limits);
        let after = entry.session.bytes();
        // A session created by a publish has no stream yet: it lives for one
        // TTL waiting for its device, like a session whose stream ended.
        let detached = !entry.session.is_attached();
        self.total_bytes = self.total_bytes + after - before;
        if retain {
            let retained = self.retained.entry(device.clone()).or_default();
            let before = retained.bytes();
            retained.keep(event.clone());
            self.total_bytes = self.total_bytes + retained.bytes() - before;
        }
        if detached {
            self.start_ttl(device);
        }
        event
    }

    /// Publishes one event to each of `devices` — all of them or, if a bound
    /// refuses, none — and routes each to its live stream. `send` enqueues at
    /// once (the registry's mailbox is unbounded), keeping FIFO order with
    /// `Register`; only the answer is awaited.
    fn publish(
        &mut self,
        devices: Vec<DeviceId>,
        name: EventName,
        data: ByteString,
        retain: bool,
    ) -> ResponseFuture<Result<Vec<PublishReceipt>, StoreError>> {
        let size = name.as_str().len() + data.len();
        if let Err(refused) = self.admit(devices.iter(), &name, size, retain) {
            return Box::pin(async move { Err(refused) });
        }
        let events: Vec<_> = devices
            .into_iter()
            .map(|device| {
                let event = self.append(&device, name.clone(), data.clone(), retain);
                (device, event)
            })
            .collect();
        let ids: Vec<_> = events.iter().map(|(_, event)| event.id).collect();
        let delivery = self.registry.send(DeliverEach { events });
        Box::pin(async move {
            let delivered = delivery.await.unwrap_or_default();
            let delivered = delivered.into_iter().chain(std::iter::repeat(false));
            Ok(ids
                .into_iter()
                .zip(delivered)
                .map(|(id, delivered)| PublishReceipt { id, delivered })
                .collect())
        })
    }

    /// Starts the session's countdown, unless it is already counting down.
    fn start_ttl(&mut self, device: &DeviceId) {
        let at = Instant::now() + self.config.ttl;
        if let Some(entry) = self.sessions.get_mut(device)
            && entry.expires_at.is_none()
        {
            entry.expires_at = Some(at);
            self.expiries.insert((at, device.clone()));
        }
    }

    fn remove_session(&mut self, device: &DeviceId) -> Option<Session> {
        let entry = self.sessions.remove(device)?;
        if let Some(at) = entry.expires_at {
            self.expiries.remove(&(at, device.clone()));
        }
        self.total_bytes = self.total_bytes.saturating_sub(entry.session.bytes());
        Some(entry.session)
    }
}

impl Actor for SessionStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.sweep_interval(), |_, ctx| ctx.notify(SweepExpired));
    }
}

impl Handler<Attach> for SessionStore {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: Attach, _: &mut Self::Context) -> Self::Result {
        if !self.sessions.contains_key(&msg.device)
            && self.sessions.len() >= self.config.max_sessions
        {
            return Err(StoreError::TooManySessions(self.config.max_sessions));
        }
        let retained = self
            .retained
            .get(&msg.device)
            .map_or_else(Vec::new, |r| r.events().to_vec());
        let entry = self.session(&msg.device);
        let was_due = entry.expires_at.take();
        let last_event_id = msg.last_event_id.as_deref();
        let opening =
            entry
                .session
                .attach(msg.connection_id, msg.progress, last_event_id, &retained);
        if let Some(at) = was_due {
            self.expiries.remove(&(at, msg.device.clone()));
        }
        self.registry.do_send(Register {
            device: msg.device,
            connection_id: msg.connection_id,
            connection: msg.connection,
            instance: msg.instance,
            peer: msg.peer,
            opening,
        });
        Ok(())
    }
}

impl Handler<Publish> for SessionStore {
    type Result = ResponseFuture<Result<Vec<PublishReceipt>, StoreError>>;

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> Self::Result {
        self.publish(msg.devices, msg.name, msg.data, msg.retain)
    }
}

impl Handler<Broadcast> for SessionStore {
    type Result = ResponseFuture<Result<BroadcastReceipt, StoreError>>;

    fn handle(&mut self, msg: Broadcast, _: &mut Self::Context) -> Self::Result {
        let devices = self.sessions.keys().cloned().collect();
        let published = self.publish(devices, msg.name, msg.data, msg.retain);
        Box::pin(async move {
            let receipts = published.await?;
            Ok(BroadcastReceipt {
                buffered: receipts.len(),
                delivered: receipts.iter().filter(|r| r.delivered).count(),
            })
        })
    }
}

impl Handler<Detach> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: Detach, _: &mut Self::Context) {
        let detached = self
            .sessions
            .get_mut(&msg.device)
            .is_some_and(|entry| entry.session.detach(msg.connection_id));
        if detached {
            self.start_ttl(&msg.device);
        }
    }
}

impl Handler<DeleteDevice> for SessionStore {
    type Result = bool;

    fn handle(&mut self, msg: DeleteDevice, _: &mut Self::Context) -> bool {
        let session = self.remove_session(&msg.device);
        let retained = self.retained.remove(&msg.device);
        if let Some(retained) = &retained {
            self.total_bytes = self.total_bytes.saturating_sub(retained.bytes());
        }
        let existed = session.is_some() || retained.is_some();
        if existed {
            log::info!("device.deleted device={}", msg.device);
            self.registry.do_send(CloseDevice { device: msg.device });
        }
        existed
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
            let due = self
                .sessions
                .get(&device)
                .is_some_and(|e| e.expires_at == Some(at));
            if due && let Some(session) = self.remove_session(&device) {
                log::info!(
                    "session.expired device={device} buffered={}",
                    session.buffered()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Frame, test_support::*};

    const TTL: Duration = Duration::from_millis(50);

    fn seqs(events: &[crate::StoredEvent]) -> Vec<u64> {
        events.iter().map(|e| e.id.seq).collect()
    }

    #[actix::test]
    async fn an_offline_publish_is_buffered_and_replayed_on_the_next_connect() {
        let actors = start_actors(Duration::from_secs(60));
        let dev = device("d1");
        let receipt = publish_to(&actors, &dev, "while away").await;
        assert!(!receipt.delivered);

        let (_conn, mut frames, _) = connect(&actors, &dev, None, 8).await;
        let hello = expect_signal(&mut frames, "hello").await;
        assert_eq!(hello["resumed"], false);
        match next(&mut frames).await {
            Some(Frame::Replay(events)) => {
                assert_eq!(seqs(&events), [receipt.id.seq]);
                assert_eq!(events[0].data, "while away");
            }
            other => panic!("expected the replay, got {other:?}"),
        }
    }

    #[actix::test]
    async fn a_resume_replays_what_follows_its_position_and_then_goes_live() {
        let actors = start_actors(Duration::from_secs(60));
        let dev = device("d1");
        let mut ids = Vec::new();
        for n in 1..=3 {
            ids.push(publish_to(&actors, &dev, &n.to_string()).await.id);
        }

        let position = Some(ids[0].to_string());
        let (_conn, mut frames, _) = connect(&actors, &dev, position, 8).await;
        let live = publish_to(&actors, &dev, "live").await;
        assert!(live.delivered);

        let hello = expect_signal(&mut frames, "hello").await;
        assert_eq!(hello["resumed"], true);
        match next(&mut frames).await {
            Some(Frame::Replay(events)) => assert_eq!(seqs(&events), [2, 3]),
            other => panic!("expected the replay, got {other:?}"),
        }
        match next(&mut frames).await {
            Some(Frame::Event(event)) => assert_eq!((event.id, &*event.data), (live.id, "live")),
            other => panic!("expected the live event, got {other:?}"),
        }
        assert!(frames.try_recv().is_err());
    }

    #[actix::test]
    async fn a_broadcast_counts_buffered_and_delivered_sessions() {
        let actors = start_actors(Duration::from_secs(60));
        let (online, offline) = (device("online"), device("offline"));
        let (_conn, mut frames, _) = connect(&actors, &online, None, 8).await;
        publish_to(&actors, &offline, "creates the session").await;

        let broadcast = Broadcast {
            name: EventName::parse("all").unwrap(),
            data: "hi".into(),
            retain: false,
        };
        let receipt = actors.store.send(broadcast).await.unwrap().unwrap();
        assert_eq!(
            receipt,
            BroadcastReceipt {
                buffered: 2,
                delivered: 1
            }
        );
        expect_signal(&mut frames, "hello").await;
        match next(&mut frames).await {
            Some(Frame::Event(event)) => assert_eq!(event.name.as_str(), "all"),
            other => panic!("expected the broadcast, got {other:?}"),
        }
    }

    #[actix::test]
    async fn a_detached_session_is_swept_after_its_ttl() {
        let actors = start_actors(TTL);
        let dev = device("d1");
        let (conn, mut frames, _) = connect(&actors, &dev, None, 8).await;
        let old = publish_to(&actors, &dev, "before").await.id;
        expect_signal(&mut frames, "hello").await;
        drop(frames);
        assert!(stopped(&conn).await);
        // The registry detaches the session before it answers this.
        assert_eq!(count_live(&actors).await, 0);

        tokio::time::sleep(TTL + Duration::from_millis(10)).await;
        actors.store.send(SweepExpired).await.unwrap();

        let (_conn, mut frames, _) = connect(&actors, &dev, Some(old.to_string()), 8).await;
        assert_eq!(expect_signal(&mut frames, "hello").await["resumed"], false);
        let reset = expect_signal(&mut frames, "reset").await;
        assert_eq!(reset["reason"], "expired");
        assert_eq!(reset["last_event_id"], old.to_string());
    }

    #[actix::test]
    async fn a_session_created_by_a_publish_alone_expires_after_its_ttl() {
        let actors = start_actors(TTL);
        let dev = device("never-connected");
        let old = publish_to(&actors, &dev, "waiting").await.id;

        tokio::time::sleep(TTL + Duration::from_millis(10)).await;
        actors.store.send(SweepExpired).await.unwrap();

        let (_conn, mut frames, _) = connect(&actors, &dev, Some(old.to_string()), 8).await;
        expect_signal(&mut frames, "hello").await;
        assert_eq!(
            expect_signal(&mut frames, "reset").await["reason"],
            "expired"
        );
    }
}
