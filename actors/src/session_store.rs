//! SessionStore: the single entry point for publishing and for connecting a
//! stream. It owns the [`Storage`] (every device's session, replay buffer,
//! id sequence and retained events), the kick rules ([`KickPolicy`]) and the
//! storage [`Backend`], and routes what it stores to the [`DeviceRegistry`].
//!
//! Invariants:
//! - every published event gets the next id of its session here, whether or
//!   not the device is connected; it is appended to the session, handed to
//!   the registry and acknowledged only once the backend has committed it
//!   ([`Commits`]); if the backend fails, nothing of it is kept and its ids
//!   are given again;
//! - the store forwards to the [`DeviceRegistry`] with FIFO sends from this one
//!   actor, so a stream's replay (sent in `ConnectLive`) always reaches it before
//!   any event published after the replay was cut: nothing lost, nothing twice;
//! - a publish that would break a bound (sessions, bytes, retained names) is
//!   refused before anything changes;
//! - a connect is admitted (kick rules, reconnect blocks) and attached in one
//!   turn, so no two connects can pass the same admission;
//! - a session with no attached stream is removed `ttl` after it detached; the
//!   sweep visits only sessions that are due (an index ordered by expiry).
//!   Retained events outlive it.

use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use bytestring::ByteString;

use crate::{
    ConnectionId, DeviceConnection, DeviceId, EventId, EventName, Opening, StreamQueue,
    backend::{Backend, Committed, Opened, Snapshot},
    commits::Commits,
    connection::Replacement,
    feed,
    kicks::{KickConfig, KickPolicy, Refusal},
    registry::{ConnectLive, DeviceRegistry},
    storage::{DeviceView, SessionConfig, Storage, StoreError},
};

/// Connect a new stream: admit it (kick rules, reconnect blocks), attach it
/// to its device's session (creating the session if needed) and decide where
/// it starts, all in one turn; then hand it to the registry. The first step
/// of a connect. Sent by the stream route; answers the stream's start, for
/// its connection to write (`None`: it ends before it begins, and its
/// `Disconnect` is on its way).
#[derive(Message)]
#[rtype(result = "Result<Option<Opening>, ConnectError>")]
pub struct Connect {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
    pub connection: Addr<DeviceConnection>,
    /// The stream's queue: its session reads the position written to it,
    /// and the registry has its live events written into it.
    pub queue: StreamQueue,
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

/// Why a connect was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The kick rules or an operator's block refuse it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// It would need a new session, and the server holds its maximum.
    #[error(transparent)]
    Full(#[from] StoreError),
}

/// A stream ended; its session starts counting down its TTL unless another
/// stream is already attached. Sent by the registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DisconnectSession {
    pub device: DeviceId,
    pub connection_id: ConnectionId,
}

/// A replacement or an operator's block found its stream's client still
/// there: a kick. The admin view counts it and, for a replacement, the kick
/// rules record it (on the cluster, in Redis). Sent by the kicked
/// connection, which writes `kicked` only once this is answered (so its
/// client, coming back on any node, finds the kick counted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kicked {
    pub device: DeviceId,
    /// `None`: an operator's kick.
    pub replacement: Option<Replacement>,
}

/// How many sessions the store holds. Sent by the readiness probe; that it
/// is answered at all is what the probe checks.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountSessions;

/// Ends sessions whose TTL has passed. Sent by the store to itself on a timer
/// and by tests.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SweepExpired;

/// Commit every change made so far, then close the backend (the embedded
/// file is released for the next process); later changes fail. Sent at
/// shutdown, after the streams ended, through the registry (which passes it
/// on after every stream's `DisconnectSession`), so their positions and
/// TTLs are kept.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct CloseStorage;

/// How often what live streams wrote is recorded (their end records it
/// too): after a crash, a fresh connect gets again at most this much.
const RECORD_WRITTEN_EVERY: Duration = Duration::from_secs(5);

pub struct SessionStore {
    storage: Storage,
    kicks: KickPolicy,
    registry: Addr<DeviceRegistry>,
    backend: Backend,
    commits: Commits,
    /// Set by `CloseStorage`: nothing more is submitted.
    closed: bool,
    /// On the cluster backend: this node's streams and their devices.
    routing: cluster::Routing,
}

impl SessionStore {
    /// The store on what `opened` gave back; its backend answers `me`.
    pub(crate) fn new(
        config: SessionConfig,
        kicks: KickConfig,
        registry: Addr<DeviceRegistry>,
        (opened, snapshot): (Opened, Snapshot),
        me: Addr<Self>,
    ) -> Self {
        let mut kicks = KickPolicy::new(kicks);
        let now = (Instant::now(), SystemTime::now());
        for (device, until) in &snapshot.blocks {
            let left = until.duration_since(now.1).unwrap_or_default();
            kicks.block_until(device, now.0 + left);
        }
        let commits = Commits::after(snapshot.last_batch);
        let mut storage = Storage::new(config, opened.cache_bytes());
        storage.restore(snapshot);
        Self {
            storage,
            kicks,
            registry,
            backend: opened.start(me),
            commits,
            closed: false,
            routing: cluster::Routing::default(),
        }
    }

    /// `view` with the kick rules' flag.
    fn flagged(&self, mut view: DeviceView) -> DeviceView {
        view.flapping = self.kicks.is_flapping(&view.device, Instant::now());
        view
    }
}

impl Actor for SessionStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let sweep_every =
            (self.storage.ttl() / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        ctx.run_interval(sweep_every, |_, ctx| ctx.notify(SweepExpired));
        ctx.run_interval(self.kicks.forget_interval(), |act, _| {
            act.kicks.forget_old(Instant::now())
        });
        ctx.run_interval(RECORD_WRITTEN_EVERY, |act, _| {
            act.storage.record_written();
            act.save();
        });
        // What restoring changed (TTLs of streams cut by the last exit).
        self.save();
    }
}

impl Handler<Committed> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: Committed, _: &mut Self::Context) {
        self.committed(msg.through, msg.result);
        self.storage.cool();
    }
}

impl Handler<CloseStorage> for SessionStore {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, _: CloseStorage, _: &mut Self::Context) -> Self::Result {
        self.save();
        self.closed = true;
        let closed = self.backend.close();
        Box::pin(async move { Ok(closed.await?) })
    }
}

impl Handler<Connect> for SessionStore {
    type Result = ResponseActFuture<Self, Result<Option<Opening>, ConnectError>>;

    fn handle(&mut self, msg: Connect, _: &mut Self::Context) -> Self::Result {
        // On the cluster, the attach script applies the kick rules, which
        // Redis keeps for every node.
        if let Some(cluster) = self.backend.cluster() {
            return self.connect_on(cluster, msg);
        }
        if let Err(refusal) = self.admit(&msg) {
            return Box::pin(fut::ready(Err(refusal.into())));
        }
        Box::pin(fut::ready(self.connect(msg)))
    }
}

impl SessionStore {
    /// The kick rules' and blocks' verdict on a connect.
    fn admit(&mut self, msg: &Connect) -> Result<(), Refusal> {
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

    /// An admitted connect on this node's own storage: attached, and handed
    /// to the registry, in this turn.
    fn connect(&mut self, msg: Connect) -> Result<Option<Opening>, ConnectError> {
        let opening = self.storage.attach(
            &msg.device,
            msg.connection_id,
            msg.queue.progress(),
            msg.last_event_id.as_deref(),
            &msg.peer,
        )?;
        if let Some(unread) = &opening.unread {
            // Sent before anything later is submitted: the backend reads
            // before it writes any eviction of these events.
            let to = msg.connection.clone().recipient();
            self.backend.read(msg.device.clone(), unread.clone(), to);
        }
        self.registry.do_send(ConnectLive {
            device: msg.device,
            connection_id: msg.connection_id,
            connection: msg.connection,
            queue: msg.queue,
            instance: msg.instance,
            peer: msg.peer,
            through: opening.through,
        });
        self.save();
        Ok(Some(opening))
    }
}

impl Handler<Publish> for SessionStore {
    type Result = ResponseFuture<Result<Vec<PublishReceipt>, StoreError>>;

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> Self::Result {
        match self.backend.cluster() {
            Some(cluster) => {
                self.publish_on(cluster, msg.devices, (msg.name, msg.data), msg.retain)
            }
            None => self.publish(msg.devices, msg.name, msg.data, msg.retain),
        }
    }
}

impl Handler<Broadcast> for SessionStore {
    type Result = ResponseFuture<Result<BroadcastReceipt, StoreError>>;

    fn handle(&mut self, msg: Broadcast, _: &mut Self::Context) -> Self::Result {
        if let Some(cluster) = self.backend.cluster() {
            return self.broadcast_on(cluster, (msg.name, msg.data), msg.retain);
        }
        let published = self.publish(self.storage.devices(), msg.name, msg.data, msg.retain);
        Box::pin(async move {
            let receipts = published.await?;
            Ok(BroadcastReceipt {
                buffered: receipts.len(),
                delivered: receipts.iter().filter(|r| r.delivered).count(),
            })
        })
    }
}

impl Handler<DisconnectSession> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: DisconnectSession, _: &mut Self::Context) {
        if let Some(cluster) = self.backend.cluster() {
            return self.disconnect_on(cluster, msg.device, msg.connection_id);
        }
        self.storage.detach(&msg.device, msg.connection_id);
        self.save();
    }
}

impl Handler<Kicked> for SessionStore {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Kicked, _: &mut Self::Context) -> Self::Result {
        self.storage.count_kick(&msg.device);
        if let Some(cluster) = self.backend.cluster() {
            return match msg.replacement {
                Some(replacement) => self.record_kick_on(cluster, msg.device, replacement),
                None => Box::pin(async {}),
            };
        }
        self.record_kick(msg);
        Box::pin(async {})
    }
}

impl SessionStore {
    /// A kick on this node's own kick rules.
    fn record_kick(&mut self, msg: Kicked) {
        let Some(Replacement {
            instances, peers, ..
        }) = msg.replacement
        else {
            return;
        };
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
            let policy = Some(self.kicks.policy_name());
            feed::tell("device.flapping", &msg.device, None, policy);
        }
    }
}

impl Handler<CountSessions> for SessionStore {
    type Result = usize;

    fn handle(&mut self, _: CountSessions, _: &mut Self::Context) -> usize {
        self.storage.len()
    }
}

impl Handler<SweepExpired> for SessionStore {
    type Result = ();

    fn handle(&mut self, _: SweepExpired, ctx: &mut Self::Context) {
        if let Some(cluster) = self.backend.cluster() {
            return self.sweep_on(cluster, ctx.address());
        }
        for (device, buffered) in self.storage.sweep(tokio::time::Instant::now()) {
            log::info!("session.expired device={device} buffered={buffered}");
        }
        self.save();
    }
}

mod admin;
mod cluster;
mod publishing;

pub use admin::{DeleteDevice, DescribeDevice, DisconnectDevice, ListDevices, PeekDevice};

#[cfg(test)]
mod tests;
