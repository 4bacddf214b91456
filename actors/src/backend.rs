//! The storage seam: where the [`SessionStore`](crate::SessionStore)'s data
//! is kept beyond its memory. The store keeps the policy (bounds, ids and
//! epochs, TTL decisions, kick rules) and its working copy of the data in
//! [`Storage`](crate::storage::Storage); a [`Backend`] is told every change as
//! a [`Change`] and gives the data back at start as a [`Snapshot`].
//!
//! - [`Backend::Memory`] keeps nothing: a change is "committed" as soon as it
//!   is made, and a restart starts empty.
//! - [`Backend::Embedded`] writes changes to a redb file from its own thread
//!   ([`embedded`](crate::embedded)), group-committing what arrives while the
//!   previous commit syncs, and answers the store with [`Committed`] in
//!   submission order.
//!
//! Submitting never blocks the store and its answer arrives as a message, so
//! a backend whose operations are asynchronous (Redis) fits the same seam.
//! So does reading: the older events of a replay, whose payloads left the
//! store's memory ([`ReplayCache`](crate::replay_cache::ReplayCache)), are
//! read by the backend and sent straight to the stream ([`ConnectReplay`]).
//! Ordering does not rest on the answer's timing alone: every event carries
//! its id, the store hands a stream only committed events in id order, and a
//! stream refuses an id at or below the last it wrote.

use std::{
    collections::HashSet,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use actix::prelude::*;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::{
    DeviceId, Epoch, EventId, EventName, Footprint, SessionStore, StoredEvent, Unread,
    cluster::{Cluster, ConnectError, RedisConfig, Subscription},
    connection::ConnectReplay,
    embedded::{Embedded, OpenError, Writer},
};

/// The `[storage]` config section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: BackendKind,
    /// The embedded backend's directory (created if missing).
    pub path: PathBuf,
    /// Bytes of buffered events the embedded backend's server holds whole
    /// in memory; older ones keep only their place and size, and a replay
    /// reads their payloads from the file.
    pub cache_bytes: usize,
    /// The cluster backend's Redis.
    pub redis: RedisConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Embedded,
            path: PathBuf::from("herald-data"),
            cache_bytes: 64 << 20,
            redis: RedisConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Durable, in a redb file under `path`.
    Embedded,
    /// Nothing survives the process.
    Memory,
    /// Shared by several nodes, in Redis.
    Redis,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Memory => "memory",
            Self::Redis => "redis",
        }
    }
}

/// One change to the stored data, in the order the store made it.
#[derive(Debug, Clone)]
pub enum Change {
    /// One event published to these devices, each at its own id, stored
    /// as batch `batch`. Several devices share one stored payload.
    Append {
        batch: u64,
        name: EventName,
        data: ByteString,
        published: SystemTime,
        retain: bool,
        to: Vec<(DeviceId, EventId)>,
    },
    /// These events (by storage batch) left the device's buffer.
    Evict {
        device: DeviceId,
        batches: Vec<u64>,
    },
    /// A stream attached: the session has no TTL running.
    Attach {
        device: DeviceId,
        epoch: Epoch,
    },
    /// The session's attached streams have written up to `written`.
    Written {
        device: DeviceId,
        epoch: Epoch,
        written: u64,
    },
    /// The session's stream ended: what streams wrote, and when the session
    /// expires.
    Detach {
        device: DeviceId,
        epoch: Epoch,
        written: u64,
        expires: SystemTime,
    },
    /// The session ended (expired, or deleted with its retained events);
    /// `batches` are its buffered events.
    Forget {
        device: DeviceId,
        batches: Vec<u64>,
        retained: bool,
    },
    /// `reconnect=false`: the device's streams are refused until `until`.
    Block {
        device: DeviceId,
        until: SystemTime,
    },
    Unblock {
        device: DeviceId,
    },
}

/// What a backend gives back at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub sessions: Vec<SavedSession>,
    /// The highest storage batch number in use: the store numbers on.
    pub last_batch: u64,
    /// The batches whose payload several devices share.
    pub shared: HashSet<u64>,
    /// Retained events, per device in publish order.
    pub retained: Vec<(DeviceId, StoredEvent)>,
    pub blocks: Vec<(DeviceId, SystemTime)>,
}

#[derive(Debug)]
pub struct SavedSession {
    pub device: DeviceId,
    pub epoch: Epoch,
    /// The highest seq a stream wrote, as of the last detach.
    pub written: u64,
    /// `None`: a stream was attached when the process ended.
    pub expires: Option<SystemTime>,
    /// The seq of its newest event.
    pub last_seq: u64,
    /// Its buffered events, oldest first and consecutive up to `last_seq`:
    /// their payloads are read when a replay needs them.
    pub events: Vec<Footprint>,
}

/// Why a batch of changes was not committed: nothing of it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the disk holding the store is full")]
    DiskFull,
    #[error("the store could not be written")]
    Unavailable,
}

/// Why a replay's older events could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("event {seq} is not in storage")]
    Missing { seq: u64 },
    #[error("the store could not be read: {0}")]
    Unavailable(String),
}

/// A backend's answer to every submitted batch up to `through` not yet
/// answered (one commit covers a run of batches). Sent by the backend to
/// the store, in submission order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed {
    pub through: u64,
    pub result: Result<(), WriteError>,
}

/// A backend opened at start, before the store exists.
pub enum Opened {
    Memory,
    Cluster {
        cluster: Cluster,
        subscription: Subscription,
    },
    Embedded {
        store: Embedded,
        /// `storage.cache_bytes`.
        cache_bytes: usize,
    },
}

/// Why the configured backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Embedded(#[from] OpenError),
    #[error(transparent)]
    Redis(#[from] ConnectError),
}

impl Opened {
    /// Opens the configured backend, as node `node_id`, and reads what it
    /// holds. Refuses a data directory in use by another process, an
    /// unreadable or corrupt one, and a Redis it cannot reach.
    pub async fn open(
        config: &StorageConfig,
        node_id: &str,
    ) -> Result<(Self, Snapshot), BackendError> {
        match config.backend {
            BackendKind::Memory => Ok((Self::Memory, Snapshot::default())),
            BackendKind::Redis => {
                let (cluster, subscription) = Cluster::connect(&config.redis, node_id).await?;
                let opened = Self::Cluster {
                    cluster,
                    subscription,
                };
                Ok((opened, Snapshot::default()))
            }
            BackendKind::Embedded => {
                let (store, snapshot) = Embedded::open(&config.path)?;
                let cache_bytes = config.cache_bytes;
                Ok((Self::Embedded { store, cache_bytes }, snapshot))
            }
        }
    }

    /// What buffered events the store may hold whole in memory: `None`
    /// (no bound) when its buffers are the only copy.
    pub(crate) fn cache_bytes(&self) -> Option<usize> {
        match self {
            Self::Memory | Self::Cluster { .. } => None,
            Self::Embedded { cache_bytes, .. } => Some(*cache_bytes),
        }
    }

    /// Starts the backend's writer, answering `store`.
    pub(crate) fn start(self, store: Addr<SessionStore>) -> Backend {
        match self {
            Self::Memory => Backend::Memory,
            Self::Cluster {
                cluster,
                subscription,
            } => {
                subscription.forward_to(store);
                Backend::Cluster(cluster)
            }
            Self::Embedded {
                store: embedded, ..
            } => Backend::Embedded(embedded.spawn(store)),
        }
    }
}

/// A running backend, held by the store.
pub enum Backend {
    Memory,
    Embedded(Writer),
    /// Redis holds the sessions and gives ids; the store does not submit
    /// changes (see `session_store/cluster.rs`).
    Cluster(Cluster),
}

impl Backend {
    /// Whether a batch is committed as soon as it is made (nothing to
    /// submit or wait for).
    pub(crate) fn keeps_nothing(&self) -> bool {
        matches!(self, Self::Memory | Self::Cluster(_))
    }

    /// The cluster, if this node is one of several on Redis.
    pub(crate) fn cluster(&self) -> Option<Cluster> {
        match self {
            Self::Cluster(cluster) => Some(cluster.clone()),
            _ => None,
        }
    }

    /// Submits `changes` as batch number `batch` (the store counts them);
    /// answered by [`Committed`].
    pub(crate) fn submit(&self, batch: u64, changes: Vec<Change>) {
        if let Self::Embedded(writer) = self {
            writer.submit(batch, changes);
        }
    }

    /// Reads the events `unread` names of `device`'s buffer and sends them
    /// to its stream, `to`.
    pub(crate) fn read(&self, device: DeviceId, unread: Unread, to: Recipient<ConnectReplay>) {
        match self {
            Self::Embedded(writer) => writer.read(device, unread, to),
            // Their buffers hold every event whole: nothing is ever unread.
            Self::Memory | Self::Cluster(_) => to.do_send(ConnectReplay {
                events: Err(ReadError::Missing {
                    seq: unread.first_seq,
                }),
            }),
        }
    }

    /// The store has learned of a failed batch and dropped what it had
    /// reserved: batches submitted from now on may commit again.
    pub(crate) fn resume(&self) {
        if let Self::Embedded(writer) = self {
            writer.resume();
        }
    }

    /// Commits what was submitted, then closes: the embedded file is
    /// released, and later batches fail.
    pub(crate) fn close(&self) -> impl Future<Output = Result<(), WriteError>> + 'static {
        let closed = match self {
            Self::Memory | Self::Cluster(_) => None,
            Self::Embedded(writer) => Some(writer.close()),
        };
        async move {
            match closed {
                None => Ok(()),
                Some(closed) => closed.await.unwrap_or(Err(WriteError::Unavailable)),
            }
        }
    }
}

/// Wall-clock time `left` from now.
pub(crate) fn wall_in(left: Duration) -> SystemTime {
    SystemTime::now() + left
}
