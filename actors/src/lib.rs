//! herald's actors and event model. No HTTP here: the server crate turns
//! requests into messages and [`Frame`]s into SSE.
//!
//! # Layout
//!
//! | file               | owns                                                     |
//! |--------------------|----------------------------------------------------------|
//! | `ids.rs`           | [`DeviceId`], [`EventName`], [`ConnectionId`]            |
//! | `event_id.rs`      | [`EventId`] `<epoch>-<seq>` and its strict parser        |
//! | `event.rs`         | [`StoredEvent`], [`Frame`], protocol [`Signal`]s         |
//! | `session.rs`       | one device's [`Session`]: buffer, ids, where a stream starts |
//! | `retained.rs`      | one device's retained events (latest per name)          |
//! | `held_bytes.rs`    | the bytes held against the server-wide bound, a shared payload once |
//! | `replay_cache.rs`  | which buffered events are held whole (hot) and which only on disk (cold) |
//! | `storage.rs`       | the store's in-memory storage: sessions, retained events, bounds, expiry index (admin views in `storage/views.rs`) |
//! | `backend.rs`       | the storage seam: [`Backend`] (memory, embedded), its [`Change`]s and [`Snapshot`] |
//! | `embedded.rs`      | the embedded backend: a redb file written by a group-committing thread |
//! | `cluster.rs`       | the redis backend: several nodes on one Redis, its Lua scripts in `cluster/*.lua`, the node channel in `cluster/channel.rs`, admin views in `cluster/views.rs` |
//! | `commits.rs`       | publishes between their ids and their commit           |
//! | `session_store.rs` | [`SessionStore`] actor: publish and attach, routed to the registry (its publish path in `session_store/publishing.rs`, the admin API's device messages in `session_store/admin.rs`, its cluster side in `session_store/cluster.rs`) |
//! | `registry.rs`      | [`DeviceRegistry`] actor: the live connection per device |
//! | `kicks.rs`         | [`KickConfig`]: the store's rules ending kick ping-pong between two clients |
//! | `connection.rs`    | [`DeviceConnection`] actor: one per stream, writes its start and signals |
//! | `stream_queue.rs`  | a stream's queue as its writers (connection, registry, heartbeat) share it |
//! | `outbox.rs`        | the registry's and heartbeat's writes to streams, one batch per worker thread per turn |
//! | `metrics.rs`       | counters and gauges read by `/metrics` and the stats line |
//! | `feed.rs`          | stream lifecycle steps, told to whoever watches live (the admin page) |
//! | `heartbeat.rs`     | [`Heartbeat`] actor: heartbeats for idle streams         |
//!
//! # Who sends what to whom
//!
//! Opening a stream is one family of messages, `Connect…`, and ending one
//! is another, `Disconnect…`, in the order the steps happen:
//!
//! ```text
//!  connect:    stream route ──Connect──▶ SessionStore         admit (kick rules, blocks) + attach, one turn
//!              SessionStore ──ConnectLive{through}──▶ DeviceRegistry   make it live, end the old stream
//!              DeviceRegistry ──ConnectWatch──▶ Heartbeat
//!              SessionStore ──answer{opening}──▶ stream route ──▶ DeviceConnection  writes hello, reset, replay,
//!                                                                 then lets the live events flow (StreamQueue)
//!              Backend ──ConnectReplay──▶ DeviceConnection       the replay's part no longer in memory, read from disk
//!  publish:    admin routes ──Publish/Broadcast──▶ SessionStore ──batch──▶ Backend
//!              Backend ──Committed──▶ SessionStore ──DeliverEach──▶ DeviceRegistry ──Outbox──▶ stream's worker ──▶ its queue (StreamQueue)
//!  disconnect: admin route ──DisconnectDevice──▶ SessionStore ──DisconnectLive──▶ DeviceRegistry
//!              admin route ──DeleteDevice──▶ SessionStore ──DisconnectLive──▶ DeviceRegistry
//!              shutdown ──DisconnectAll──▶ DeviceRegistry
//!              DeviceRegistry ──Disconnect{ending}, via Outbox──▶ DeviceConnection  (replaced, blocked, admin, deleted, shutdown, slow, gap)
//!              DeviceConnection ──Kicked──▶ SessionStore              only if its client was still there
//!              DeviceConnection ──Disconnected──▶ DeviceRegistry ──DisconnectSession──▶ SessionStore (TTL starts)
//!              DeviceRegistry ──DisconnectWatch──▶ Heartbeat
//!  cluster:    node channel ──DeliverRouted──▶ SessionStore ──DeliverEach──▶ DeviceRegistry   events Redis routed here
//!              node channel ──DisconnectTakenOver──▶ SessionStore ──DisconnectLive──▶ DeviceRegistry   taken over elsewhere
//!              node channel ──DisconnectInterrupted──▶ SessionStore ──DisconnectLive──▶ DeviceRegistry  subscription was lost
//!  shutdown:   after the streams ended ──CloseStorage──▶ DeviceRegistry ──▶ SessionStore ──▶ Backend
//!  heartbeat:  Heartbeat ──Outbox──▶ stream's worker ──▶ its queue (StreamQueue)
//! ```
//!
//! Ordering is the core guarantee. A publish goes through the store (which
//! assigns the id), its backend (which answers commits in submission order;
//! the store buffers the event then) and then, in the store's send order,
//! through the registry into the stream's queue (written on the stream's
//! worker thread, in the registry's order: one batch per worker and turn,
//! batches run in the order sent); the registry also refuses any id at or
//! below the last it handed to that stream, so a backend can never make a
//! stream repeat or reorder. A connecting stream goes through the same
//! path: the store cuts its replay and sends `ConnectLive` in that same
//! order; the registry hands the stream its live events from then on, and
//! the stream's queue holds them until its connection has written the
//! replay (both happen on the stream's worker thread). Actix mailboxes are
//! FIFO per sender, and every mailbox on this path is unbounded (so a send never
//! waits and cannot overtake another), so a stream sees its replay and then
//! exactly the events published after it.
//!
//! # Failure
//!
//! A connection actor that panics loses only its own stream: actix still runs
//! its `stopped` while dropping it, which reports it `Disconnected` and starts its
//! session's TTL; one whose request goes away before it runs is reported the
//! same way by its mailbox ([`Unstarted`]).
//!
//! The store, the registry and the heartbeat hold the server's state. actix's
//! `Supervisor` restarts an actor that stops, not one that panics (its mailbox
//! stays closed), and a restarted store would have lost every session anyway.
//! So their handlers avoid panicking operations, and the server runs them on
//! its main thread and exits when a panic happens there (`server.panicked`),
//! for the process supervisor to restart it; with the embedded backend
//! clients then resume where they were, with the memory backend they get
//! `reset` (`unknown_epoch`) — never a silent gap.

mod backend;
mod cluster;
mod commits;
mod connection;
mod embedded;
mod event;
mod event_id;
pub mod feed;
mod heartbeat;
mod held_bytes;
mod ids;
mod kicks;
mod metrics;
mod outbox;
mod registry;
mod replay_cache;
mod retained;
mod session;
mod session_store;
mod storage;
mod stream_queue;
#[cfg(test)]
pub(crate) mod test_support;

use actix::{Actor, Addr, AsyncContext};

pub use backend::{
    Backend, BackendError, BackendKind, Change, Opened, SavedSession, Snapshot, StorageConfig,
    WriteError,
};
pub use cluster::RedisConfig;
pub use connection::{ConnectionParams, DeviceConnection, DisconnectReason, Unstarted};
pub use embedded::OpenError;
pub use event::{Frame, RESERVED_EVENT_NAMES, ResetReason, Signal, StoredEvent};
pub use event_id::{Epoch, EventId, EventIdError};
pub use heartbeat::{Heartbeat, HeartbeatConfig};
pub use ids::{ConnectionId, DeviceId, EventName, MAX_NAME_LEN, NameError, check_name};
pub use kicks::{FlappingPolicy, KickConfig, Refusal};
pub use metrics::{Metrics, metrics};
pub use registry::{CountLive, DeviceRegistry, DisconnectAll};
pub use session::{BufferLimits, Footprint, Opening, Progress, Session, Start, Unread};
pub use session_store::{
    Broadcast, BroadcastReceipt, CloseStorage, Connect, ConnectError, CountSessions, DeleteDevice,
    DescribeDevice, DisconnectDevice, ListDevices, PeekDevice, Publish, PublishReceipt,
    SessionStore,
};
pub use storage::{DevicePage, DevicePeek, DeviceView, SessionConfig, StoreError};
pub use stream_queue::StreamQueue;

/// The embedded storage backend's writer thread: the server treats a panic
/// on it like one on the actors' thread.
pub const STORAGE_THREAD: &str = "herald-storage";

/// Addresses of the long-lived actors.
#[derive(Clone)]
pub struct Actors {
    pub store: Addr<SessionStore>,
    pub registry: Addr<DeviceRegistry>,
    pub heartbeat: Addr<Heartbeat>,
}

/// Starts the store (on what `storage` opened), the registry and the
/// heartbeat, wired to each other. Must run inside an actix `System`.
pub fn start(
    session: SessionConfig,
    heartbeat: HeartbeatConfig,
    kicks: KickConfig,
    storage: (Opened, Snapshot),
) -> Actors {
    // The store and the registry address each other: the registry is created
    // inside the store's constructor, where the store's address exists.
    let heartbeat = Heartbeat::create(move |ctx| {
        ctx.set_mailbox_capacity(0);
        Heartbeat::new(heartbeat)
    });
    let mut registry = None;
    let store = SessionStore::create(|ctx| {
        ctx.set_mailbox_capacity(0);
        let store = ctx.address();
        let watch = heartbeat.clone();
        let created = DeviceRegistry::create(move |ctx| {
            ctx.set_mailbox_capacity(0);
            DeviceRegistry::new(store, watch)
        });
        registry = Some(created.clone());
        SessionStore::new(session, kicks, created, storage, ctx.address())
    });
    let registry = registry.expect("Actor::create runs the constructor at once");
    Actors {
        store,
        registry,
        heartbeat,
    }
}
