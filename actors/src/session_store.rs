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
    ConnectionId, DeviceConnection, DeviceId, Epoch, EventId, EventName, Progress, Session,
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
    /// Where the connection reports what it wrote.
    pub progress: Progress,
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
        let entry = self.session(device);
        let event = entry.session.append(name, data, max_events);
        // A session created by a publish has no stream yet: it lives for one
        // TTL waiting for its device, like a session whose stream ended.
        if !entry.session.is_attached() {
            self.start_ttl(device);
        }
        event
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
}

impl Actor for SessionStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.sweep_interval(), |_, ctx| ctx.notify(SweepExpired));
    }
}

impl Handler<Attach> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: Attach, _: &mut Self::Context) {
        let entry = self.session(&msg.device);
        let was_due = entry.expires_at.take();
        let opening = entry.session.attach(
            msg.connection_id,
            msg.progress,
            msg.last_event_id.as_deref(),
        );
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
        let detached = self
            .sessions
            .get_mut(&msg.device)
            .is_some_and(|entry| entry.session.detach(msg.connection_id));
        if detached {
            self.start_ttl(&msg.device);
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
        };
        let receipt = actors.store.send(broadcast).await.unwrap();
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
