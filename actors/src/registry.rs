//! DeviceRegistry: knows the one live [`DeviceConnection`] of each device and
//! hands each device's live events to its stream, to be written into its
//! queue on the stream's worker thread ([`Outbox`]).
//!
//! Invariants:
//! - at most one live connection per device: connecting a second one makes
//!   it the live one and ends the first, so no event is handed to the first
//!   after the second went live (those handed before may still be written,
//!   before its ending). Whether that was a kick is not decided
//!   here: the first connection decides it (its client may have closed
//!   before herald noticed) and, if it was, reports it to the store;
//! - a stream's live events follow its start: they are handed over from
//!   the moment it is live, and its queue holds those that reach it before
//!   its connection has written the start (see [`StreamQueue`]);
//! - order does not rest on mailboxes alone: a stream takes its device's
//!   live events by sequence number, each exactly the one after the last it
//!   took (the replay ends at [`ConnectLive::through`]), in its session's
//!   epoch. One it already took is skipped; one that would leave a hole, or comes
//!   from another epoch, ends the stream (`reason=gap`), and the client's
//!   resume fills the hole from the buffer (or gets `reset`). So a storage
//!   backend whose deliveries could arrive late or twice can neither reorder
//!   nor duplicate what a client sees;
//! - what it hands a stream (its live events, its ending) reaches the
//!   stream in the order it was handed over (see [`Outbox`]);
//! - a connection that is gone is forgotten and its session detached, so its
//!   TTL starts: it says so itself when it stops (also after a panic), its
//!   mailbox says so when it is dropped before it ran
//!   ([`Unstarted`](crate::Unstarted)), and one already gone when the store
//!   hands it over is never made live;
//! - the heartbeat watches a stream from when it is live until its
//!   connection is forgotten (both told from here, in that order).

use std::{sync::Arc, time::Duration};

use actix::prelude::*;

use crate::{
    ConnectionId, DeviceConnection, DeviceId, EventId, StoredEvent,
    backend::WriteError,
    connection::{Disconnect, Ending, Replacement},
    heartbeat::{ConnectWatch, DisconnectWatch, Heartbeat},
    ids::IdMap,
    outbox::{LiveStream, Outbox},
    session_store::{CloseStorage, DisconnectSession, SessionStore},
    storage::StoreError,
    stream_queue::StreamQueue,
};

/// Make a connection its device's live one, ending the previous one: the
/// second step of a connect. Sent by the store, in the same turn in which it
/// admitted the connection and attached it to the session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectLive {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
    pub connection: Addr<DeviceConnection>,
    /// The stream's queue: its live events go into it once its connection
    /// has written the start.
    pub queue: StreamQueue,
    pub instance: Option<String>,
    pub peer: String,
    /// Where its replay ends ([`Opening::through`](crate::Opening::through)):
    /// its live events are the ones after it.
    pub through: EventId,
}

/// Hand each event to its device's live stream; answers, per event, whether
/// a live stream took it (it is written on the stream's worker thread: a
/// stream found full there ends as slow, and its events count as taken all
/// the same; they are buffered, and its client's resume replays them). Sent
/// by the store.
#[derive(Message)]
#[rtype(result = "Vec<bool>")]
pub struct DeliverEach {
    pub events: Vec<(DeviceId, StoredEvent)>,
}

/// A connection is gone. Sent by the connection when it stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnected {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
}

/// End every live stream — in random order, spread evenly over `over`, so
/// their clients come back spread out too — and any that connects later,
/// right after its start (server shutdown); answers how many there were.
/// Sent by the server's shutdown sequence.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct DisconnectAll {
    pub over: Duration,
}

/// End a device's live stream, if it has one (an operator's disconnect, a
/// deleted device); answers whether it had one. Sent by the store.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct DisconnectLive {
    pub device: DeviceId,
    pub ending: Ending,
}

/// How many devices have a live connection. Sent by the readiness probe
/// and tests.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountLive;

struct Live {
    connection_id: ConnectionId,
    stream: Arc<LiveStream>,
    instance: Option<String>,
    peer: String,
    /// The id of the next live event its stream may take.
    next: EventId,
}

pub struct DeviceRegistry {
    store: Addr<SessionStore>,
    heartbeat: Addr<Heartbeat>,
    live: IdMap<DeviceId, Live>,
    /// What this turn hands to streams; sent at the end of the turn.
    outbox: Outbox,
    /// Set by `DisconnectAll`: streams that connect later are ended at once.
    closing: bool,
}

impl DeviceRegistry {
    pub fn new(store: Addr<SessionStore>, heartbeat: Addr<Heartbeat>) -> Self {
        Self {
            store,
            heartbeat,
            live: IdMap::default(),
            outbox: Outbox::default(),
            closing: false,
        }
    }

    /// Hands a live event to the device's stream, if it has one, in order
    /// (see the module's invariants); answers whether the stream took it.
    fn deliver(&mut self, device: &DeviceId, event: StoredEvent) -> bool {
        let Some(live) = self.live.get_mut(device) else {
            return false;
        };
        let (id, next) = (event.id, live.next);
        if id.epoch == next.epoch && id.seq < next.seq {
            log::debug!(
                "stream.duplicate_skipped device={device} conn={} seq={}",
                live.connection_id,
                id.seq
            );
            return true;
        }
        if id != next {
            log::warn!(
                "stream.gap device={device} conn={} expected={next} got={id}",
                live.connection_id
            );
            self.end(device, Ending::Gap);
            return false;
        }
        live.next = EventId {
            seq: id.seq + 1,
            ..id
        };
        self.outbox.write(&live.stream, event);
        true
    }

    /// Ends the device's live stream, after what it was handed before: no
    /// event is handed to it any more. Answers whether it had one.
    fn end(&mut self, device: &DeviceId, ending: Ending) -> bool {
        let Some(live) = self.live.remove(device) else {
            return false;
        };
        self.outbox.end(&live.stream, ending);
        true
    }

    fn forget(&mut self, device: DeviceId, connection_id: ConnectionId) {
        if self
            .live
            .get(&device)
            .is_some_and(|l| l.connection_id == connection_id)
        {
            self.live.remove(&device);
        }
        self.heartbeat.do_send(DisconnectWatch { connection_id });
        self.store.do_send(DisconnectSession {
            device,
            connection_id,
        });
    }
}

impl Actor for DeviceRegistry {
    type Context = Context<Self>;
}

impl Handler<ConnectLive> for DeviceRegistry {
    type Result = ();

    fn handle(&mut self, msg: ConnectLive, _: &mut Self::Context) {
        if self.closing {
            // It reports `Disconnected` when it stops, which detaches its
            // session.
            msg.connection.do_send(Disconnect {
                ending: Ending::Shutdown,
            });
            return;
        }
        // A connection can be gone before the store's `ConnectLive` for it
        // gets here (its client left at once). The store attached the
        // session to it all the same, so a stream still live here would go
        // on unattached, its session counting down its TTL under it. It ends
        // too, without `kicked` (nobody took over): its client resumes, and
        // the store attaches it again.
        if !msg.connection.connected() {
            self.end(&msg.device, Ending::Superseded);
            self.outbox.send();
            // It never reports `Disconnected` (it never ran): its session
            // is given up here, or it would stay attached to no one.
            self.store.do_send(DisconnectSession {
                device: msg.device,
                connection_id: msg.connection_id,
            });
            return;
        }
        let through = msg.through;
        let stream = Arc::new(LiveStream {
            queue: msg.queue,
            connection: msg.connection,
        });
        let new = Live {
            connection_id: msg.connection_id,
            stream: stream.clone(),
            instance: msg.instance,
            peer: msg.peer,
            next: EventId {
                seq: through.seq + 1,
                ..through
            },
        };
        let (new_instance, new_peer) = (new.instance.clone(), new.peer.clone());
        if let Some(old) = self.live.insert(msg.device.clone(), new) {
            let replacement = Replacement {
                by: msg.connection_id,
                instances: (old.instance, new_instance),
                peers: (old.peer, new_peer),
            };
            self.outbox.end(&old.stream, Ending::Replaced(replacement));
            self.outbox.send();
        }
        self.heartbeat.do_send(ConnectWatch {
            connection_id: msg.connection_id,
            stream,
        });
    }
}

impl Handler<DeliverEach> for DeviceRegistry {
    type Result = Vec<bool>;

    fn handle(&mut self, msg: DeliverEach, _: &mut Self::Context) -> Vec<bool> {
        let took = (msg.events.into_iter())
            .map(|(device, event)| self.deliver(&device, event))
            .collect();
        self.outbox.send();
        took
    }
}

impl Handler<Disconnected> for DeviceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Disconnected, _: &mut Self::Context) {
        self.forget(msg.device, msg.connection_id);
    }
}

impl Handler<DisconnectAll> for DeviceRegistry {
    type Result = usize;

    fn handle(&mut self, msg: DisconnectAll, ctx: &mut Self::Context) -> usize {
        self.closing = true;
        let mut devices: Vec<_> = self.live.keys().cloned().collect();
        fastrand::shuffle(&mut devices);
        let count = devices.len();
        for (n, device) in devices.into_iter().enumerate() {
            let disconnect = move |registry: &mut Self, _: &mut Self::Context| {
                registry.end(&device, Ending::Shutdown);
                registry.outbox.send();
            };
            let at = msg.over.mul_f64(n as f64 / count as f64);
            ctx.run_later(at, disconnect);
        }
        count
    }
}

impl Handler<DisconnectLive> for DeviceRegistry {
    type Result = bool;

    fn handle(&mut self, msg: DisconnectLive, _: &mut Self::Context) -> bool {
        let had = self.end(&msg.device, msg.ending);
        self.outbox.send();
        had
    }
}

/// Passed on to the store from here, after the `DisconnectSession` of every
/// stream that ended before it (one sender, FIFO): their positions and TTLs
/// are among the changes committed before the storage closes.
impl Handler<CloseStorage> for DeviceRegistry {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: CloseStorage, _: &mut Self::Context) -> Self::Result {
        let closed = self.store.send(msg);
        Box::pin(async move { closed.await.unwrap_or(Err(WriteError::Unavailable.into())) })
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
    async fn a_newcomer_gone_before_it_goes_live_ends_the_live_stream_without_a_kick() {
        let actors = start_actors(Duration::from_secs(60));
        let dev = device("d1");
        let (live, mut frames, _) = connect(&actors, &dev, None, 8).await;
        expect_signal(&mut frames, "hello").await;

        // The store attached the session to the newcomer; the stream still
        // live must not go on unattached.
        connect_gone(&actors, &dev).await;
        assert!(next(&mut frames).await.is_none(), "ended, without `kicked`");
        assert!(stopped(&live).await);
        assert_eq!(count_live(&actors).await, 0);
        // Nor is the session left attached to the connect that is gone.
        let describe = crate::DescribeDevice {
            device: dev.clone(),
        };
        let view = actors.store.send(describe).await.unwrap().unwrap();
        assert_eq!(view.expect("a session").connection_id, None);

        // Its client resumes, and is the device's stream again.
        let (_again, mut frames, _) = connect(&actors, &dev, None, 8).await;
        expect_signal(&mut frames, "hello").await;
        assert!(publish_to(&actors, &dev, "after").await.delivered);
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

        let close_all = DisconnectAll {
            over: Duration::ZERO,
        };
        assert_eq!(actors.registry.send(close_all).await.unwrap(), 1);
        assert!(next(&mut early_frames).await.is_none());

        // Its start is written before the connection reads its ending;
        // nothing follows.
        let (late, mut late_frames, _) = connect(&actors, &device("d2"), None, 8).await;
        expect_signal(&mut late_frames, "hello").await;
        assert!(next(&mut late_frames).await.is_none());
        assert!(stopped(&late).await);
        assert_eq!(count_live(&actors).await, 0);
    }
}
