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
//! | `session_store.rs` | [`SessionStore`] actor: all sessions, TTL sweep          |
//! | `registry.rs`      | [`DeviceRegistry`] actor: the live connection per device |
//! | `connection.rs`    | [`DeviceConnection`] actor: one per stream, its writer   |
//! | `heartbeat.rs`     | [`Heartbeat`] actor: heartbeats for idle streams         |
//!
//! # Who sends what to whom
//!
//! ```text
//!  stream route ──Attach──────────▶ SessionStore ──Register{opening}──▶ DeviceRegistry
//!  admin routes ──Publish/Broadcast▶ SessionStore ──Deliver/DeliverEach─▶ DeviceRegistry
//!                                   SessionStore ◀──Detach────────────  DeviceRegistry
//!  DeviceRegistry ──Begin/Push/Kick/Close──▶ DeviceConnection ──Unregister──▶ DeviceRegistry
//!  DeviceConnection ──Watch/Unwatch──▶ Heartbeat ──SendHeartbeat──▶ DeviceConnection
//!  Heartbeat ──Unregister (connection found dead)──▶ DeviceRegistry
//! ```
//!
//! Ordering is the core guarantee. A publish goes through the store (which
//! assigns the id and buffers the event) and then, in the store's send order,
//! through the registry to the connection. A connecting stream goes through
//! the same path: the store cuts its replay and sends `Register` in that same
//! order. Actix mailboxes are FIFO per sender, and every mailbox on this path
//! is unbounded (so a send never waits and cannot overtake another), so a
//! stream sees its replay and then exactly the events published after it.
//!
//! # Supervision
//!
//! The three stateful actors are started under [`actix::Supervisor`] by
//! [`start`]; their handlers do not panic by construction (no indexing or
//! unwrapping) and a restart is logged as `actor.restarted`. A connection actor
//! that panics loses only its own stream: actix still runs its `stopped` while
//! the actor is dropped, which unregisters it; should a connection vanish
//! without that, the registry and the heartbeat find its mailbox closed on
//! their next send and detach its session.

mod connection;
mod event;
mod event_id;
mod heartbeat;
mod ids;
mod registry;
mod session;
mod session_store;
#[cfg(test)]
pub(crate) mod test_support;

use std::{cell::Cell, rc::Rc};

use actix::{Addr, AsyncContext, Supervisor};

pub use connection::{ConnectionParams, DeviceConnection, DisconnectReason};
pub use event::{Frame, RESERVED_EVENT_NAMES, ResetReason, Signal, StoredEvent};
pub use event_id::{Epoch, EventId, EventIdError};
pub use heartbeat::{Heartbeat, HeartbeatConfig};
pub use ids::{ConnectionId, DeviceId, EventName, MAX_NAME_LEN, NameError};
pub use registry::{CloseAll, CountLive, DeviceRegistry};
pub use session::{Opening, Session, Start};
pub use session_store::{
    Attach, Broadcast, BroadcastReceipt, Publish, PublishReceipt, SessionConfig, SessionStore,
};

/// Addresses of the long-lived actors.
#[derive(Clone)]
pub struct Actors {
    pub store: Addr<SessionStore>,
    pub registry: Addr<DeviceRegistry>,
    pub heartbeat: Addr<Heartbeat>,
}

/// Starts the store, the registry and the heartbeat under supervision, wired
/// to each other. Must run inside an actix `System`.
pub fn start(session: SessionConfig, heartbeat: HeartbeatConfig) -> Actors {
    // The store and the registry address each other; the registry is started
    // while the store's context (and so its address) already exists.
    let registry_slot = Rc::new(Cell::new(None));
    let slot = Rc::clone(&registry_slot);
    let store = Supervisor::start(move |ctx: &mut actix::Context<SessionStore>| {
        ctx.set_mailbox_capacity(0);
        let store = ctx.address();
        let started = Supervisor::start(move |ctx: &mut actix::Context<DeviceRegistry>| {
            ctx.set_mailbox_capacity(0);
            DeviceRegistry::new(store)
        });
        slot.set(Some(started.clone()));
        SessionStore::new(session, started)
    });
    let registry = registry_slot
        .take()
        .expect("Supervisor::start runs the constructor at once");
    let heartbeat_registry = registry.clone();
    let heartbeat = Supervisor::start(move |ctx: &mut actix::Context<Heartbeat>| {
        ctx.set_mailbox_capacity(0);
        Heartbeat::new(heartbeat, heartbeat_registry)
    });
    Actors {
        store,
        registry,
        heartbeat,
    }
}
